"""f-DPG towards the constraint target ``p(y) ∝ a(y) 1[token 0 appears >= 2 times]``.

    python -m experiments.main --config=configs/fdpg_toy.py --workdir=runs/fdpg_toy

``--config.divergence=forward_kl|js|tv`` (``forward_kl`` is DPG) or any catalog generator name,
applied as ``D_f(pi || p)``; divergences unbounded where ``p = 0`` (``reverse_kl``, i.e.
``KL(pi || p)``) need a soft constraint, ``--config.constraint.floor=1e-4``.
"""

from configs._lm_common import base_config


def get_config():
    c = base_config("lm_fdpg")
    c.divergence = "forward_kl"
    c.constraint = {"token": 0, "minimum": 2, "floor": 0.0}
    c.baseline_decay = 0.9
    c.proposal_every = 0  # 0: sample from the policy; k: from a copy refreshed every k steps
    c.train.batch_size = 256
    c.train.total_steps = 500
    return c
