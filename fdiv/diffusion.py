"""EDM diffusion utilities (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): training noise distribution, loss weighting, sampling schedule, samplers.

Noise convention: VE / EDM, ``x_t = x0 + sigma * eps`` with ``eps ~ N(0, I)``. A *denoiser*
``D(x, sigma) ~ E[x0 | x_t = x]`` determines the score ``(D - x) / sigma^2`` and the probability
flow ODE ``dx / dsigma = (x - D(x, sigma)) / sigma``, which the samplers here integrate from
``sigma_max`` down to 0.

Pure ``jax.numpy`` functions; a flax model enters only through the ``denoise_fn`` callable, e.g.
``lambda x, s: module.apply(variables, x, s, train=False)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "add_noise",
    "denoised_from_score",
    "edm_denoising_loss",
    "edm_loss_weight",
    "edm_sigma_sample",
    "euler_sample",
    "heun_sample",
    "karras_sigma_sample",
    "karras_sigmas",
    "per_sample",
    "score_from_denoiser",
]

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def per_sample(sigma, x: jax.Array) -> jax.Array:
    """``sigma`` (scalar or ``[B]``) shaped to broadcast against ``x [B, ...]``.

    A scalar stays a 0-d array; a ``[B]`` array becomes ``[B, 1, ..., 1]``. Dtype: ``x``'s.
    """
    sigma = jnp.asarray(sigma, x.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim != 1 or sigma.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"sigma must be a scalar or [B] with B = {x.shape[0]}, got {sigma.shape}")
    return sigma.reshape((-1,) + (1,) * (x.ndim - 1))


def add_noise(x0: jax.Array, sigma, eps: jax.Array) -> jax.Array:
    """``x_t = x0 + sigma * eps``, ``sigma`` a scalar or ``[B]`` (one level per sample of ``x0``
    ``[B, ...]``); ``eps`` shaped like ``x0``, usually ``N(0, I)``."""
    return x0 + per_sample(sigma, x0) * eps


def score_from_denoiser(denoised, x, sigma) -> jax.Array:
    """Score ``(denoised - x) / sigma^2`` of a denoiser output at ``x`` (Tweedie's formula).

    ``sigma`` is a scalar or ``[B]``. Inverse of :func:`denoised_from_score`.
    """
    x = jnp.asarray(x)
    return (jnp.asarray(denoised, x.dtype) - x) / jnp.square(per_sample(sigma, x))


def denoised_from_score(score, x, sigma) -> jax.Array:
    """The x0-prediction ``x + sigma^2 score`` of a score at ``x`` (Tweedie's formula).

    The official distillation updates (DMD2, FastGen f-distill, SiD) are written on x0-predictions;
    a difference of x0-predictions is ``sigma^2`` times the difference of scores, so which of the
    two a generator update uses decides how it weights the noise levels.
    """
    x = jnp.asarray(x)
    return x + jnp.square(per_sample(sigma, x)) * jnp.asarray(score, x.dtype)


def karras_sigma_sample(
    key: jax.Array,
    n: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    num_steps: int = 1000,
    index_range: tuple[float, float] = (0.002, 0.998),
) -> jax.Array:
    """``[n]`` noise levels drawn uniformly from the indices of a Karras schedule.

    The schedule has ``num_steps`` levels ``sigma_i = (a + i / (N - 1) (b - a))^rho``, ascending,
    with ``a = sigma_min^(1/rho)``, ``b = sigma_max^(1/rho)``; the index ``i`` is uniform on the
    integers ``[int(lo N), int(hi N)]`` for ``index_range = (lo, hi)``. The defaults are NVlabs
    FastGen's ``"polynomial"`` time distribution for EDM (indices 2..998 of 1000 levels in
    ``[0.002, 80]``, so ``sigma`` in about ``[0.0021, 79.6]``, median about 2.5); DMD2's generator
    update uses ``index_range=(0.02, 0.98)``. For data of another scale multiply ``sigma_min`` and
    ``sigma_max`` by ``sigma_data / 0.5``.
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    lo_frac, hi_frac = index_range
    if not 0.0 <= lo_frac <= hi_frac <= 1.0:
        raise ValueError(f"index_range must satisfy 0 <= lo <= hi <= 1, got {index_range!r}")
    lo = int(lo_frac * num_steps)
    hi = min(int(hi_frac * num_steps), num_steps - 1)
    index = jax.random.randint(key, (n,), lo, hi + 1)
    ramp = index.astype(jnp.float32) / (num_steps - 1)
    a, b = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (a + ramp * (b - a)) ** rho


def edm_sigma_sample(key: jax.Array, n: int, *, p_mean: float = -1.2, p_std: float = 1.2):
    """``[n]`` training noise levels, log-normal: ``log sigma ~ N(p_mean, p_std^2)`` (EDM Table 1)."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (n,)))


def edm_loss_weight(sigma, *, sigma_data: float = 0.5) -> jax.Array:
    """EDM loss weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``.

    It equals ``1 / c_out(sigma)^2``, so that the weighted denoiser loss is the unit-weight loss
    of the preconditioned network output ``F``.
    """
    sigma = jnp.asarray(sigma)
    sd2 = sigma_data**2
    return (jnp.square(sigma) + sd2) / (jnp.square(sigma) * sd2)


def edm_denoising_loss(denoised, x0, sigma, *, sigma_data: float = 0.5) -> jax.Array:
    """``[B]`` per-example EDM loss ``lambda(sigma) * ||denoised - x0||^2``.

    The squared error is summed over all non-batch dims (take the mean over the batch yourself).
    ``denoised = D(x0 + sigma * eps, sigma)``; ``sigma`` is a scalar or ``[B]``.
    """
    denoised = jnp.asarray(denoised)
    sq = jnp.square(denoised - jnp.asarray(x0, denoised.dtype))
    sq = jnp.sum(sq.reshape(sq.shape[0], -1), axis=-1)
    return edm_loss_weight(jnp.asarray(sigma, denoised.dtype), sigma_data=sigma_data) * sq


def karras_sigmas(
    num_steps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> jax.Array:
    """``[num_steps + 1]`` EDM sampling schedule, decreasing from ``sigma_max`` to ``sigma_min``,
    with a final 0 appended.

    ``sigma_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0 .. N - 1`` (``N = num_steps``; with ``N = 1`` the only level is ``sigma_max``).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = jnp.linspace(0.0, 1.0, num_steps) if num_steps > 1 else jnp.zeros(1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return jnp.concatenate([sigmas, jnp.zeros(1)])


def _ode_step(denoise_fn: DenoiseFn, x, sigma, sigma_next, *, heun: bool):
    """One step of the probability-flow ODE from ``sigma`` to ``sigma_next`` (both scalars)."""
    d = (x - denoise_fn(x, sigma)) / sigma
    x_euler = x + (sigma_next - sigma) * d
    if not heun:
        return x_euler

    def correct(_):
        d_next = (x_euler - denoise_fn(x_euler, sigma_next)) / sigma_next
        return x + (sigma_next - sigma) * 0.5 * (d + d_next)

    # Second-order correction except on a step that ends at sigma = 0 (EDM Algorithm 1).
    return jax.lax.cond(sigma_next > 0, correct, lambda _: x_euler, None)


def _integrate(denoise_fn: DenoiseFn, x_T, sigmas, *, heun: bool) -> jax.Array:
    # Noise levels in at least float32 (a bfloat16 schedule is coarse); the state keeps x_T's dtype.
    sigmas = jnp.asarray(sigmas, jnp.promote_types(x_T.dtype, jnp.float32))
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {sigmas.shape}")

    def body(i, x):
        return _ode_step(denoise_fn, x, sigmas[i], sigmas[i + 1], heun=heun).astype(x_T.dtype)

    return jax.lax.fori_loop(0, sigmas.shape[0] - 1, body, x_T)


def heun_sample(denoise_fn: DenoiseFn, x_T: jax.Array, sigmas) -> jax.Array:
    """Deterministic EDM sampler (Karras et al. Algorithm 1): Heun's method on the probability
    flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` over ``sigmas`` (decreasing, e.g.
    :func:`karras_sigmas`), with a plain Euler step on a step ending at ``sigma = 0``.

    Args:
        denoise_fn: ``denoise_fn(x, sigma) -> denoised`` with ``x`` shaped like ``x_T`` and
            ``sigma`` a 0-d array (the same level for the whole batch; use :func:`per_sample` or
            broadcast inside if the network wants ``[B]``).
        x_T: starting point, usually ``sigmas[0] * N(0, I)``.
        sigmas: ``[N + 1]`` noise levels, ``sigmas[0] > ... > sigmas[N] >= 0``.

    Returns:
        ``x_0``, same shape and dtype as ``x_T`` (noise levels and step arithmetic in at least
        float32). ``2N - 1`` denoiser calls when ``sigmas[-1] = 0``.
        Jittable (``lax.fori_loop``); ``sigmas`` may be traced.
    """
    return _integrate(denoise_fn, x_T, sigmas, heun=True)


def euler_sample(denoise_fn: DenoiseFn, x_T: jax.Array, sigmas) -> jax.Array:
    """First-order (Euler) version of :func:`heun_sample`: ``N`` denoiser calls, same arguments."""
    return _integrate(denoise_fn, x_T, sigmas, heun=False)
