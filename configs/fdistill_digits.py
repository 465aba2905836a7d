"""f-distill on scikit-learn's 8x8 digits: an EDM denoiser teacher is trained first, then distilled.

    python -m experiments.main --config=configs/fdistill_digits.py --workdir=runs/fdistill_digits

Stages (each an ordinary, resumable trainer run): ``<workdir>/teacher`` (a small U-Net denoiser,
EDM loss), ``<workdir>/classifier`` (an MLP classifier whose hidden layer is the feature space of
the Frechet distance), then the one-step generator in ``<workdir>``. Images are scaled to [-1, 1];
``samples.png`` is a grid of generated digits.
"""

from configs._diffusion_common import base_config


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.divergence = "js"
    c.sigma_data = 0.5
    c.sigma_min = 0.02
    c.sigma_max = 20.0
    c.generator.latent_dim = 16
    c.generator.hidden = (256, 256)
    c.discriminator.hidden = (256, 128)
    c.teacher.steps = 2000
    c.num_eval_samples = 1000
    c.train.total_steps = 2000
    c.train.batch_size = 64
    c.train.eval_batch_size = 500
    c.train.log_every = 100
    return c
