"""f-distill on CIFAR-10 (TFDS, prepared as ArrayRecord) with FastGen's hyperparameters: for accelerators.

    python -m experiments.main --config=configs/fdistill_cifar10.py --workdir=runs/fdistill_cifar10 \
        --config.data_dir=/path/to/tensorflow_datasets

NVlabs FastGen ``fastgen/configs/experiments/EDM/config_f_distill_cifar10.py`` (with the defaults
it inherits): forward KL, global batch 2048, 100k iterations at a 4:1 critic/generator cycle
(20k generator updates), AdamW lr 1e-4 betas (0.9, 0.999) weight decay 0.01 for the generator,
fake score and discriminator, generator gradient clip 10, GAN weight 1e-3, ratio clip [0.1, 20],
logit clamp 10, 10 linear noise bins with EMA rate 0, Karras noise levels 0.002-80 (rho 7, indices
2..998 of 1000), sigma_data 0.5, generator input sigma 80. What differs (``experiments/README.md``
lists it): the teacher is a small U-Net trained here first (FastGen distils EDM's pretrained
``edm-cifar10-32x32-cond-vp``, which cannot be downloaded here), unconditional; one discriminator
head on the bottleneck (FastGen: three heads at 32/16/8); one EMA of the generator's weights, 0.9999
(FastGen keeps three: 0.9999, 0.99995, 0.9996).
Tested here for two steps on TFDS mock data.
"""

from configs._diffusion_common import base_config, noise_config


def get_config():
    c = base_config()
    c.dataset = "cifar10"
    c.divergence = "kl"
    c.sigma_data = 0.5
    c.noise = noise_config(c.sigma_data)
    c.generator.init_sigma = c.noise.sigma_max
    c.generator.ema_decay = 0.9999
    c.gan_weight = 1e-3
    c.critic_steps = 4
    c.fake_score_weighting = "none"
    c.generator_optimizer.learning_rate = c.critic_optimizer.learning_rate = 1e-4
    c.generator_optimizer.clip_norm = 10.0
    c.discriminator.hidden = (256, 256)
    c.teacher.channels = (64, 128, 256)
    c.teacher.steps = 200_000
    c.classifier_steps = 20_000
    c.num_eval_samples = 10_000
    c.train.total_steps = 20_000  # generator updates (FastGen's max_iter 100k counts critic ones)
    c.train.batch_size = 2048
    c.train.eval_batch_size = 1000
    c.train.log_every = 500
    c.train.checkpoint_every = 2000
    return c
