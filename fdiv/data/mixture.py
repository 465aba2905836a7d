"""Isotropic Gaussian mixtures with exact noised densities, scores and denoisers.

The mixture ``p = sum_k w_k N(mu_k, s_k^2 I)`` convolved with Gaussian noise ``N(0, sigma^2 I)``
(the VE / EDM convention ``x_t = x + sigma * eps``) is again a mixture, with component variances
``s_k^2 + sigma^2``. So its log density, score and posterior mean ``E[x | x_t]`` are available in
closed form: an exact diffusion "teacher" for small faithful tests of distillation methods.

``sigma`` is a scalar or a per-sample ``[n]`` array everywhere (``sigma = 0`` is the clean
mixture). All functions are pure ``jax.numpy`` and jittable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "GaussianMixture",
    "mixture_denoiser",
    "mixture_log_prob",
    "mixture_sample",
    "mixture_score",
    "ring_mixture",
]


class GaussianMixture(NamedTuple):
    """A mixture of ``K`` isotropic Gaussians in ``d`` dimensions.

    Attributes:
        means: ``[K, d]`` component means.
        weights: ``[K]`` mixture weights (non-negative, summing to 1).
        std: component standard deviation, a scalar (shared) or ``[K]`` (one per component).
    """

    means: jax.Array
    weights: jax.Array
    std: float | jax.Array


def ring_mixture(
    num_modes: int = 8, *, radius: float = 4.0, std: float = 0.25, weights=None
) -> GaussianMixture:
    """``num_modes`` 2-D Gaussians evenly spaced on a circle of ``radius``, all with ``std``.

    Mode ``k`` sits at angle ``2 pi k / num_modes``, i.e. at ``radius * (cos, sin)``.

    The default weights are deliberately unequal (so that mode dropping of light modes is visible):
    ``np.geomspace(0.3, 0.03, num_modes)`` normalised to sum 1, a geometric sequence whose heaviest
    mode is 10x the lightest. For the default 8 modes these are, to 4 decimals,
    ``[0.3021, 0.2174, 0.1564, 0.1126, 0.0810, 0.0583, 0.0420, 0.0302]``.
    Pass ``weights`` (any ``num_modes`` non-negative numbers, normalised here) to override, e.g.
    ``np.ones(8)`` for equal weights.
    """
    if not isinstance(num_modes, int) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive int, got {num_modes!r}")
    angles = 2.0 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    if weights is None:
        w = np.geomspace(0.3, 0.03, num_modes) if num_modes > 1 else np.ones(1)
    else:
        w = np.asarray(weights, np.float64)
        if w.shape != (num_modes,) or np.any(w < 0) or not np.sum(w) > 0:
            raise ValueError(
                f"weights must be {num_modes} non-negative numbers with a positive sum, got {weights!r}"
            )
    w = w / np.sum(w)
    return GaussianMixture(
        means=jnp.asarray(means, jnp.float32),
        weights=jnp.asarray(w, jnp.float32),
        std=float(std),
    )


def _component_std(mix: GaussianMixture) -> jax.Array:
    """``[K]`` component standard deviations."""
    return jnp.broadcast_to(jnp.asarray(mix.std, jnp.result_type(mix.means)), mix.weights.shape)


def _variances(mix: GaussianMixture, x: jax.Array, sigma) -> jax.Array:
    """``[n, K]`` (or ``[1, K]``) variances ``s_k^2 + sigma^2`` of the noised components."""
    sigma = jnp.asarray(sigma, x.dtype)
    if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"sigma must be a scalar or [n] with n = {x.shape[0]}, got {sigma.shape}")
    s2 = jnp.square(_component_std(mix)).astype(x.dtype)
    return s2[None, :] + jnp.square(jnp.reshape(sigma, (-1, 1)))


def _log_joint(mix: GaussianMixture, x: jax.Array, sigma) -> tuple[jax.Array, jax.Array]:
    """``log w_k + log N(x; mu_k, var_k I)`` ``[n, K]`` and the variances ``[n or 1, K]``."""
    if x.ndim != 2 or x.shape[-1] != mix.means.shape[-1]:
        raise ValueError(f"x must be [n, {mix.means.shape[-1]}], got shape {x.shape}")
    var = _variances(mix, x, sigma)
    d = x.shape[-1]
    sq = jnp.sum(jnp.square(x[:, None, :] - mix.means[None, :, :].astype(x.dtype)), axis=-1)
    log_w = jnp.log(mix.weights.astype(x.dtype))
    log_joint = log_w - 0.5 * sq / var - 0.5 * d * jnp.log(2.0 * jnp.pi * var)
    return log_joint, var


def mixture_sample(mix: GaussianMixture, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """``n`` samples of the clean mixture and the component each came from.

    Returns ``(x [n, d], component [n] int32)``; the same key gives the same samples.
    """
    comp_key, noise_key = jax.random.split(key)
    component = jax.random.categorical(comp_key, jnp.log(mix.weights), shape=(n,))
    component = component.astype(jnp.int32)
    eps = jax.random.normal(noise_key, (n, mix.means.shape[-1]), mix.means.dtype)
    x = mix.means[component] + _component_std(mix)[component, None] * eps
    return x, component


def mixture_log_prob(mix: GaussianMixture, x: jax.Array, *, sigma=0.0) -> jax.Array:
    """``[n]`` exact log density of the mixture convolved with ``N(0, sigma^2 I)`` at ``x [n, d]``.

    Each component becomes ``N(mu_k, (s_k^2 + sigma^2) I)``; the sum over components is a
    logsumexp (zero weights contribute nothing).
    """
    log_joint, _ = _log_joint(mix, x, sigma)
    return jax.nn.logsumexp(log_joint, axis=-1)


def mixture_score(mix: GaussianMixture, x: jax.Array, *, sigma=0.0) -> jax.Array:
    """``[n, d]`` analytic score ``grad_x log p_sigma(x)`` of the noised mixture.

    ``sum_k r_k(x) (mu_k - x) / (s_k^2 + sigma^2)`` with the posterior responsibilities
    ``r_k(x) = softmax_k(log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I))``.
    """
    log_joint, var = _log_joint(mix, x, sigma)
    resp = jax.nn.softmax(log_joint, axis=-1)  # [n, K]
    diff = mix.means[None, :, :].astype(x.dtype) - x[:, None, :]  # [n, K, d]
    return jnp.sum((resp / var)[..., None] * diff, axis=1)


def mixture_denoiser(mix: GaussianMixture, x: jax.Array, sigma) -> jax.Array:
    """``[n, d]`` exact denoiser ``E[x0 | x0 + sigma * eps = x] = x + sigma^2 * score`` (Tweedie).

    ``sigma`` is a scalar or ``[n]``; at ``sigma = 0`` it returns ``x``.
    """
    sigma = jnp.asarray(sigma, x.dtype)
    s2 = jnp.square(jnp.reshape(sigma, (-1, 1)))
    return x + s2 * mixture_score(mix, x, sigma=sigma)
