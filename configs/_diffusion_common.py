"""Shared defaults of the one-step diffusion distillation configs (no get_config: not runnable).

The defaults are the official f-distill update (NVlabs FastGen ``f_distill.py``, CIFAR-10 config)
at the mixture's scale; ``experiments/README.md`` has the parity table, one row per switch.
"""

from ml_collections import ConfigDict

from configs._common import distributed_config, train_config

# FastGen's EDM noise levels for images with sigma_data = 0.5; other data scale them by
# sigma_data / 0.5 ("noise schedules relative to sigma_data").
EDM_SIGMA_DATA, EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.5, 0.002, 80.0


def noise_config(sigma_data: float, *, index_range=(0.002, 0.998)) -> ConfigDict:
    """``config.noise``: Karras levels (rho 7, 1000 steps) scaled to ``sigma_data``."""
    scale = sigma_data / EDM_SIGMA_DATA
    return ConfigDict(
        {
            "distribution": "karras",  # karras (official) | log_uniform (the old fdiv default)
            "sigma_min": EDM_SIGMA_MIN * scale,
            "sigma_max": EDM_SIGMA_MAX * scale,
            "rho": 7.0,
            "index_range": index_range,  # FastGen: indices 2..998 of 1000
        }
    )


def optimizer_config(learning_rate: float, **overrides) -> ConfigDict:
    """AdamW as FastGen: betas (0.9, 0.999), weight decay 0.01, constant rate, no clip."""
    fields = {
        "learning_rate": learning_rate,
        "schedule": "constant",  # constant | cosine
        "b1": 0.9,
        "b2": 0.999,
        "weight_decay": 0.01,
        "clip_norm": None,
    }
    fields.update(overrides)
    return ConfigDict(fields)


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "fdistill"
    c.method = "fdistill"  # fdistill | sim
    c.divergence = "js"  # f-distill's generator: any fdiv.generators.names(); reverse_kl = DMD2
    c.divergence_params = ConfigDict()  # the generator's hyperparameters, e.g. {"alpha": 1.5}
    c.distance = "pseudo_huber"  # SIM: l2 | pseudo_huber
    c.huber_c = 1.0  # SIM pseudo-Huber c > 0, in the data's units (x0-space)
    # SIM: SiD's alpha (sim_generator_loss); 1 = SIM's gradient, SiD's official 1.2 a switch.
    c.sid_alpha = 1.0
    c.dataset = "mog"
    c.mixture = ConfigDict({"num_modes": 8, "radius": 4.0, "std": 0.25})
    c.mixture_teacher = "trained"  # trained (EDM ScoreMLP fitted first) | exact (analytic)
    c.sigma_data = 3.0  # the data's scale (the ring's per-coordinate std is 2.8)
    c.noise = noise_config(c.sigma_data)
    # The generator update (switches name the deviations from the official one):
    # space x0 = h (x_hat_fake - x_hat_teacher); score = h (s_fake - s_teacher) = the x0 form / sigma^2.
    # normalize: divide by mean|x - x_hat_teacher| per sample.
    c.generator_update = ConfigDict({"space": "x0", "normalize": True})
    c.gan_weight = 1e-3  # FastGen CIFAR-10: non-saturating GAN term on the generator
    c.critic_steps = (
        4  # fake-score + discriminator updates per generator update (FastGen 5:1 cycle)
    )
    # The fake denoiser's loss weighting: edm (DMD2, SiD: lambda(sigma) = 1/sigma^2 + 1/sd^2) |
    # none (FastGen: plain x0 MSE, which barely trains small noise levels: on the mixture the fake
    # score stays the teacher's copy there and samples stay between modes, high quality 0.52 vs
    # 0.77 with edm after 3k updates; measured).
    c.fake_score_weighting = "edm"
    # f-distill's stabilisers (FastGen's): logit clamp, ratio clip, per-noise-bin mean of r
    # (0 bins disables; linear bins over [sigma_min, sigma_max]; EMA momentum 0 = this batch's
    # bin mean), batch-mean normalisation of h.
    c.stabilizers = ConfigDict(
        {
            "logit_clamp": 10.0,
            "ratio_clip": (0.1, 20.0),
            "ratio_bins": 10,
            "bin_spacing": "linear",
            "ratio_momentum": 0.0,
            "normalize_batch": True,
        }
    )
    # G(z) = D(init_sigma z, init_sigma), a copy of the teacher (FastGen, DMD2: init_sigma = sigma_max).
    # ema_decay: the weights evaluated are an EMA of the generator's (FastGen keeps three); 0: the raw ones.
    c.generator = ConfigDict(
        {"init_sigma": c.noise.sigma_max, "init_from_teacher": True, "ema_decay": 0.0}
    )
    c.network = ConfigDict({"hidden": (256, 256, 256)})  # the mixture's ScoreMLP denoisers
    # The discriminator: a head on the frozen teacher's features (teacher), or on x_t (input).
    c.discriminator = ConfigDict({"hidden": (128,), "features": "teacher"})
    # FastGen: 1e-4 for 20k generator updates of a CIFAR U-Net; the mixture's 9k updates of an
    # MLP take 1e-3 (DMD2 at 1e-4: 7 of 8 modes, high quality 0.67 after 5k; measured).
    c.generator_optimizer = optimizer_config(1e-3)
    c.critic_optimizer = optimizer_config(1e-3)
    # The denoiser teacher trained first (<stages_dir or workdir>/teacher); for images also the
    # MLP classifier whose hidden layer is the Frechet distance's feature space (.../classifier).
    # stages_dir lets several runs share those stages (the table: one per seed).
    c.teacher = ConfigDict(
        {"channels": (32, 64), "steps": 10_000, "learning_rate": 2e-3, "batch_size": 512}
    )
    c.stages_dir = ""
    c.classifier_steps = 500
    c.data_dir = ""
    c.num_real_samples = 20_000  # mixture only: true samples the teacher and discriminator see
    c.num_eval_samples = 5_000
    # 9k generator updates (36k critic updates): at 3k every method's high quality was 0.64-0.77,
    # at 9k 0.69-0.87 (results/diffusion.md); ~10 min a run on 2 CPU cores.
    c.train = train_config(
        total_steps=9000, batch_size=256, eval_batch_size=1000, log_every=250, checkpoint_every=1000
    )
    c.distributed = distributed_config()
    return c
