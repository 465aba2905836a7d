"""SIM (score implicit matching) on the 2-D mixture of 8 Gaussians, with SiD's official pieces.

    python -m experiments.main --config=configs/sim_mog.py --workdir=runs/sim_mog

``--config.distance=l2|pseudo_huber`` and ``--config.huber_c=1.0`` pick SIM's distance (x0-space,
SiD's weighting; see ``fdiv.losses.diffusion.sim_generator_loss``). SIM's training code is not
public; what it builds on is SiD (``mingyuanzhou/SiD``), whose settings these are: generator
input ``sigma_init = 2.5`` (scaled to sigma_data), noise levels up to ``t_max = 800`` of the
Karras ramp, one fake-score update per generator update with EDM's weighting, Adam with
``beta1 = 0``, no GAN term.
"""

from configs._diffusion_common import base_config, noise_config

SID_INIT_SIGMA = 2.5  # for sigma_data = 0.5


def get_config():
    c = base_config()
    c.method = "sim"
    c.distance = "pseudo_huber"
    c.noise = noise_config(c.sigma_data, index_range=(0.0, 0.8))
    c.generator.init_sigma = SID_INIT_SIGMA * c.sigma_data / 0.5
    c.critic_steps = 1
    c.fake_score_weighting = "edm"
    c.gan_weight = 0.0
    for opt in (c.generator_optimizer, c.critic_optimizer):
        opt.b1, opt.weight_decay = 0.0, 0.0
    return c
