"""The tiny causal transformer, the shared sampler, exact enumeration and the synthetic languages:
sampled frequencies against exact enumeration, the dynamic program against the sampler, the
Markov language against a hand product of its probabilities."""

import itertools
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from fdiv.data import language as lang
from fdiv.models import sampling
from fdiv.models.transformer import CausalTransformer

V, L = 3, 4


@pytest.fixture(scope="module")
def policy():
    """A random transformer with V tokens + a backspace, weights scaled up so it is far from uniform."""
    module = CausalTransformer(num_actions=V + 1, vocab_size=V, num_contexts=2, max_len=L, dim=16)
    variables = module.init(
        jax.random.key(0), jnp.zeros((1,), jnp.int32), jnp.zeros((1, L), jnp.int32)
    )
    variables = jax.tree.map(lambda x: x * 25 if x.ndim == 2 else x, variables)
    # Jitted: the samplers and enumerations call it outside any jit (op by op, every primitive
    # compiles on its own); inside a jitted sampler it is inlined.
    return jax.jit(lambda c, t: module.apply(variables, c, t))


def test_transformer_is_causal_and_shaped(policy):
    tokens = jnp.array([[0, 1, 2, 1], [2, 2, 0, 0]])
    logits = policy(jnp.array([0, 1]), tokens)
    assert logits.shape == (2, L + 1, V + 1)
    for t in range(L):
        changed = tokens.at[:, t:].set((tokens[:, t:] + 1) % V)
        np.testing.assert_allclose(
            policy(jnp.array([0, 1]), changed)[:, : t + 1], logits[:, : t + 1], atol=1e-5
        )
    assert not np.allclose(policy(jnp.array([1, 0]), tokens)[:, 0], logits[:, 0])  # context is used


def test_transformer_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        CausalTransformer(num_actions=3, vocab_size=3, dim=10, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        CausalTransformer(num_actions=3, vocab_size=0)
    module = CausalTransformer(num_actions=3, vocab_size=3, max_len=2, dim=8)
    with pytest.raises(ValueError, match="max_len"):
        module.init(jax.random.key(0), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 3), jnp.int32))


def test_all_sequences_and_index():
    seqs = sampling.all_sequences(V, L)
    assert seqs.shape == (V**L, L)
    assert [tuple(s) for s in seqs] == list(itertools.product(range(V), repeat=L))
    np.testing.assert_array_equal(sampling.sequence_index(seqs, V), np.arange(V**L))


def test_enumeration_matches_teacher_forcing_by_hand(policy):
    tokens_only = lambda c, t: policy(c, t)[..., :V]  # noqa: E731
    log_p = np.asarray(sampling.enumerate_log_probs(tokens_only, [0, 1], vocab_size=V, length=L))
    np.testing.assert_allclose(np.logaddexp.reduce(log_p, axis=1), 0.0, atol=1e-5)
    # one sequence by hand: product of the per-position softmax probabilities
    y = np.array([2, 0, 1, 1])
    logits = np.asarray(tokens_only(jnp.array([1]), jnp.asarray(y[None])), np.float64)[0]
    by_hand = sum(logits[t, y[t]] - np.log(np.exp(logits[t]).sum()) for t in range(L))
    np.testing.assert_allclose(log_p[1, sampling.sequence_index(y, V)], by_hand, atol=1e-4)


def test_sampler_frequencies_and_log_probs_match_enumeration(policy):
    tokens_only = lambda c, t: policy(c, t)[..., :V]  # noqa: E731
    n = 20_000
    roll = jax.jit(lambda k: sampling.sample(tokens_only, k, jnp.ones(n, jnp.int32), length=L))(
        jax.random.key(1)
    )
    assert roll.active.all() and (roll.length == L).all()
    exact = np.exp(
        np.asarray(sampling.enumerate_log_probs(tokens_only, [1], vocab_size=V, length=L)[0])
    )
    idx = np.asarray(sampling.sequence_index(roll.tokens, V))
    freq = np.bincount(idx, minlength=V**L) / n
    se = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(freq - exact) <= 5 * se + 1e-4)
    np.testing.assert_allclose(np.asarray(roll.log_prob).sum(1), np.log(exact[idx]), atol=1e-4)


def test_final_distribution_without_backspace_is_the_enumeration(policy):
    tokens_only = lambda c, t: policy(c, t)[..., :V]  # noqa: E731
    exact = np.asarray(sampling.enumerate_log_probs(tokens_only, [0], vocab_size=V, length=L)[0])
    final = sampling.final_distribution(tokens_only, 0, vocab_size=V, length=L)
    np.testing.assert_allclose(final.log_probs, exact, atol=1e-4)
    assert final.incomplete == 0.0


def test_backspace_sampler_matches_the_dynamic_program(policy):
    n, steps = 20_000, 7
    roll = jax.jit(
        lambda k: sampling.sample(
            policy, k, jnp.zeros(n, jnp.int32), length=L, backspace=V, max_actions=steps
        )
    )(jax.random.key(2))
    action, active, size = map(np.asarray, (roll.action, roll.active, roll.prefix_length))
    assert not np.any((action == V) & active & (size == 0))  # never a backspace at the empty state
    assert np.any((action == V) & active)  # the test exercises backspaces
    final = sampling.final_distribution(
        policy, 0, vocab_size=V, length=L, backspace=V, max_actions=steps
    )
    done = np.asarray(roll.length) == L
    se = math.sqrt(final.incomplete * (1 - final.incomplete) / n)
    assert abs((1 - done.mean()) - final.incomplete) <= 5 * se + 1e-4
    freq = (
        np.bincount(np.asarray(sampling.sequence_index(roll.tokens, V))[done], minlength=V**L) / n
    )
    exact = np.exp(final.log_probs)
    assert np.all(np.abs(freq - exact) <= 5 * np.sqrt(exact * (1 - exact) / n) + 2e-4)
    # replaying the actions from the empty state reproduces the recorded prefixes and the result
    for b in range(50):
        state = []
        for s in range(steps):
            assert list(np.asarray(roll.prefix[b, s, : len(state)])) == state
            assert int(roll.prefix_length[b, s]) == len(state)
            if active[b, s]:
                state = state[:-1] if action[b, s] == V else state + [int(action[b, s])]
        assert list(np.asarray(roll.tokens[b, : len(state)])) == state


def test_start_state_and_prefix_agree(policy):
    start = np.array([2, 1])
    n, steps = 20_000, 6
    roll = sampling.sample(
        policy, jax.random.key(3), jnp.zeros(n, jnp.int32), length=L, backspace=V, max_actions=steps,
        prefix=jnp.tile(jnp.array([2, 1, 0, 0]), (n, 1)), prefix_length=jnp.full((n,), 2),
    )  # fmt: skip
    final = sampling.final_distribution(
        policy, 0, vocab_size=V, length=L, backspace=V, max_actions=steps, start=start
    )
    done = np.asarray(roll.length) == L
    freq = (
        np.bincount(np.asarray(sampling.sequence_index(roll.tokens, V))[done], minlength=V**L) / n
    )
    exact = np.exp(final.log_probs)
    assert np.all(np.abs(freq - exact) <= 5 * np.sqrt(exact * (1 - exact) / n) + 2e-4)


def test_sampler_argument_errors(policy):
    with pytest.raises(ValueError, match="temperature"):
        sampling.sample(
            policy, jax.random.key(0), jnp.zeros(2, jnp.int32), length=L, temperature=0.0
        )
    with pytest.raises(ValueError, match="max_actions"):
        sampling.sample(policy, jax.random.key(0), jnp.zeros(2, jnp.int32), length=L, max_actions=9)


def test_markov_language_probabilities_by_hand():
    language = lang.markov_language(4, seed=3, forbidden_per_token=1)
    np.testing.assert_allclose(language.transition.sum(-1), 1.0)
    assert ((language.transition == 0).sum(-1) == 1).all()
    seqs = sampling.all_sequences(4, 5)
    log_p = language.log_prob(seqs)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0)
    y = seqs[417]
    by_hand = 0.25 * np.prod([language.transition[y[t - 1], y[t]] for t in range(1, 5)])
    np.testing.assert_allclose(np.exp(log_p[417]), by_hand)
    forbidden = any(language.transition[y[t - 1], y[t]] == 0 for t in range(1, 5))
    assert language.is_valid(y[None])[0] == (not forbidden)
    assert set(language.forbidden_next(2)) == set(np.flatnonzero(language.transition[2] == 0))
    samples = language.sample(np.random.default_rng(0), 50_000, 5)
    assert language.is_valid(samples).all()
    freq = np.bincount(sampling.sequence_index(samples, 4), minlength=4**5) / 50_000
    p = np.exp(log_p)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / 50_000) + 1e-4)


def test_tasks_by_hand():
    y = np.array([[0, 0, 1, 3], [1, 2, 3, 0], [0, 3, 3, 3]])
    np.testing.assert_array_equal(
        lang.count_constraint(y, token=0, minimum=2), [True, False, False]
    )
    np.testing.assert_allclose(lang.unigram_reward(y, [1.0, 0.5, 0.0, -1.0]), [1.5, 0.5, -2.0])
    np.testing.assert_array_equal(lang.sum_task_correct(y, [4, 6, 9]), [True, True, True])
    # 4 tokens over {0..3} summing to 6: 44 compositions (coefficient of x^6 in (1+x+x^2+x^3)^4)
    seqs = sampling.all_sequences(4, 4)
    assert lang.sum_task_correct(seqs, 6).sum() == 44
    rng = np.random.default_rng(0)
    labels = lang.bradley_terry_labels(rng, np.full(100_000, 1.0), np.zeros(100_000))
    assert abs(labels.mean() - 1 / (1 + math.exp(-1))) < 0.005
    with pytest.raises(ValueError, match="forbidden_per_token"):
        lang.markov_language(3, forbidden_per_token=3)


@pytest.mark.parametrize("divergence", ["forward_kl", "js"])
def test_fdpg_estimator_on_the_transformer_matches_the_exact_gradient(divergence):
    """The f-DPG surrogate's gradient, averaged over sampled sequences of the transformer itself,
    against jax.grad of the exact D_f(pi_theta || p) over all V^L sequences (p: a constraint
    target). Tolerance: 5 standard errors of the mean, from 8 independent batches."""
    import fdiv
    from fdiv.losses import policy as policy_losses

    v, length = 3, 3
    module = CausalTransformer(num_actions=v, vocab_size=v, max_len=length, dim=8, num_heads=2)
    params = module.init(
        jax.random.key(4), jnp.zeros((1,), jnp.int32), jnp.zeros((1, length), jnp.int32)
    )
    params = jax.tree.map(lambda x: x * 10 if x.ndim == 2 else x, params)
    seqs = sampling.all_sequences(v, length)
    ok = lang.count_constraint(seqs, token=0, minimum=1)
    log_a = np.log(np.arange(1, v**length + 1) / np.arange(1, v**length + 1).sum())
    log_p = jnp.asarray(np.where(ok, log_a, -np.inf) - np.logaddexp.reduce(log_a[ok]), jnp.float32)
    g = policy_losses.alignment_generator(divergence)
    ctx1 = jnp.zeros((1,), jnp.int32)

    def exact(p):
        log_pi = sampling.enumerate_log_probs(
            lambda c, t: module.apply(p, c, t), ctx1, vocab_size=v, length=length
        )[0]
        return fdiv.divergence(g, log_pi, log_p)  # D_f(pi || p)

    n = 10_000
    ctx = jnp.zeros((n,), jnp.int32)

    @jax.jit
    def estimate(key):
        tokens = sampling.sample(
            lambda c, t: module.apply(params, c, t), key, ctx, length=length
        ).tokens
        target = log_p[sampling.sequence_index(tokens, v)]

        def surrogate(p):
            log_pi = jnp.sum(sampling.token_log_probs(module.apply(p, ctx, tokens), tokens), -1)
            return policy_losses.fdpg_loss(
                log_pi=log_pi, log_target=target, divergence=divergence, baseline=0.3
            )[0]

        return jax.flatten_util.ravel_pytree(jax.grad(surrogate)(params))[0]

    batches = np.stack([np.asarray(estimate(jax.random.key(10 + i))) for i in range(8)])
    truth = np.asarray(jax.flatten_util.ravel_pytree(jax.jit(jax.grad(exact))(params))[0])
    mean, se = batches.mean(0), batches.std(0, ddof=1) / np.sqrt(len(batches))
    assert np.linalg.norm(truth) > 1e-3  # a non-trivial gradient
    assert np.linalg.norm(mean - truth) < 5 * np.linalg.norm(se) + 1e-6
    assert np.dot(mean, truth) / (np.linalg.norm(mean) * np.linalg.norm(truth)) > 0.9
