"""Relative error of divergences between nearly identical distributions, float32 vs float64.

    python -m benchmarks.precision            # every catalog generator, eps = 1e-2 ... 1e-6

Logits ``a`` (standard normal, 8 x 1000) and ``b = a + eps * noise``: the regime of a converged
distillation run. The reference is ``fdiv.divergence`` in float64 on the same (float32-rounded)
logits; each float32 result is compared with it, as the largest relative error over the 8 rows:

- ``fdiv``: ``fdiv.divergence`` in float32;
- ``plain``: ``sum q f(p/q)`` composed from two ``log_softmax`` and ``g.f`` (the textbook recipe);
- ``optax`` (KL only): ``optax.losses.kl_divergence_with_log_targets``.

The float64 reference itself is checked against a float64 plain composition (``ref-check``).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fdiv
from fdiv import generators


def plain(g, a, b):
    lp, lq = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
    c = g.f_prime_at_one
    u = lp - lq
    return jnp.sum(jnp.exp(lq) * (g.f(u) - c * jnp.expm1(u)), axis=-1)


def rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eps", default="1e-2,1e-3,1e-4,1e-5,1e-6")
    parser.add_argument("--names", default=",".join(generators.names()))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 1000)).astype(np.float32)
    noise = rng.standard_normal((8, 1000)).astype(np.float32)
    print("| generator | eps | fdiv f32 | plain f32 | optax f32 | ref-check f64 |")
    print("|---|---|---|---|---|---|")
    for name in args.names.split(","):
        g = generators.get(name)
        for eps in map(float, args.eps.split(",")):
            b = (a + np.float32(eps) * noise).astype(np.float32)
            with jax.enable_x64(True):
                a64, b64 = jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64)
                ref = np.asarray(fdiv.divergence(g, a64, b64))
                check = rel(plain(g, a64, b64), ref)
            a32, b32 = jnp.asarray(a), jnp.asarray(b)
            ours = rel(fdiv.divergence(g, a32, b32), ref)
            composed = rel(plain(g, a32, b32), ref)
            ox = "—"
            if name == "kl":
                lp, lq = jax.nn.log_softmax(a32), jax.nn.log_softmax(b32)
                ox = f"{rel(optax.losses.kl_divergence_with_log_targets(lq, lp), ref):.1e}"
            print(f"| {g!r} | {eps:g} | {ours:.1e} | {composed:.1e} | {ox} | {check:.1e} |")


if __name__ == "__main__":
    main()
