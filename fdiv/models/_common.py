"""Shared helpers for ``fdiv.models``: argument checks, activations, batch norm, initialisers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

# Batch-norm settings shared by every model: PyTorch's defaults (flax momentum 0.9 is the decay of
# the running average, i.e. PyTorch momentum 0.1).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Kaiming-normal (He et al. 2015) with fan_out and an untruncated normal: std = sqrt(2 / fan_out),
# fan_out = prod(kernel spatial dims) * out_channels, i.e. torchvision's
# ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu": nn.elu,
    "gelu": nn.gelu,
    "leaky_relu": nn.leaky_relu,
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "silu": nn.silu,
    "softplus": nn.softplus,
    "tanh": nn.tanh,
}


# Hidden representations are recorded with ``Module.sow`` into this collection; ``sow`` is a no-op
# unless the collection is mutable, so ordinary ``apply`` calls (and their compiled steps) are
# unchanged. ``fdiv.models.layer_features`` reads them back.
FEATURES_COLLECTION = "intermediates"


def sow_features(module: nn.Module, x: jax.Array) -> None:
    """Record a hidden representation ``x [B, ...]`` (after its activation) of ``module``."""
    module.sow(FEATURES_COLLECTION, "features", x)


def batch_norm(train: bool, **kwargs: Any) -> nn.BatchNorm:
    """BatchNorm over the last axis: batch statistics if ``train``, running averages otherwise."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, **kwargs
    )


def resolve_activation(activation: str | Callable) -> Callable[[jax.Array], jax.Array]:
    """The activation function named by ``activation`` (or ``activation`` itself if callable)."""
    if callable(activation):
        return activation
    return ACTIVATIONS[activation]


def check_activation(owner: str, activation: Any) -> None:
    if callable(activation):
        return
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"{owner}: activation must be a callable or one of {sorted(ACTIVATIONS)}, "
            f"got {activation!r}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(owner: str, field: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{owner}: {field} must be a positive int, got {value!r}")


def check_int_sequence(owner: str, field: str, value: Any, *, allow_empty: bool) -> tuple:
    """``value`` as a tuple of positive ints, or ValueError naming ``field``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}: {field} must be a sequence of positive ints, got {value!r}")
    out = tuple(value)
    if not all(_is_int(v) and v >= 1 for v in out) or (not out and not allow_empty):
        kind = "a sequence" if allow_empty else "a non-empty sequence"
        raise ValueError(f"{owner}: {field} must be {kind} of positive ints, got {value!r}")
    return out


def check_choice(owner: str, field: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {field} must be one of {list(choices)}, got {value!r}")


def freeze_field(module: nn.Module, field: str, value: Any) -> None:
    """Replace a dataclass field before the module is frozen (e.g. a list by a hashable tuple)."""
    object.__setattr__(module, field, value)
