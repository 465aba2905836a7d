"""Shared defaults of the one-step diffusion distillation configs (no get_config: not runnable)."""

from ml_collections import ConfigDict

from configs._common import distributed_config, train_config


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "fdistill"
    c.method = "fdistill"  # fdistill | sim
    c.divergence = "js"  # f-distill's generator: any fdiv.generators.names(); reverse_kl = DMD/VSD
    c.distance = "pseudo_huber"  # SIM: l2 | pseudo_huber
    c.huber_c = 1.0  # SIM pseudo-Huber c > 0
    c.dataset = "mog"
    c.mixture = ConfigDict({"num_modes": 8, "radius": 4.0, "std": 0.25})
    c.mixture_teacher = "exact"  # exact (analytic noised score) | trained (ScoreMLP fitted first)
    c.sigma_data = 3.0  # the data's scale, for the networks' input scaling
    c.sigma_min = (
        0.05  # noise levels of the critic and generator updates: log-uniform in [min, max]
    )
    c.sigma_max = 10.0
    c.critic_steps = 4  # fake-score (+ discriminator) updates per generator update
    # f-distill's stabilisers (the authors'): logit clamp, ratio clip, running mean of r per
    # noise-level bin (0 bins disables), batch-mean normalisation of h; DMD's per-sample scale.
    c.stabilizers = ConfigDict(
        {
            "logit_clamp": 10.0,
            "ratio_clip": (0.1, 20.0),
            "ratio_bins": 10,
            "ratio_momentum": 0.99,
            "normalize_batch": True,
            "dmd_normalize": False,
        }
    )
    c.generator = ConfigDict({"hidden": (128, 128, 128), "latent_dim": 8})
    c.fake_score = ConfigDict({"hidden": (128, 128, 128)})
    c.discriminator = ConfigDict({"hidden": (128, 128)})
    c.generator_optimizer = ConfigDict(
        {"learning_rate": 1e-3, "schedule": "cosine", "b1": 0.0, "b2": 0.99}
    )
    c.critic_optimizer = ConfigDict(
        {"learning_rate": 2e-3, "schedule": "constant", "b1": 0.0, "b2": 0.99}
    )
    # Image data sets only: the denoiser teacher trained first (<workdir>/teacher), and the MLP
    # classifier whose hidden layer is the Frechet distance's feature space (<workdir>/classifier).
    c.teacher = ConfigDict({"channels": (32, 64), "steps": 2000, "learning_rate": 1e-3})
    c.classifier_steps = 500
    c.data_dir = ""
    c.num_real_samples = 20_000  # mixture only: true samples the discriminator sees as real
    c.num_eval_samples = 5_000
    c.train = train_config(
        total_steps=5000, batch_size=256, eval_batch_size=1000, log_every=250, checkpoint_every=1000
    )
    c.distributed = distributed_config()
    return c
