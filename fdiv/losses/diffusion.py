r"""One-step diffusion distillation losses: f-distill (DMD / VSD for reverse KL), SIM, and their critics.

Setting (METHODS.md §3): a teacher diffusion model with denoiser (x0-prediction)
``x_hat_p(x_t, sigma)`` of the noised data ``p_t``; a one-step generator ``x = G_theta(z)`` whose
noised marginal ``q_t`` is the law of ``x_t = x + sigma eps`` (VE / EDM noise); an auxiliary *fake
score* ``x_hat_q ~ E_q[x | x_t]`` trained by denoising on ``stop_gradient(G_theta(z))``; for
f-distill, a discriminator whose logit estimates ``log r_t = log p_t / q_t``
(:func:`discriminator_loss`), which also gives the GAN term (:func:`gan_generator_loss`).

**Everything is written on x0-predictions, as the official code is** (NVlabs FastGen
``common_loss.variational_score_distillation_loss``, DMD2 ``edm_guidance.py``, SiD
``sid_loss.py``). By Tweedie ``x_hat = x_t + sigma^2 s``, so a difference of x0-predictions is
``sigma^2`` times the difference of scores: the x0-space update weights noise level ``sigma`` by
``sigma^2`` relative to a score-space one. That is not a harmless rescaling. Summed over a
distribution of noise levels, the score-space form lets the smallest ``sigma`` dominate the
generator's gradient (99% of it from ``sigma < 1`` on the 2-D mixture), which pulls each sample to
its nearest mode and never moves mass between modes. :func:`fdiv.diffusion.denoised_from_score`
and :func:`fdiv.diffusion.score_from_denoiser` convert between the two.

Every loss returns per-example values ``[B]`` *summed* over the non-batch dimensions; reduction
(a mean over the batch, or FastGen's mean over every element) is the caller's. Shapes: ``x``,
``x0``, ``eps``, predictions ``[B, ...]``; ``sigma`` and per-example weights ``[B]`` (or scalars),
broadcast over the trailing dimensions. Low-precision (bf16/f16) inputs are computed in float32
and results are returned in float32 (float64 inputs stay float64).

Gradient conventions, verified in ``tests/test_diffusion_losses.py`` against quadrature and finite
differences on Gaussian teachers and generators:

- f-distill: ``grad_theta D_f(p_t || q_t) = E_{z, eps}[h(r_t(x_t)) (s_q(x_t) - s_p(x_t))^T
  dx_t/dtheta]`` with ``h(r) = r^2 f''(r)`` (METHODS.md). :func:`fdistill_generator_loss` without
  the normaliser and with the weight ``h / sigma^2`` has ``grad mean(loss) = + grad D_f`` at each
  noise level; the official update is ``sigma^2`` times that, divided by ``mean|x - x_hat_p|``
  (a positive per-sample scale): a different weighting of the noise levels, the same fixed point.
- SIM: the surrogate ``d'(y)^T (s_psi(x_t) + eps / sigma)`` has the gradient of
  ``E_{x_t ~ pi}[d(s_p - s_q_theta)]`` with the *sampling* distribution ``pi`` held at the current
  ``q_t``; ``sid_alpha=1/2`` adds ``d(y)`` for the full gradient with ``q_t`` moving too.
  In x0-space the distance acts on ``Y = sigma^2 y`` (see :func:`sim_generator_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import generators as gen

__all__ = [
    "RatioStats",
    "denoising_score_loss",
    "discriminator_loss",
    "dmd_normalizer",
    "fdistill_generator_loss",
    "fdistill_weight",
    "gan_generator_loss",
    "init_ratio_stats",
    "noise_bin",
    "sim_divergence",
    "sim_generator_loss",
]

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]

_DISTANCES = ("l2", "pseudo_huber")


# ------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------


def _compute(x: ArrayLike, dtype=None) -> jax.Array:
    """``x`` as an array in the compute dtype (float32 for low precision and integers)."""
    x = jnp.asarray(x)
    return x.astype(dtype if dtype is not None else nx.compute_dtype(x))


def _common_dtype(*arrays) -> jnp.dtype:
    return nx.compute_dtype(*[jnp.asarray(a) for a in arrays])


def _per_example(v: ArrayLike | None, like: jax.Array) -> jax.Array:
    """A scalar or ``[B]`` value reshaped to broadcast over ``like``'s trailing dimensions."""
    if v is None:
        return jnp.ones((), like.dtype)
    v = jnp.asarray(v).astype(like.dtype)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or (like.ndim >= 1 and v.shape[0] != like.shape[0]):
        raise ValueError(
            f"per-example values must be a scalar or shaped [B] = [{like.shape[0]}], got {v.shape}"
        )
    return v.reshape(v.shape + (1,) * (like.ndim - 1))


def _sum_trailing(x: jax.Array) -> jax.Array:
    """Sum over every dimension but the first (the batch); ``[B]`` stays ``[B]``."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def _mean_trailing(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


# ------------------------------------------------------------------------------------------------
# f-distill: density-ratio weight with the authors' stabilisers.
# ------------------------------------------------------------------------------------------------


class RatioStats(NamedTuple):
    """Running mean of the density ratio ``r`` per noise-level bin (part of the trainer's state).

    Attributes:
      mean: ``[num_bins]`` float32, the running mean of ``r`` (1 before a bin's first observation).
      count: ``[num_bins]`` float32, the number of ratios observed in each bin so far.
    """

    mean: jax.Array
    count: jax.Array


def init_ratio_stats(num_bins: int) -> RatioStats:
    """Fresh :class:`RatioStats`: ``mean = 1``, ``count = 0`` in each of ``num_bins`` bins."""
    num_bins = nx.positive_int("num_bins", num_bins)
    return RatioStats(
        mean=jnp.ones((num_bins,), jnp.float32), count=jnp.zeros((num_bins,), jnp.float32)
    )


def noise_bin(
    sigma: ArrayLike,
    *,
    sigma_min: float,
    sigma_max: float,
    num_bins: int,
    spacing: str = "linear",
) -> jax.Array:
    r"""Index of ``sigma``'s bin among ``num_bins`` equal bins of ``[sigma_min, sigma_max]``.

    ``spacing="linear"`` (FastGen f-distill's ``ratio_normalization``: equal widths in ``sigma``):
    ``bin = floor(num_bins (sigma - sigma_min) / (sigma_max - sigma_min))``; ``"log"``: the same
    on ``log sigma``. Clipped to ``[0, num_bins - 1]`` (values outside the range land in the end
    bins).

    Args:
      sigma: ``[B]`` noise levels, ``> 0``.
      sigma_min, sigma_max: ``0 < sigma_min < sigma_max``.
      num_bins: Python int ``>= 1``.
      spacing: ``"linear"`` or ``"log"``.
    Returns:
      ``[B]`` int32.
    """
    num_bins = nx.positive_int("num_bins", num_bins)
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(
            f"sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max, got "
            f"sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    if spacing not in ("linear", "log"):
        raise ValueError(f"spacing must be one of linear, log; got {spacing!r}")
    sigma = _compute(sigma)
    if spacing == "log":
        sigma, sigma_min, sigma_max = jnp.log(sigma), jnp.log(sigma_min), jnp.log(sigma_max)
    position = (sigma - sigma_min) / (sigma_max - sigma_min) * num_bins
    return jnp.clip(jnp.floor(position), 0, num_bins - 1).astype(jnp.int32)


def _update_stats(stats: RatioStats, r: jax.Array, bins: jax.Array, momentum: float) -> RatioStats:
    num_bins = stats.mean.shape[0]
    batch_count = jax.ops.segment_sum(jnp.ones_like(r), bins, num_segments=num_bins)
    batch_sum = jax.ops.segment_sum(r, bins, num_segments=num_bins)
    seen = batch_count > 0
    batch_mean = batch_sum / jnp.where(seen, batch_count, 1.0)
    old_mean = stats.mean.astype(r.dtype)
    ema = momentum * old_mean + (1.0 - momentum) * batch_mean
    first = stats.count == 0
    new_mean = jnp.where(seen, jnp.where(first, batch_mean, ema), old_mean)
    return RatioStats(
        mean=new_mean.astype(stats.mean.dtype),
        count=(stats.count + batch_count.astype(stats.count.dtype)),
    )


def fdistill_weight(
    log_ratio: ArrayLike,
    divergence: str | gen.Generator,
    *,
    logit_clamp: float | None = 10.0,
    ratio_clip: tuple[float, float] | None = (0.1, 20.0),
    stats: RatioStats | None = None,
    bins: ArrayLike | None = None,
    momentum: float = 0.0,
    normalize_batch: bool = True,
) -> tuple[jax.Array, RatioStats | None]:
    r"""The f-distill weight ``h(r) = r^2 f''(r)`` of each sample, with the authors' stabilisers.

    ``log_ratio`` is the discriminator's logit on the noisy generated sample, an estimate of
    ``log r_t(x_t) = log p_t(x_t) / q_t(x_t)``. In order (each step off with ``None`` / ``False``):

    These are FastGen's (``f_distill.py``, ``_get_f_div_weighting_h``), in its order; its
    ``1e-6`` added to the divisors of steps 3 and 5 is left out (the divisors are ``>= lo > 0``).

    1. clamp the logit to ``[-logit_clamp, logit_clamp]``;
    2. clip ``r = exp(logit)`` to ``ratio_clip = (lo, hi)`` (done on ``log r``, so nothing
       overflows);
    3. if ``stats`` is given: update the running mean of ``r`` in each noise-level bin present in
       the batch -- ``mean <- momentum mean + (1 - momentum) batch_mean``, or ``batch_mean`` at a
       bin's first observation -- and divide each ``r`` by its bin's *updated* mean;
    4. ``h = divergence.weight(log r)`` (the generator's density-ratio weight);
    5. if ``normalize_batch``: ``h / mean(h)`` over the batch (mean weight 1). A batch whose
       weights are all 0 (e.g. total variation, ``h = 0``) is returned unchanged.

    The result is a coefficient: everything is under ``stop_gradient``.

    Args:
      log_ratio: ``[B]`` discriminator logits.
      divergence: a name of ``fdiv.generators.names()`` or a ``Generator`` (``"reverse_kl"`` gives
        ``h = 1``: DMD / VSD; ``"kl"`` gives ``h = r``; ``"js"`` gives ``h = sigmoid(logit)/2``).
      logit_clamp: ``c > 0`` or ``None``.
      ratio_clip: ``(lo, hi)`` with ``0 < lo < hi``, or ``None``.
      stats: running means from :func:`init_ratio_stats`, or ``None`` (no per-bin division).
      bins: ``[B]`` integer bins in ``[0, num_bins)`` (see :func:`noise_bin`); required with
        ``stats``.
      momentum: EMA momentum in ``[0, 1)``; FastGen's default ``0.0`` divides by the current
        batch's per-bin mean (its ImageNet-64 config uses 0.5).
      normalize_batch: divide by the batch mean of ``h``.
    Returns:
      ``(h, new_stats)``: ``h`` ``[B]`` in float32 (float64 for float64 logits); ``new_stats`` is
      ``None`` when ``stats`` is.

    References:
      Xu, Nie, Vahdat (2025), One-step Diffusion Models with f-Divergence Distribution Matching
      (f-distill).
    """
    generator = gen.resolve(divergence)
    if logit_clamp is not None:
        logit_clamp = nx.check_hyperparameter("logit_clamp", logit_clamp, lambda c: c > 0, "> 0")
    if ratio_clip is not None:
        try:
            lo, hi = (nx.hyperparameter(v) for v in ratio_clip)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"ratio_clip must be a pair (lo, hi) or None, got {ratio_clip!r}"
            ) from err
        if nx.is_static(lo) and nx.is_static(hi) and not 0.0 < lo < hi:
            raise ValueError(f"ratio_clip must be (lo, hi) with 0 < lo < hi, got {ratio_clip!r}")
    nx.check_hyperparameter("momentum", momentum, lambda m: 0.0 <= m < 1.0, "in [0, 1)")
    if stats is not None and bins is None:
        raise ValueError("bins must be given with stats (one noise-level bin per example)")

    log_r = jax.lax.stop_gradient(_compute(log_ratio))
    if log_r.ndim != 1:
        raise ValueError(f"log_ratio must be shaped [B], got {log_r.shape}")
    if logit_clamp is not None:
        log_r = jnp.clip(log_r, -logit_clamp, logit_clamp)
    if ratio_clip is not None:
        log_r = jnp.clip(log_r, jnp.log(lo), jnp.log(hi))

    new_stats = None
    if stats is not None:
        bins = jnp.asarray(bins).astype(jnp.int32)
        if bins.shape != log_r.shape:
            raise ValueError(f"bins must be shaped like log_ratio {log_r.shape}, got {bins.shape}")
        stats = RatioStats(*(jax.lax.stop_gradient(jnp.asarray(s)) for s in stats))
        new_stats = _update_stats(stats, jnp.exp(log_r), bins, momentum)
        log_r = log_r - jnp.log(new_stats.mean.astype(log_r.dtype)[bins])

    h = generator.weight(log_r).astype(log_r.dtype)
    if normalize_batch:
        mean = jnp.mean(h)
        h = jnp.where(mean > 0, h / jnp.where(mean > 0, mean, 1.0), h)
    return jax.lax.stop_gradient(h), new_stats


# ------------------------------------------------------------------------------------------------
# f-distill / DMD generator loss.
# ------------------------------------------------------------------------------------------------


def dmd_normalizer(x: ArrayLike, x_hat_teacher: ArrayLike, *, eps: float = 1e-6) -> jax.Array:
    r"""The official per-sample scale ``1 / (mean_dims |x - x_hat_teacher| + eps)``, held constant.

    ``x`` is the *clean* generator sample and ``x_hat_teacher`` the teacher's x0-prediction at its
    noisy version (DMD2 ``compute_distribution_matching_loss``, FastGen
    ``variational_score_distillation_loss``, SiD ``generator_loss``). ``eps = 1e-6`` is FastGen's
    (SiD clips the mean at 1e-5 instead; DMD2 has none and zeroes non-finite results); it matters
    only where the teacher nearly reproduces the sample (the smallest noise levels).

    Args:
      x, x_hat_teacher: ``[B, ...]``.
      eps: ``> 0``.
    Returns:
      ``[B]``, under ``stop_gradient``.

    References:
      Yin et al. (2024), Improved Distribution Matching Distillation (DMD2).
    """
    nx.check_hyperparameter("eps", eps, lambda e: e > 0, "> 0")
    dtype = _common_dtype(x, x_hat_teacher)
    diff = _compute(x, dtype) - _compute(x_hat_teacher, dtype)
    return jax.lax.stop_gradient(1.0 / (_mean_trailing(jnp.abs(diff)) + eps))


def fdistill_generator_loss(
    x: ArrayLike,
    x_hat_fake: ArrayLike,
    x_hat_teacher: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    normalize: bool = True,
) -> jax.Array:
    r"""f-distill / DMD generator surrogate on x0-predictions, per example.

    With ``g = sg(weight * (x_hat_fake - x_hat_teacher) / mean|x - x_hat_teacher|)`` (the divisor
    is :func:`dmd_normalizer`, dropped with ``normalize=False``; per-example factors broadcast over
    the trailing dimensions), the loss is the official surrogate ``1/2 ||x - sg(x - g)||^2``
    summed over the non-batch dimensions, so ``d loss / d x = g``. It is computed in the
    equivalent form ``sum(g (x - sg(x))) + 1/2 ||g||^2``: same value and gradient, without the
    rounding of ``x - (x - g)`` when ``|g| << |x|``. FastGen reduces with a mean over every
    element (divide by the number of elements per sample to match it).

    ``x = G_theta(z)`` is the clean generator sample; ``x_hat_fake`` and ``x_hat_teacher`` are the
    fake score's and the teacher's x0-predictions at ``x_t = x + sigma eps``; ``weight = h(r_t)``
    from :func:`fdistill_weight` (``None``: ``h = 1``, reverse KL, i.e. DMD / VSD). Since
    ``x_hat_fake - x_hat_teacher = sigma^2 (s_q - s_p)``, the expected gradient is
    ``E[h (sigma^2 / mean|x - x_hat_p|) (s_q - s_p)^T dx/dtheta]``: the f-distill gradient of
    ``D_f(p_t || q_t)`` at every noise level, weighted by ``sigma^2 / mean|x - x_hat_p|``. The
    score-space update of the f-distill paper's equation is the deviation ``normalize=False`` with
    ``weight = h / sigma^2``.

    Args:
      x: ``[B, ...]`` generator output (the gradient flows here).
      x_hat_fake, x_hat_teacher: ``[B, ...]`` x0-predictions at the noisy sample, held constant.
      weight: ``[B]`` (or scalar) per-sample weight, held constant; ``None`` for 1.
      normalize: divide by ``mean|x - x_hat_teacher|`` per sample (the official update).
    Returns:
      ``[B]``.

    References:
      Yin et al. (2024), DMD and DMD2; Wang et al. (2023), ProlificDreamer (VSD); Luo et al.
      (2023), Diff-Instruct; Xu, Nie, Vahdat (2025), f-distill.
    """
    dtype = _common_dtype(x, x_hat_fake, x_hat_teacher)
    x = _compute(x, dtype)
    fake = _compute(x_hat_fake, dtype)
    teacher = _compute(x_hat_teacher, dtype)
    if not fake.shape == teacher.shape == x.shape:
        raise ValueError(
            f"x_hat_fake and x_hat_teacher must be shaped like x {x.shape}, got {fake.shape} "
            f"and {teacher.shape}"
        )
    g = (fake - teacher) * _per_example(weight, x)
    if normalize:
        g = g * _per_example(dmd_normalizer(x, teacher), x)
    g = jax.lax.stop_gradient(g)
    return _sum_trailing(g * (x - jax.lax.stop_gradient(x)) + 0.5 * jnp.square(g))


def gan_generator_loss(fake_logits: ArrayLike) -> jax.Array:
    r"""Non-saturating GAN loss of the generator, ``softplus(-D(x_t))`` per example.

    ``fake_logits`` are the discriminator's logits on noisy generated samples, computed *with*
    the gradient flowing through ``x_t`` (and a frozen feature network) into the generator; the
    discriminator's own parameters are held. FastGen adds it to the f-distill / DMD2 surrogate
    with weight ``1e-3`` (CIFAR-10; ``3e-3`` ImageNet-64, as DMD2).

    Args:
      fake_logits: ``[B]``.
    Returns:
      ``[B]``.
    """
    return jax.nn.softplus(-_compute(fake_logits))


# ------------------------------------------------------------------------------------------------
# Critics.
# ------------------------------------------------------------------------------------------------


def discriminator_loss(real_logits: ArrayLike, fake_logits: ArrayLike) -> jax.Array:
    r"""Logistic real-vs-generated loss ``softplus(-D(real)) + softplus(D(fake))``, per pair.

    Real samples are noisy teacher / data samples (``~ p_t``), fake ones noisy generator samples
    (``~ q_t``) at the same noise level. The pointwise minimiser of
    ``E_p[softplus(-D)] + E_q[softplus(D)]`` is ``D = log p_t / q_t``, so the trained logit is the
    ``log_ratio`` of :func:`fdistill_weight`.

    Args:
      real_logits, fake_logits: ``[B]``.
    Returns:
      ``[B]``.
    """
    dtype = _common_dtype(real_logits, fake_logits)
    return jax.nn.softplus(-_compute(real_logits, dtype)) + jax.nn.softplus(
        _compute(fake_logits, dtype)
    )


def denoising_score_loss(
    score: ArrayLike, x0: ArrayLike, eps: ArrayLike, sigma: ArrayLike
) -> jax.Array:
    r"""Denoising score matching for the fake score: ``sigma^2 ||score + eps / sigma||^2`` per example.

    ``score`` is the network's output at ``x_t = x0 + sigma eps``; the conditional score is
    ``grad log q(x_t | x0) = -eps / sigma``. The ``sigma^2`` weighting (Song & Ermon's
    ``lambda(sigma) = sigma^2``) makes every noise level's loss O(1) (it is ``||sigma score +
    eps||^2``, computed in that form) and equals the x0-prediction loss
    ``||x0_hat - x0||^2 / sigma^2`` of ``x0_hat = x_t + sigma^2 score``. Its minimiser over score
    functions is ``grad log q_t``. ``x0`` only fixes the shape (it is not otherwise needed); pass
    ``stop_gradient(G_theta(z))``.

    Args:
      score: ``[B, ...]``. x0, eps: ``[B, ...]``. sigma: ``[B]`` or scalar, ``> 0``.
    Returns:
      ``[B]``.
    """
    dtype = _common_dtype(score, x0, eps, sigma)
    score = _compute(score, dtype)
    eps = _compute(eps, dtype)
    if not score.shape == eps.shape == jnp.shape(x0):
        raise ValueError(
            f"score, x0 and eps must share a shape, got {score.shape}, {jnp.shape(x0)}, {eps.shape}"
        )
    s = _per_example(_compute(sigma, dtype), score)
    return _sum_trailing(jnp.square(s * score + eps))


# ------------------------------------------------------------------------------------------------
# SIM.
# ------------------------------------------------------------------------------------------------


def _check_distance(distance: str, c: float) -> None:
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(_DISTANCES)}; got {distance!r}")
    if distance == "pseudo_huber":
        nx.check_hyperparameter("c", c, lambda v: v > 0, "> 0 for the pseudo-Huber distance")


def _distance_and_derivative(y: jax.Array, distance: str, c: float):
    """``d(y)`` ``[B]`` and ``d'(y)`` ``[B, ...]`` of the per-example vectors ``y``."""
    sq = _sum_trailing(jnp.square(y))
    if distance == "l2":
        return sq, 2.0 * y
    root = jnp.sqrt(sq + c * c)
    return root - c, y / root.reshape(root.shape + (1,) * (y.ndim - 1))


def sim_divergence(
    teacher_score: ArrayLike,
    fake_score: ArrayLike,
    *,
    distance: str = "l2",
    c: float = 1.0,
    weight: ArrayLike | None = None,
) -> jax.Array:
    r"""``w d(s_p - s_q)`` per example: the integrand of SIM's score divergence.

    ``d = ||y||^2`` (``"l2"``) or ``sqrt(||y||^2 + c^2) - c`` (``"pseudo_huber"``), norms over the
    non-batch dimensions. Averaged over ``x_t ~ q_t`` this is the divergence SIM minimises; it is
    a monitor (and a test reference), not a trainable loss (``s_q`` is unknown).

    Args:
      teacher_score, fake_score: ``[B, ...]`` scores at the same ``x_t``.
      distance: ``"l2"`` or ``"pseudo_huber"``. c: ``> 0``. weight: ``[B]``, scalar or ``None``.
    Returns:
      ``[B]``.
    """
    _check_distance(distance, c)
    dtype = _common_dtype(teacher_score, fake_score)
    y = _compute(teacher_score, dtype) - _compute(fake_score, dtype)
    value, _ = _distance_and_derivative(y, distance, c)
    return value * (1.0 if weight is None else _compute(weight, dtype))


def sim_generator_loss(
    x0: ArrayLike,
    eps: ArrayLike,
    sigma: ArrayLike,
    teacher_denoiser: DenoiseFn,
    fake_denoiser: DenoiseFn,
    *,
    distance: str = "l2",
    c: float = 1.0,
    space: str = "x0",
    normalize: bool = True,
    weight: ArrayLike | None = None,
    sid_alpha: float = 1.0,
) -> jax.Array:
    r"""Score implicit matching (SIM) generator loss, per example, with SiD's weighting by default.

    With ``x_t = x0 + sigma eps`` (``x0 = G_theta(z)``, *not* detached), the x0-predictions
    ``x_hat_p = teacher_denoiser(x_t, sigma)``, ``x_hat_q = fake_denoiser(x_t, sigma)``,
    ``Y = x_hat_p - x_hat_q = sigma^2 (s_p - s_psi)`` and ``x_hat_q - x0 = sigma^2 (s_psi +
    eps / sigma)`` (Tweedie; ``-eps / sigma = grad log q_t(x_t | x0)``):

        ``space="x0"`` (default):   ``L = w [d'(Y)^T (x_hat_q - x0) + 2 (1 - alpha) d(Y)]``
        ``space="score"``:          ``L = w [d'(y)^T (s_psi + eps / sigma) + 2 (1 - alpha) d(y)]``,
                                    ``y = Y / sigma^2``, ``alpha = sid_alpha``

    with ``w = 1 / mean|x0 - x_hat_p|`` per sample (:func:`dmd_normalizer`; off with
    ``normalize=False``) times ``weight``. ``d = ||.||^2``, ``d' = 2 .`` (``"l2"``) or the
    pseudo-Huber ``d = sqrt(||.||^2 + c^2) - c``, ``d' = . / sqrt(||.||^2 + c^2)``.

    **Why the x0 form is SIM.** At one noise level, SIM with the distance
    ``d_sigma(y) = d(sigma^2 y)`` has ``d_sigma'(y) = sigma^2 d'(sigma^2 y) = sigma^2 d'(Y)``, so
    its surrogate ``d_sigma'(y)^T (s_psi + eps / sigma) = d'(Y)^T (x_hat_q - x0)``: the x0 form.
    For ``"l2"``, ``d_sigma(y) = sigma^4 ||y||^2``: the score-space L2 weighted by ``sigma^4``,
    which is SiD's loss: SiD (``sid_loss.py``) minimises
    ``Y^T ((x_hat_p - x0) - alpha Y) / mean|x0 - x_hat_p| = [Y^T (x_hat_q - x0) + (1 - alpha)
    ||Y||^2] / mean|x0 - x_hat_p|``, half of ``L`` for every ``alpha``. SIM is ``alpha = 1`` (the
    default); SiD's official ``alpha = 1.2`` (its default; 1.0 for AFHQ) subtracts
    ``0.4 d(Y)`` differentiated through ``x_t``. For ``"pseudo_huber"`` the same
    ``2 (1 - alpha) d`` is added (pseudo-Huber is ``||Y||^2 / (2c)`` for small ``Y``, where the
    two losses agree up to the factor ``1 / (2c)``). For ``"pseudo_huber"``,
    ``d_sigma(y) = sigma^2 (sqrt(||y||^2 + (c / sigma^2)^2) - c / sigma^2)``: SIM's pseudo-Huber
    with constant ``c / sigma^2``, weighted by ``sigma^2``; ``c`` is in the data's units. Both
    are per-noise-level SIM divergences (``d_sigma(0) = 0``, minimised only at ``y = 0``), so the
    fixed point ``q_t = p_t`` is unchanged; the weighting of noise levels is SiD's, which the
    SIM paper builds on. The normaliser ``w`` is a positive per-sample scale held constant, as in
    SiD.

    ``teacher_denoiser(x_t, sigma)`` and ``fake_denoiser(x_t, sigma)`` are closures whose network
    *parameters* the caller holds under ``stop_gradient``; the gradient flows through ``x_t`` into
    both networks, through ``x0`` and through ``d'`` (detaching ``d'`` gives a wrong gradient).
    With ``x_hat_q`` exact at the current theta:

    - ``sid_alpha=1`` (the SIM paper): ``grad_theta E[L]`` is the gradient of
      ``E_{x_t ~ pi}[w d(...)]`` with the sampling distribution ``pi`` held at the current ``q_t``.
    - ``sid_alpha=1/2``: adds ``w d(...)`` differentiated through ``x_t`` with the networks
      held: the full gradient of ``E_{x_t ~ q_t}[w d(...)]`` with ``q_t`` moving too. Other
      values interpolate or extrapolate between the two (SiD's 1.2: the sampling term's
      gradient subtracted, 0.4 times).

    Args:
      x0: ``[B, ...]`` generator samples. eps: ``[B, ...]`` standard normal noise. sigma: ``[B]`` or
        scalar ``> 0``.
      teacher_denoiser, fake_denoiser: ``(x_t [B, ...], sigma [B]) -> x0-prediction [B, ...]``.
      distance: ``"l2"`` or ``"pseudo_huber"``. c: pseudo-Huber constant ``> 0``.
      space: ``"x0"`` (SiD's weighting, the default) or ``"score"`` (unit weight on scores).
      normalize: multiply by ``1 / mean|x0 - x_hat_p|`` (held constant).
      weight: ``[B]`` or scalar extra weight, held constant; ``None`` for 1.
      sid_alpha: SiD's ``alpha`` (see above); 1 (SIM) adds no term. May be traced.
    Returns:
      ``[B]``.

    References:
      Luo, Huang, Geng, Kolter, Qi (2024), One-Step Diffusion Distillation through Score Implicit
      Matching; Zhou et al. (2024), Score identity Distillation (SiD).
    """
    _check_distance(distance, c)
    if space not in ("x0", "score"):
        raise ValueError(f"space must be one of x0, score; got {space!r}")
    dtype = _common_dtype(x0, eps, sigma)
    x0 = _compute(x0, dtype)
    eps = _compute(eps, dtype)
    if eps.shape != x0.shape:
        raise ValueError(f"eps must be shaped like x0 {x0.shape}, got {eps.shape}")
    sigma = _compute(sigma, dtype)
    s = _per_example(sigma, x0)
    x_t = x0 + s * eps
    x_hat_p = _compute(teacher_denoiser(x_t, sigma), dtype)
    x_hat_q = _compute(fake_denoiser(x_t, sigma), dtype)
    y, inner = x_hat_p - x_hat_q, x_hat_q - x0
    if space == "score":
        y, inner = y / jnp.square(s), inner / jnp.square(s)
    value, d_prime = _distance_and_derivative(y, distance, c)
    loss = _sum_trailing(d_prime * inner)
    # alpha = 1 (a Python number) skips the term, so SIM's default computes exactly what it did.
    if not (isinstance(sid_alpha, (int, float)) and sid_alpha == 1):
        loss = loss + 2.0 * (1.0 - _compute(sid_alpha, dtype)) * value
    if normalize:
        loss = loss * dmd_normalizer(x0, x_hat_p)
    if weight is not None:
        loss = loss * jax.lax.stop_gradient(_compute(weight, dtype))
    return loss
