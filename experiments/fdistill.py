"""One-step diffusion distillation through the one trainer: f-distill (any f; reverse KL = DMD) and SIM.

A one-step generator ``x = G(z) = D_gen(sigma_init z, sigma_init)`` (a denoiser network of the
teacher's architecture, initialised from the teacher as in every official code) is fitted to a
teacher diffusion model's distribution. Each train step runs ``config.critic_steps`` critic
updates (the fake denoiser, trained on generated samples, and the discriminator on the frozen
teacher's features), then one generator update:

- ``method="fdistill"`` (NVlabs FastGen ``f_distill.py``): the x0-space surrogate with gradient
  ``h(r) (x_hat_fake - x_hat_teacher) / mean|x - x_hat_teacher|`` per sample, ``h = g.weight(log
  r)`` for ``config.divergence`` (reverse KL: ``h = 1``, DMD2), plus ``gan_weight`` times the
  non-saturating GAN loss;
- ``method="sim"``: score implicit matching with the L2 or pseudo-Huber distance on
  x0-predictions, SiD's weighting (``sid_loss.py``), data-free; ``gan_weight > 0`` adds the same
  GAN term (a deviation: SiD has none; its adversarial extension SiDA adds one).

Every deviation from the official update is a named config switch (``generator_update.space``,
``generator_update.normalize``, ``gan_weight``, ``generator.init_from_teacher``, ``sid_alpha``,
``stabilizers.ratio_momentum``, ``noise.distribution``, ``fake_score_weighting``); the parity
table in ``experiments/README.md`` lists each with its source. The teacher of ``dataset="mog"``
is an EDM denoiser trained on the mixture's samples (``mixture_teacher="trained"``), or the
analytic noised mixture (``"exact"``, no network to initialise from).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _checks
from fdiv import data as fdata
from fdiv import diffusion, generators, metrics, models, plots
from fdiv.losses import diffusion as dl
from fdiv.models.critic import FeatureDiscriminator, NoiseClassifier
from fdiv.models.score import ScoreCNN, ScoreMLP
from fdiv.train import Task, TrainConfig, Update, fingerprint, optim, paths, train, train_stage

METHODS = ("fdistill", "sim")
DATASETS = ("mog", "digits", "cifar10")
DISTANCES = ("l2", "pseudo_huber")
EVAL_SEED = 10_000  # the fixed evaluation noise and reference samples
GRAD_SHARE_SIGMA = 1.0  # generator/grad_share_sigma_lt_1: the share of |update| from sigma < 1


# Ranges beyond experiments._checks.RULES.
FIELD_RULES = {
    "huber_c": _checks.greater(0),
    "sid_alpha": _checks.ANY,  # SiD's alpha: any finite value (1 = SIM, 1/2 = the full gradient)
    "sigma_data": _checks.greater(0),
    "generator.init_sigma": _checks.greater(0),
    "generator.ema_decay": _checks.interval(0, 1, "[)"),  # 0: evaluate the raw weights
    "noise.sigma_min": _checks.greater(0),
    "noise.sigma_max": _checks.greater(0),
    "noise.rho": _checks.greater(0),
    "noise.index_range": _checks.interval(0, 1),
    "mixture.radius": _checks.greater(0),
    "mixture.std": _checks.greater(0),
    "stabilizers.logit_clamp": _checks.greater(0, optional=True),
    "stabilizers.ratio_clip": _checks.greater(0, optional=True),  # None: no clipping
    "stabilizers.ratio_bins": _checks.count(0),  # 0 disables
    "stabilizers.ratio_momentum": _checks.interval(0, 1, "[)"),
    "generator_optimizer.clip_norm": _checks.greater(0, optional=True),  # None: no clipping
    "critic_optimizer.clip_norm": _checks.greater(0, optional=True),
}


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject a bad config with a message naming the field and what is allowed, before compute."""
    _checks.fields(config, FIELD_RULES)
    allowed = _checks.allowed
    allowed("method", config.method, METHODS)
    allowed("dataset", config.dataset, DATASETS)
    _generator(config)  # every method: raises, listing the known names or the bad parameter
    allowed("distance", config.distance, DISTANCES)
    if config.method != "sim" and config.sid_alpha != 1.0:
        raise ValueError(
            f"sid_alpha={config.sid_alpha} applies to method='sim' only (SiD's alpha); "
            f"method={config.method!r} ignores it, so leave it at 1.0"
        )
    allowed("mixture_teacher", config.mixture_teacher, ("exact", "trained"))
    allowed("noise.distribution", config.noise.distribution, ("karras", "log_uniform"))
    allowed("generator_update.space", config.generator_update.space, ("x0", "score"))
    allowed("fake_score_weighting", config.fake_score_weighting, ("none", "edm"))
    allowed("stabilizers.bin_spacing", config.stabilizers.bin_spacing, ("linear", "log"))
    allowed("discriminator.features", config.discriminator.features, ("teacher", "input"))
    if not config.noise.sigma_min < config.noise.sigma_max:
        raise ValueError(
            f"need noise.sigma_min < noise.sigma_max, got {config.noise.sigma_min}, "
            f"{config.noise.sigma_max}"
        )
    lo, hi = config.noise.index_range
    if not lo < hi:
        raise ValueError(f"noise.index_range must be (lo, hi) with lo < hi, got {(lo, hi)}")
    if config.dataset == "mog" and config.mixture_teacher == "exact":
        if config.generator.init_from_teacher:
            raise ValueError(
                "mixture_teacher='exact' has no network to initialise the generator and fake "
                "score from; set generator.init_from_teacher=False (or mixture_teacher='trained')"
            )
        if config.discriminator.features == "teacher":
            raise ValueError(
                "mixture_teacher='exact' has no network features for the discriminator; set "
                "discriminator.features='input' (or mixture_teacher='trained')"
            )
    s = config.stabilizers
    if s.ratio_clip:
        lo, hi = s.ratio_clip
        if not lo < hi:
            raise ValueError(
                f"stabilizers.ratio_clip must be (lo, hi) with 0 < lo < hi, got {tuple(s.ratio_clip)}"
            )
    for name in ("generator_optimizer", "critic_optimizer"):
        allowed(f"{name}.schedule", config[name].schedule, ("constant", "cosine"))
    TrainConfig.from_mapping(config.train.to_dict()).validate()


# ------------------------------------------------------------------------------------------------
# Pieces shared by every stage.
# ------------------------------------------------------------------------------------------------


def _generator(config) -> generators.Generator:
    """The f of ``config.divergence`` with ``config.divergence_params`` (e.g. ``{"alpha": 1.5}``)."""
    return generators.get(config.divergence, **config.divergence_params.to_dict())


def _mixture(config) -> fdata.GaussianMixture:
    m = config.mixture
    return fdata.ring_mixture(m.num_modes, radius=m.radius, std=m.std)


def plot_extent(mix) -> tuple[float, float, float, float]:
    """The mixture's bounding box plus 4 component std: every mode is on the plot."""
    means, pad = np.asarray(mix.means), 4 * float(np.max(mix.std))
    lo, hi = means.min(0) - pad, means.max(0) + pad
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


# The Karras indices the teacher is trained on, whatever range a distillation method samples.
TEACHER_INDEX_RANGE = (0.002, 0.998)


def sample_sigma(key, n, config, *, index_range=None) -> jax.Array:
    """``[n]`` noise levels of every update (critics, generator, teacher): ``config.noise``
    (``index_range`` overrides ``config.noise.index_range``: the teacher's levels).

    ``"karras"`` (official): uniform over the indices of a 1000-level Karras schedule (FastGen's
    ``polynomial`` time distribution); ``"log_uniform"``: log-uniform on ``[sigma_min, sigma_max]``.
    """
    noise = config.noise
    if noise.distribution == "karras":
        return diffusion.karras_sigma_sample(
            key, n, sigma_min=noise.sigma_min, sigma_max=noise.sigma_max, rho=noise.rho,
            index_range=tuple(noise.index_range if index_range is None else index_range),
        )  # fmt: skip
    u = jax.random.uniform(key, (n,))
    lo, hi = jnp.log(noise.sigma_min), jnp.log(noise.sigma_max)
    return jnp.exp(lo + u * (hi - lo))


def optimizer_updates(config) -> dict[str, int]:
    """Optimiser updates each network receives over the run: the critics update ``critic_steps``
    times per generator update, so their schedules span that many (a cosine over the generator's
    count alone reached 0 a quarter of the way through with 4 critic steps)."""
    total = config.train.total_steps
    critic = total * config.critic_steps
    return {"generator": total, "fake_score": critic, "discriminator": critic}


def _denoiser_module(config, shape):
    """The one denoiser architecture of the teacher, the fake score and the generator."""
    if len(shape) == 1:
        return ScoreMLP(hidden=tuple(config.network.hidden), sigma_data=config.sigma_data)
    return ScoreCNN(channels=tuple(config.teacher.channels), sigma_data=config.sigma_data)


def _stage_config_json(config, **fields) -> str:
    """The config of a first stage: only what decides its result (so stages can be shared; a
    differing field is refused by the trainer). ``noise.index_range`` is the distillation's own
    (SiD's SIM samples fewer levels): the teacher trains on :data:`TEACHER_INDEX_RANGE`."""
    keys = ("dataset", "sigma_data", "network", "teacher", "mixture", "num_real_samples")
    noise = {k: v for k, v in config.noise.to_dict().items() if k != "index_range"}
    return fingerprint(
        config, keys, noise=noise, seed=config.train.seed, batch_size=config.train.batch_size,
        **fields,
    )  # fmt: skip


def _stage_dir(config, workdir, name) -> str:
    """Where a first stage lives: ``<stages_dir or workdir>/<name>``."""
    return os.path.join(config.stages_dir or workdir, name)


def train_teacher(config, workdir, denoiser, x) -> Any:
    """An EDM denoiser fitted to samples ``x`` by the same trainer; returns its host params.

    Noise levels: ``config.noise`` (the levels distillation queries, generator input included);
    loss: EDM's ``lambda(sigma) ||D(x + sigma eps) - x||^2``.
    """
    data = _unlabelled(config.dataset, "train", x)

    def loss(params, model_state, batch, key):
        k1, k2 = jax.random.split(key)
        x0 = batch["inputs"]
        sigma = sample_sigma(k1, x0.shape[0], config, index_range=TEACHER_INDEX_RANGE)
        x_t = diffusion.add_noise(x0, sigma, jax.random.normal(k2, x0.shape))
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
        {
            **config.train.to_dict(),
            "total_steps": config.teacher.steps,
            "batch_size": config.teacher.batch_size,
        }
    )
    stage_json = _stage_config_json(config, stage="teacher")
    return train_stage(task, tconfig, workdir, config_json=stage_json, network="teacher").params


def teacher_samples(config, denoise_fn, shape, n) -> np.ndarray:
    """``n`` samples of a teacher by the deterministic EDM sampler (Heun, 18 levels, rho 7)."""
    x_T = config.noise.sigma_max * jax.random.normal(jax.random.key(EVAL_SEED + 1), (n, *shape))
    sigmas = diffusion.karras_sigmas(
        18, sigma_min=config.noise.sigma_min, sigma_max=config.noise.sigma_max
    )

    def denoise(x, sigma):
        return denoise_fn(x, jnp.broadcast_to(sigma, x.shape[:1]))

    return np.asarray(jax.jit(diffusion.heun_sample, static_argnums=0)(denoise, x_T, sigmas))


# ------------------------------------------------------------------------------------------------
# Data settings: what a data set contributes.
# ------------------------------------------------------------------------------------------------


class Setting(NamedTuple):
    """What a data set contributes: shapes, the teacher, real samples, evaluation."""

    shape: tuple[int, ...]  # one sample's shape
    denoiser: Any  # the denoiser architecture (teacher, fake score, generator)
    teacher_params: Any  # the trained teacher's host params; None for the exact mixture teacher
    exact_teacher: Callable[[jax.Array, jax.Array], jax.Array] | None  # (x_t, sigma) -> x0-pred.
    real: np.ndarray  # "real" samples for the discriminator [N, ...]
    summarize: Callable[[np.ndarray], dict[str, float]]
    report: Callable[[np.ndarray, str], None]


def mixture_setting(config, workdir) -> Setting:
    """A 2-D mixture; its samples are the data. The teacher is an EDM ``ScoreMLP`` denoiser fitted
    to them first (``<stages_dir or workdir>/teacher``), or with ``mixture_teacher="exact"`` the
    analytic noised mixture. Its own Heun samples are evaluated as the reference row."""
    mix = _mixture(config)
    real, _ = fdata.mixture_sample(
        mix, jax.random.key(config.train.seed + 1), config.num_real_samples
    )
    real = np.asarray(real)
    shape = (mix.means.shape[1],)
    denoiser = _denoiser_module(config, shape)
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

    if config.mixture_teacher == "trained":
        params = train_teacher(config, _stage_dir(config, workdir, "teacher"), denoiser, real)
        exact = None
        fn = lambda x, s: denoiser.apply({"params": params}, x, s, train=False)  # noqa: E731
    else:
        params = None
        exact = lambda x, sigma: fdata.mixture_denoiser(mix, x, sigma)  # noqa: E731
        fn = exact
    own = teacher_samples(config, fn, shape, config.num_eval_samples)
    references = {f"teacher_{k}": v for k, v in summarize(own).items()}

    def report(x, workdir):
        def log_density(points):
            return np.asarray(fdata.mixture_log_prob(mix, jnp.asarray(points)))

        label = str(_generator(config)) if config.method == "fdistill" else config.distance
        plots.scatter_2d(
            x, os.path.join(workdir, "samples.png"), density_fn=log_density, extent=plot_extent(mix),
            title=f"{config.method} {label}",
        )  # fmt: skip

    return Setting(
        shape=shape,
        denoiser=denoiser,
        teacher_params=params,
        exact_teacher=exact,
        real=real,
        summarize=lambda x: {**summarize(x), **references},
        report=report,
    )


def _images(config, split):
    """Data-set images scaled to [-1, 1] (digits are stored in [0, 1])."""
    ds = fdata.load(config.dataset, split, data_dir=config.get("data_dir") or None)
    x, y = ds.get(np.arange(len(ds)))
    return (x * 2.0 - 1.0 if config.dataset == "digits" else x), y, ds.num_classes


def train_feature_classifier(config, workdir):
    """A small MLP classifier on the images: its hidden layer is the Frechet distance's feature
    space, its prediction the class histogram of generated samples. Returns ``(features,
    predict)``."""
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
    stage_json = _stage_config_json(config, stage="classifier", steps=config.classifier_steps)
    params = train_stage(
        task, tconfig, workdir, config_json=stage_json, network="classifier"
    ).params

    def features(images):
        flat = jnp.asarray(images).reshape(len(images), -1)
        return np.asarray(
            jax.nn.relu(flat @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
        )

    def predict(images):
        logits = classifier.apply({"params": params}, jnp.asarray(images), train=False)
        return np.asarray(jnp.argmax(logits, axis=-1)), num_classes

    return features, predict


def class_histogram(labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """The fraction of samples per predicted class, and how many classes hold >= 2% (a fifth of
    their share under uniform classes: the mixture's mode-coverage rule)."""
    fractions = np.bincount(labels, minlength=num_classes) / max(len(labels), 1)
    out = {f"class_{k}": float(f) for k, f in enumerate(fractions)}
    out["classes_present"] = float(np.sum(fractions >= 0.2 / num_classes))
    return out


def image_setting(config, workdir) -> Setting:
    """A denoiser teacher trained on the images first, then distilled; the Frechet distance in a
    classifier's feature space against the test images, with the teacher's own Heun samples and
    training images as references."""
    real, _, _ = _images(config, "train")
    shape = real.shape[1:]
    denoiser = _denoiser_module(config, shape)
    teacher_params = train_teacher(config, _stage_dir(config, workdir, "teacher"), denoiser, real)
    features, predict = train_feature_classifier(config, _stage_dir(config, workdir, "classifier"))
    test, _, _ = _images(config, "test")
    test_features = features(test)

    own = teacher_samples(
        config, lambda x, s: denoiser.apply({"params": teacher_params}, x, s, train=False),
        shape, config.num_eval_samples,
    )  # fmt: skip
    own_labels, num_classes = predict(own)
    references = {
        "teacher_frechet": metrics.frechet_distance(features(own), test_features),
        "data_frechet": metrics.frechet_distance(
            features(real[: config.num_eval_samples]), test_features
        ),
        "teacher_classes_present": class_histogram(own_labels, num_classes)["classes_present"],
    }

    def summarize(x):
        labels, _ = predict(x)
        return {
            "frechet": metrics.frechet_distance(features(x), test_features),
            **class_histogram(labels, num_classes),
            **references,
        }

    def report(x, workdir):
        grid = x[:64] if x.shape[-1] == 1 else x[:64].mean(-1)  # colour shown as its channel mean
        plots.image_grid(grid, os.path.join(workdir, "samples.png"), ncols=8, title=config.method)

    return Setting(
        shape=shape,
        denoiser=denoiser,
        teacher_params=teacher_params,
        exact_teacher=None,
        real=real,
        summarize=summarize,
        report=report,
    )


# ------------------------------------------------------------------------------------------------
# The distillation task.
# ------------------------------------------------------------------------------------------------


def grad_share(update: jax.Array, sigma: jax.Array, threshold: float) -> jax.Array:
    """The share of the generator's update norm from noise levels below ``threshold``.

    ``sum_{i: sigma_i < threshold} ||g_i|| / sum_i ||g_i||`` for per-sample updates ``g [B, ...]``
    (the gradient of the distribution-matching loss w.r.t. each sample): a diagnostic of how a
    generator update weights the noise levels (0 when every update is zero).
    """
    norms = jnp.sqrt(jnp.sum(jnp.square(update.reshape(update.shape[0], -1)), axis=-1))
    total = jnp.sum(norms)
    low = jnp.sum(jnp.where(sigma < threshold, norms, 0.0))
    return jnp.where(total > 0, low / jnp.where(total > 0, total, 1.0), 0.0)


class Distillation:
    """The networks of one distillation run and the trainer's rules over them.

    Params: ``generator`` and ``fake_score`` (denoisers of the teacher's architecture), the frozen
    ``teacher`` (absent for the exact mixture teacher) and, where a density ratio or a GAN term is
    used, the ``discriminator``. Model state: the ratio statistics and the generator's EMA.
    """

    def __init__(self, config: ml_collections.ConfigDict, setting: Setting):
        self.config, self.setting = config, setting
        self.shape, self.denoiser = setting.shape, setting.denoiser
        self.numel = int(np.prod(setting.shape))
        self.uses_ratio = config.method == "fdistill" and _generator(config).name != "reverse_kl"
        # SIM with gan_weight > 0 adds the same GAN term (a deviation: SiD has none; SiDA adds one).
        self.use_discriminator = self.uses_ratio or config.gan_weight > 0
        self.on_features = config.discriminator.features == "teacher"
        hidden = tuple(config.discriminator.hidden)
        self.discriminator = (
            FeatureDiscriminator(hidden=hidden)
            if self.on_features
            else NoiseClassifier(hidden=hidden, sigma_data=config.sigma_data)
        )
        self.ema_decay = config.generator.ema_decay

    # -- the networks -----------------------------------------------------------------------------

    def teacher(self, params, x, sigma):
        if self.setting.exact_teacher is not None:
            return self.setting.exact_teacher(x, sigma)
        return self.denoiser.apply({"params": params["teacher"]}, x, sigma, train=False)

    def fake(self, params, x, sigma):
        return self.denoiser.apply({"params": params["fake_score"]}, x, sigma, train=False)

    def logits(self, params, x_t, sigma):
        """The discriminator's logits: on the teacher's features (official) or on ``x_t``."""
        if self.on_features:
            _, feats = self.denoiser.apply(
                {"params": params["teacher"]}, x_t, sigma, train=False, return_features=True
            )
            return self.discriminator.apply({"params": params["discriminator"]}, feats, train=False)
        return self.discriminator.apply(
            {"params": params["discriminator"]}, x_t, sigma, train=False
        )

    def generate(self, params, z, weights=None):
        """``G(z) = D_gen(init_sigma z, init_sigma)`` with ``weights`` (default: the raw ones)."""
        init_sigma = self.config.generator.init_sigma
        sigma = jnp.full((z.shape[0],), init_sigma, z.dtype)
        weights = params["generator"] if weights is None else weights
        return self.denoiser.apply({"params": weights}, init_sigma * z, sigma, train=False)

    def init(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        x, sig = jnp.zeros((1, *self.shape)), jnp.ones((1,))
        teacher_params = self.setting.teacher_params
        if self.config.generator.init_from_teacher:
            params = {"generator": teacher_params, "fake_score": teacher_params}
        else:
            params = {
                "generator": self.denoiser.init(k1, x, sig, train=False)["params"],
                "fake_score": self.denoiser.init(k2, x, sig, train=False)["params"],
            }
        if teacher_params is not None:
            params["teacher"] = teacher_params  # frozen: no optimiser
        model_state = {}
        if self.use_discriminator:
            inputs = (x, sig)
            if self.on_features:
                _, feats = self.denoiser.apply(
                    {"params": teacher_params}, x, sig, train=False, return_features=True
                )
                inputs = (feats,)
            params["discriminator"] = self.discriminator.init(k3, *inputs, train=False)["params"]
        s = self.config.stabilizers
        if self.uses_ratio and s.ratio_bins:
            model_state["ratio_stats"] = dl.init_ratio_stats(s.ratio_bins)
        if self.ema_decay:
            # FastGen initialises its EMAs from the student's (here: the teacher's) weights.
            model_state["generator_ema"] = params["generator"]
        return params, model_state

    # -- the critics: fake score (denoising on generated samples) and discriminator ---------------

    def fake_score_loss(self, denoised, x0, sigma):
        sq = jnp.sum(jnp.square(denoised - x0).reshape(x0.shape[0], -1), axis=-1) / self.numel
        if self.config.fake_score_weighting == "edm":
            sq = sq * diffusion.edm_loss_weight(sigma, sigma_data=self.config.sigma_data)
        return sq

    def critic_loss(self, params, model_state, batch, key):
        kz, ks, ke, kr, kre = jax.random.split(key, 5)
        n = batch["inputs"].shape[0]
        x0 = jax.lax.stop_gradient(self.generate(params, jax.random.normal(kz, (n, *self.shape))))
        sigma = sample_sigma(ks, n, self.config)
        x_t = diffusion.add_noise(x0, sigma, jax.random.normal(ke, x0.shape))
        dsm = jnp.mean(self.fake_score_loss(self.fake(params, x_t, sigma), x0, sigma))
        metrics_ = {"fake_score": dsm}
        loss = dsm
        if self.use_discriminator:
            sigma_r = sample_sigma(kr, n, self.config)  # reals at their own noise levels
            real_t = diffusion.add_noise(batch["inputs"], sigma_r, jax.random.normal(kre, x0.shape))
            disc = jnp.mean(
                dl.discriminator_loss(
                    self.logits(params, real_t, sigma_r), self.logits(params, x_t, sigma)
                )
            )
            loss = loss + disc
            metrics_["discriminator"] = disc
        return loss, ({}, metrics_)

    # -- the generator ----------------------------------------------------------------------------

    def ratio_weight(self, logit, sigma, model_state):
        """f-distill's ``h(r)`` from the discriminator's logit, and the new ratio statistics."""
        config, s = self.config, self.config.stabilizers
        bins = None
        if s.ratio_bins:
            bins = dl.noise_bin(
                sigma, sigma_min=config.noise.sigma_min, sigma_max=config.noise.sigma_max,
                num_bins=s.ratio_bins, spacing=s.bin_spacing,
            )  # fmt: skip
        return dl.fdistill_weight(
            logit, _generator(config),
            logit_clamp=s.logit_clamp, ratio_clip=tuple(s.ratio_clip) if s.ratio_clip else None,
            stats=model_state.get("ratio_stats"), bins=bins, momentum=s.ratio_momentum,
            normalize_batch=s.normalize_batch,
        )  # fmt: skip

    def gan_term(self, fixed, x_t, sigma, extra):
        """The discriminator's logits on ``x_t`` (differentiated through ``x_t`` into the generator)
        and the mean non-saturating GAN loss (logged as ``gan``); ``(None, 0)`` without one."""
        if not self.use_discriminator:
            return None, jnp.zeros(())
        logit = self.logits(fixed, x_t, sigma)
        extra["gan"] = gan = jnp.mean(dl.gan_generator_loss(logit))
        return logit, gan

    def fdistill_generator(self, params, model_state, x, sigma, eps):
        config = self.config
        fixed = jax.lax.stop_gradient(params)  # every network but the generator, held
        x_t = diffusion.add_noise(x, sigma, eps)  # the GAN term differentiates through x_t
        x_t_held = jax.lax.stop_gradient(x_t)
        x_hat_p = self.teacher(fixed, x_t_held, sigma)
        x_hat_q = self.fake(fixed, x_t_held, sigma)
        updates, extra, weight = {}, {}, None
        logit, gan = self.gan_term(fixed, x_t, sigma, extra)
        if self.uses_ratio:
            weight, new_stats = self.ratio_weight(logit, sigma, model_state)
            if new_stats is not None:
                updates["ratio_stats"] = new_stats
            extra.update(weight_max=jnp.max(weight), log_ratio=jnp.mean(logit))
        if config.generator_update.space == "score":  # the deviation: unit weight on scores
            weight = (1.0 if weight is None else weight) / jnp.square(sigma)
        # One evaluation gives the loss and, by its pullback, each sample's update d dm / d x.
        dm, pullback = jax.vjp(
            lambda xx: dl.fdistill_generator_loss(
                xx, x_hat_q, x_hat_p, weight, normalize=config.generator_update.normalize
            ),
            x,
        )
        (g,) = pullback(jnp.ones_like(dm))
        # FastGen reduces the surrogate with a mean over every element; the GAN weight is
        # relative to that.
        loss = jnp.mean(dm) / self.numel + config.gan_weight * gan
        return loss, g, updates, {"distribution_matching": jnp.mean(dm) / self.numel, **extra}

    def sim_generator(self, params, x, sigma, eps):
        config = self.config
        fixed = jax.lax.stop_gradient(params)

        def per_example(x0):
            return dl.sim_generator_loss(
                x0, eps, sigma, lambda x_t, sig: self.teacher(fixed, x_t, sig),
                lambda x_t, sig: self.fake(fixed, x_t, sig), distance=config.distance,
                c=config.huber_c, space=config.generator_update.space, normalize=config.generator_update.normalize,
                sid_alpha=config.sid_alpha,
            )  # fmt: skip

        value, pullback = jax.vjp(per_example, x)  # the networks run once for loss and update
        (g,) = pullback(jnp.ones_like(value))
        extra = {"sim": jnp.mean(value) / self.numel}
        _, gan = self.gan_term(fixed, diffusion.add_noise(x, sigma, eps), sigma, extra)
        return extra["sim"] + config.gan_weight * gan, g, {}, extra

    def generator_loss(self, params, model_state, batch, key):
        kz, ks, ke = jax.random.split(key, 3)
        n = batch["inputs"].shape[0]
        x = self.generate(params, jax.random.normal(kz, (n, *self.shape)))
        sigma = sample_sigma(ks, n, self.config)
        eps = jax.random.normal(ke, x.shape)
        if self.config.method == "sim":
            loss, g, updates, extra = self.sim_generator(params, x, sigma, eps)
        else:
            loss, g, updates, extra = self.fdistill_generator(params, model_state, x, sigma, eps)
        extra["grad_share_sigma_lt_1"] = grad_share(
            jax.lax.stop_gradient(g), sigma, GRAD_SHARE_SIGMA
        )
        if self.ema_decay:
            # The loss sees the weights before this update, so the EMA after update t averages
            # the weights of updates 0..t-1: a one-update lag, immaterial at decay >= 0.99.
            decay = self.ema_decay
            updates["generator_ema"] = jax.tree.map(
                lambda e, w: decay * e + (1.0 - decay) * jax.lax.stop_gradient(w),
                model_state["generator_ema"],
                params["generator"],
            )
        return loss, (updates, extra)

    # -- evaluation -------------------------------------------------------------------------------

    def predict(self, params, model_state, batch):
        # Evaluated: the EMA of the generator's weights where there is one (FastGen), else the raw.
        return {"samples": self.generate(params, batch["inputs"], model_state.get("generator_ema"))}

    def summarize(self, outputs):
        return self.setting.summarize(outputs["samples"])

    def report(self, outputs, workdir):
        self.setting.report(outputs["samples"], workdir)
        buffer = io.BytesIO()
        np.save(buffer, outputs["samples"])
        paths.write_bytes(os.path.join(workdir, "samples.npy"), buffer.getvalue())


def _unlabelled(name: str, split: str, x: np.ndarray) -> fdata.ArrayDataset:
    """Samples as a data set of one class (the trainer's batches carry labels)."""
    return fdata.ArrayDataset(name, split, x, np.zeros(len(x), np.int32), num_classes=1)


def build_task(config: ml_collections.ConfigDict, workdir: str = "") -> tuple[Task, Setting]:
    """The trainer task of ``config`` and its data setting (teacher, data, evaluation)."""
    setting = (
        mixture_setting(config, workdir)
        if config.dataset == "mog"
        else image_setting(config, workdir)
    )
    run = Distillation(config, setting)
    z_eval = jax.random.normal(jax.random.key(EVAL_SEED), (config.num_eval_samples, *setting.shape))
    critics = ("fake_score", "discriminator") if run.use_discriminator else ("fake_score",)
    counts = optimizer_updates(config)
    optimizers = {
        name: optim.from_config(config.critic_optimizer, counts[name], name="adamw")
        for name in critics
    }
    optimizers["generator"] = optim.from_config(
        config.generator_optimizer, counts["generator"], name="adamw"
    )
    task = Task(
        init=run.init,
        updates=[
            Update("critic", run.critic_loss, critics, repeats=config.critic_steps),
            Update("generator", run.generator_loss, ("generator",)),
        ],
        optimizers=optimizers,
        train_data=_unlabelled("real", "train", setting.real),
        eval_data=_unlabelled("noise", "eval", np.asarray(z_eval)),
        predict=run.predict,
        summarize=run.summarize,
        report=run.report,
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
