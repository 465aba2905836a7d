"""f-distill on a 2-D mixture of 8 Gaussians with unequal weights and an exact (analytic) teacher.

    python -m experiments.main --config=configs/fdistill_mog.py --workdir=runs/fdistill_mog

Pick the divergence with ``--config.divergence=js|kl|reverse_kl|squared_hellinger|jeffreys|...``
(``reverse_kl`` is DMD/VSD: weight h = 1 and no discriminator).
"""

from configs._diffusion_common import base_config


def get_config():
    c = base_config()
    c.method = "fdistill"
    c.divergence = "js"
    return c
