"""f-distill on scikit-learn's 8x8 digits: an EDM denoiser teacher is trained first, then distilled.

    python -m experiments.main --config=configs/fdistill_digits.py --workdir=runs/fdistill_digits

Stages (each an ordinary, resumable trainer run): ``<workdir>/teacher`` (a small U-Net denoiser,
EDM loss), ``<workdir>/classifier`` (an MLP classifier whose hidden layer is the feature space of
the Frechet distance and whose predictions give the class histogram), then the one-step generator
in ``<workdir>``, a copy of the teacher evaluated at ``sigma = 80``. Images are scaled to [-1, 1]
(``sigma_data = 0.5`` and FastGen's noise levels 0.002-80 as for CIFAR-10); ``samples.png`` is a
grid of generated digits.
"""

from configs._diffusion_common import base_config, noise_config


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.divergence = "js"
    c.sigma_data = 0.5
    c.noise = noise_config(c.sigma_data)
    c.generator.init_sigma = c.noise.sigma_max
    c.discriminator.hidden = (64,)
    c.teacher.steps = 4000
    c.teacher.batch_size = 128
    c.num_eval_samples = 1000
    c.train.total_steps = 2000
    c.train.batch_size = 64
    c.train.eval_batch_size = 500
    c.train.log_every = 100
    return c
