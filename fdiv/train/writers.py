"""Run outputs in the workdir: ``config.json``, ``metrics.jsonl``, ``summary.json``, TensorBoard
event files, a progress bar.

Only process 0 writes; every other process gets a writer whose methods do nothing. Files go
through :mod:`fdiv.train.paths` (``etils.epath``), so the workdir may be local or ``gs://...``.
Each ``metrics.jsonl`` record is also written as TensorBoard scalars (tag = the record's key, at
its ``step``) to ``events.out.tfevents.*`` beside it when ``tensorboardX`` is installed (the
``tensorboard`` extra); without it no event file is written.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

from fdiv.train import paths

__all__ = ["EventFile", "RunWriter"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep them readable instead of invalid
    return value


class EventFile:
    """TensorBoard scalars in ``<workdir>/events.out.tfevents.<time>.<host>.<pid>.<n>``: a new
    file per writer (TensorBoard reads every event file of a directory, so a resumed run adds
    one), TFRecord-framed ``Event`` protos from tensorboardX's bundled ``event_pb2``, written
    synchronously at log cadence (nothing is lost to an unflushed buffer on a kill).

    Use :meth:`create`, which returns ``None`` where tensorboardX is not installed.
    """

    _count = itertools.count()

    def __init__(self, workdir: str):
        from tensorboardX.proto import event_pb2, summary_pb2
        from tensorboardX.record_writer import masked_crc32c

        self._event, self._summary, self._crc = event_pb2.Event, summary_pb2.Summary, masked_crc32c
        # TensorBoard reads a directory's event files in name order: the time (to the
        # microsecond) comes first, so a resumed run's file sorts after the one it resumes.
        name = (
            f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}."
            f"{os.getpid()}.{next(self._count)}"
        )
        self.path = os.path.join(workdir, name)
        self._local = paths.is_local(workdir)
        self._data = b""  # the whole file, rewritten on an object store (which cannot append)
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    @classmethod
    def create(cls, workdir: str) -> EventFile | None:
        try:
            return cls(workdir)
        except ImportError:
            return None

    def _write(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = b"".join(
            [
                header,
                struct.pack("<I", self._crc(header)),
                data,
                struct.pack("<I", self._crc(data)),
            ]
        )
        self._data += record
        if self._local:
            with open(self.path, "ab") as f:
                f.write(record)
        else:
            paths.write_bytes(self.path, self._data)

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """One event at ``step`` with every real-number value of ``values`` (bools, strings and
        ``None`` are skipped)."""
        tags = [
            self._summary.Value(tag=k, simple_value=float(v))
            for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)
        ]
        if tags:
            self._write(
                self._event(
                    wall_time=time.time(), step=int(step), summary=self._summary(value=tags)
                )
            )


class RunWriter:
    """Writes the run's files under ``workdir`` and drives a tqdm progress bar (ETA, current loss).

    Args:
      workdir: the run directory (created).
      enabled: False on every process but 0.
      total_steps / initial_step: for the progress bar.
      progress: show the progress bar (on stderr).
    """

    def __init__(
        self, workdir: str, *, enabled: bool, total_steps: int, initial_step: int, progress: bool
    ):
        self.workdir = workdir
        self.enabled = enabled
        self._bar = None
        self._events = None
        if not enabled:
            return
        paths.makedirs(workdir)
        self._events = EventFile.create(workdir)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=initial_step,
                desc=os.path.basename(os.path.normpath(workdir)) or "train",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def write_json(self, name: str, payload: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        text = json.dumps({k: _jsonable(v) for k, v in payload.items()}, indent=2, sort_keys=True)
        # never leave a half-written summary behind
        paths.write_text(os.path.join(self.workdir, name), text + "\n")

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON object (one line) to ``metrics.jsonl``, and its numbers other than
        ``step`` to the TensorBoard event file at ``record["step"]``."""
        if not self.enabled:
            return
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}, sort_keys=True)
        paths.append_text(os.path.join(self.workdir, "metrics.jsonl"), line + "\n")
        if self._events is not None and "step" in record:
            self._events.scalars(record["step"], {k: v for k, v in record.items() if k != "step"})

    def advance(self, step: int, loss: float | None = None) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
