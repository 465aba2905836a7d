"""SIM (score implicit matching) on the 2-D mixture of 8 Gaussians with an exact teacher.

    python -m experiments.main --config=configs/sim_mog.py --workdir=runs/sim_mog

``--config.distance=l2|pseudo_huber`` and ``--config.huber_c=1.0`` pick SIM's distance.
"""

from configs._diffusion_common import base_config


def get_config():
    c = base_config()
    c.method = "sim"
    c.distance = "pseudo_huber"
    return c
