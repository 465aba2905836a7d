"""What a workdir guarantees: it holds exactly one run, one process at a time, and logs that read as
if the run had never stopped.

- :func:`check_config`: the resolved config is kept in ``config.json``; re-opening the workdir
  with a config that differs in any field that can change results is refused before compute,
  naming each differing field. Extending ``train.total_steps`` is allowed and recorded in
  ``extensions.jsonl``. :data:`EXEMPT` lists the fields that may change freely.
- :class:`WorkdirLock`: an advisory ``fcntl`` lock on ``workdir/.lock`` (the OS drops it when the
  holder dies, even on ``kill -9``); a second process exits at once naming the holder. An advisory
  lock needs a local filesystem: for a ``gs://`` workdir it is skipped, saying so once.
- :func:`truncate_metrics`: on resume, ``metrics.jsonl`` is cut back to the restored step (a line
  cut mid-way by a kill is dropped), so the resumed run re-logs exactly what was lost;
  :func:`save_interval` keeps the open log interval's per-step metrics with each checkpoint, so
  the first mean after a resume is over the whole interval.

Every file goes through :mod:`fdiv.train.paths` (``etils.epath``): the workdir may be local or
``gs://...``.
"""

from __future__ import annotations

import datetime
import fcntl
import io
import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from fdiv.train import paths

__all__ = [
    "EXEMPT",
    "ConfigMismatchError",
    "WorkdirBusyError",
    "WorkdirLock",
    "check_config",
    "flatten",
    "is_exempt",
    "read_metrics",
    "truncate_metrics",
]

# Fields that cannot change what a run computes: the progress bar, the cadence of logs, evals and
# checkpoints, and the per-host launch settings (every host of a pod has its own process_id).
EXEMPT = (
    "train.progress",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "distributed",
)
EXTENSIBLE = "train.total_steps"


class ConfigMismatchError(ValueError):
    """The workdir holds a run whose config differs from the one given."""


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def is_exempt(path: str, prefixes=EXEMPT) -> bool:
    """``path`` is one of ``prefixes`` or a field under one."""
    return any(path == e or path.startswith(e + ".") for e in prefixes)


def finished_summary(workdir: str, config: Mapping[str, Any], total_steps: int) -> dict[str, Any] | None:  # fmt: skip
    """The summary of a run finished at ``total_steps`` in ``workdir`` whose recorded config is
    exactly ``config`` (a JSON-like tree), read without re-opening the run; ``None`` for anything
    else (no run, another config, a longer run asked for, an unfinished run)."""
    try:
        if check_config(workdir, config):
            return None
        summary = json.loads(paths.read_text(os.path.join(workdir, "summary.json")))
    except (FileNotFoundError, ConfigMismatchError):
        return None
    return summary if summary.get("step") == total_steps else None


def check_config(workdir: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Compare ``config`` (a JSON-like tree) with ``workdir/config.json``, if there is one.

    Returns ``None`` for a new workdir or an unchanged config, else ``{"from": old, "to": new}``
    when only ``train.total_steps`` changed (an extension, which the caller records).

    Raises:
      ConfigMismatchError: any other non-exempt field differs; the message lists each field with
        its old and new value and the ways out.
    """
    path = os.path.join(workdir, "config.json")
    if not epath.Path(path).exists():
        return None
    old = flatten(json.loads(paths.read_text(path)))
    new = flatten(json.loads(json.dumps(config)))  # tuples -> lists, as the stored file has them
    missing = object()
    changed = sorted(
        k
        for k in set(old) | set(new)
        if not is_exempt(k) and old.get(k, missing) != new.get(k, missing)
    )
    differing = [k for k in changed if k != EXTENSIBLE]
    if differing:

        def show(v):
            return "(absent)" if v is missing else json.dumps(v)

        lines = "\n".join(
            f"  {k}: {show(old.get(k, missing))} -> {show(new.get(k, missing))}" for k in differing
        )
        raise ConfigMismatchError(
            f"{workdir} holds a run with a different config ({len(differing)} field(s)):\n{lines}\n"
            "A workdir holds exactly one run. Start this config in a new --workdir; to train the "
            f"existing run for longer, change only {EXTENSIBLE}. Fields that may change freely: "
            f"{', '.join(EXEMPT)}."
        )
    if changed:
        return {"from": old.get(EXTENSIBLE), "to": new.get(EXTENSIBLE)}
    return None


def record_extension(workdir: str, extension: Mapping[str, Any], at_step: int) -> None:
    """Append one line to ``workdir/extensions.jsonl``: total_steps from / to, at which step."""
    line = {
        "total_steps_from": extension["from"],
        "total_steps_to": extension["to"],
        "at_step": at_step,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    paths.append_text(
        os.path.join(workdir, "extensions.jsonl"), json.dumps(line, sort_keys=True) + "\n"
    )


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The complete lines of ``workdir/metrics.jsonl`` (a final line cut by a kill is skipped)."""
    records = []
    for line in _metrics_lines(workdir):
        if not line.endswith("\n"):
            break  # the write of this line was interrupted
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _metrics_lines(workdir: str) -> list[str]:
    """The lines of ``workdir/metrics.jsonl`` with their ``\\n`` (none if it is missing)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not epath.Path(path).exists():
        return []
    # a line cut by a kill may end inside a character: decode it anyway, it is dropped
    return list(io.StringIO(paths.read_bytes(path).decode("utf-8", "replace")))


def truncate_metrics(workdir: str, step: int) -> int:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (the restored checkpoint); returns how
    many lines were dropped. Written whole, atomically (a kill here loses nothing)."""
    total_lines = len(_metrics_lines(workdir))
    if not total_lines:
        return 0
    kept = [r for r in read_metrics(workdir) if int(r.get("step", 0)) <= step]
    if len(kept) == total_lines:
        return 0
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    paths.write_text(os.path.join(workdir, "metrics.jsonl"), text)
    return total_lines - len(kept)


def save_interval(workdir: str, step: int, metrics: list[Mapping[str, Any]], *, keep: int) -> None:
    """Store the per-step metrics of the log interval still open at checkpoint ``step`` (the
    latest ``keep`` steps' are kept in ``workdir/.intervals.json``), exactly: values as float64
    holding the float32 value, with their dtype."""
    path = os.path.join(workdir, ".intervals.json")
    stored = read_json(path)
    stored[str(step)] = [
        {k: [float(v), str(np.asarray(v).dtype)] for k, v in m.items()} for m in metrics
    ]
    latest = sorted(stored, key=int)[-keep:]
    paths.write_text(path, json.dumps({k: stored[k] for k in latest}))


def load_interval(workdir: str, step: int) -> list[dict[str, np.ndarray]]:
    """The metrics :func:`save_interval` stored at ``step`` (empty if none)."""
    stored = read_json(os.path.join(workdir, ".intervals.json")).get(str(step), [])
    return [{k: np.asarray(v, dtype) for k, (v, dtype) in m.items()} for m in stored]


def read_json(path: str) -> dict[str, Any]:
    """A JSON object file, or ``{}`` where it is missing or unreadable."""
    try:
        return json.loads(paths.read_text(path))
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return {}


# Locks held by this process, by path: re-entrant, so that an experiment can hold its workdir for
# the whole run while the trainer inside takes it again.
_HELD: dict[str, list] = {}
_UNLOCKED: set[str] = set()  # non-local workdirs already told they are not locked


class WorkdirLock:
    """Advisory exclusive lock on ``workdir/.lock``, released on :meth:`release` or process death.

    An ``fcntl`` lock exists only on a local filesystem: for a workdir that is not local
    (``gs://...``) the lock does nothing and :meth:`acquire` says once per workdir that the
    workdir is not locked (one job per workdir is then up to the launcher).

    Raises:
      WorkdirBusyError: on :meth:`acquire` when another process holds it (names its pid and host).
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = None
        if not paths.is_local(workdir):
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.realpath(os.path.join(workdir, ".lock"))

    def acquire(self) -> WorkdirLock:
        if self.path is None:
            if self.workdir not in _UNLOCKED:
                _UNLOCKED.add(self.workdir)
                print(
                    f"note: {self.workdir} is not a local path: the workdir lock is skipped "
                    "(advisory file locks are local); run one job per workdir",
                    file=sys.stderr,
                    flush=True,
                )
            return self
        held = _HELD.get(self.path)
        if held is not None:
            held[1] += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirBusyError(
                f"{self.workdir} is in use by another process ({holder}); wait for it to finish "
                "or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        _HELD[self.path] = [fd, 1]
        return self

    def release(self) -> None:
        held = _HELD.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])
            del _HELD[self.path]

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
