"""Every catalogued f-divergence between two example categoricals, with its gradient.

    python -m experiments.demo

P has a zero-probability class (logit -inf) that Q covers, so you can see which divergences stay
finite (KL(P||Q), the bounded ones) and which do not (reverse KL, Neyman, Jeffreys), and that
gradients at the -inf logit are exactly 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fdiv

P_PROBS = np.array([0.5, 0.3, 0.2, 0.0])
Q_PROBS = np.array([0.25, 0.25, 0.25, 0.25])


def table() -> str:
    p_logits = jnp.log(jnp.asarray(P_PROBS, jnp.float32))  # log 0 = -inf: an exact zero class
    q_logits = jnp.log(jnp.asarray(Q_PROBS, jnp.float32))
    grad_q = jax.grad(lambda q, g: fdiv.divergence(g, p_logits, q), argnums=0)
    rows = [
        f"P = {P_PROBS.tolist()}, Q = {Q_PROBS.tolist()}",
        "",
        "| generator | D(P‖Q) | D(Q‖P) | d D(P‖Q) / d q_logits | bounded |",
        "|---|---|---|---|---|",
    ]
    for name in fdiv.generators.names():
        g = fdiv.generators.get(name)
        forward = float(fdiv.divergence(g, p_logits, q_logits))
        backward = float(fdiv.divergence(g, q_logits, p_logits))
        grad = np.asarray(grad_q(q_logits, g))
        grad_txt = "[" + ", ".join(f"{x:+.4f}" for x in grad) + "]"
        if not np.isfinite(forward):
            grad_txt = "— (the value is +inf)"
        rows.append(f"| {g!r} | {forward:.6f} | {backward:.6f} | {grad_txt} | {g.bounded} |")
    return "\n".join(rows)


def main() -> None:
    print(table())


if __name__ == "__main__":
    main()
