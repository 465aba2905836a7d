"""Orbax checkpoints of a :class:`~fdiv.train.state.TrainState` under ``workdir/checkpoints``.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed in the
middle of a save leaves the previous checkpoint as the latest one. Once a save has finished, a
SHA-256 of its files is written beside it (``<step>.sha256``); :meth:`Checkpointer.restore_latest`
skips a step whose files no longer match it, or that fails to restore (a stray or incomplete
folder), and falls back to the previous one, saying so. The typed PRNG key is stored as its raw
``key_data`` and re-wrapped on restore.

The directory may be local or ``gs://...`` (orbax and the files beside its steps go through
``etils.epath``). On ``gs://`` orbax cannot rename a step into place; it writes the step where it
belongs and marks it complete with a ``commit_success.txt`` file, which is then what a finished
step must have.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from fdiv.train import paths
from fdiv.train.state import TrainState

__all__ = ["Checkpointer", "load_arrays"]


def _to_storable(state: TrainState) -> TrainState:
    return state.replace(key=jax.random.key_data(state.key))


def _files(root: str) -> list[str]:
    """The files under ``root``, as paths relative to it, in ``sorted(os.walk(root))`` order
    (folder by folder, each folder's files by name); local or any ``epath`` URI."""
    if paths.is_local(root):
        out = []
        for folder, _, files in sorted(os.walk(root)):
            out += [os.path.relpath(os.path.join(folder, name), root) for name in sorted(files)]
        return out
    found = []  # (folder relative to root, "" for root itself; file name)

    def walk(relative: str) -> None:
        for entry in epath.Path(posixpath.join(root, relative) if relative else root).iterdir():
            if entry.is_dir():
                walk(posixpath.join(relative, entry.name) if relative else entry.name)
            else:
                found.append((relative, entry.name))

    walk("")
    return [posixpath.join(folder, name) if folder else name for folder, name in sorted(found)]


class Checkpointer:
    """Saves the steps the loop asks for and restores the latest one.

    Args:
      directory: where checkpoints go (``workdir/checkpoints``).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = paths.absolute(directory)
        self.stray = self._set_aside_stray_steps()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def _set_aside_stray_steps(self) -> list[str]:
        """Rename step folders orbax never finished (no ``_CHECKPOINT_METADATA``: a stray copy, a
        crashed tool; on ``gs://``, no ``commit_success.txt`` either) to ``<step>.stray``, so they
        are neither restored nor mistaken for steps."""
        directory = epath.Path(self.directory)
        if jax.process_index() != 0 or not directory.is_dir():
            return []
        markers = ["_CHECKPOINT_METADATA"]
        if self.directory.startswith("gs://"):
            markers.append("commit_success.txt")
        moved = []
        for name in sorted(p.name for p in directory.iterdir()):
            path = directory / name
            if name.isdigit() and not all((path / m).exists() for m in markers):
                if paths.is_local(self.directory):
                    os.replace(path, f"{path}.stray")
                else:
                    path.rename(f"{self.directory}/{name}.stray")
                moved.append(name)
        return moved

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: TrainState, step: int) -> bool:
        """Save ``state`` (at host step ``step``) unless that step is already saved."""
        if self._manager.latest_step() == step:
            return False
        self._seal_finished()
        return self._manager.save(step, args=ocp.args.StandardSave(_to_storable(state)), force=True)

    def _digest(self, step: int) -> str:
        """SHA-256 over the step folder's files (relative path, then content), in the order of
        ``sorted(os.walk(...))``, so a step copied between a local disk and a bucket keeps its
        digest."""
        root = os.path.join(self.directory, str(step))
        h = hashlib.sha256()
        for relative in _files(root):
            h.update(relative.encode() + b"\0")
            with epath.Path(os.path.join(root, relative)).open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    def _seal_finished(self) -> None:
        """Write the checksum of every finished step that lacks one (process 0 only)."""
        if jax.process_index() != 0:
            return
        self._manager.wait_until_finished()
        for step in self._manager.all_steps():
            path = os.path.join(self.directory, f"{step}.sha256")
            if not epath.Path(path).exists():
                paths.write_text(path, self._digest(step))

    def _verified(self, step: int) -> bool | None:
        """True / False where a checksum was written, None where the run stopped before it."""
        path = os.path.join(self.directory, f"{step}.sha256")
        if not epath.Path(path).exists():
            return None
        return paths.read_text(path).strip() == self._digest(step)

    def restore_latest(self, like: TrainState) -> tuple[TrainState | None, int | None, list[str]]:
        """The latest step that verifies and restores: ``(state, step, messages)``, or
        ``(None, None, messages)`` if none does; each skipped step is named with the reason."""
        messages = [
            f"checkpoint step {name} is an unfinished folder; set aside as {name}.stray"
            for name in self.stray
        ]
        for step in sorted(self._manager.all_steps(), reverse=True):
            if self._verified(step) is False:
                messages.append(
                    f"checkpoint step {step} is corrupt (its files do not match {step}.sha256); skipping it"
                )
                continue
            try:
                state = self.restore(like, step)
            except Exception as err:  # noqa: BLE001 -- any unreadable checkpoint is skipped
                messages.append(
                    f"checkpoint step {step} cannot be restored ({type(err).__name__}: {str(err)[:200]}); skipping it"
                )
                continue
            if step != self._manager.latest_step():
                messages.append(f"falling back to the checkpoint at step {step}")
            return state, step, messages
        return None, None, messages

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
        self._seal_finished()

    def close(self) -> None:
        self._seal_finished()
        self._manager.close()


def load_arrays(directory: str, step: int | None = None) -> dict:
    """A checkpoint as a plain tree of numpy arrays, on any topology (no template state needed).

    ``directory`` is a run's ``workdir/checkpoints``; ``step`` defaults to the latest. For analysis
    and tests: resuming goes through :meth:`Checkpointer.restore`, which keeps typed keys.
    """
    directory = paths.absolute(directory)
    steps = [int(p.name) for p in epath.Path(directory).iterdir() if p.name.isdigit()]
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
