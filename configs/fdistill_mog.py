"""f-distill on a 2-D mixture of 8 Gaussians with unequal weights: the official update at small scale.

    python -m experiments.main --config=configs/fdistill_mog.py --workdir=runs/fdistill_mog

Pick the divergence with ``--config.divergence=js|kl|reverse_kl|squared_hellinger|jeffreys|...``
(``reverse_kl`` is DMD2: weight h = 1, the discriminator then serves only the GAN term). An EDM
denoiser teacher is fitted to the mixture's samples first (``<workdir>/teacher``); the generator
and the fake score start as copies of it. ``--config.mixture_teacher=exact
--config.generator.init_from_teacher=False --config.discriminator.features=input`` uses the
analytic noised mixture instead.
"""

from configs._diffusion_common import base_config


def get_config():
    c = base_config()
    c.method = "fdistill"
    c.divergence = "js"
    return c
