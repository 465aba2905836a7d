"""What sampling and exact evaluation cost in the LM alignment experiments, against teacher forcing.

    python -m benchmarks.lm_sampling
    python -m benchmarks.lm_sampling --batch 256 --repeats 5

The model is the configs' CausalTransformer (dim 64, 2 layers, 4 tokens + a backspace, length 5).
Baseline: scoring a batch of sequences by teacher forcing (one forward pass). Against it: the
shared sampler without a backspace (5 steps, the model re-run on the whole buffer each step) and
with one (10 steps), exact enumeration of all 4^5 sequences, and the dynamic program that gives a
backspace policy's exact outcome distribution, next to a 16,384-sample Monte Carlo estimate of it.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks._harness import time_interleaved
from fdiv.models import sampling
from fdiv.models.transformer import CausalTransformer

V, L = 4, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    module = CausalTransformer(num_actions=V + 1, vocab_size=V, max_len=L, dim=64, num_layers=2)
    params = module.init(
        jax.random.key(0), jnp.zeros((1,), jnp.int32), jnp.zeros((1, L), jnp.int32)
    )
    fn = lambda c, t: module.apply(params, c, t)  # noqa: E731
    tokens_only = lambda c, t: fn(c, t)[..., :V]  # noqa: E731
    B = args.batch
    ctx = jnp.zeros((B,), jnp.int32)
    seqs = jax.random.randint(jax.random.key(1), (B, L), 0, V)
    mc = 16_384

    score = jax.jit(lambda t: jnp.sum(sampling.token_log_probs(tokens_only(ctx, t), t), -1))
    plain = jax.jit(lambda k: sampling.sample(tokens_only, k, ctx, length=L).tokens)
    backspace = jax.jit(
        lambda k: sampling.sample(fn, k, ctx, length=L, backspace=V, max_actions=2 * L).tokens
    )
    monte_carlo = jax.jit(
        lambda k: (
            sampling.sample(
                fn, k, jnp.zeros((mc,), jnp.int32), length=L, backspace=V, max_actions=2 * L
            ).tokens
        )
    )
    key = jax.random.key(2)
    times = time_interleaved(
        {
            "teacher forcing": lambda: score(seqs),
            "sample, no backspace": lambda: plain(key),
            "sample, backspace": lambda: backspace(key),
            "enumerate 4^5": lambda: sampling.enumerate_log_probs(
                tokens_only, [0], vocab_size=V, length=L
            ),
            "outcome DP (exact)": lambda: (
                sampling.final_distribution(
                    fn, 0, vocab_size=V, length=L, backspace=V, max_actions=2 * L
                ).log_probs
            ),
            f"Monte Carlo, {mc:,} samples": lambda: monte_carlo(key),
        },
        repeats=args.repeats,
    )
    base = times["teacher forcing"]
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}); batch {B}; medians of {args.repeats}"
    )
    print("| operation | ms | x teacher forcing |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / base:.1f} |")


if __name__ == "__main__":
    main()
