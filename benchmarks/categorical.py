"""fdiv.divergence vs a plain jnp composition under jax.jit: forward + backward, time and memory.

    python -m benchmarks.categorical                  # [2048, 32000] float32, the README table
    python -m benchmarks.categorical --n 512 --v 8000       # quick look

For each divergence both versions compute the value and the gradient w.r.t. both logits
(``jax.value_and_grad(..., argnums=(0, 1))``) under ``jax.jit``. Ratios are fdiv / plain, measured
side by side in this process: median wall time, and XLA's count of temporary buffers of the
compiled step (its peak working memory beyond inputs and outputs). ``--rss`` adds peak RSS of fresh
child processes above a child that only holds the inputs and two gradient-sized outputs.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp

import fdiv
from benchmarks import _harness as h

LOG2 = math.log(2.0)


def plain_js(p_logits, q_logits):
    lp, lq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    lm = jnp.logaddexp(lp, lq) - LOG2
    return 0.5 * jnp.sum(jnp.exp(lp) * (lp - lm) + jnp.exp(lq) * (lq - lm), axis=-1)


def plain_kl(p_logits, q_logits):
    lp, lq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def plain_hellinger(p_logits, q_logits):
    lp, lq = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
    return jnp.sum(jnp.square(jnp.exp(0.5 * lp) - jnp.exp(0.5 * lq)), axis=-1)


CASES = {
    "js": plain_js,
    "kl": plain_kl,
    "squared_hellinger": plain_hellinger,
}


def step_fn(kind: str, name: str):
    if kind == "plain":
        loss_fn = CASES[name]
    else:
        loss_fn = lambda p, q: fdiv.divergence(name, p, q)
    return jax.jit(jax.value_and_grad(lambda p, q: jnp.sum(loss_fn(p, q)), argnums=(0, 1)))


def inputs(n: int, v: int):
    kp, kq = jax.random.split(jax.random.key(0))
    return 3.0 * jax.random.normal(kp, (n, v)), 3.0 * jax.random.normal(kq, (n, v))


def child(variant: str, n: int, v: int) -> None:
    p, q = inputs(n, v)
    jax.block_until_ready((p, q))
    if variant == "baseline":
        out = (jnp.zeros_like(p) + 1.0, jnp.zeros_like(q) + 1.0)
    else:
        kind, name = variant.split(":")
        out = step_fn(kind, name)(p, q)
    jax.block_until_ready(out)
    print(json.dumps({"peak_rss": h.peak_rss_bytes()}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--v", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--rss",
        action="store_true",
        help="also measure peak RSS in child processes (on this CPU it did not discriminate: "
        "every variant, plain or fdiv, showed the same +1,771 MiB over the baseline child)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.v)
        return

    p, q = inputs(args.n, args.v)
    input_bytes = 2 * p.size * p.dtype.itemsize
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; logits [{args.n}, {args.v}] float32 "
        f"(inputs {h.fmt_bytes(input_bytes)}); value + grad w.r.t. both logits, jitted"
    )
    base_rss = None
    if args.rss:
        base_rss = h.run_child(
            "benchmarks.categorical", "baseline", "--n", str(args.n), "--v", str(args.v)
        )
    header = "| divergence | plain ms | fdiv ms | time ratio | plain temp | fdiv temp |"
    header += "" if not args.rss else " plain extra RSS | fdiv extra RSS | RSS ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in CASES:
        row = {}
        for kind in ("plain", "fdiv"):
            fn = step_fn(kind, name)
            row[kind] = {
                "ms": 1e3 * h.time_call(fn, p, q, repeats=args.repeats),
                "temp": h.temp_bytes(fn, p, q),
            }
            if base_rss is not None:
                rss = h.run_child(
                    "benchmarks.categorical",
                    f"{kind}:{name}",
                    "--n",
                    str(args.n),
                    "--v",
                    str(args.v),
                )
                row[kind]["extra"] = rss["peak_rss"] - base_rss["peak_rss"]
        line = (
            f"| {name} | {row['plain']['ms']:.0f} | {row['fdiv']['ms']:.0f} | "
            f"{row['fdiv']['ms'] / row['plain']['ms']:.2f}x | {h.fmt_bytes(row['plain']['temp'])} | "
            f"{h.fmt_bytes(row['fdiv']['temp'])} |"
        )
        if base_rss is not None:
            pe, fe = row["plain"]["extra"], row["fdiv"]["extra"]
            line += f" {h.fmt_bytes(pe)} | {h.fmt_bytes(fe)} | {fe / pe:.2f}x |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
