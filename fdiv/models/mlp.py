"""Multi-layer perceptron classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from fdiv.models._common import (
    check_activation,
    check_int_sequence,
    check_positive_int,
    freeze_field,
    resolve_activation,
    sow_features,
)


class MLP(nn.Module, kw_only=True):
    """Fully connected classifier: flatten -> [Dense(h) -> activation] * len(hidden) -> Dense.

    Input ``x``: ``[B, *input_shape]`` (all non-batch dims are flattened, so images, sequences and
    vectors all work). Output: logits ``[B, num_classes]``. No batch norm, no dropout; ``train``
    is accepted (and ignored) so that every model in ``fdiv.models`` is called the same way.
    Initialisation: flax defaults (LeCun-normal kernels, zero biases).

    Parameters for ``d`` inputs: ``sum((a + 1) * b for a, b in zip([d, *hidden], [*hidden, C]))``.

    Attributes:
        num_classes: number of output logits ``C``.
        hidden: widths of the hidden layers (``()`` gives a linear classifier).
        activation: a name in ``fdiv.models.ACTIVATIONS`` (``"relu"``, ``"gelu"``, ``"tanh"``,
            ...) or a callable.
    """

    num_classes: int
    hidden: Sequence[int] = (256, 256)
    activation: str | Callable[[jax.Array], jax.Array] = "relu"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", self.num_classes)
        freeze_field(
            self, "hidden", check_int_sequence(owner, "hidden", self.hidden, allow_empty=True)
        )
        check_activation(owner, self.activation)
        super().__post_init__()

    @property
    def has_batch_norm(self) -> bool:
        """Always False: an MLP has no ``batch_stats`` collection."""
        return False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for ``x`` of shape ``[B, ...]``; ``train`` is unused."""
        del train
        if x.ndim < 1:
            raise ValueError(f"MLP expects a batched input [B, ...], got shape {x.shape}")
        act = resolve_activation(self.activation)
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
            sow_features(self, x)
        return nn.Dense(self.num_classes)(x)
