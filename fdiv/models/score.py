"""EDM-preconditioned denoisers (Karras et al. 2022) for diffusion teachers and fake-score nets.

Both models compute ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with

- ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
- ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = log(sigma) / 4``,

``sd = sigma_data``, and ``F`` the raw network. ``D`` estimates ``E[x0 | x0 + sigma eps = x]``;
the score is ``(D - x) / sigma^2`` (:func:`score_from_denoiser`). ``F``'s last layer is
zero-initialised, so an untrained model returns ``c_skip x`` (the denoiser of ``N(0, sd^2 I)``).

Call: ``module.apply(variables, x, sigma, train=False)`` with ``sigma`` a scalar or ``[B]``
(> 0); ``train`` is accepted and ignored (no batch norm, no dropout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fdiv.diffusion import per_sample, score_from_denoiser
from fdiv.models._common import check_int_sequence, check_positive_int, freeze_field

__all__ = ["ScoreCNN", "ScoreMLP", "edm_preconditioning", "score_from_denoiser", "sigma_embedding"]

# Frequencies (radians per unit of c_noise) of the sinusoidal noise embedding: geometric from
# 1 to 64. c_noise = log(sigma) / 4 spans about [-1.6, 1.1] for sigma in [0.002, 80].
_MIN_FREQ, _MAX_FREQ = 1.0, 64.0


def edm_preconditioning(sigma, *, sigma_data: float):
    """``(c_skip, c_out, c_in, c_noise)`` of EDM for ``sigma`` (any shape, elementwise)."""
    sd2 = sigma_data**2
    s2 = jnp.square(sigma)
    root = jnp.sqrt(s2 + sd2)
    return sd2 / (s2 + sd2), sigma * sigma_data / root, 1.0 / root, jnp.log(sigma) / 4.0


def sigma_embedding(c_noise: jax.Array, dim: int) -> jax.Array:
    """``[B, dim]`` sinusoidal features ``[cos(f_j c), sin(f_j c)]`` of ``c_noise [B]``.

    ``dim // 2`` frequencies ``f_j`` geometric from 1 to 64; an odd ``dim`` gets one extra raw
    ``c_noise`` feature.
    """
    half = dim // 2
    freqs = jnp.geomspace(_MIN_FREQ, _MAX_FREQ, half) if half > 1 else jnp.ones(half)
    angles = c_noise[:, None] * freqs.astype(c_noise.dtype)[None, :]
    parts = [jnp.cos(angles), jnp.sin(angles)]
    if dim % 2:
        parts.append(c_noise[:, None])
    return jnp.concatenate(parts, axis=-1)


def _check_sigma_data(owner: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{owner}: sigma_data must be a positive number, got {value!r}")


class _NoiseEmbed(nn.Module):
    """``sigma_embedding(c_noise)`` -> Dense -> silu -> Dense, ``[B, dim]``."""

    dim: int

    @nn.compact
    def __call__(self, c_noise: jax.Array) -> jax.Array:
        emb = sigma_embedding(c_noise, self.dim)
        emb = nn.silu(nn.Dense(self.dim)(emb))
        return nn.Dense(self.dim)(emb)


def _batched_sigma(sigma, x: jax.Array) -> jax.Array:
    """``sigma`` (scalar or ``[B]``) as a ``[B]`` array of ``x``'s dtype."""
    sigma = jnp.asarray(sigma, x.dtype)
    if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"sigma must be a scalar or [B] with B = {x.shape[0]}, got {sigma.shape}")
    return jnp.broadcast_to(jnp.reshape(sigma, (-1,)), (x.shape[0],))


class ScoreMLP(nn.Module, kw_only=True):
    """EDM-preconditioned MLP denoiser for vectors ``x [B, d]`` (e.g. 2-D mixtures).

    ``F``: ``h = c_in x``; per hidden width ``w``: ``h = silu(Dense(w)(h) + Dense(w)(emb))``;
    output ``Dense(d)`` (zero-initialised). ``emb`` is the noise embedding of ``c_noise``
    (:func:`sigma_embedding` with ``embed_dim`` features, then Dense -> silu -> Dense), added to
    every hidden layer as a learned per-unit bias.

    Attributes:
        hidden: widths of the hidden layers (non-empty).
        sigma_data: data standard deviation ``sd`` of the preconditioning (per coordinate).
        embed_dim: width of the noise embedding.
    """

    hidden: Sequence[int] = (128, 128, 128)
    sigma_data: float = 0.5
    embed_dim: int = 32

    def __post_init__(self) -> None:
        owner = type(self).__name__
        freeze_field(
            self, "hidden", check_int_sequence(owner, "hidden", self.hidden, allow_empty=False)
        )
        _check_sigma_data(owner, self.sigma_data)
        check_positive_int(owner, "embed_dim", self.embed_dim)
        super().__post_init__()

    @property
    def has_batch_norm(self) -> bool:
        """Always False."""
        return False

    @nn.compact
    def __call__(self, x: jax.Array, sigma, *, train: bool, return_features: bool = False):
        """Denoised ``x`` ``[B, d]``; ``sigma`` a scalar or ``[B]``; ``train`` is unused.

        With ``return_features``: ``(denoised, features)``, ``features`` the last hidden layer
        ``[B, hidden[-1]]`` (what a discriminator head on this network reads).
        """
        del train
        if x.ndim != 2:
            raise ValueError(f"ScoreMLP expects x of shape [B, d], got {x.shape}")
        sigma = _batched_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data=self.sigma_data)
        emb = nn.silu(_NoiseEmbed(self.embed_dim)(c_noise))
        h = c_in[:, None] * x
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h) + nn.Dense(width, use_bias=False)(emb))
        out = nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)
        denoised = c_skip[:, None] * x + c_out[:, None] * out
        return (denoised, h) if return_features else denoised


class _FiLMBlock(nn.Module):
    """Residual block: ``skip(h) + Conv(silu(FiLM(Conv(silu(h)), emb)))``, ``channels`` out."""

    channels: int

    @nn.compact
    def __call__(self, h: jax.Array, emb: jax.Array) -> jax.Array:
        kernel = (3,) * (h.ndim - 2)
        skip = h if h.shape[-1] == self.channels else nn.Dense(self.channels)(h)
        y = nn.Conv(self.channels, kernel)(nn.silu(h))
        scale, shift = jnp.split(nn.Dense(2 * self.channels)(emb), 2, axis=-1)
        bshape = (h.shape[0],) + (1,) * (h.ndim - 2) + (self.channels,)
        y = y * (1.0 + scale.reshape(bshape)) + shift.reshape(bshape)
        y = nn.Conv(self.channels, kernel)(nn.silu(y))
        return (skip + y) / math.sqrt(2.0)


class ScoreCNN(nn.Module, kw_only=True):
    """EDM-preconditioned small U-Net denoiser for images ``x [B, *spatial, C]`` (e.g. 8x8x1).

    ``F``: a 3x3 conv to ``channels[0]``; one FiLM residual block per level (``channels[i]``
    filters; the noise embedding gives a per-channel scale and shift); between levels a 2x
    average-pool down, then on the way up a 2x nearest-neighbour upsample, concatenation with the
    skip of that level and another FiLM block; finally silu and a zero-initialised 3x3 conv back
    to ``C`` channels. ``len(channels)`` levels, so every spatial size must be divisible by
    ``2 ** (len(channels) - 1)`` (the default ``(32, 64)``: 8x8 -> 4x4 -> 8x8). Works for any
    number of spatial dims >= 1.

    Attributes:
        channels: filters per resolution level (non-empty).
        sigma_data: data standard deviation ``sd`` of the preconditioning (per pixel).
        embed_dim: width of the noise embedding.
    """

    channels: Sequence[int] = (32, 64)
    sigma_data: float = 0.5
    embed_dim: int = 32

    def __post_init__(self) -> None:
        owner = type(self).__name__
        freeze_field(
            self,
            "channels",
            check_int_sequence(owner, "channels", self.channels, allow_empty=False),
        )
        _check_sigma_data(owner, self.sigma_data)
        check_positive_int(owner, "embed_dim", self.embed_dim)
        super().__post_init__()

    @property
    def has_batch_norm(self) -> bool:
        """Always False."""
        return False

    @nn.compact
    def __call__(self, x: jax.Array, sigma, *, train: bool, return_features: bool = False):
        """Denoised ``x`` (same shape); ``sigma`` a scalar or ``[B]``; ``train`` is unused.

        With ``return_features``: ``(denoised, features)``, ``features`` the encoder's output at the
        lowest resolution ``[B, *spatial / 2^(L-1), channels[-1]]`` (the bottleneck, where DMD2's
        and FastGen's discriminator heads read).
        """
        del train
        if x.ndim < 3:
            raise ValueError(f"ScoreCNN expects x of shape [B, *spatial, C], got {x.shape}")
        factor = 2 ** (len(self.channels) - 1)
        if any(s % factor for s in x.shape[1:-1]):
            raise ValueError(
                f"ScoreCNN with {len(self.channels)} levels needs spatial sizes divisible by "
                f"{factor}, got {x.shape[1:-1]}"
            )
        sigma = _batched_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data=self.sigma_data)
        emb = nn.silu(_NoiseEmbed(self.embed_dim)(c_noise))
        nsp = x.ndim - 2
        window = (2,) * nsp

        h = nn.Conv(self.channels[0], (3,) * nsp)(per_sample(c_in, x) * x)
        skips = []
        for i, ch in enumerate(self.channels):
            h = _FiLMBlock(ch)(h, emb)
            if i < len(self.channels) - 1:
                skips.append(h)
                h = nn.avg_pool(h, window, strides=window)
        features = h
        for ch in reversed(self.channels[:-1]):
            for axis in range(1, nsp + 1):
                h = jnp.repeat(h, 2, axis=axis)
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = _FiLMBlock(ch)(h, emb)
        out = nn.Conv(x.shape[-1], (3,) * nsp, kernel_init=nn.initializers.zeros)(nn.silu(h))
        denoised = per_sample(c_skip, x) * x + per_sample(c_out, x) * out
        return (denoised, features) if return_features else denoised
