"""The one training state and the update rules that advance it.

A run's whole state is one pytree, :class:`TrainState`. Networks are named (``"student"``,
``"teacher"``, ``"generator"``, ``"critic"`` ...): ``params``, ``model_state`` (batch-norm
statistics and the like) and ``opt_state`` are dicts keyed by network name. A network without an
optimiser (a frozen, pre-trained teacher) lives in ``params`` and is never differentiated.

A step applies a sequence of :class:`Update` rules in order. Each rule differentiates its own loss
with respect to the networks it names and applies their optimisers; several networks in one rule is
online distillation (each network's loss term holds its peers under ``stop_gradient``), several
rules with ``repeats`` express alternating updates at different cadences (e.g. 5 critic updates per
generator update), and the per-rule ``key`` lets a loss sample from the model inside the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

__all__ = ["LossFn", "TrainState", "Update", "init_state", "make_train_step"]

PyTree = Any
_PREPROCESS_TAG = 2**31 - 1  # fold_in tag of the preprocess key, apart from the update indices
Metrics = dict[str, jax.Array]
# loss(params, model_state, batch, key) -> (scalar loss, (model_state updates, metrics))
LossFn = Callable[
    [Mapping[str, PyTree], Mapping[str, PyTree], Mapping[str, jax.Array], jax.Array],
    tuple[jax.Array, tuple[Mapping[str, PyTree], Metrics]],
]


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: ``step``, ``params``, ``model_state``, ``opt_state``, ``key``.

    ``key`` is the run's root key (a typed ``jax.random.key``) and never changes: the randomness of
    step ``s`` is ``fold_in(key, s)``, so a resumed run draws exactly what an uninterrupted one does.
    """

    step: jax.Array
    params: dict[str, PyTree]
    model_state: dict[str, PyTree]
    opt_state: dict[str, PyTree]
    key: jax.Array


class Update(NamedTuple):
    """One gradient update rule inside a train step.

    Attributes:
      name: metric prefix (``"<name>/loss"``, ``"<name>/grad_norm"``, ``"<name>/<metric>"``).
      loss: ``loss(params, model_state, batch, key) -> (loss, (model_state_updates, metrics))``.
        ``params`` holds every network (the trained ones as the differentiated arguments);
        ``model_state_updates`` is a dict of the networks whose model state changed (may be empty).
      networks: names of the networks this loss trains; each must have an optimiser.
      repeats: apply the rule this many times per step, each with its own key (the metrics
        reported are those of the last application).
    """

    name: str
    loss: LossFn
    networks: tuple[str, ...]
    repeats: int = 1


def init_state(
    key: jax.Array,
    params: Mapping[str, PyTree],
    model_state: Mapping[str, PyTree],
    optimizers: Mapping[str, optax.GradientTransformation],
) -> TrainState:
    """A step-0 state: an optimiser state for every network that has an optimiser."""
    unknown = sorted(set(optimizers) - set(params))
    if unknown:
        raise ValueError(
            f"optimizers name networks {unknown} that have no params; networks are {sorted(params)}"
        )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=dict(params),
        model_state=dict(model_state),
        opt_state={name: opt.init(params[name]) for name, opt in optimizers.items()},
        key=key,
    )


def _apply_update(
    update: Update,
    optimizers: Mapping[str, optax.GradientTransformation],
    state: TrainState,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
) -> tuple[TrainState, Metrics]:
    """One application of ``update``: gradient of its loss w.r.t. its networks, optimiser step."""
    trained = {name: state.params[name] for name in update.networks}

    def objective(trained_params):
        return update.loss({**state.params, **trained_params}, state.model_state, batch, key)

    (loss, (model_state_updates, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
        trained
    )
    params, opt_state = dict(state.params), dict(state.opt_state)
    for name in update.networks:
        updates, opt_state[name] = optimizers[name].update(
            grads[name], state.opt_state[name], state.params[name]
        )
        params[name] = optax.apply_updates(state.params[name], updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
    new_state = state.replace(
        params=params, model_state={**state.model_state, **model_state_updates}, opt_state=opt_state
    )
    return new_state, {f"{update.name}/{k}": v for k, v in metrics.items()}


def make_train_step(
    updates: Sequence[Update],
    optimizers: Mapping[str, optax.GradientTransformation],
    *,
    preprocess: Callable[[Mapping[str, jax.Array], jax.Array], Mapping[str, jax.Array]]
    | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]:
    """``train_step(state, batch) -> (state, metrics)``: pure; jit it with ``donate_argnums=0``.

    The step's key is ``fold_in(state.key, state.step)``; ``preprocess(batch, key)`` (e.g. data
    augmentation) gets ``fold_in(step_key, 2**31 - 1)`` and the ``i``-th update's ``r``-th repeat gets
    ``fold_in(fold_in(step_key, i), r)``. ``metrics["loss"]`` is the sum of the updates' losses.

    Args:
      updates: the rules applied in order; each rule's networks must have an optimiser.
      optimizers: one optax transformation per trained network.
      preprocess: optional on-device batch transform, jittable.
    """
    if not updates:
        raise ValueError("updates must name at least one Update")
    names = [u.name for u in updates]
    if len(set(names)) != len(names):
        raise ValueError(f"Update names must be distinct, got {names}")
    for u in updates:
        missing = sorted(set(u.networks) - set(optimizers))
        if not u.networks or missing:
            raise ValueError(
                f"Update {u.name!r} trains {list(u.networks)}; every trained network needs an optimiser "
                f"(missing {missing}; optimisers exist for {sorted(optimizers)})"
            )
        if u.repeats < 1:
            raise ValueError(f"Update {u.name!r}: repeats must be >= 1, got {u.repeats}")

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(state.key, state.step)
        if preprocess is not None:
            batch = preprocess(batch, jax.random.fold_in(step_key, _PREPROCESS_TAG))
        metrics: Metrics = {}
        for i, update in enumerate(updates):
            update_key = jax.random.fold_in(step_key, i)
            # Repeats are unrolled, not a lax.scan: XLA:CPU runs convolutions several times slower
            # inside a scanned loop, and repeat counts are small (a few critic updates per step).
            for r in range(update.repeats):
                state, m = _apply_update(
                    update, optimizers, state, batch, jax.random.fold_in(update_key, r)
                )
            metrics.update(m)
        metrics["loss"] = sum(metrics[f"{u.name}/loss"] for u in updates)
        return state.replace(step=state.step + 1), metrics

    return train_step
