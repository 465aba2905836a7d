r"""One-step diffusion distillation losses: f-distill (DMD / VSD for reverse KL), SIM, and their critics.

Setting (METHODS.md §3): a teacher diffusion model with score ``s_p(x_t, sigma)`` of the noised
data ``p_t``; a one-step generator ``x = G_theta(z)`` whose noised marginal ``q_t`` is the law of
``x_t = x + sigma eps`` (VE / EDM noise); an auxiliary *fake score* ``s_psi ~ grad log q_t`` trained
by denoising score matching (:func:`denoising_score_loss`) on ``stop_gradient(G_theta(z))``; for
f-distill, a discriminator whose logit estimates ``log r_t = log p_t / q_t``
(:func:`discriminator_loss`).

Every loss returns per-example values ``[B]``; reduction (a mean over the batch) is the caller's.
Shapes: ``x``, ``x0``, ``eps``, scores ``[B, ...]``; ``sigma`` and per-example weights ``[B]`` (or
scalars), broadcast over the trailing dimensions. Low-precision (bf16/f16) inputs are computed in
float32 and results are returned in float32 (float64 inputs stay float64).

Gradient conventions, verified in ``tests/test_diffusion_losses.py`` against quadrature and finite
differences on Gaussian teachers and generators:

- f-distill: ``grad_theta D_f(p_t || q_t) = E_{z, eps}[h(r_t(x_t)) (s_q(x_t) - s_p(x_t))^T
  dx_t/dtheta]`` with ``h(r) = r^2 f''(r)`` -- exactly as METHODS.md states (sign included), so
  :func:`fdistill_generator_loss` with ``score_difference = s_fake - s_teacher`` and
  ``weight = h`` has ``grad mean(loss) = + grad D_f``: gradient *descent* minimises ``D_f``.
- SIM: the surrogate of METHODS.md / the SIM paper,
  ``w d'(y)^T (s_psi(x_t) + eps / sigma)``, has the gradient of ``E_{x_t ~ pi}[d(s_p - s_q_theta)]``
  with the *sampling* distribution ``pi`` held at the current ``q_t`` (only the score
  ``s_q_theta`` inside ``d`` moves with theta). The gradient of ``E_{x_t ~ q_t}[d(...)]`` with
  ``q_t`` moving too has the extra term ``grad_theta E[w d(y(x_t))]`` through ``x_t`` (networks
  held); ``sim_generator_loss(..., sampling_term=True)`` adds it.
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
    "init_ratio_stats",
    "noise_bin",
    "sim_divergence",
    "sim_generator_loss",
]

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

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


def noise_bin(sigma: ArrayLike, *, sigma_min: float, sigma_max: float, num_bins: int) -> jax.Array:
    r"""Index of ``sigma``'s bin among ``num_bins`` log-uniform bins of ``[sigma_min, sigma_max]``.

    ``bin = floor(num_bins (log sigma - log sigma_min) / (log sigma_max - log sigma_min))``,
    clipped to ``[0, num_bins - 1]`` (values outside the range land in the end bins).

    Args:
      sigma: ``[B]`` noise levels, ``> 0``.
      sigma_min, sigma_max: ``0 < sigma_min < sigma_max``.
      num_bins: Python int ``>= 1``.
    Returns:
      ``[B]`` int32.
    """
    num_bins = nx.positive_int("num_bins", num_bins)
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(
            f"sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max, got "
            f"sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    log_sigma = jnp.log(_compute(sigma))
    lo, hi = jnp.log(sigma_min), jnp.log(sigma_max)
    position = (log_sigma - lo) / (hi - lo) * num_bins
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
    generator: str | gen.Generator,
    *,
    logit_clamp: float | None = 10.0,
    ratio_clip: tuple[float, float] | None = (0.1, 20.0),
    stats: RatioStats | None = None,
    bins: ArrayLike | None = None,
    momentum: float = 0.99,
    normalize_batch: bool = True,
) -> tuple[jax.Array, RatioStats | None]:
    r"""The f-distill weight ``h(r) = r^2 f''(r)`` of each sample, with the authors' stabilisers.

    ``log_ratio`` is the discriminator's logit on the noisy generated sample, an estimate of
    ``log r_t(x_t) = log p_t(x_t) / q_t(x_t)``. In order (each step off with ``None`` / ``False``):

    1. clamp the logit to ``[-logit_clamp, logit_clamp]``;
    2. clip ``r = exp(logit)`` to ``ratio_clip = (lo, hi)`` (done on ``log r``, so nothing
       overflows);
    3. if ``stats`` is given: update the running mean of ``r`` in each noise-level bin present in
       the batch -- ``mean <- momentum mean + (1 - momentum) batch_mean``, or ``batch_mean`` at a
       bin's first observation -- and divide each ``r`` by its bin's *updated* mean;
    4. ``h = generator.weight(log r)``;
    5. if ``normalize_batch``: ``h / mean(h)`` over the batch (mean weight 1). A batch whose
       weights are all 0 (e.g. total variation, ``h = 0``) is returned unchanged.

    The result is a coefficient: everything is under ``stop_gradient``.

    Args:
      log_ratio: ``[B]`` discriminator logits.
      generator: a name of ``fdiv.generators.names()`` or a ``Generator`` (``"reverse_kl"`` gives
        ``h = 1``: DMD / VSD; ``"kl"`` gives ``h = r``; ``"js"`` gives ``h = sigmoid(logit)/2``).
      logit_clamp: ``c > 0`` or ``None``.
      ratio_clip: ``(lo, hi)`` with ``0 < lo < hi``, or ``None``.
      stats: running means from :func:`init_ratio_stats`, or ``None`` (no per-bin division).
      bins: ``[B]`` integer bins in ``[0, num_bins)`` (see :func:`noise_bin`); required with
        ``stats``.
      momentum: EMA momentum in ``[0, 1)``.
      normalize_batch: divide by the batch mean of ``h``.
    Returns:
      ``(h, new_stats)``: ``h`` ``[B]`` in float32 (float64 for float64 logits); ``new_stats`` is
      ``None`` when ``stats`` is.

    References:
      Xu, Nie, Vahdat (2025), One-step Diffusion Models with f-Divergence Distribution Matching
      (f-distill).
    """
    generator = gen.resolve(generator)
    if logit_clamp is not None and not logit_clamp > 0:
        raise ValueError(f"logit_clamp must be > 0 or None, got {logit_clamp}")
    if ratio_clip is not None:
        try:
            lo, hi = (float(v) for v in ratio_clip)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"ratio_clip must be a pair (lo, hi) or None, got {ratio_clip!r}"
            ) from err
        if not 0.0 < lo < hi:
            raise ValueError(f"ratio_clip must be (lo, hi) with 0 < lo < hi, got {ratio_clip!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
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


def dmd_normalizer(x: ArrayLike, x_hat_teacher: ArrayLike, *, floor: float = 1e-12) -> jax.Array:
    r"""DMD's per-sample gradient scale ``1 / mean_dims |x - x_hat_teacher|``, held constant.

    ``x_hat_teacher`` is the teacher's denoised prediction of the noisy generated sample. The mean
    absolute difference is floored at ``floor`` (default ``1e-12``) before dividing, only so that
    a sample the teacher reproduces exactly gives a large finite scale rather than ``inf``; it
    changes nothing above the floor.

    Args:
      x, x_hat_teacher: ``[B, ...]``.
      floor: ``> 0``.
    Returns:
      ``[B]``, under ``stop_gradient``.

    References:
      Yin et al. (2024), One-step Diffusion with Distribution Matching Distillation.
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    dtype = _common_dtype(x, x_hat_teacher)
    diff = _compute(x, dtype) - _compute(x_hat_teacher, dtype)
    scale = _mean_trailing(jnp.abs(diff))
    return jax.lax.stop_gradient(1.0 / jnp.maximum(scale, floor))


def fdistill_generator_loss(
    x: ArrayLike,
    score_difference: ArrayLike,
    weight: ArrayLike | None = None,
    *,
    dmd_normalizer: ArrayLike | None = None,
) -> jax.Array:
    r"""Surrogate generator loss whose gradient w.r.t. ``x`` is ``weight * score_difference``.

    With ``g = sg(weight * dmd_normalizer * score_difference)`` (per-example factors broadcast over
    the trailing dimensions), the loss is the DMD surrogate ``1/2 ||x - sg(x - g)||^2`` summed over
    the non-batch dimensions. It is computed in the equivalent form
    ``sum(g (x - sg(x))) + 1/2 ||g||^2``: same value ``||g||^2 / 2``, same gradient ``g``, but
    exactly, without the rounding of ``x - (x - g)`` when ``|g| << |x|``.

    With ``x = G_theta(z)``, ``x_t = x + sigma eps``, ``score_difference = s_fake(x_t) -
    s_teacher(x_t)`` (``s_fake ~ grad log q_t``) and ``weight = h(r_t(x_t))``
    (:func:`fdistill_weight`), ``dx_t/dtheta = dx/dtheta`` gives

        ``grad_theta E[loss] = E[h(r_t) (s_q - s_p)^T dx_t/dtheta] = grad_theta D_f(p_t || q_t)``,

    the sign verified by quadrature in the tests: minimising the loss minimises ``D_f``.
    ``weight=None`` means ``h = 1``, the reverse KL: DMD / VSD / Diff-Instruct. A score difference
    written in x0-space (``x_hat_fake - x_hat_teacher = sigma^2 (s_fake - s_teacher)``, as DMD
    does) only rescales each sample.

    Args:
      x: ``[B, ...]`` generator output (the gradient flows here).
      score_difference: ``[B, ...]`` ``s_fake(x_t) - s_teacher(x_t)``, held constant.
      weight: ``[B]`` (or scalar) ``h``, held constant; ``None`` for 1.
      dmd_normalizer: ``[B]`` (or scalar) extra per-sample scale, held constant (see
        :func:`dmd_normalizer`); ``None`` for 1.
    Returns:
      ``[B]``.

    References:
      Yin et al. (2024), DMD; Wang et al. (2023), ProlificDreamer (VSD); Luo et al. (2023),
      Diff-Instruct; Xu, Nie, Vahdat (2025), f-distill.
    """
    dtype = _common_dtype(x, score_difference)
    x = _compute(x, dtype)
    diff = _compute(score_difference, dtype)
    if diff.shape != x.shape:
        raise ValueError(f"score_difference must be shaped like x {x.shape}, got {diff.shape}")
    g = diff * _per_example(weight, x) * _per_example(dmd_normalizer, x)
    g = jax.lax.stop_gradient(g)
    return _sum_trailing(g * (x - jax.lax.stop_gradient(x)) + 0.5 * jnp.square(g))


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
    if distance == "pseudo_huber" and not c > 0:
        raise ValueError(f"c must be > 0 for the pseudo-Huber distance, got {c}")


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
    teacher_score_fn: ScoreFn,
    fake_score_fn: ScoreFn,
    *,
    distance: str = "l2",
    c: float = 1.0,
    weight: ArrayLike | None = None,
    sampling_term: bool = False,
) -> jax.Array:
    r"""Score implicit matching (SIM) generator loss, per example.

    With ``x_t = x0 + sigma eps`` (``x0 = G_theta(z)``, *not* detached), ``y = s_p(x_t) -
    s_psi(x_t)`` and ``grad log q_t(x_t | x0) = -eps / sigma``:

        ``L = w d'(y)^T (s_psi(x_t) + eps / sigma)``     (+ ``w d(y)`` with ``sampling_term``)

    ``d = ||y||^2``, ``d' = 2y`` (``"l2"``; SiD with ``alpha = 1`` up to the factor and weighting)
    or the pseudo-Huber ``d = sqrt(||y||^2 + c^2) - c``, ``d' = y / sqrt(||y||^2 + c^2)``.

    ``teacher_score_fn(x_t, sigma)`` and ``fake_score_fn(x_t, sigma)`` are closures whose network
    *parameters* the caller holds under ``stop_gradient``; the gradient flows through ``x_t`` into
    both networks and through ``d'(y)`` (detaching ``d'`` gives a wrong gradient).

    What the gradient is (verified against finite differences in the tests), with
    ``s_psi = grad log q_t`` at the current theta:

    - ``sampling_term=False`` (the SIM paper and METHODS.md): ``grad_theta E[L]`` is the gradient of
      ``E_{x_t ~ pi}[w d(s_p(x_t) - s_{q_theta}(x_t))]`` with the sampling distribution ``pi``
      held at the current ``q_t``: only the generator's score inside ``d`` moves.
    - ``sampling_term=True``: adds ``w d(y)``, differentiated through ``x_t`` with the networks
      held; ``grad_theta E[L]`` is then the full gradient of ``E_{x_t ~ q_t}[w d(s_p - s_q)]``
      with ``q_t`` moving too. (For ``"l2"`` this is SiD's ``alpha = 1/2``.)

    Args:
      x0: ``[B, ...]`` generator samples. eps: ``[B, ...]`` standard normal noise. sigma: ``[B]`` or
        scalar ``> 0``.
      teacher_score_fn, fake_score_fn: ``(x_t [B, ...], sigma [B]) -> [B, ...]``.
      distance: ``"l2"`` or ``"pseudo_huber"``. c: pseudo-Huber constant ``> 0``.
      weight: ``[B]`` or scalar ``w(t)``, held constant; ``None`` for 1.
      sampling_term: add ``w d(y)`` (see above).
    Returns:
      ``[B]``.

    References:
      Luo, Huang, Geng, Kolter, Qi (2024), One-Step Diffusion Distillation through Score Implicit
      Matching; Zhou et al. (2024), Score identity Distillation (SiD).
    """
    _check_distance(distance, c)
    dtype = _common_dtype(x0, eps, sigma)
    x0 = _compute(x0, dtype)
    eps = _compute(eps, dtype)
    if eps.shape != x0.shape:
        raise ValueError(f"eps must be shaped like x0 {x0.shape}, got {eps.shape}")
    sigma = _compute(sigma, dtype)
    s = _per_example(sigma, x0)
    x_t = x0 + s * eps
    s_teacher = _compute(teacher_score_fn(x_t, sigma), dtype)
    s_fake = _compute(fake_score_fn(x_t, sigma), dtype)
    y = s_teacher - s_fake
    value, d_prime = _distance_and_derivative(y, distance, c)
    loss = _sum_trailing(d_prime * (s_fake + eps / s))
    if sampling_term:
        loss = loss + value
    if weight is not None:
        loss = loss * jax.lax.stop_gradient(_compute(weight, dtype))
    return loss
