"""A noise-conditional binary classifier: the density-ratio critic of f-distill."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class NoiseClassifier(nn.Module, kw_only=True):
    """Logit ``D(x_t, sigma)`` of "``x_t`` is a noised real sample" against "a noised generated one".

    Trained with the logistic loss, its optimum is ``log p_t(x_t) / q_t(x_t)``, the log density
    ratio f-distill weights by. Input ``x`` ``[B, ...]`` (flattened), ``sigma`` ``[B]``; the noise
    level enters as sinusoidal features of ``log sigma`` concatenated to the input, and the input is
    scaled by ``1 / sqrt(sigma^2 + sigma_data^2)`` so every noise level sees unit-scale inputs.

    Attributes:
      hidden: widths of the SiLU hidden layers.
      sigma_data: the data's scale (EDM's ``sigma_data``).
      embed_dim: number of sinusoidal features of ``log sigma`` (even).
    """

    hidden: Sequence[int] = (128, 128)
    sigma_data: float = 0.5
    embed_dim: int = 16

    @property
    def has_batch_norm(self) -> bool:
        return False

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array, *, train: bool) -> jax.Array:
        del train
        x = x.reshape(x.shape[0], -1)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        scale = jax.lax.rsqrt(sigma**2 + self.sigma_data**2)
        freqs = jnp.exp(jnp.linspace(0.0, jnp.log(100.0), self.embed_dim // 2))
        angle = jnp.log(sigma)[:, None] / 4.0 * freqs[None, :]
        h = jnp.concatenate([x * scale[:, None], jnp.sin(angle), jnp.cos(angle)], axis=-1)
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h))
        return nn.Dense(1)(h)[:, 0]


class FeatureDiscriminator(nn.Module, kw_only=True):
    """A logit head on a (frozen) denoiser's features: ``D(x_t, sigma) = head(features(x_t, sigma))``.

    The official f-distill (NVlabs FastGen, ``Discriminator_EDM``) and DMD2 put the discriminator
    on the encoder features of a diffusion network at the noisy input rather than on pixels. This
    module is only the head; the caller computes the features (``ScoreMLP`` / ``ScoreCNN`` with
    ``return_features=True``) under its own parameters. Vector features ``[B, C]``: SiLU MLP
    ``hidden`` -> 1. Spatial features ``[B, *spatial, C]``: per width in ``hidden`` a 3x3 conv,
    group norm and SiLU, then a spatial mean and a dense logit (FastGen's heads stride down to 1x1
    with convolutions; the mean does the same for the 4x4 or smaller maps used here).

    Attributes:
      hidden: widths (channels) of the head's layers.
    """

    hidden: Sequence[int] = (128,)

    @property
    def has_batch_norm(self) -> bool:
        return False

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        del train
        h = features
        for width in self.hidden:
            if h.ndim > 2:
                h = nn.Conv(width, (3,) * (h.ndim - 2))(h)
                h = nn.GroupNorm(num_groups=min(32, width) if width % min(32, width) == 0 else 1)(h)
            else:
                h = nn.Dense(width)(h)
            h = nn.silu(h)
        if h.ndim > 2:
            h = jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
        return nn.Dense(1)(h)[:, 0]
