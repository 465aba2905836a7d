"""Orbax checkpoints of a :class:`~fdiv.train.state.TrainState` under ``workdir/checkpoints``.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed in the
middle of a save leaves the previous checkpoint as the latest one. The typed PRNG key is stored as
its raw ``key_data`` and re-wrapped on restore.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from fdiv.train.state import TrainState

__all__ = ["Checkpointer", "load_arrays"]


def _to_storable(state: TrainState) -> TrainState:
    return state.replace(key=jax.random.key_data(state.key))


class Checkpointer:
    """Saves the steps the loop asks for and restores the latest one.

    Args:
      directory: where checkpoints go (``workdir/checkpoints``).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: TrainState, step: int) -> bool:
        """Save ``state`` (at host step ``step``) unless that step is already saved."""
        if self._manager.latest_step() == step:
            return False
        return self._manager.save(step, args=ocp.args.StandardSave(_to_storable(state)), force=True)

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """Restore ``step`` (default: latest) with the shapes, dtypes and shardings of ``like``."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_storable(like))
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        key_impl = jax.random.key_impl(like.key)
        return restored.replace(key=jax.random.wrap_key_data(restored.key, impl=key_impl))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_arrays(directory: str, step: int | None = None) -> dict:
    """A checkpoint as a plain tree of numpy arrays, on any topology (no template state needed).

    ``directory`` is a run's ``workdir/checkpoints``; ``step`` defaults to the latest. For analysis
    and tests: resuming goes through :meth:`Checkpointer.restore`, which keeps typed keys.
    """
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    path = os.path.join(directory, str(max(steps) if step is None else step), "default")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))
