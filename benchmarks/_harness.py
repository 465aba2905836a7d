"""Shared timing and memory measurement for the benchmark scripts.

Time: median wall time of a jitted function over repeats after one warm-up call (compile excluded),
synchronised with ``block_until_ready``.

Memory, two views:
- ``temp_bytes``: XLA's own count of temporary buffers for the compiled computation
  (``compiled.memory_analysis().temp_size_in_bytes``): exact and deterministic.
- ``extra_rss``: peak resident memory of a fresh child process that runs the computation, minus
  that of a child that only creates the same inputs and an output of the gradient's size. This is
  what a user sees, including allocator effects.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax


def time_call(fn, *args, repeats: int = 5) -> float:
    """Median seconds per call of ``fn(*args)`` (already jitted), after a warm-up call."""
    return time_interleaved({"fn": lambda: fn(*args)}, repeats=repeats)["fn"]


def time_interleaved(fns: dict, *, repeats: int = 5) -> dict:
    """Median seconds per call of each zero-argument ``fns[name]()``, after one warm-up call each.

    The repeats run round-robin (``a b c a b c ...``), so that variants compared with each other see
    the same background load on a shared machine. Results are synchronised with
    ``jax.block_until_ready`` (a no-op on what is not a JAX array, e.g. PyTorch CPU tensors).
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def temp_bytes(fn, *args) -> int:
    """XLA temporary-buffer bytes of ``jax.jit(fn)`` compiled for ``args``."""
    compiled = jax.jit(fn).lower(*args).compile()
    stats = compiled.memory_analysis()
    return int(stats.temp_size_in_bytes) if stats is not None else -1


def _proc_status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (Linux) in bytes, or -1 where unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def peak_rss_bytes() -> int:
    """Peak resident set size in bytes since start or the last :func:`reset_peak_rss`
    (``VmHWM``; ``ru_maxrss`` where ``/proc`` is unavailable)."""
    peak = _proc_status_bytes("VmHWM")
    return peak if peak >= 0 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """Resident set size now (``VmRSS``), or -1 where unavailable."""
    return _proc_status_bytes("VmRSS")


def release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so a later step cannot grow into
    memory an earlier phase (e.g. compilation) freed but kept resident, unseen by RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak_rss() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS (Linux ``clear_refs`` 5).

    Lets a child exclude what came before the measured step, e.g. XLA compilation, whose peak
    otherwise dwarfs the step's own working memory at small sizes. Returns whether it worked.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def run_child(module: str, variant: str, *extra: str) -> dict:
    """Run ``python -m module --child variant extra...`` and parse the JSON line it prints last."""
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", module, "--child", variant, *extra],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"
