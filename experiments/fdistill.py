"""One-step diffusion distillation through the one trainer: f-distill (any f; reverse KL = DMD) and SIM.

A one-step generator ``x = G(z)`` is fitted to a teacher diffusion model's distribution. Each
train step runs ``config.critic_steps`` critic updates (the fake score ``s_psi``, trained by
denoising score matching on generated samples, and for f-distill the discriminator whose logit is
``log p_t / q_t``), then one generator update:

- ``method="fdistill"``: surrogate with gradient ``h(r) (s_psi - s_p)^T dx/dtheta``,
  ``h = g.weight(log r)`` for ``config.divergence`` (reverse KL: ``h = 1``, DMD/VSD; no
  discriminator is trained then);
- ``method="sim"``: score implicit matching with the L2 or pseudo-Huber distance, data-free.

The teacher of ``dataset="mog"`` is exact: the analytic noised score of a 2-D mixture of 8
Gaussians with unequal weights, whose true samples are also the discriminator's "real" samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments._checks import allowed as _allowed
from fdiv import data as fdata
from fdiv import diffusion, generators, metrics, models
from fdiv.losses import diffusion as dl
from fdiv.models.critic import NoiseClassifier
from fdiv.models.score import ScoreCNN, ScoreMLP
from fdiv.train import Task, TrainConfig, Update, parallel, train
from fdiv.train import plots as train_plots

METHODS = ("fdistill", "sim")
DATASETS = ("mog", "digits", "cifar10")
DISTANCES = ("l2", "pseudo_huber")
EVAL_SEED = 10_000  # the fixed evaluation noise and reference samples


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject a bad config with a message naming the field and what is allowed, before compute."""
    _allowed("method", config.method, METHODS)
    _allowed("dataset", config.dataset, DATASETS)
    if config.method == "fdistill":
        generators.get(config.divergence)  # raises, listing the known names
    _allowed("distance", config.distance, DISTANCES)
    _allowed("mixture_teacher", config.mixture_teacher, ("exact", "trained"))
    if not config.huber_c > 0:
        raise ValueError(f"huber_c must be > 0, got {config.huber_c}")
    if not 0 < config.sigma_min < config.sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, got {config.sigma_min}, {config.sigma_max}"
        )
    if config.critic_steps < 1:
        raise ValueError(f"critic_steps must be >= 1, got {config.critic_steps}")
    s = config.stabilizers
    if s.ratio_clip:
        lo, hi = s.ratio_clip
        if not 0 < lo < hi:
            raise ValueError(
                f"stabilizers.ratio_clip must be (lo, hi) with 0 < lo < hi, got {tuple(s.ratio_clip)}"
            )
    if s.logit_clamp is not None and s.logit_clamp <= 0:
        raise ValueError(f"stabilizers.logit_clamp must be > 0 or None, got {s.logit_clamp}")
    if not 0 <= s.ratio_momentum < 1:
        raise ValueError(f"stabilizers.ratio_momentum must be in [0, 1), got {s.ratio_momentum}")
    if s.ratio_bins < 0:
        raise ValueError(f"stabilizers.ratio_bins must be >= 0 (0 disables), got {s.ratio_bins}")
    for name in ("generator_optimizer", "critic_optimizer"):
        if not config[name].learning_rate > 0:
            raise ValueError(f"{name}.learning_rate must be > 0, got {config[name].learning_rate}")
    TrainConfig.from_mapping(config.train.to_dict()).validate()


def _mixture(config) -> fdata.GaussianMixture:
    m = config.mixture
    return fdata.ring_mixture(m.num_modes, radius=m.radius, std=m.std)


def plot_extent(mix) -> tuple[float, float, float, float]:
    """The mixture's bounding box plus 4 component std: every mode is on the plot."""
    means, pad = np.asarray(mix.means), 4 * float(np.max(mix.std))
    lo, hi = means.min(0) - pad, means.max(0) + pad
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def _sample_sigma(key, n, config):
    """Log-uniform noise levels on ``[sigma_min, sigma_max]``."""
    u = jax.random.uniform(key, (n,))
    return jnp.exp(
        jnp.log(config.sigma_min) + u * (jnp.log(config.sigma_max) - jnp.log(config.sigma_min))
    )


def _optimizer(opt_config, total_steps) -> optax.GradientTransformation:
    lr = opt_config.learning_rate
    schedule = (
        optax.cosine_decay_schedule(lr, total_steps) if opt_config.schedule == "cosine" else lr
    )
    return optax.adam(schedule, b1=opt_config.b1, b2=opt_config.b2)


class Setting(NamedTuple):
    """What a data set contributes: shapes, the teacher's score, real samples, evaluation."""

    shape: tuple[int, ...]  # one sample's shape
    teacher_score: Callable[[jax.Array, jax.Array], jax.Array]  # (x_t [B, ...], sigma [B]) -> score
    real: np.ndarray  # "real" samples for the discriminator [N, ...]
    fake_score: Any  # the fake-score denoiser module
    summarize: Callable[[np.ndarray], dict[str, float]]
    report: Callable[[np.ndarray, str], None]


def _per_sample(sigma, x):
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))


def mixture_setting(config, workdir) -> Setting:
    """A 2-D mixture; its samples are the data. The teacher is exact (the analytic noised score),
    or, with ``mixture_teacher="trained"``, a ``ScoreMLP`` denoiser fitted to those samples first
    (``<workdir>/teacher``)."""
    mix = _mixture(config)
    real, _ = fdata.mixture_sample(
        mix, jax.random.key(config.train.seed + 1), config.num_real_samples
    )
    if config.mixture_teacher == "trained":
        denoiser = ScoreMLP(hidden=tuple(config.fake_score.hidden), sigma_data=config.sigma_data)
        params = train_teacher(config, os.path.join(workdir, "teacher"), denoiser, np.asarray(real))
        teacher_score = _denoiser_score(denoiser, params)
    else:
        teacher_score = lambda x, sigma: fdata.mixture_score(mix, x, sigma=sigma)  # noqa: E731
    reference = np.asarray(fdata.mixture_sample(mix, jax.random.fold_in(jax.random.key(EVAL_SEED), 1), config.num_eval_samples)[0])  # fmt: skip

    def summarize(x):
        stats = metrics.mode_statistics(x, mix.means, mix.weights, std=float(np.max(mix.std)))
        precision, recall = metrics.knn_precision_recall(reference, x, k=5)
        return {
            "modes_covered": float(stats.coverage) * len(mix.weights),
            "coverage": float(stats.coverage),
            "high_quality": float(stats.high_quality),
            "weight_tv": float(stats.weight_tv),
            "mmd": float(metrics.mmd_rbf(x, reference)),
            "energy": float(metrics.energy_distance(x, reference)),
            "precision": float(precision),
            "recall": float(recall),
        }

    def report(x, workdir):
        def log_density(points):
            return np.asarray(fdata.mixture_log_prob(mix, jnp.asarray(points)))

        label = config.divergence if config.method == "fdistill" else config.distance
        train_plots.scatter_2d(
            x, os.path.join(workdir, "samples.png"), density_fn=log_density, extent=plot_extent(mix),
            title=f"{config.method} {label}",
        )  # fmt: skip

    return Setting(
        shape=(mix.means.shape[1],),
        teacher_score=teacher_score,
        real=np.asarray(real),
        fake_score=ScoreMLP(hidden=tuple(config.fake_score.hidden), sigma_data=config.sigma_data),
        summarize=summarize,
        report=report,
    )


def _images(config, split):
    """Data-set images scaled to [-1, 1] (digits are stored in [0, 1])."""
    ds = fdata.load(config.dataset, split, data_dir=config.get("data_dir") or None)
    x, y = ds.get(np.arange(len(ds)))
    return (x * 2.0 - 1.0 if config.dataset == "digits" else x), y, ds.num_classes


def train_teacher(config, workdir, denoiser, x) -> Any:
    """An EDM denoiser fitted to samples ``x`` by the same trainer; returns its host params."""
    data = fdata.ArrayDataset(config.dataset, "train", x, np.zeros(len(x), np.int32), num_classes=1)

    def loss(params, model_state, batch, key):
        k1, k2 = jax.random.split(key)
        x0 = batch["inputs"]
        sigma = _sample_sigma(k1, x0.shape[0], config)  # the noise levels distillation queries
        x_t = x0 + _per_sample(sigma, x0) * jax.random.normal(k2, x0.shape)
        denoised = denoiser.apply({"params": params["teacher"]}, x_t, sigma, train=True)
        value = jnp.mean(
            diffusion.edm_denoising_loss(denoised, x0, sigma, sigma_data=config.sigma_data)
        )
        return value, ({}, {})

    task = Task(
        init=lambda key: (
            {"teacher": denoiser.init(key, x[:1], jnp.ones((1,)), train=False)["params"]},
            {},
        ),
        updates=[Update("teacher", loss, ("teacher",))],
        optimizers={
            "teacher": optax.adam(
                optax.cosine_decay_schedule(config.teacher.learning_rate, config.teacher.steps)
            )
        },  # fmt: skip
        train_data=data,
    )
    tconfig = TrainConfig.from_mapping(
        {**config.train.to_dict(), "total_steps": config.teacher.steps}
    )
    result = train(task, tconfig, workdir, config_json=config.to_json_best_effort(sort_keys=True))
    return parallel.to_host(result.state.params["teacher"])


def _denoiser_score(denoiser, params):
    """``s(x, sigma) = (D(x, sigma) - x) / sigma^2`` of a trained EDM denoiser."""

    def score(x, sigma):
        return (denoiser.apply({"params": params}, x, sigma, train=False) - x) / _per_sample(
            sigma, x
        ) ** 2

    return score


def train_feature_classifier(config, workdir):
    """A small MLP classifier on the images: its hidden layer is the Frechet distance's feature space."""
    x, y, num_classes = _images(config, "train")
    data = fdata.ArrayDataset(config.dataset, "train", x, y, num_classes=num_classes)
    classifier = models.get("mlp", num_classes=num_classes, hidden=(128,))

    def loss(params, model_state, batch, key):
        logits = classifier.apply({"params": params["classifier"]}, batch["inputs"], train=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return jnp.mean(ce), ({}, {})

    task = Task(
        init=lambda key: ({"classifier": classifier.init(key, x[:1], train=False)["params"]}, {}),
        updates=[Update("classifier", loss, ("classifier",))],
        optimizers={"classifier": optax.adam(1e-3)},
        train_data=data,
    )
    tconfig = TrainConfig.from_mapping(
        {**config.train.to_dict(), "total_steps": config.classifier_steps}
    )
    params = parallel.to_host(train(task, tconfig, workdir).state.params["classifier"])

    def features(images):
        flat = jnp.asarray(images).reshape(len(images), -1)
        return np.asarray(
            jax.nn.relu(flat @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
        )

    return features


def image_setting(config, workdir) -> Setting:
    """A denoiser teacher trained on the images first (``<workdir>/teacher``), then distilled."""
    real, _, _ = _images(config, "train")
    denoiser = ScoreCNN(channels=tuple(config.teacher.channels), sigma_data=config.sigma_data)
    teacher_params = train_teacher(config, os.path.join(workdir, "teacher"), denoiser, real)
    features = train_feature_classifier(config, os.path.join(workdir, "classifier"))
    real, _, _ = _images(config, "train")
    test, _, _ = _images(config, "test")
    test_features = features(test)
    shape = real.shape[1:]

    teacher_score = _denoiser_score(denoiser, teacher_params)

    # References for the generator's distance: the teacher's own samples (Heun, 18 steps) and
    # training images, each against the test images' features.
    x_T = config.sigma_max * jax.random.normal(
        jax.random.key(EVAL_SEED + 1), (config.num_eval_samples, *shape)
    )
    sigmas = diffusion.karras_sigmas(18, sigma_min=0.002, sigma_max=config.sigma_max)
    teacher_samples = jax.jit(diffusion.heun_sample, static_argnums=0)(
        lambda x, sigma: denoiser.apply({"params": teacher_params}, x, jnp.broadcast_to(sigma, x.shape[:1]), train=False),
        x_T, sigmas,
    )  # fmt: skip
    references = {
        "teacher_frechet": metrics.frechet_distance(
            features(np.asarray(teacher_samples)), test_features
        ),
        "data_frechet": metrics.frechet_distance(
            features(real[: config.num_eval_samples]), test_features
        ),
    }

    def summarize(x):
        return {"frechet": metrics.frechet_distance(features(x), test_features), **references}

    def report(x, workdir):
        grid = x[:64] if x.shape[-1] == 1 else x[:64].mean(-1)  # colour shown as its channel mean
        train_plots.image_grid(
            grid, os.path.join(workdir, "samples.png"), ncols=8, title=config.method
        )

    return Setting(
        shape=shape,
        teacher_score=teacher_score,
        real=real,
        fake_score=ScoreCNN(channels=tuple(config.teacher.channels), sigma_data=config.sigma_data),
        summarize=summarize,
        report=report,
    )


def build_task(config: ml_collections.ConfigDict, workdir: str = "") -> tuple[Task, Setting]:
    """The trainer task of ``config`` and its data setting (teacher, data, evaluation)."""
    setting = (
        mixture_setting(config, workdir)
        if config.dataset == "mog"
        else image_setting(config, workdir)
    )
    shape = setting.shape
    size = int(np.prod(shape))
    latent = config.generator.latent_dim
    mlp = models.get(
        "mlp", num_classes=size, hidden=tuple(config.generator.hidden), activation="silu"
    )
    fake_score = setting.fake_score
    discriminator = NoiseClassifier(
        hidden=tuple(config.discriminator.hidden), sigma_data=config.sigma_data
    )
    use_discriminator = (
        config.method == "fdistill" and generators.get(config.divergence).name != "reverse_kl"
    )
    s = config.stabilizers
    num_bins = s.ratio_bins
    real = setting.real
    train_data = fdata.ArrayDataset(
        "real", "train", real, np.zeros(len(real), np.int32), num_classes=1
    )
    z_eval = jax.random.normal(jax.random.key(EVAL_SEED), (config.num_eval_samples, latent))
    eval_data = fdata.ArrayDataset(
        "noise", "eval", np.asarray(z_eval), np.zeros(len(z_eval), np.int32), num_classes=1
    )
    teacher_score = setting.teacher_score

    def score_of(denoiser_params, x, sigma):
        denoised = fake_score.apply({"params": denoiser_params}, x, sigma, train=False)
        return (denoised - x) / _per_sample(sigma, x) ** 2

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        x, sig = jnp.zeros((1, *shape)), jnp.ones((1,))
        params = {
            "generator": mlp.init(k1, jnp.zeros((1, latent)), train=False)["params"],
            "fake_score": fake_score.init(k2, x, sig, train=False)["params"],
        }
        model_state = {}
        if use_discriminator:
            params["discriminator"] = discriminator.init(k3, x, sig, train=False)["params"]
            if num_bins:
                model_state["ratio_stats"] = dl.init_ratio_stats(num_bins)
        return params, model_state

    def generate(params, z):
        # G(z): an MLP to prod(shape) outputs, reshaped to the sample shape.
        return mlp.apply({"params": params["generator"]}, z, train=False).reshape(
            (z.shape[0], *shape)
        )

    def critic_loss(params, model_state, batch, key):
        kz, ks, ke, kr, kre = jax.random.split(key, 5)
        n = batch["inputs"].shape[0]
        x0 = jax.lax.stop_gradient(generate(params, jax.random.normal(kz, (n, latent))))
        sigma = _sample_sigma(ks, n, config)
        eps = jax.random.normal(ke, x0.shape)
        x_t = x0 + _per_sample(sigma, x0) * eps
        dsm = dl.denoising_score_loss(score_of(params["fake_score"], x_t, sigma), x0, eps, sigma)
        metrics_ = {"dsm": jnp.mean(dsm)}
        loss = jnp.mean(dsm)
        if use_discriminator:
            sigma_r = _sample_sigma(kr, n, config)
            real_t = batch["inputs"] + _per_sample(sigma_r, x0) * jax.random.normal(kre, x0.shape)
            real_logit = discriminator.apply(
                {"params": params["discriminator"]}, real_t, sigma_r, train=False
            )
            fake_logit = discriminator.apply(
                {"params": params["discriminator"]}, x_t, sigma, train=False
            )
            disc = dl.discriminator_loss(real_logit, fake_logit)
            loss = loss + jnp.mean(disc)
            metrics_["discriminator"] = jnp.mean(disc)
        return loss, ({}, metrics_)

    def generator_loss(params, model_state, batch, key):
        kz, ks, ke = jax.random.split(key, 3)
        n = batch["inputs"].shape[0]
        x = generate(params, jax.random.normal(kz, (n, latent)))
        sigma = _sample_sigma(ks, n, config)
        eps = jax.random.normal(ke, x.shape)
        fixed = jax.lax.stop_gradient(params)  # the critics' parameters, never trained here
        if config.method == "sim":
            loss = dl.sim_generator_loss(
                x, eps, sigma, teacher_score,
                lambda x_t, sig: score_of(fixed["fake_score"], x_t, sig),
                distance=config.distance, c=config.huber_c,
            )  # fmt: skip
            return jnp.mean(loss), ({}, {"sim": jnp.mean(loss)})
        x_t = jax.lax.stop_gradient(x + _per_sample(sigma, x) * eps)
        teacher = teacher_score(x_t, sigma)  # once: the difference and DMD's normaliser share it
        difference = score_of(fixed["fake_score"], x_t, sigma) - teacher
        updates, extra = {}, {}
        if use_discriminator:
            logit = discriminator.apply({"params": fixed["discriminator"]}, x_t, sigma, train=False)
            stats = model_state.get("ratio_stats")
            bins = dl.noise_bin(sigma, sigma_min=config.sigma_min, sigma_max=config.sigma_max, num_bins=num_bins) if num_bins else None  # fmt: skip
            weight, new_stats = dl.fdistill_weight(
                logit, config.divergence,
                logit_clamp=s.logit_clamp, ratio_clip=tuple(s.ratio_clip) if s.ratio_clip else None,
                stats=stats, bins=bins, momentum=s.ratio_momentum, normalize_batch=s.normalize_batch,
            )  # fmt: skip
            if new_stats is not None:
                updates["ratio_stats"] = new_stats
            extra = {"weight_max": jnp.max(weight), "log_ratio": jnp.mean(logit)}
        else:
            weight = None
        normalizer = None
        if config.stabilizers.dmd_normalize:
            normalizer = dl.dmd_normalizer(x, x_t + _per_sample(sigma, x) ** 2 * teacher)
        loss = dl.fdistill_generator_loss(x, difference, weight, dmd_normalizer=normalizer)
        return jnp.mean(loss), (updates, {"surrogate": jnp.mean(loss), **extra})

    critics = ("fake_score", "discriminator") if use_discriminator else ("fake_score",)
    total = config.train.total_steps
    optimizers = {name: _optimizer(config.critic_optimizer, total) for name in critics}
    optimizers["generator"] = _optimizer(config.generator_optimizer, total)

    def predict(params, model_state, batch):
        return {"samples": generate(params, batch["inputs"])}

    def summarize(outputs):
        return setting.summarize(outputs["samples"])

    def report(outputs, workdir):
        setting.report(outputs["samples"], workdir)
        np.save(os.path.join(workdir, "samples.npy"), outputs["samples"])

    task = Task(
        init=init,
        updates=[
            Update("critic", critic_loss, critics, repeats=config.critic_steps),
            Update("generator", generator_loss, ("generator",)),
        ],
        optimizers=optimizers,
        train_data=train_data,
        eval_data=eval_data,
        predict=predict,
        summarize=summarize,
        report=report,
    )
    return task, setting


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    validate(config)
    task, _ = build_task(config, workdir)
    train_config = TrainConfig.from_mapping(config.train.to_dict())
    return train(
        task, train_config, workdir, config_json=config.to_json_best_effort(sort_keys=True)
    ).summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The evaluation metrics as a one-row markdown table."""
    keys = [k for k in summary if k.startswith("eval/")]
    lines = ["| " + " | ".join(k[len("eval/") :] for k in keys) + " |", "|" + "---|" * len(keys)]
    lines.append("| " + " | ".join(f"{summary[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)
