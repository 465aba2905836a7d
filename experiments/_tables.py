"""Small helpers shared by the results scripts (mean ± std cells, the header of a results file)."""

from __future__ import annotations

import os
import platform

import jax
import numpy as np


def mean_std(values) -> str:
    """``"mean ± std"`` with the sample standard deviation (``ddof=1``; 0 for a single value)."""
    values = np.asarray(values, float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.4f} ± {std:.4f}"


def slug(label: str) -> str:
    """A row label as a directory name: its ASCII letters and digits, lower case, runs of
    anything else as one ``_``."""
    keep = "".join(c if c.isascii() and c.isalnum() else " " for c in label.lower())
    return "_".join(keep.split())


def machine() -> str:
    return f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, jax {jax.__version__}"


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
