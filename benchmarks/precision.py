"""Relative error of divergences between nearly identical distributions, against mpmath.

    python -m benchmarks.precision            # every catalog generator, eps = 1e-2 ... 1e-6

Logits ``a`` (standard normal, 8 x 1000) and ``b = a + eps * noise``: the regime of a converged
distillation run. The reference is each generator's textbook ``f`` in mpmath (40 digits,
``tests/_mp_reference.py``, independent of fdiv) on the same dtype-rounded logits; each result's
error is the largest relative error over the 8 rows, in float32 and in float64:

- ``fdiv``: ``fdiv.divergence``;
- ``plain``: ``sum q f(p/q)`` composed from two ``log_softmax`` and ``g.f`` (the textbook recipe);
- ``optax`` (KL only): ``optax.losses.kl_divergence_with_log_targets``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import optax

import fdiv
from fdiv import generators
from tests._mp_reference import SPECS, mp_softmax


def plain(g, a, b):
    lp, lq = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
    c = g.f_prime_at_one
    u = lp - lq
    return jnp.sum(jnp.exp(lq) * (g.f(u) - c * jnp.expm1(u)), axis=-1)


def reference(f, a, b) -> np.ndarray:
    with mp.workdps(40):
        out = []
        for xa, xb in zip(a.tolist(), b.tolist(), strict=True):
            p, q = mp_softmax(xa), mp_softmax(xb)
            out.append(float(mp.fsum(qk * f(pk / qk) for pk, qk in zip(p, q, strict=True))))
    return np.array(out)


def rel(got, ref):
    got = np.asarray(got, np.float64)
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


def errors(g, f, name, a, b, dtype) -> list[str]:
    """fdiv / plain / optax relative errors for one dtype (as table cells)."""
    a, b = a.astype(dtype), b.astype(dtype)
    ref = reference(f, a, b)
    with jax.enable_x64(dtype == np.float64):
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        cells = [f"{rel(fdiv.divergence(g, ja, jb), ref):.1e}", f"{rel(plain(g, ja, jb), ref):.1e}"]
        if name == "kl":
            lp, lq = jax.nn.log_softmax(ja), jax.nn.log_softmax(jb)
            cells.append(f"{rel(optax.losses.kl_divergence_with_log_targets(lq, lp), ref):.1e}")
        else:
            cells.append("—")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eps", default="1e-2,1e-3,1e-4,1e-5,1e-6")
    parser.add_argument("--names", default=",".join(generators.names()))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 1000))
    noise = rng.standard_normal((8, 1000))
    print(
        "| generator | eps | fdiv f32 | plain f32 | optax f32 | fdiv f64 | plain f64 | optax f64 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.names.split(","):
        g = generators.get(name)
        f = SPECS[(name, tuple(sorted(g.params.items())))]
        for eps in map(float, args.eps.split(",")):
            b = a + eps * noise
            cells = errors(g, f, name, a, b, np.float32) + errors(g, f, name, a, b, np.float64)
            print(f"| {g!r} | {eps:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
