"""Run outputs in the workdir: ``config.json``, ``metrics.jsonl``, ``summary.json``, a progress bar.

Only process 0 writes; every other process gets a writer whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["RunWriter"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep them readable instead of invalid
    return value


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
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
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
        path = os.path.join(self.workdir, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({k: _jsonable(v) for k, v in payload.items()}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)  # never leave a half-written summary behind

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON object (one line) to ``metrics.jsonl``."""
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}, sort_keys=True) + "\n")

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
