"""f-distill on CIFAR-10 (TFDS, prepared as ArrayRecord): for accelerators.

    python -m experiments.main --config=configs/fdistill_cifar10.py --workdir=runs/fdistill_cifar10 \
        --config.data_dir=/path/to/tensorflow_datasets

The same three stages as ``configs/fdistill_digits.py`` with a wider U-Net teacher and fake score,
longer schedules and a larger batch. Tested here for two steps on TFDS mock data.
"""

from configs._diffusion_common import base_config


def get_config():
    c = base_config()
    c.dataset = "cifar10"
    c.divergence = "js"
    c.sigma_data = 0.5
    c.sigma_min = 0.02
    c.sigma_max = 80.0
    c.generator.latent_dim = 128
    c.generator.hidden = (1024, 1024, 1024)
    c.discriminator.hidden = (1024, 512)
    c.teacher.channels = (64, 128, 256)
    c.teacher.steps = 200_000
    c.classifier_steps = 20_000
    c.num_eval_samples = 10_000
    c.train.total_steps = 100_000
    c.train.batch_size = 256
    c.train.eval_batch_size = 1000
    c.train.log_every = 500
    c.train.checkpoint_every = 5000
    return c
