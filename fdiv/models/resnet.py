"""CIFAR ResNets (He et al. 2016, Sec. 4.2): the 6n+2 family with basic blocks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fdiv.models._common import (
    batch_norm,
    check_positive_int,
    kaiming_normal_fan_out,
    sow_features,
)

STAGE_CHANNELS = (1, 2, 4)  # multiples of base_channels * width for stages 1, 2, 3


def _conv(features: int, n_spatial: int, size: int, strides: int, name: str) -> nn.Conv:
    """Bias-free conv with a ``size`` kernel, stride ``strides``, PyTorch-style symmetric padding."""
    pad = size // 2
    return nn.Conv(
        features,
        (size,) * n_spatial,
        strides=(strides,) * n_spatial,
        padding=((pad, pad),) * n_spatial,
        use_bias=False,
        kernel_init=kaiming_normal_fan_out,
        name=name,
    )


class BasicBlock(nn.Module, kw_only=True):
    """Basic residual block: relu(BN(conv3(relu(BN(conv3_s(x))))) + shortcut(x)).

    Input ``[B, *spatial, C_in]``, output ``[B, *ceil(spatial / strides), features]``. The first
    3x3 conv has stride ``strides``; the shortcut is the identity when the shape is unchanged and
    otherwise a projection 1x1 conv (stride ``strides``, no bias) + BN ("option B").
    """

    features: int
    strides: int = 1
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        n_spatial = x.ndim - 2
        y = _conv(self.features, n_spatial, 3, self.strides, "conv1")(x)
        y = nn.relu(batch_norm(train, name="bn1")(y))
        y = _conv(self.features, n_spatial, 3, 1, "conv2")(y)
        scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = batch_norm(train, scale_init=scale_init, name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = _conv(self.features, n_spatial, 1, self.strides, "proj_conv")(x)
            x = batch_norm(train, name="proj_bn")(x)
        return nn.relu(y + x)


class CIFARResNet(nn.Module, kw_only=True):
    """CIFAR ResNet-``depth`` (depth = 6n + 2): stem, 3 stages of n basic blocks, GAP, Dense.

    Input ``x``: ``[B, H, W, C]`` channels-last (designed for 32x32x3; any spatial size and any
    number of spatial dims work). Output: logits ``[B, num_classes]``.

    Architecture, with ``c = base_channels * width`` (16 by default):
      - stem: 3x3 conv (c filters, stride 1, no bias) -> BN -> relu;
      - stage 1: n blocks with c channels, stride 1 -> ``[B, H, W, c]``;
      - stage 2: n blocks with 2c channels, the first with stride 2 -> ``[B, H/2, W/2, 2c]``;
      - stage 3: n blocks with 4c channels, the first with stride 2 -> ``[B, H/4, W/4, 4c]``;
      - global average pool -> ``[B, 4c]`` -> Dense(num_classes).
    Blocks are :class:`BasicBlock` (two 3x3 convs, padding 1); a shape change uses a projection
    shortcut (1x1 conv + BN, option B), so there are exactly two projections.

    BatchNorm: ``use_running_average = not train``, momentum 0.9 (PyTorch 0.1), epsilon 1e-5;
    ``train=True`` needs ``mutable=["batch_stats"]``.

    Initialisation: convs Kaiming-normal with fan_out (std = sqrt(2 / (k*k*c_out)), untruncated,
    as torchvision's ResNet); BN scale 1 (0 for the last BN of each block if
    ``zero_init_residual``) and bias 0; final Dense flax default (LeCun-normal kernel, zero bias).

    Trainable parameters with ``C`` classes (c = 16): resnet8 77,392 + 65C, resnet20
    271,824 + 65C (272,474 for CIFAR-10), resnet32 466,256 + 65C, resnet56 855,120 + 65C,
    resnet110 1,730,064 + 65C.

    Attributes:
        num_classes: number of output logits.
        depth: total depth 6n + 2 (8, 20, 32, 44, 56, 110, ...).
        width: integer multiplier of every stage's channels (as in wide ResNets).
        base_channels: channels of the stem and stage 1 before ``width`` (16 in the paper).
        zero_init_residual: start each block as the identity (zero scale of its last BN).
    """

    num_classes: int
    depth: int = 20
    width: int = 1
    base_channels: int = 16
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", self.num_classes)
        check_positive_int(owner, "depth", self.depth)
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"{owner}: depth must be 6n + 2 with n >= 1, got {self.depth!r}")
        check_positive_int(owner, "width", self.width)
        check_positive_int(owner, "base_channels", self.base_channels)
        if not isinstance(self.zero_init_residual, bool):
            raise ValueError(
                f"{owner}: zero_init_residual must be a bool, got {self.zero_init_residual!r}"
            )
        super().__post_init__()

    @property
    def blocks_per_stage(self) -> int:
        """n = (depth - 2) / 6."""
        return (self.depth - 2) // 6

    @property
    def has_batch_norm(self) -> bool:
        """Always True: a ResNet keeps a ``batch_stats`` collection."""
        return True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for ``x`` of shape ``[B, *spatial, C]``."""
        if x.ndim < 3:
            raise ValueError(f"CIFARResNet expects [B, *spatial, C], got shape {x.shape}")
        n_spatial = x.ndim - 2
        c = self.base_channels * self.width
        x = _conv(c, n_spatial, 3, 1, "stem_conv")(x)
        x = nn.relu(batch_norm(train, name="stem_bn")(x))
        for stage, mult in enumerate(STAGE_CHANNELS):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    features=c * mult,
                    strides=strides,
                    zero_init_residual=self.zero_init_residual,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train=train)
            sow_features(self, x)
        x = jnp.mean(x, axis=tuple(range(1, 1 + n_spatial)))
        sow_features(self, x)
        return nn.Dense(self.num_classes, name="head")(x)
