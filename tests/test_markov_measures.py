"""Order-k Markov languages, their exact prefix conditionals (fdiv.data.language) and the Markov-
categorical measures (fdiv.analysis.markov) against independent references: brute-force
enumeration of whole sequences, hand products of transition probabilities, the information
quantities written out as numpy loops, the eigendecomposition of the predictive kernel and
scipy's subspace angles; plus the known cases (deterministic language: zero entropy; first-order
language: zero conditional information; a language whose next-token rows hide a state: positive
surplus)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import subspace_angles

from fdiv.analysis import markov as mk
from fdiv.data import language as lang


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------------------------------------
# References.
# ------------------------------------------------------------------------------------------------


def enumerate_language(language, length):
    """Every sequence of ``length`` (itertools order) and its probability."""
    v = language.vocab_size
    seqs = np.array(list(itertools.product(range(v), repeat=length)), np.int32)
    return seqs, np.exp(language.log_prob(seqs))


def prefix_mass(seqs, probs, prefix):
    prefix = np.asarray(prefix)
    return probs[(seqs[:, : len(prefix)] == prefix).all(-1)].sum()


def np_entropy(p):
    return -sum(pi * np.log(pi) for pi in p if pi > 0)


def np_cmi(joint):
    """I(R; B | A) = sum p(r,a,b) log[p(r,a,b) p(a) / (p(r,a) p(a,b))], a triple loop."""
    joint = joint / joint.sum()
    total = 0.0
    for r, a, b in itertools.product(*map(range, joint.shape)):
        if joint[r, a, b] > 0:
            p_a, p_ra, p_ab = joint[:, a].sum(), joint[r, a].sum(), joint[:, a, b].sum()
            total += joint[r, a, b] * np.log(joint[r, a, b] * p_a / (p_ra * p_ab))
    return total


def skip_language(v=3, seed=4):
    """Order 2, ``x_{t+1} ~ T[x_{t-1}]`` (the token two back only): its next-token distribution
    names ``x_{t-1}`` but not ``x_t``, on which the token after next depends."""
    rows = np.random.default_rng(seed).dirichlet(np.ones(v), size=v)
    transition = np.broadcast_to(rows[:, None, :], (v, v, v)).copy()
    return lang.NgramLanguage(np.full((v, v), 1.0 / v**2), transition), rows


def test_lagged_language_is_the_skip_language():
    """The library's constructor against the hand-built one above (same seed, same rows), and a
    lag-3 chain's rows depend on the oldest token only."""
    built, hand = lang.lagged_language(3, lag=2, seed=4), skip_language()[0]
    np.testing.assert_array_equal(built.transition, hand.transition)
    np.testing.assert_array_equal(built.initial, hand.initial)
    lag3 = lang.lagged_language(3, lag=3, seed=1)
    assert lag3.order == 3
    np.testing.assert_array_equal(lag3.transition[0, 1, 2], lag3.transition[0, 2, 0])
    assert not np.array_equal(lag3.transition[0, 1, 2], lag3.transition[1, 1, 2])
    with pytest.raises(ValueError, match="lag"):
        lang.lagged_language(3, lag=0)


# ------------------------------------------------------------------------------------------------
# fdiv.data.language: order-k languages and their prefixes.
# ------------------------------------------------------------------------------------------------


def test_ngram_language_probabilities_by_hand():
    g = lang.ngram_language(3, order=2, seed=1, forbidden_per_context=1)
    assert g.order == 2 and g.vocab_size == 3 and g.transition.shape == (3, 3, 3)
    np.testing.assert_allclose(g.transition.sum(-1), 1.0, rtol=1e-14)
    assert ((g.transition == 0).sum(-1) == 1).all()
    seqs, probs = enumerate_language(g, 5)
    y = seqs[137]
    by_hand = g.initial[y[0], y[1]] * np.prod([g.transition[y[t - 2], y[t - 1], y[t]] for t in range(2, 5)])  # fmt: skip
    np.testing.assert_allclose(probs[137], by_hand, rtol=1e-13)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-13)
    forbidden = [
        any(g.transition[s[t - 2], s[t - 1], s[t]] == 0 for t in range(2, 5)) for s in seqs
    ]
    np.testing.assert_array_equal(g.is_valid(seqs), ~np.array(forbidden))
    # a sequence shorter than the order: the marginal of the initial block
    np.testing.assert_allclose(np.exp(g.log_prob(np.array([[2]]))), [g.initial[2].sum()], rtol=1e-14)  # fmt: skip
    # samples: valid, the first three tokens at their probabilities
    samples = g.sample(np.random.default_rng(0), 20_000, 5)
    assert samples.shape == (20_000, 5) and samples.dtype == np.int32 and g.is_valid(samples).all()
    seqs3, probs3 = enumerate_language(g, 3)
    freq = (samples[:, None, :3] == seqs3[None]).all(-1).mean(0)
    assert (np.abs(freq - probs3) <= 4 * np.sqrt(probs3 / 20_000)).all()  # 0 where probs3 = 0
    # order 1 is the Markov language of the same seed
    m = lang.markov_language(4, seed=7, forbidden_per_token=1)
    g1 = lang.ngram_language(4, order=1, seed=7, forbidden_per_context=1)
    np.testing.assert_array_equal(g1.transition, m.transition)
    seqs, _ = enumerate_language(m, 3)
    np.testing.assert_allclose(g1.log_prob(seqs), m.log_prob(seqs), rtol=1e-14)  # -inf alike


@pytest.mark.parametrize("which", ["markov", "order2", "order3"])
def test_prefix_conditionals_and_joint_match_brute_force_enumeration(which):
    if which == "markov":
        language, k = lang.markov_language(3, seed=2, forbidden_per_token=1), 1
    elif which == "order2":
        language, k = lang.ngram_language(3, order=2, seed=3, forbidden_per_context=1), 2
    else:  # an initial block with a zero marginal: x_1 = 0 never starts a sequence
        g = lang.ngram_language(3, order=3, seed=5, forbidden_per_context=1)
        initial = g.initial.copy()
        initial[0] = 0.0
        language, k = g._replace(initial=initial / initial.sum()), 3
    v, length = 3, 4
    seqs, probs = enumerate_language(language, length)
    by_t = lang.prefix_conditionals(language, length)
    assert sorted(by_t) == [1, 2, 3]
    for t, (prefixes, p_prefix, cond) in by_t.items():
        assert prefixes.dtype == np.int32 and p_prefix.shape == (v**t,) and cond.shape == (v**t, v)
        np.testing.assert_array_equal(prefixes, list(itertools.product(range(v), repeat=t)))
        for i, prefix in enumerate(prefixes):
            mass = prefix_mass(seqs, probs, prefix)
            np.testing.assert_allclose(p_prefix[i], mass, rtol=1e-12, atol=1e-300)
            if mass > 0:
                want = [prefix_mass(seqs, probs, [*prefix, x]) / mass for x in range(v)]
            elif t >= k:  # undefined: the row its last k tokens select
                want = language.transition[tuple(prefix[t - k :])]
            else:  # undefined inside the initial block: uniform
                want = np.full(v, 1.0 / v)
            np.testing.assert_allclose(cond[i], want, rtol=1e-12, atol=1e-15)
    t = 2
    joint = lang.prefix_joint(language, t)
    assert joint.shape == (v**t, v, v)
    for i, prefix in enumerate(by_t[t].prefixes):
        for a, b in itertools.product(range(v), repeat=2):
            want = prefix_mass(seqs, probs, [*prefix, a, b])
            np.testing.assert_allclose(joint[i, a, b], want, rtol=1e-12, atol=1e-300)


# ------------------------------------------------------------------------------------------------
# (a) Entropy and the NLL decomposition.
# ------------------------------------------------------------------------------------------------


def test_a_deterministic_language_has_zero_conditional_entropy():
    cycle = np.eye(4)[[1, 2, 3, 0]]  # x_{t+1} = x_t + 1 mod 4
    m = lang.MarkovLanguage(np.full(4, 0.25), cycle)
    prefixes, w, cond = lang.prefix_conditionals(m, 3)[2]
    with np.errstate(divide="ignore"):
        log_cond = np.log(cond)
    assert np.all(np.asarray(mk.categorical_entropy(log_cond)) == 0.0)
    parts = mk.nll_decomposition(cond, log_cond, w)
    assert float(parts["data_entropy"]) == 0.0 and float(parts["kl"]) == 0.0
    assert float(parts["nll"]) == 0.0 and float(parts["model_entropy"]) == 0.0


def test_nll_decomposition_matches_its_definitions():
    rng = np.random.default_rng(0)
    n, v = 6, 4
    p = rng.dirichlet(np.ones(v), size=n)
    p[0, 1] = p[3, [0, 2]] = 0.0  # zeros in the data
    p /= p.sum(-1, keepdims=True)
    logits = rng.normal(size=(n, v))
    logits[3, 0] = -np.inf  # the model rules out a token the data never produces there
    weights = rng.random(n) * 7.0  # unnormalised
    parts = {key: float(val) for key, val in mk.nll_decomposition(p, logits, weights).items()}
    w = weights / weights.sum()
    q = np.exp(logits - logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    nll = -sum(w[c] * p[c, x] * np.log(q[c, x]) for c in range(n) for x in range(v) if p[c, x] > 0)
    kl = sum(w[c] * p[c, x] * np.log(p[c, x] / q[c, x]) for c in range(n) for x in range(v) if p[c, x] > 0)  # fmt: skip
    np.testing.assert_allclose(parts["nll"], nll, rtol=1e-13)
    np.testing.assert_allclose(parts["kl"], kl, rtol=1e-12)
    np.testing.assert_allclose(parts["data_entropy"], sum(w[c] * np_entropy(p[c]) for c in range(n)), rtol=1e-13)  # fmt: skip
    np.testing.assert_allclose(parts["model_entropy"], sum(w[c] * np_entropy(q[c]) for c in range(n)), rtol=1e-13)  # fmt: skip
    np.testing.assert_allclose(parts["nll"], parts["data_entropy"] + parts["kl"], rtol=1e-14)
    # the model is the data: no KL, the NLL is the data entropy
    with np.errstate(divide="ignore"):
        exact = {key: float(val) for key, val in mk.nll_decomposition(p, np.log(p), weights).items()}  # fmt: skip
    assert abs(exact["kl"]) < 1e-15
    jitted = jax.jit(mk.nll_decomposition)(p, logits, weights)
    np.testing.assert_allclose(float(jitted["nll"]), nll, rtol=1e-13)
    np.testing.assert_allclose(exact["nll"], exact["data_entropy"], rtol=1e-14)
    np.testing.assert_allclose(exact["model_entropy"], exact["data_entropy"], rtol=1e-14)
    # a token the data produces but the model rules out: infinite KL and NLL
    bad = logits.copy()
    bad[1, 2] = -np.inf
    parts = mk.nll_decomposition(p, bad, weights)
    assert np.isinf(float(parts["kl"])) and np.isinf(float(parts["nll"]))
    # a context of weight 0 contributes nothing, whatever its rows hold
    p_nan, logits_nan = np.vstack([p, np.full(v, np.nan)]), np.vstack([logits, np.full(v, -np.inf)])
    padded = mk.nll_decomposition(p_nan, logits_nan, np.append(weights, 0.0))
    np.testing.assert_allclose(float(padded["kl"]), kl, rtol=1e-12)
    np.testing.assert_allclose(float(padded["nll"]), nll, rtol=1e-13)


# ------------------------------------------------------------------------------------------------
# (b) Conditional mutual information and the information surplus.
# ------------------------------------------------------------------------------------------------


def test_conditional_mutual_information_matches_a_triple_loop():
    rng = np.random.default_rng(1)
    joint = rng.random((4, 3, 3))
    joint[rng.random(joint.shape) < 0.3] = 0.0  # exact zeros, whole (r, a) rows included
    joint[2, 1] = 0.0
    np.testing.assert_allclose(mk.conditional_mutual_information(joint), np_cmi(joint), rtol=1e-12)
    # R independent of B given A: p(r, a) p(b | a)
    p_ra = rng.dirichlet(np.ones(12)).reshape(4, 3)
    p_b_a = rng.dirichlet(np.ones(3), size=3)
    independent = p_ra[:, :, None] * p_b_a[None]
    assert abs(float(mk.conditional_mutual_information(independent))) < 1e-15
    # B a function of R within each A: I = H(B | A)
    copy = np.zeros((3, 2, 3))
    copy[[0, 1, 2], :, [0, 1, 2]] = 1.0 / 6
    np.testing.assert_allclose(mk.conditional_mutual_information(copy), np.log(3), rtol=1e-14)


def test_intrinsic_surplus_known_cases():
    # first order: X_{t+2} depends on the context only through X_{t+1}
    m = lang.markov_language(4, seed=0, forbidden_per_token=1)
    joint = lang.prefix_joint(m, 2)
    cond = lang.prefix_conditionals(m, 3)[2].conditionals
    parts = mk.exact_information_surplus(joint, np.arange(16), mk.row_labels(cond))
    assert abs(float(parts["hidden"])) < 1e-12 and abs(float(parts["surplus"])) < 1e-12
    # a generic order-2 language: the context informs X_{t+2}, but the (distinct) next-token rows
    # name the state (x_{t-1}, x_t), so the surplus over them is 0
    g = lang.ngram_language(3, order=2, seed=0)
    joint = lang.prefix_joint(g, 2)
    cond = lang.prefix_conditionals(g, 3)[2].conditionals
    labels = mk.row_labels(cond)
    assert len(set(labels.tolist())) == 9
    parts = mk.exact_information_surplus(joint, np.arange(9), labels)
    np.testing.assert_allclose(parts["hidden"], np_cmi(joint), rtol=1e-12)
    assert float(parts["hidden"]) > 0.05 and abs(float(parts["surplus"])) < 1e-12
    # next-token rows that hide x_t: surplus I(x_t; X_{t+2}) = H(mean_i T_i) - mean_i H(T_i)
    s, rows = skip_language()
    joint = lang.prefix_joint(s, 2)  # contexts (x_1, x_2); x_3 ~ T[x_1], x_4 ~ T[x_2]
    cond = lang.prefix_conditionals(s, 3)[2].conditionals
    labels = mk.row_labels(cond)  # equal exactly for the contexts of equal x_1
    np.testing.assert_array_equal(labels[:, None] == labels[None], np.kron(np.eye(3), np.ones((3, 3))) == 1)  # fmt: skip
    by_hand = np_entropy(rows.mean(0)) - np.mean([np_entropy(r) for r in rows])
    parts = mk.exact_information_surplus(joint, np.arange(9), labels)
    np.testing.assert_allclose(parts["surplus"], by_hand, rtol=1e-12)
    np.testing.assert_allclose(parts["hidden"], by_hand, rtol=1e-12)
    assert abs(float(parts["head"])) < 1e-15
    # the merge by label is the CMI of the summed rows: x_2 alone carries it all
    merged = joint.reshape(3, 3, 3, 3).sum(0)
    only_x2 = mk.exact_information_surplus(joint, np.tile(np.arange(3), 3), np.zeros(9, int))
    np.testing.assert_allclose(only_x2["hidden"], np_cmi(merged), rtol=1e-12)
    np.testing.assert_allclose(only_x2["surplus"], by_hand, rtol=1e-12)
    jitted = jax.jit(mk.exact_information_surplus)(joint, np.arange(9), labels)
    np.testing.assert_allclose(jitted["surplus"], by_hand, rtol=1e-12)


def test_row_labels_merge_equal_rows_only():
    x = np.array([[0.1, 0.9], [0.3, 0.7], [0.1 + 1e-15, 0.9 - 1e-15], [0.3, 0.7]])
    np.testing.assert_array_equal(mk.row_labels(x), [0, 1, 0, 1])
    np.testing.assert_array_equal(mk.row_labels(np.array([[0.0], [-1e-20], [1.0]])), [0, 0, 1])
    np.testing.assert_array_equal(mk.row_labels(x, decimals=0), [0, 0, 0, 0])


def probe_split(language, rng, features_of, n=4000):
    """Features of the context (x_1, x_2), next x_3, target x_4: train and test halves."""
    seqs = language.sample(rng, 2 * n, 4)
    feats = features_of(seqs)
    halves = [slice(0, n), slice(n, 2 * n)]
    return [a for h in halves for a in (feats[h], seqs[h, 2], seqs[h, 3])]


def test_probe_estimates_the_conditional_information():
    onehot_x2 = lambda seqs: np.eye(3)[seqs[:, 1]]  # noqa: E731
    noise = lambda seqs: np.random.default_rng(9).normal(size=(len(seqs), 3))  # noqa: E731
    g = lang.ngram_language(3, order=2, seed=0)
    seqs, probs = enumerate_language(g, 4)
    exact = np_cmi(probs.reshape(9, 3, 3))  # I((x_1, x_2); x_4 | x_3)
    informative = mk.probe_conditional_information(*probe_split(g, np.random.default_rng(0), onehot_x2), num_classes=3)  # fmt: skip
    blind = mk.probe_conditional_information(*probe_split(g, np.random.default_rng(0), noise), num_classes=3)  # fmt: skip
    assert exact > 0.1
    np.testing.assert_allclose(informative["information"], exact, atol=0.03)
    assert abs(float(blind["information"])) < 0.01
    np.testing.assert_allclose(informative["baseline_ce"], blind["baseline_ce"], rtol=1e-14)
    # the surplus estimate: probe CE from the next-token distribution minus from the hidden state
    s, rows = skip_language()
    seqs, probs = enumerate_language(s, 4)
    surplus = np_cmi(probs.reshape(9, 3, 3)) - np_cmi(probs.reshape(3, 3, 3, 3).sum(1))
    q_features = lambda seqs: rows[seqs[:, 0]]  # noqa: E731  # p(x_3 | x_1, x_2) = T[x_1]
    h = mk.probe_conditional_information(*probe_split(s, np.random.default_rng(1), onehot_x2), num_classes=3)  # fmt: skip
    q = mk.probe_conditional_information(*probe_split(s, np.random.default_rng(1), q_features), num_classes=3)  # fmt: skip
    assert surplus > 0.05
    np.testing.assert_allclose(float(q["probe_ce"] - h["probe_ce"]), surplus, atol=0.03)


# ------------------------------------------------------------------------------------------------
# (c) The predictive similarity spectrum and spectral alignment.
# ------------------------------------------------------------------------------------------------


def np_spectrum(p, w):
    """Eigendecomposition of K[c, c'] = sqrt(w_c w_c') sum_x p(x|c) p(x|c') / p(x), descending."""
    w = w / w.sum()
    marginal = w @ p
    k = np.sqrt(np.outer(w, w)) * ((p / marginal) @ p.T)
    values, vectors = np.linalg.eigh(k)
    return values[::-1], vectors[:, ::-1]


def np_weighted_centred(h, w):
    w = w / w.sum()
    return np.sqrt(w)[:, None] * (h - w @ h)


def language_contexts(t=2):
    g = lang.ngram_language(4, order=2, seed=6, concentration=0.5, forbidden_per_context=1)
    _, w, p = lang.prefix_conditionals(g, t + 1)[t]
    return p, w


def test_spectrum_is_the_eigendecomposition_of_the_predictive_kernel():
    p, _ = language_contexts()
    w = np.random.default_rng(2).dirichlet(np.ones(16))  # non-uniform contexts
    values, vectors = np_spectrum(p, w)
    np.testing.assert_allclose(values[0], 1.0, rtol=1e-12)  # the trivial direction sqrt(w)
    np.testing.assert_allclose(np.abs(vectors[:, 0]), np.sqrt(w), rtol=1e-10)
    spectrum = mk.predictive_similarity_spectrum(p, w, 3)
    assert spectrum.vectors.shape == (16, 3)
    np.testing.assert_allclose(np.square(spectrum.values), values[1:4], rtol=1e-10)
    assert np.max(subspace_angles(np.asarray(spectrum.vectors), vectors[:, 1:4])) < 1e-8
    np.testing.assert_allclose(np.sqrt(w) @ np.asarray(spectrum.vectors), 0.0, atol=1e-14)


def test_alignment_is_one_on_the_spectrum_and_invariant_to_linear_maps_and_shifts():
    p, _ = language_contexts()
    w = np.random.default_rng(2).dirichlet(np.ones(16))
    rng = np.random.default_rng(3)
    u = np_spectrum(p, w)[1][:, 1:3]  # the top 2 non-trivial directions
    spanning = (u / np.sqrt(w)[:, None]) @ rng.normal(size=(2, 4)) + rng.normal(size=4)
    aligned = mk.spectral_alignment(spanning, p, w, 2)  # rank 2 in 4 columns, shifted
    np.testing.assert_allclose(aligned.cosines, [1.0, 1.0], rtol=1e-10)
    np.testing.assert_allclose(aligned.captured, 1.0, rtol=1e-10)
    h = rng.normal(size=(16, 2))
    got = mk.spectral_alignment(h, p, w, 3)
    want = np.sort(np.cos(subspace_angles(np_weighted_centred(h, w), np_spectrum(p, w)[1][:, 1:4])))[::-1]  # fmt: skip
    np.testing.assert_allclose(got.cosines, want, rtol=1e-10)
    np.testing.assert_allclose(got.captured, np.sum(want**2) / 3, rtol=1e-10)
    assert 0.05 < float(got.captured) < 0.95
    mixed = h @ np.array([[2.0, -1.0], [0.5, 3.0]]) + np.array([10.0, -4.0])
    other = mk.spectral_alignment(mixed, p, w, 3)
    np.testing.assert_allclose(other.cosines, got.cosines, rtol=1e-10)
    np.testing.assert_allclose(other.captured, got.captured, rtol=1e-10)
    # jit gives the same numbers
    jitted = jax.jit(mk.spectral_alignment, static_argnums=3)(mixed, p, w, 3)
    np.testing.assert_allclose(jitted.captured, got.captured, rtol=1e-12)


def test_zero_probability_contexts_are_masked_and_random_subspaces_capture_chance():
    m = lang.markov_language(4, seed=1, forbidden_per_token=1)
    _, w, p = lang.prefix_conditionals(m, 3)[2]  # 16 contexts (x_1, x_2), 4 of probability 0
    support = w > 0
    assert support.sum() == 12
    rng = np.random.default_rng(4)
    h = rng.normal(size=(16, 3))
    garbage_p, garbage_h = p.copy(), h.copy()
    garbage_p[~support], garbage_h[~support] = np.nan, 1e6
    full = mk.spectral_alignment(garbage_h, garbage_p, w, 2)
    dropped = mk.spectral_alignment(h[support], p[support], w[support], 2)
    np.testing.assert_allclose(full.cosines, dropped.cosines, rtol=1e-10)
    spec_full = mk.predictive_similarity_spectrum(garbage_p, w, 2)
    spec_dropped = mk.predictive_similarity_spectrum(p[support], w[support], 2)
    np.testing.assert_allclose(spec_full.values, spec_dropped.values, rtol=1e-12)
    assert np.all(np.asarray(spec_full.vectors)[~support] == 0.0)
    assert np.max(subspace_angles(np.asarray(spec_full.vectors)[support], np.asarray(spec_dropped.vectors))) < 1e-8  # fmt: skip
    # a uniformly random d-dim subspace of the centred (12 - 1)-dim space captures d / 11
    draws, d = 400, 3
    g = rng.normal(size=(draws, 16, d))
    captured = jax.vmap(lambda f: mk.spectral_alignment(f, p, w, 2).captured)(g / np.sqrt(np.where(support, w, 1.0))[:, None])  # fmt: skip
    captured = np.asarray(captured)
    assert abs(captured.mean() - d / 11) < 4 * captured.std() / np.sqrt(draws), captured.mean()


# ------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------


P = np.full((4, 3), 1.0 / 3)
W = np.full(4, 0.25)


def bad_probe(**changes):
    """The probe on 4 valid examples of 2 features, 2 classes, with ``changes`` applied."""
    args = {
        "train_features": np.ones((4, 2)), "train_next": np.zeros(4, int),
        "train_target": np.zeros(4, int), "test_features": np.ones((4, 2)),
        "test_next": np.zeros(4, int), "test_target": np.zeros(4, int), "num_classes": 2,
    }  # fmt: skip
    return mk.probe_conditional_information(**{**args, **changes})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mk.nll_decomposition(P, P[:3], W), "must match data_probs"),
        (lambda: mk.nll_decomposition(P, P, W[:3]), r"shape \[4\]"),
        (lambda: mk.nll_decomposition(P, P, -W), ">= 0 and not all 0"),
        (lambda: mk.nll_decomposition(P, P, 0 * W), "not all 0"),
        (lambda: mk.nll_decomposition(-P, P, W), "probabilities"),
        (lambda: mk.nll_decomposition(P[0], P[0], W[:1]), r"\[contexts, V\]"),
        (lambda: mk.conditional_mutual_information(P), r"\[R, A, B\]"),
        (lambda: mk.conditional_mutual_information(-np.ones((2, 2, 2))), ">= 0"),
        (
            lambda: mk.exact_information_surplus(np.ones((4, 2, 2)), np.arange(4), np.arange(3)),
            r"shape \[4\]",
        ),  # fmt: skip
        (
            lambda: mk.exact_information_surplus(
                np.ones((4, 2, 2)), np.arange(4) + 1, np.arange(4)
            ),
            r"\[0, 4\)",
        ),  # fmt: skip
        (
            lambda: mk.exact_information_surplus(np.ones((4, 2, 2)), np.arange(4.0), np.arange(4)),
            "integer labels",
        ),  # fmt: skip
        (lambda: mk.predictive_similarity_spectrum(P, W, 3), "at most 2"),
        (lambda: mk.predictive_similarity_spectrum(P, W, 0), "k must be a Python int >= 1"),
        (
            lambda: mk.spectral_alignment(np.ones((3, 2)), P, W, 1),
            r"features must have shape \[4, d\]",
        ),  # fmt: skip
        (lambda: bad_probe(test_features=np.ones((4, 3))), "differ in width"),
        (
            lambda: bad_probe(train_target=np.full(4, 2)),
            r"train_target must lie in \[0, num_classes=2\)",
        ),  # fmt: skip
        (
            lambda: bad_probe(train_next=np.zeros(3, int)),
            r"train_next must be integer tokens of shape \[4\]",
        ),  # fmt: skip
        (lambda: bad_probe(l2=-1.0), "l2 must be >= 0"),
        (lambda: lang.ngram_language(3, order=0), "order must be an int >= 1"),
        (lambda: lang.ngram_language(3, forbidden_per_context=3), r"in \[0, 3\)"),
        (lambda: lang.prefix_conditionals(lang.ngram_language(3), 1), "length must be an int >= 2"),
        (lambda: lang.prefix_joint(lang.ngram_language(3), 0), "t must be an int >= 1"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_prefix_functions_refuse_other_objects():
    with pytest.raises(TypeError, match="MarkovLanguage or NgramLanguage"):
        lang.prefix_joint(jnp.ones(3), 1)
