"""Fused, chunked divergences vs plain JAX, fdiv.divergence, optax and PyTorch eager.

    python -m benchmarks.fused                       # [2048, 32000] f32, every generator
    python -m benchmarks.fused --names js,kl --n 4096 --v 128256   # the large shape
    python -m benchmarks.fused --n 256 --v 8000 --no-rss           # quick look

Each variant computes the per-row divergence summed over rows and its gradient w.r.t. the student
logits ``q`` (the distillation setting: the teacher is data), forward + backward:

- ``plain``: a jnp composition under ``jax.jit`` + autodiff (JS: log_softmax, logaddexp mixture;
  KL: ``sum p (lp - lq)``; any other f: ``sum q f(p/q)`` from ``g.f`` of the log-ratio);
- ``fdiv``: ``fdiv.divergence`` (one-pass custom_jvp, unchunked);
- ``fused``: ``fdiv.fused.fused_divergence`` (chunked, writes only the gradient);
- ``optax``: ``optax.losses.kl_divergence`` (KL only: optax has no JS);
- ``torch``: PyTorch eager on the CPU (KL via ``F.kl_div(..., log_target=True)``, JS composed).

Time is the median over repeats after a warm-up, in this process. Memory: a fresh child process
creates the inputs, compiles the step, returns freed heap to the OS, resets its peak-RSS mark
(Linux ``clear_refs``) and runs the step once; "extra RSS" is how far its peak rose above the RSS
just before, minus the same rise for a child whose step only writes one gradient-sized output. XLA's
temporary-buffer count of the compiled step is printed too. Ratios are against ``plain``.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

import fdiv
from benchmarks import _harness as h
from fdiv.fused import fused_divergence

LOG2 = math.log(2.0)


def plain_loss(name: str):
    g = fdiv.generators.get(name)

    def loss(p, q):
        lp, lq = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
        if name == "js":
            lm = jnp.logaddexp(lp, lq) - LOG2
            return 0.5 * jnp.sum(jnp.exp(lp) * (lp - lm) + jnp.exp(lq) * (lq - lm))
        if name == "kl":
            return jnp.sum(jnp.exp(lp) * (lp - lq))
        return jnp.sum(jnp.exp(lq) * g.f(lp - lq))

    return loss


def jax_step(kind: str, name: str):
    if kind == "plain":
        loss = plain_loss(name)
    elif kind == "fdiv":
        loss = lambda p, q: jnp.sum(fdiv.divergence(name, p, q))
    elif kind == "fused":
        loss = lambda p, q: jnp.sum(fused_divergence(name, p, q))
    elif kind == "optax":
        import optax

        loss = lambda p, q: jnp.sum(
            optax.losses.kl_divergence(jax.nn.log_softmax(q), jax.nn.softmax(p))
        )
    else:
        raise ValueError(kind)
    return jax.jit(jax.value_and_grad(loss, argnums=1))


def torch_step(name: str):
    import torch
    import torch.nn.functional as F

    def step(p, q):
        q = q.detach().requires_grad_(True)
        lp, lq = F.log_softmax(p, -1), F.log_softmax(q, -1)
        if name == "kl":
            loss = F.kl_div(lq, lp, reduction="sum", log_target=True)
        else:
            lm = torch.logsumexp(torch.stack([lp, lq]), 0) - LOG2
            loss = 0.5 * (F.kl_div(lm, lp, reduction="sum", log_target=True)
                          + F.kl_div(lm, lq, reduction="sum", log_target=True))  # fmt: skip
        loss.backward()
        return loss.detach(), q.grad

    return step


def numpy_inputs(n: int, v: int):
    rng = np.random.default_rng(0)
    p = rng.standard_normal((n, v), dtype=np.float32)
    p *= 3.0
    q = rng.standard_normal((n, v), dtype=np.float32)
    q *= 3.0
    return p, q


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def variants(name: str, torch_ok: bool):
    out = ["plain", "fdiv", "fused"]
    if name == "kl":
        out.append("optax")
    if torch_ok and name in ("kl", "js"):
        out.append("torch")
    return out


def child(variant: str, name: str, n: int, v: int) -> None:
    """One step in a fresh process: how far its peak RSS rises above the RSS just before it
    (inputs created, step compiled, freed heap returned to the OS)."""
    p_np, q_np = numpy_inputs(n, v)
    if variant.startswith("torch"):
        import torch

        torch.set_num_threads(2)
        p, q = torch.from_numpy(p_np), torch.from_numpy(q_np)
        run = (lambda: torch.ones_like(q)) if variant == "torch-baseline" else None
        if run is None:
            step = torch_step(name)
            run = lambda: step(p, q)
    else:
        p, q = jnp.asarray(p_np), jnp.asarray(q_np)
        del p_np, q_np
        # The first execution in a process costs ~200 MiB of one-time runtime set-up that has
        # nothing to do with the step: pay it before measuring.
        jax.block_until_ready(jax.jit(lambda a, b: a[:1] + b[:1])(p, q))
        fn = (lambda a, b: jnp.ones_like(b)) if variant == "baseline" else None
        compiled = (jax.jit(fn) if fn else jax_step(variant, name)).lower(p, q).compile()
        run = lambda: jax.block_until_ready(compiled(p, q))
    h.release_free_heap()
    h.reset_peak_rss()
    before = h.current_rss_bytes()
    out = run()
    growth = h.peak_rss_bytes() - before
    print(json.dumps({"peak_rss": growth, "alive": out is not None}))


def time_torch(step, p_np, q_np, repeats):
    import time

    import torch

    torch.set_num_threads(2)
    p, q = torch.from_numpy(p_np), torch.from_numpy(q_np)
    step(p, q)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(p, q)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--v", type=int, default=32000)
    parser.add_argument("--names", default=",".join(fdiv.generators.names()))
    parser.add_argument("--rss-names", default="js,kl,squared_hellinger,pearson",
                        help="generators whose memory is measured in child processes")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--variants", default=None, help="comma-separated subset, e.g. plain,fused")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.name, args.n, args.v)
        return

    size = ["--n", str(args.n), "--v", str(args.v)]
    p_np, q_np = numpy_inputs(args.n, args.v)
    p, q = jnp.asarray(p_np), jnp.asarray(q_np)
    input_bytes = 2 * p.size * 4
    torch_ok = has_torch()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, logits [{args.n}, {args.v}] float32, "
        f"inputs {h.fmt_bytes(input_bytes)}; loss = sum of per-row D_f(P||Q), grad w.r.t. q only"
        + ("" if torch_ok else "; torch not installed: no torch rows")
    )
    base = {}
    if not args.no_rss:
        base["jax"] = h.run_child("benchmarks.fused", "baseline", "--name", "kl", *size)["peak_rss"]
        if torch_ok:
            base["torch"] = h.run_child(
                "benchmarks.fused", "torch-baseline", "--name", "kl", *size
            )["peak_rss"]
    print(
        "| divergence | variant | ms | time vs plain | XLA temp | extra RSS | extra RSS / inputs "
        "| RSS vs plain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rss_names = set(args.rss_names.split(","))
    for name in args.names.split(","):
        row_plain = {}
        chosen = variants(name, torch_ok)
        if args.variants:
            chosen = [v for v in chosen if v in args.variants.split(",")]
        for variant in chosen:
            if variant == "torch":
                ms = 1e3 * time_torch(torch_step(name), p_np, q_np, args.repeats)
                temp = "-"
            else:
                fn = jax_step(variant, name)
                ms = 1e3 * h.time_call(fn, p, q, repeats=args.repeats)
                temp = h.fmt_bytes(h.temp_bytes(fn, p, q))
            extra = None
            if not args.no_rss and name in rss_names:
                rss = h.run_child("benchmarks.fused", variant, "--name", name, *size)["peak_rss"]
                extra = rss - base["torch" if variant == "torch" else "jax"]
            if variant == "plain" or not row_plain:
                row_plain = {"ms": ms, "extra": extra}
            ratio_rss = (
                f"{extra / row_plain['extra']:.2f}x"
                if extra is not None and row_plain.get("extra")
                else "-"
            )
            print(
                f"| {name} | {variant} | {ms:.0f} | {ms / row_plain['ms']:.2f}x | {temp} | "
                f"{h.fmt_bytes(extra) if extra is not None else '-'} | "
                f"{f'{extra / input_bytes:.0%}' if extra is not None else '-'} | {ratio_rss} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
