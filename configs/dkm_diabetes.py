"""Deep kernel machine vs NNGP vs exact GP on scikit-learn's diabetes regression set (bundled).

    python -m experiments.main --config=configs/dkm_diabetes.py --workdir=runs/dkm_diabetes

Trains ``dkm``, ``nngp`` and ``gp`` for 3 seeds each (a fresh 80/20 split per seed) and writes
``results.md``, ``summary.json`` and ``grams.png`` in the workdir. ``--config.nu=10``,
``--config.kernel=relu``, ``--config.methods=dkm,nngp`` change the setting.
"""

from configs._dkm_common import base_config


def get_config():
    c = base_config()
    c.dataset = "diabetes"
    c.num_inducing = 100  # of 354 training points
    return c
