"""The fused-divergence table on an accelerator, with achieved memory bandwidth.

    python -m benchmarks.fused_gpu                        # needs jax with a GPU/TPU backend
    python -m benchmarks.fused_gpu --shapes 2048x32000,8192x128256 --names js,kl,skew_js

Per shape and generator: plain jnp (jit + autodiff), ``fdiv.divergence`` and ``fused_divergence``,
forward + backward w.r.t. the student logits. Time is the median after warm-up; memory is the
device's ``peak_bytes_in_use`` of a fresh child process per variant, minus the inputs and one
gradient-sized output; bandwidth counts the unavoidable traffic (read teacher and student, write
the gradient: ``3 N V`` elements) over the measured time, against the device's peak (looked up by
device kind, or ``--peak-gbs``). Not run in CI: there is no accelerator there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import jax
import jax.numpy as jnp

from benchmarks import _harness as h
from benchmarks.fused import jax_step, numpy_inputs

PEAK_GBS = {
    "H100": 3350.0,
    "H200": 4800.0,
    "A100": 2039.0,
    "L4": 300.0,
    "TPU v4": 1200.0,
    "TPU v5": 2765.0,
}


def child(variant: str, name: str, n: int, v: int) -> None:
    p_np, q_np = numpy_inputs(n, v)
    p, q = jnp.asarray(p_np), jnp.asarray(q_np)
    del p_np, q_np
    jax.block_until_ready(jax_step(variant, name)(p, q))
    stats = jax.devices()[0].memory_stats() or {}
    print(json.dumps({"peak": stats.get("peak_bytes_in_use", -1)}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shapes", default="2048x32000,4096x128256")
    parser.add_argument("--names", default="js,kl,squared_hellinger,pearson,skew_js")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-gbs", type=float, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--v", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.name, args.n, args.v)
        return
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    peak = args.peak_gbs or next((b for k, b in PEAK_GBS.items() if k in kind), None)
    print(f"jax {jax.__version__} on {kind} (peak {peak or '?'} GB/s)")
    print("| shape | divergence | variant | ms | time vs plain | GB/s | % of peak | extra memory |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        n, v = (int(x) for x in shape.split("x"))
        p_np, q_np = numpy_inputs(n, v)
        p, q = jnp.asarray(p_np), jnp.asarray(q_np)
        base = 3 * n * v * 4  # two inputs + one gradient, float32
        for name in args.names.split(","):
            plain_ms = None
            for variant in ("plain", "fdiv", "fused"):
                try:
                    ms = 1e3 * h.time_call(jax_step(variant, name), p, q, repeats=args.repeats)
                except Exception as err:  # out of memory for the plain composition at large V
                    print(
                        f"| {shape} | {name} | {variant} | failed: {type(err).__name__} | | | | |"
                    )
                    continue
                plain_ms = plain_ms or ms
                gbs = base / (ms * 1e-3) / 1e9
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.fused_gpu", "--child", variant, "--name", name,
                     "--n", str(n), "--v", str(v)],
                    capture_output=True, text=True,
                )  # fmt: skip
                peak_bytes = (
                    json.loads(out.stdout.strip().splitlines()[-1])["peak"]
                    if out.returncode == 0
                    else -1
                )
                extra = h.fmt_bytes(peak_bytes - base) if peak_bytes > 0 else "?"
                pct = f"{100 * gbs / peak:.0f}%" if peak else "?"
                print(
                    f"| {shape} | {name} | {variant} | {ms:.2f} | {ms / plain_ms:.2f}x | {gbs:.0f} | {pct} | {extra} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
