"""The one optimiser builder the experiments share (optax), from a config block or arguments.

    make_optimizer(name, learning_rate=, total_steps=, schedule=, warmup_steps=, final_fraction=,
                   weight_decay=, b1=, b2=, clip_norm=)

- ``name``: ``"adam"`` (weight decay, if any, as an L2 term added to the gradient before Adam),
  ``"adamw"`` (decoupled weight decay, Loshchilov and Hutter), ``"sgd"`` (momentum 0.9, Nesterov;
  weight decay as L2).
- ``schedule``: ``"constant"`` or ``"cosine"`` (to ``final_fraction`` of the rate at
  ``total_steps``), each after an optional linear warm-up from 0 over ``warmup_steps`` (capped at
  ``total_steps - 1``).
- ``clip_norm``: clip the gradient's global norm first (``None`` or 0: no clipping).

``total_steps`` counts this optimiser's own updates: a critic updated ``k`` times per step of the
run gets ``k`` times the run's steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

__all__ = ["NAMES", "SCHEDULES", "from_config", "make_optimizer"]

NAMES = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


def _schedule(learning_rate, total_steps, schedule, warmup_steps, final_fraction):
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    if schedule == "cosine":
        if not warmup:
            return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1), alpha=final_fraction)  # fmt: skip
        end = final_fraction * learning_rate
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(total_steps, warmup + 1), end_value=end)  # fmt: skip
    if not warmup:
        return learning_rate
    ramp = optax.linear_schedule(0.0, learning_rate, warmup)
    return optax.join_schedules([ramp, optax.constant_schedule(learning_rate)], [warmup])


def make_optimizer(
    name: str = "adam",
    *,
    learning_rate: float,
    total_steps: int = 0,
    schedule: str = "constant",
    warmup_steps: int = 0,
    final_fraction: float = 0.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """The optimiser of the module docstring.

    Raises:
      ValueError: an unknown ``name`` or ``schedule`` (the message lists the known ones).
    """
    if name not in NAMES:
        raise ValueError(f"optimizer name={name!r} is not one of {list(NAMES)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"optimizer schedule={schedule!r} is not one of {list(SCHEDULES)}")
    lr = _schedule(learning_rate, total_steps, schedule, warmup_steps, final_fraction)
    if name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        core = optax.sgd(lr, momentum=0.9, nesterov=True) if name == "sgd" else optax.adam(lr, b1=b1, b2=b2)  # fmt: skip
        tx = optax.chain(optax.add_decayed_weights(weight_decay), core) if weight_decay or name == "sgd" else core  # fmt: skip
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def from_config(block: Mapping[str, Any], total_steps: int, **defaults) -> optax.GradientTransformation:  # fmt: skip
    """:func:`make_optimizer` from a config block (a ConfigDict or dict with any of its argument
    names); ``defaults`` fill the fields the block does not have."""
    fields = {"name": "adam", **defaults, **dict(block)}
    return make_optimizer(fields.pop("name"), total_steps=total_steps, **fields)
