"""On-device image augmentation (jittable ``jax.numpy``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["augment_images"]


def augment_images(key: jax.Array, images: jax.Array, *, pad: int = 4) -> jax.Array:
    """CIFAR-style augmentation: random crop after zero padding, then random horizontal flip.

    Each example independently is zero-padded by ``pad`` pixels on every side, cropped back to
    ``H x W`` at a uniformly random offset in ``[0, 2 * pad]^2`` (``(2 * pad + 1)^2`` choices), and
    mirrored left-right with probability 1/2. Zero is the padding value because inputs from
    :func:`fdiv.data.load` are standardised: 0 is the dataset's mean pixel, so the border carries
    no signal (the usual ``RandomCrop(32, padding=4)`` recipe).

    Args:
        key: a PRNG key (``jax.random.key`` or a legacy ``uint32[2]`` key); the same key gives the
            same augmentation.
        images: ``[B, H, W, C]`` images, any float dtype (kept).
        pad: padding in pixels, a static Python int ``>= 0`` (``0`` only flips).

    Returns:
        ``[B, H, W, C]``, same dtype as ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    batch, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image, offset, flip):
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)
