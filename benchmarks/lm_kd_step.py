"""One token-level KD step of a language-model head at V = 32k: fused vs materialised logits.

    python -m benchmarks.lm_kd_step                          # N = 2048 tokens, H = 256, V = 32768
    python -m benchmarks.lm_kd_step --n 512 --v 8192 --no-rss # quick look

The step is what a distillation update computes: student hidden states ``h = tanh(x W_in)``
(a one-layer trunk, so the gradient flows through the head into a trunk), the student logits
``h W_out^T`` over ``V`` tokens, the forward KL to the teacher's next-token distribution averaged
over the ``N`` tokens, and its gradient w.r.t. ``(W_in, W_out)``. Variants:

- ``plain``: logits materialised, ``sum p (log p - log_softmax(logits))`` in jnp, autodiff;
- ``optax``: logits materialised, ``optax.losses.kl_divergence`` (its ``(log q, p)`` convention);
- ``fused``: ``fdiv.fused.fused_linear_divergence`` with the teacher's logits as data: the
  student's ``[N, V]`` logits are formed a row chunk at a time and never exist in full;
- ``fused-topk``: the same with the teacher stored as its top-64 log-probs and a tail bucket
  (``TopKTeacher``), as a KD pipeline caches it;
- ``fused-pair``: the teacher given as ``(hidden, W_out)`` of a wider head, its logits also formed
  per chunk (teacher and student heads fused in one pass).

Time: median of interleaved repeats after a warm-up, in this process. Memory: as in
``benchmarks/fused.py`` (a fresh child per variant; the step's peak-RSS rise above the RSS just
before it, minus that of a child whose step only writes gradient-sized outputs), and XLA's
temporary-buffer bytes of the compiled step. Ratios are against ``plain``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _harness as h
from fdiv.fused import TopKTeacher, fused_linear_divergence

VARIANTS = ("plain", "optax", "fused", "fused-topk", "fused-pair")
TOP_K = 64
D_IN = 128  # trunk input width
TEACHER_H = 512  # the fused-pair teacher head's width


def inputs(n: int, v: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n, D_IN)).astype(np.float32),
        "w_in": (rng.normal(size=(D_IN, hidden)) / np.sqrt(D_IN)).astype(np.float32),
        "w_out": (rng.normal(size=(v, hidden)) / np.sqrt(hidden)).astype(np.float32),
        "t_hidden": rng.normal(size=(n, TEACHER_H)).astype(np.float32),
        "t_out": (2.0 * rng.normal(size=(v, TEACHER_H)) / np.sqrt(TEACHER_H)).astype(np.float32),
    }


def teacher_data(variant: str, arrays) -> object:
    """The teacher as the variant reads it (computed once, outside the timed step)."""
    logits = arrays["t_hidden"] @ arrays["t_out"].T
    if variant == "fused-pair":
        return (arrays["t_hidden"], arrays["t_out"])
    if variant == "fused-topk":
        log_p = jax.nn.log_softmax(jnp.asarray(logits))
        values, indices = jax.lax.top_k(log_p, TOP_K)
        return TopKTeacher(indices, values)
    return jnp.asarray(logits)


def loss_fn(variant: str):
    def student_hidden(params, x):
        return jnp.tanh(x @ params["w_in"])

    if variant == "plain":

        def loss(params, x, teacher):
            logits = student_hidden(params, x) @ params["w_out"].T
            lp = jax.nn.log_softmax(teacher)
            return jnp.mean(jnp.sum(jnp.exp(lp) * (lp - jax.nn.log_softmax(logits)), axis=-1))

    elif variant == "optax":

        def loss(params, x, teacher):
            logits = student_hidden(params, x) @ params["w_out"].T
            return jnp.mean(
                optax.losses.kl_divergence(jax.nn.log_softmax(logits), jax.nn.softmax(teacher))
            )

    else:

        def loss(params, x, teacher):
            return fused_linear_divergence(
                "kl", student_hidden(params, x), params["w_out"], teacher
            )

    return loss


def step_fn(variant: str):
    return jax.jit(jax.value_and_grad(loss_fn(variant)))


def child(variant: str, n: int, v: int, hidden: int) -> None:
    """One step in a fresh process: its peak-RSS rise above the RSS just before it."""
    arrays = inputs(n, v, hidden)
    params = {"w_in": jnp.asarray(arrays["w_in"]), "w_out": jnp.asarray(arrays["w_out"])}
    x = jnp.asarray(arrays["x"])
    teacher = teacher_data("plain" if variant == "baseline" else variant, arrays)
    del arrays
    jax.block_until_ready(jax.jit(lambda a: a[:1] + 1)(x))  # one-time runtime set-up, not measured
    if variant == "baseline":  # writes outputs of the gradient's size and nothing else
        fn = jax.jit(lambda p, x, t: (jnp.zeros(()), jax.tree.map(jnp.ones_like, p)))
    else:
        fn = step_fn(variant)
    compiled = fn.lower(params, x, teacher).compile()
    h.release_free_heap()
    h.reset_peak_rss()
    before = h.current_rss_bytes()
    out = jax.block_until_ready(compiled(params, x, teacher))
    print(json.dumps({"peak_rss": h.peak_rss_bytes() - before, "alive": out is not None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="tokens per step")
    parser.add_argument("--v", type=int, default=32768, help="vocabulary")
    parser.add_argument("--hidden", type=int, default=256, help="student hidden width")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-rss", action="store_true", help="skip the child-process memory runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = ("--n", str(args.n), "--v", str(args.v), "--hidden", str(args.hidden))
    if args.child:
        child(args.child, args.n, args.v, args.hidden)
        return

    arrays = inputs(args.n, args.v, args.hidden)
    params = {"w_in": jnp.asarray(arrays["w_in"]), "w_out": jnp.asarray(arrays["w_out"])}
    x = jnp.asarray(arrays["x"])
    teachers = {variant: teacher_data(variant, arrays) for variant in VARIANTS}
    steps = {variant: step_fn(variant) for variant in VARIANTS}

    # the fused value and gradients against the plain step's (the same KL; top-k is approximate)
    ref_value, ref_grads = steps["plain"](params, x, teachers["plain"])
    for variant in ("optax", "fused", "fused-pair"):
        value, grads = steps[variant](params, x, teachers[variant])
        err = max(
            float(jnp.max(jnp.abs(grads[k] - ref_grads[k])) / jnp.max(jnp.abs(ref_grads[k])))
            for k in grads
        )
        print(f"{variant}: loss {float(value):.6f} vs plain {float(ref_value):.6f}, max relative gradient difference {err:.1e}")  # fmt: skip

    times = h.time_interleaved(
        {v: (lambda v=v: steps[v](params, x, teachers[v])) for v in VARIANTS}, repeats=args.repeats
    )
    temps = {v: h.temp_bytes(jax.value_and_grad(loss_fn(v)), params, x, teachers[v]) for v in VARIANTS}  # fmt: skip
    rss = {}
    if not args.no_rss:
        base = h.run_child("benchmarks.lm_kd_step", "baseline", *size)["peak_rss"]
        rss = {v: h.run_child("benchmarks.lm_kd_step", v, *size)["peak_rss"] - base for v in VARIANTS}  # fmt: skip
    logits_bytes = args.n * args.v * 4
    print(
        f"\nN = {args.n} tokens, H = {args.hidden}, V = {args.v}: the student's logits are "
        f"{h.fmt_bytes(logits_bytes)} (float32)\n"
    )
    print("| variant | ms | time vs plain | XLA temp | temp vs plain | extra RSS | RSS vs plain |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        rss_cells = f"{h.fmt_bytes(rss[v])} | {rss[v] / rss['plain']:.2f}x" if rss else "- | -"
        print(
            f"| {v} | {1e3 * times[v]:.0f} | {times[v] / times['plain']:.2f}x | "
            f"{h.fmt_bytes(temps[v])} | {temps[v] / temps['plain']:.2f}x | {rss_cells} |"
        )


if __name__ == "__main__":
    main()
