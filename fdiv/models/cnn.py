"""Small convolutional classifier for inputs with any number of spatial dimensions."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fdiv.models._common import (
    batch_norm,
    check_choice,
    check_int_sequence,
    check_positive_int,
    freeze_field,
    sow_features,
)

POOLS = ("max", "avg")
READOUTS = ("flatten", "mean")


class CNN(nn.Module, kw_only=True):
    """Small conv net: [Conv3 -> (BN) -> relu -> pool2] per stage -> readout -> Dense -> Dense.

    Input ``x``: ``[B, *spatial, C]`` channels-last with any number of spatial dims (>= 1), e.g.
    ``(8, 8, 1)`` digits, ``(40, 1)`` MNIST-1D sequences, ``(32, 32, 3)`` CIFAR. Output: logits
    ``[B, num_classes]``.

    Each stage ``i`` is a convolution with ``channels[i]`` filters, kernel ``(3,) * len(spatial)``
    and SAME padding (bias only when ``batch_norm`` is False), optional BatchNorm (momentum 0.9,
    epsilon 1e-5), relu, then max or average pooling with window = stride = 2 in every spatial dim
    of size >= 4 (VALID, so size ``s`` becomes ``s // 2``); dims of size < 4 are left alone so that
    no spatial size drops below 2, and the pooling is skipped when no dim qualifies. The readout is
    ``"flatten"`` (default; keeps the spatial layout) or ``"mean"`` (global average pool), then
    ``Dense(hidden) -> relu -> Dense(num_classes)``.

    Example shapes with the defaults ``channels=(32, 64)``: ``(8, 8, 1) -> (4, 4, 32) ->
    (2, 2, 64) -> 256``; ``(40, 1) -> (20, 32) -> (10, 64) -> 640``; ``(32, 32, 3) ->
    (16, 16, 32) -> (8, 8, 64) -> 4096`` flattened features.

    Initialisation: flax defaults (LeCun-normal kernels, zero biases; BN scale 1, bias 0).

    Attributes:
        num_classes: number of output logits.
        channels: filters of each conv stage.
        hidden: width of the hidden Dense layer.
        batch_norm: BatchNorm after each conv (adds a ``batch_stats`` collection).
        pool: ``"max"`` or ``"avg"``.
        readout: ``"flatten"`` or ``"mean"`` (global average pool over the spatial dims).
    """

    num_classes: int
    channels: Sequence[int] = (32, 64)
    hidden: int = 128
    batch_norm: bool = False
    pool: str = "max"
    readout: str = "flatten"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", self.num_classes)
        freeze_field(
            self,
            "channels",
            check_int_sequence(owner, "channels", self.channels, allow_empty=False),
        )
        check_positive_int(owner, "hidden", self.hidden)
        if not isinstance(self.batch_norm, bool):
            raise ValueError(f"{owner}: batch_norm must be a bool, got {self.batch_norm!r}")
        check_choice(owner, "pool", self.pool, POOLS)
        check_choice(owner, "readout", self.readout, READOUTS)
        super().__post_init__()

    @property
    def has_batch_norm(self) -> bool:
        """Whether the model keeps a ``batch_stats`` collection (``batch_norm=True``)."""
        return self.batch_norm

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for ``x`` of shape ``[B, *spatial, C]``."""
        if x.ndim < 3:
            raise ValueError(
                f"CNN expects [B, *spatial, C] with at least one spatial dim, got shape {x.shape}; "
                "add a trailing channel axis (e.g. x[..., None])"
            )
        n_spatial = x.ndim - 2
        kernel = (3,) * n_spatial
        pool_fn = nn.max_pool if self.pool == "max" else nn.avg_pool
        for features in self.channels:
            x = nn.Conv(features, kernel, padding="SAME", use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = batch_norm(train)(x)
            x = nn.relu(x)
            window = tuple(2 if size >= 4 else 1 for size in x.shape[1:-1])
            if any(w > 1 for w in window):
                x = pool_fn(x, window, strides=window, padding="VALID")
            sow_features(self, x)
        if self.readout == "mean":
            x = jnp.mean(x, axis=tuple(range(1, 1 + n_spatial)))
        else:
            x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        sow_features(self, x)
        return nn.Dense(self.num_classes)(x)
