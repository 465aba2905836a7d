"""Small helpers shared by the results scripts (mean ± std cells, the header of a results file,
committed per-run records)."""

from __future__ import annotations

import json
import os
import platform

import jax
import numpy as np


def mean_std(values) -> str:
    """``"mean ± std"`` with the sample standard deviation (``ddof=1``; 0 for a single value)."""
    values = np.asarray(values, float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.4f} ± {std:.4f}"


def numbers(summary) -> dict[str, float]:
    """The numeric entries of a run summary (what tables and sweeps compare)."""
    return {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


def slug(label: str) -> str:
    """A row label as a directory name: its ASCII letters and digits, lower case, runs of
    anything else as one ``_``."""
    keep = "".join(c if c.isascii() and c.isalnum() else " " for c in label.lower())
    return "_".join(keep.split())


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and its widest x86 vector extension, e.g. ``"AMD EPYC, AVX2"``; ``""``
    where ``cpuinfo`` cannot be read (not Linux). XLA generates its CPU code for the vector
    width it finds, which changes the rounding: a long chaotic run (the diffusion tables) repeated
    on another machine, same seed, config and jax, ended with different samples."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            pairs = (line.split(":", 1) for line in f if ":" in line)
            fields = {key.strip(): value.strip() for key, value in pairs}
    except OSError:
        return ""
    flags = set(fields.get("flags", "").split())
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "")  # fmt: skip
    return ", ".join(part for part in (fields.get("model name", ""), isa) if part)


def machine() -> str:
    """Where a run or a table ran: cores, architecture (CPU model and vector extension), jax."""
    arch = platform.processor() or platform.machine()
    if model := cpu_model():
        arch = f"{arch} ({model})"
    return f"{os.cpu_count()} CPU cores, {arch}, jax {jax.__version__}"


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class RunRecords:
    """Committed per-run results, so that a table too long for one sitting is run in parts (across
    sessions and machines) and re-assembled on a clean clone without rerunning anything.

    One JSON file per run, ``<root>/<name>.json``: the run's config (flattened, without the fields
    that cannot change what it computes, :data:`fdiv.train.workdir.EXEMPT`, nor ``ignore``: paths),
    its numeric summary and the machine it ran on; optionally arrays beside it (``<name>.npz``). A
    record is used only for exactly the same config; anything else is rerun and the record replaced.

    ``added_later`` maps config fields added after records were written to the value that
    computes what those records computed (a new switch's neutral default): at that value the
    field is left out of the comparison, so the old records stay valid; at any other it counts.
    """

    def __init__(
        self,
        root: str,
        ignore: tuple[str, ...] = ("stages_dir",),
        added_later: dict | None = None,
    ):
        self.root, self.ignore, self.added_later = root, ignore, dict(added_later or {})

    def key(self, config) -> dict:
        """``config`` (a ConfigDict) as the record compares it: flattened, exempt fields and
        ``added_later`` fields at their neutral value dropped."""
        from fdiv.train import workdir as wd

        flat = wd.flatten(json.loads(config.to_json_best_effort(sort_keys=True)))
        skip = tuple(wd.EXEMPT) + self.ignore
        return {
            k: v
            for k, v in sorted(flat.items())
            if not wd.is_exempt(k, skip)
            and not (k in self.added_later and v == self.added_later[k])
        }

    def get(self, name: str, config) -> dict | None:
        """The stored record of ``name`` (``summary``, ``machine``; ``arrays`` if stored) for this
        exact config, else ``None``."""
        path = os.path.join(self.root, name + ".json")
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if record["config"] != json.loads(json.dumps(self.key(config))):
            return None
        arrays = path[: -len(".json")] + ".npz"
        if os.path.exists(arrays):
            with np.load(arrays) as z:
                record["arrays"] = {k: z[k] for k in z.files}
        return record

    def put(self, name: str, config, summary: dict, arrays: dict | None = None) -> None:
        """Store ``summary``'s numbers (and ``arrays``, compressed) for ``name`` under ``config``."""
        path = os.path.join(self.root, name + ".json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {"config": self.key(config), "summary": numbers(summary), "machine": machine()}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
        if arrays:
            np.savez_compressed(path[: -len(".json")] + ".npz", **arrays)
