"""SequenceMatch losses against hand computations, a numpy reference, finite differences and
replays of the augmented trajectories.

Float64 checks run under ``jax.enable_x64`` as a context, so other test files keep float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fdiv.losses import sequence as sq

# Jitted once per static configuration: much faster than op-by-op dispatch (the hand example and
# the validation tests run the plain functions).
SOFT_Q = jax.jit(sq.soft_q_terms, static_argnames=("backspace", "terminal_length", "gamma"))
LOSS = jax.jit(
    sq.sequencematch_loss, static_argnames=("backspace", "terminal_length", "alpha", "gamma")
)
NLL = jax.jit(sq.transition_nll, static_argnames=("backspace",))
INPUTS = jax.jit(sq.transition_inputs, static_argnames=("backspace",))
AUGMENT = jax.jit(sq.augment_with_backspace, static_argnames=("vocab_size", "backspace", "rate"))

# -------------------------------------------------------------------------------------------------
# Independent numpy reference of the MDP quantities (loops over transitions, float64).
# -------------------------------------------------------------------------------------------------


def np_lse(row):
    row = np.asarray(row, np.float64)
    peak = np.max(row)
    return peak + np.log(np.sum(np.exp(row - peak)))


def np_allowed(logits_row, position, backspace):
    """The logits of the actions allowed at a state: all but backspace at the empty state."""
    row = np.asarray(logits_row, np.float64).copy()
    if position == 0:
        row = np.delete(row, backspace)
    return row


def np_terms(logits, length, action, *, backspace, terminal_length, gamma):
    q, v, nv = [], [], []
    for i in range(len(length)):
        n, a = int(length[i]), int(action[i])
        q.append(float(logits[i, n, a]))
        v.append(np_lse(np_allowed(logits[i, n], n, backspace)))
        m = n - 1 if a == backspace else n + 1
        nv.append(0.0 if m >= terminal_length else np_lse(np_allowed(logits[i, m], m, backspace)))
    q, v, nv = map(np.array, (q, v, nv))
    return q, v, nv, q - gamma * nv


def np_mean(w, x):
    return np.sum(w * x) / np.sum(w) if np.sum(w) > 0 else 0.0


def np_loss(dl, d, pl, p, *, backspace, terminal_length, alpha, gamma):
    kw = dict(backspace=backspace, terminal_length=terminal_length, gamma=gamma)
    _, vd, nvd, rd = np_terms(dl, d.length, d.action, **kw)
    _, vp, nvp, rp = np_terms(pl, p.length, p.action, **kw)
    wd, wp = np.asarray(d.weight, np.float64), np.asarray(p.weight, np.float64)
    expert = -np_mean(wd, rd)
    chi2 = (0.5 * np_mean(wd, rd**2) + 0.5 * np_mean(wp, rp**2)) / (4 * alpha)
    value = 0.5 * np_mean(wd, vd - gamma * nvd) + 0.5 * np_mean(wp, vp - gamma * nvp)
    return expert + chi2 + value, (expert, chi2, value, np_mean(wd, rd), np_mean(wp, rp))


def random_transitions(rng, n, *, width, vocab, terminal_length, zero_weights=2):
    """Valid transitions of the backspace MDP: states of length < terminal_length; backspace only
    from non-empty states; a few weight-0 rows, other weights in (0, 2)."""
    backspace = vocab
    length = rng.integers(0, terminal_length, size=n)
    action = rng.integers(0, vocab + 1, size=n)
    action = np.where((action == backspace) & (length == 0), 0, action)
    tokens = rng.integers(0, vocab, size=(n, width))
    prefix = np.where(np.arange(width)[None, :] < length[:, None], tokens, 0)
    weight = rng.uniform(0.2, 2.0, size=n)
    weight[rng.choice(n, size=zero_weights, replace=False)] = 0.0
    return sq.Transitions(
        prefix=prefix.astype(np.int32),
        length=length.astype(np.int32),
        action=action.astype(np.int32),
        weight=weight.astype(np.float32),
    )


# -------------------------------------------------------------------------------------------------
# soft_q_terms and transition_inputs by hand.
# -------------------------------------------------------------------------------------------------


def test_soft_q_terms_hand_example():
    # L = 2, V = 2 (tokens 0, 1), backspace = 2, terminal at length 2, gamma = 0.9.
    logits = np.array(
        [
            [[0.5, -1.0, 3.0], [2.0, 0.0, -0.5], [9.0, 9.0, 9.0]],
            [[1.0, 1.0, 1.0], [0.3, -0.2, 1.5], [7.0, 7.0, 7.0]],
            [[-0.4, 0.8, 5.0], [1.2, 0.1, -0.7], [8.0, 8.0, 8.0]],
        ],
        np.float32,
    )
    transitions = sq.Transitions(
        prefix=np.array([[0, 0], [0, 0], [1, 0]], np.int32),
        length=np.array([0, 1, 1], np.int32),
        action=np.array([1, 1, 2], np.int32),  # ordinary non-terminal, ordinary terminal, backspace
        weight=np.ones(3, np.float32),
    )
    e = np.exp
    # Row 0: s = (), a = 1 -> s' = (1,). Backspace is not allowed at (): V(s) over tokens 0, 1 only.
    q0, v0, nv0 = -1.0, np.log(e(0.5) + e(-1.0)), np.log(e(2.0) + e(0.0) + e(-0.5))
    # Row 1: s = (0,), a = 1 -> s' = (0, 1), complete: V(s') = 0.
    q1, v1, nv1 = -0.2, np.log(e(0.3) + e(-0.2) + e(1.5)), 0.0
    # Row 2: s = (1,), backspace -> s' = (): V(s') over tokens 0, 1 only (position 0).
    q2, v2, nv2 = -0.7, np.log(e(1.2) + e(0.1) + e(-0.7)), np.log(e(-0.4) + e(0.8))
    terms = sq.soft_q_terms(logits, transitions, backspace=2, terminal_length=2, gamma=0.9)
    np.testing.assert_allclose(terms.q, [q0, q1, q2], rtol=1e-6)
    np.testing.assert_allclose(terms.value, [v0, v1, v2], rtol=1e-6)
    np.testing.assert_allclose(terms.next_value, [nv0, nv1, nv2], rtol=1e-6)
    np.testing.assert_allclose(
        terms.reward, [q0 - 0.9 * nv0, q1 - 0.9 * nv1, q2 - 0.9 * nv2], rtol=1e-6
    )
    assert terms.reward.dtype == jnp.float32
    # The model's inputs: the action written at index `length` (ordinary), the prefix (backspace).
    np.testing.assert_array_equal(
        sq.transition_inputs(transitions, backspace=2), [[1, 0], [0, 1], [1, 0]]
    )


def test_soft_q_terms_backspace_at_empty_state_is_not_an_action():
    logits = np.zeros((1, 3, 3), np.float32)
    t = sq.Transitions(np.zeros((1, 2), np.int32), np.array([0]), np.array([2]), np.ones(1))
    terms = SOFT_Q(logits, t, backspace=2, terminal_length=2)
    assert terms.q[0] == -np.inf
    np.testing.assert_allclose(terms.value, [np.log(2.0)], rtol=1e-6)


@pytest.mark.parametrize("terminal_length", [4, 2])
def test_soft_q_terms_match_numpy(terminal_length):
    rng = np.random.default_rng(1)
    t = random_transitions(rng, 12, width=4, vocab=3, terminal_length=terminal_length)
    logits = rng.normal(size=(12, 5, 4)).astype(np.float32) * 2
    terms = SOFT_Q(logits, t, backspace=3, terminal_length=terminal_length, gamma=0.7)
    expected = np_terms(
        logits, t.length, t.action, backspace=3, terminal_length=terminal_length, gamma=0.7
    )
    for got, want in zip(terms, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------------
# sequencematch_loss: value, gradients, robustness.
# -------------------------------------------------------------------------------------------------

WIDTH, VOCAB, BACKSPACE = 4, 3, 3
KW = dict(backspace=BACKSPACE, terminal_length=WIDTH)
LOSS_AND_GRAD = jax.jit(
    jax.value_and_grad(lambda dl, d, pl, p: sq.sequencematch_loss(dl, d, pl, p, **KW)[0])
)


@pytest.fixture
def batches():
    rng = np.random.default_rng(2)
    data = random_transitions(rng, 10, width=WIDTH, vocab=VOCAB, terminal_length=WIDTH)
    policy = random_transitions(rng, 7, width=WIDTH, vocab=VOCAB, terminal_length=WIDTH)
    data_logits = rng.normal(size=(10, WIDTH + 1, VOCAB + 1)) * 1.5
    policy_logits = rng.normal(size=(7, WIDTH + 1, VOCAB + 1)) * 1.5
    return data_logits, data, policy_logits, policy


@pytest.mark.parametrize(("alpha", "gamma"), [(1.0, 1.0), (0.3, 0.9)])
def test_loss_matches_numpy(batches, alpha, gamma):
    dl, d, pl, p = batches
    loss, metrics = LOSS(
        dl.astype(np.float32), d, pl.astype(np.float32), p, alpha=alpha, gamma=gamma, **KW
    )
    want, parts = np_loss(dl, d, pl, p, alpha=alpha, gamma=gamma, **KW)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics, parts, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics.expert_term + metrics.chi2_term + metrics.value_term, loss)


def test_loss_gradients_match_finite_differences(batches):
    dl, d, pl, p = batches
    with jax.enable_x64(True):
        f = jax.jit(lambda a, b: sq.sequencematch_loss(a, d, b, p, alpha=0.5, gamma=0.9, **KW)[0])
        check_grads(f, (jnp.asarray(dl), jnp.asarray(pl)), order=1, modes=("rev",))
        grad_d, grad_p = jax.grad(f, argnums=(0, 1))(jnp.asarray(dl), jnp.asarray(pl))
    # The weight-0 rows get exactly zero gradient; the others a non-trivial one.
    for grad, batch in ((grad_d, d), (grad_p, p)):
        grad = np.asarray(grad)
        zero = np.asarray(batch.weight) == 0
        assert np.all(grad[zero] == 0)
        assert np.all(np.abs(grad[~zero]).reshape(int((~zero).sum()), -1).max(axis=1) > 1e-3)


def linear_model(params, tokens):
    """A tiny causal model: ``logits[:, t] = pos[t] + tanh(sum_{u < t} emb[tokens[:, u]]) @ w``."""
    emb, pos, w = params
    h = jnp.cumsum(emb[tokens], axis=1)
    h = jnp.concatenate([jnp.zeros_like(h[:, :1]), h], axis=1)  # [N, L + 1, D]
    return pos[None] + jnp.tanh(h) @ w


def test_loss_gradient_through_linear_model(batches):
    _, d, _, p = batches
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        params = (
            jnp.asarray(rng.normal(size=(VOCAB, 5))),
            jnp.asarray(rng.normal(size=(WIDTH + 1, VOCAB + 1))),
            jnp.asarray(rng.normal(size=(5, VOCAB + 1))),
        )
        d_in = INPUTS(d, backspace=BACKSPACE)
        p_in = INPUTS(p, backspace=BACKSPACE)

        @jax.jit
        def f(*params):
            dl, pl = linear_model(params, d_in), linear_model(params, p_in)
            return sq.sequencematch_loss(dl, d, pl, p, alpha=2.0, gamma=0.95, **KW)[0]

        check_grads(f, params, order=1, modes=("rev",))
        # The model is causal: logits at position t ignore tokens at t and beyond.
        x = jnp.asarray(rng.integers(0, VOCAB, size=(2, WIDTH)))
        y = x.at[:, 2:].set((x[:, 2:] + 1) % VOCAB)
        np.testing.assert_array_equal(
            linear_model(params, x)[:, :3], linear_model(params, y)[:, :3]
        )


def test_loss_ignores_weight_zero_rows_and_empty_batches(batches):
    dl, d, pl, p = batches
    # A weight-0 backspace at the empty state (q = -inf) and garbage logits in weight-0 rows change
    # nothing, in value or gradient (no nan).
    action = np.asarray(d.action).copy()
    zero = np.flatnonzero(np.asarray(d.weight) == 0)
    length = np.asarray(d.length).copy()
    length[zero[0]], action[zero[0]] = 0, BACKSPACE
    d2 = d._replace(length=length, action=action)
    dl2 = dl.copy()
    dl2[zero] = 1e30
    loss, grad = LOSS_AND_GRAD(jnp.asarray(dl2, jnp.float32), d2, pl, p)
    ref, ref_grad = LOSS_AND_GRAD(jnp.asarray(dl, jnp.float32), d, pl, p)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(grad)[zero] == 0)
    # An all-zero-weight policy batch contributes 0 to each mixture expectation.
    p0 = p._replace(weight=np.zeros_like(p.weight))
    loss, metrics = LOSS(dl, d, pl, p0, alpha=0.5, **KW)
    want, _ = np_loss(dl, d, pl, p0, alpha=0.5, gamma=1.0, **KW)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert metrics.policy_reward == 0


def test_bfloat16_logits_computed_in_float32(batches):
    dl, d, pl, p = batches
    dl16, pl16 = jnp.asarray(dl, jnp.bfloat16), jnp.asarray(pl, jnp.bfloat16)
    loss, _ = LOSS(dl16, d, pl16, p, **KW)
    assert loss.dtype == jnp.float32
    ref, _ = LOSS(dl16.astype(jnp.float32), d, pl16.astype(jnp.float32), p, **KW)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    assert NLL(dl16, d).dtype == jnp.float32


# -------------------------------------------------------------------------------------------------
# The chi^2 objective on a one-step problem.
# -------------------------------------------------------------------------------------------------

P_DATA = np.array([0.5, 0.3, 0.2])


def one_step_optimum(alpha):
    """Minimise the loss over the empty state's logits ``l`` on a one-step problem (L = 1, the
    first action completes the sequence) with exact expectations: the data transitions are the
    three actions weighted by P_DATA, and the policy batch is the same (E_mix = E_data)."""
    v = len(P_DATA)
    with jax.enable_x64(True):
        t = sq.Transitions(
            prefix=np.zeros((v, 1), np.int32),
            length=np.zeros(v, np.int32),
            action=np.arange(v, dtype=np.int32),
            weight=jnp.asarray(P_DATA),
        )

        def loss(l):
            row = jnp.concatenate([l, jnp.zeros(1)])  # backspace logit: masked at ()
            logits = jnp.broadcast_to(row, (v, 2, v + 1))
            return sq.sequencematch_loss(
                logits, t, logits, t, backspace=v, terminal_length=1, alpha=alpha
            )[0]

        # The loss is strictly convex in l (a quadratic plus logsumexp): Newton converges.
        @jax.jit
        def solve():
            def step(l, _):
                return l - jnp.linalg.solve(jax.hessian(loss)(l), jax.grad(loss)(l)), None

            l, _ = jax.lax.scan(step, jnp.zeros(v), None, length=30)
            return l, jax.grad(loss)(l)

        l, grad = solve()
        assert np.max(np.abs(grad)) < 1e-12
        return np.asarray(l)


def test_one_step_chi2_optimum_is_regularised_not_the_data_policy():
    # By hand, with r = l and V(s') = 0: L(l) = -p.l + 1/(4 alpha) sum p l^2 + lse(l), i.e. the
    # cross-entropy CE(p, softmax l) plus a pull of the logits toward 0. Stationarity:
    #   softmax(l)_a = p_a (1 - l_a / (2 alpha)),  and summing over a,  sum_a p_a l_a = 0,
    # so softmax(l) = p only if l = 0, i.e. p uniform. The recovered policy is flattened toward
    # uniform, by O(1/alpha).
    errors = {}
    for alpha in (1.0, 1000.0):
        l = one_step_optimum(alpha)
        pi = np.exp(l - np_lse(l))
        np.testing.assert_allclose(pi, P_DATA * (1 - l / (2 * alpha)), rtol=1e-10)
        np.testing.assert_allclose(np.dot(P_DATA, l), 0.0, atol=1e-10)
        errors[alpha] = np.max(np.abs(pi - P_DATA))
        # Flattened: the most likely action loses mass, the least likely gains.
        assert pi[0] < P_DATA[0] and pi[-1] > P_DATA[-1]
        if alpha == 1000.0:
            # To first order in 1/alpha, l = log p + H(p) (the centring from sum p l = 0), so
            # softmax(l) - p = -p (log p + H(p)) / (2 alpha) + O(1/alpha^2).
            h = -np.sum(P_DATA * np.log(P_DATA))
            first_order = -P_DATA * (np.log(P_DATA) + h) / (2 * alpha)
            np.testing.assert_allclose(pi - P_DATA, first_order, rtol=0.01)
    assert errors[1.0] > 0.05  # not the data policy at alpha = 1
    assert errors[1000.0] < 1e-3  # the data policy as the chi^2 regulariser vanishes


# -------------------------------------------------------------------------------------------------
# transition_nll and mle_transitions.
# -------------------------------------------------------------------------------------------------


def test_mle_transitions_structure():
    t = sq.mle_transitions(np.array([[2, 0, 1], [1, 1, 2]]))
    np.testing.assert_array_equal(
        t.prefix, [[0, 0, 0], [2, 0, 0], [2, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0]]
    )
    np.testing.assert_array_equal(t.length, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(t.action, [2, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(t.weight, np.ones(6))
    assert t.prefix.dtype == t.length.dtype == t.action.dtype == jnp.int32
    assert t.weight.dtype == jnp.float32
    # The model inputs of the teacher-forced transitions are the whole sequence each time.
    np.testing.assert_array_equal(
        INPUTS(t, backspace=3),
        [[2, 0, 0], [2, 0, 0], [2, 0, 1], [1, 0, 0], [1, 1, 0], [1, 1, 2]],
    )


@pytest.mark.parametrize("backspace", [None, 3])
def test_transition_nll_matches_numpy(backspace):
    rng = np.random.default_rng(4)
    t = random_transitions(rng, 9, width=4, vocab=3, terminal_length=4)
    logits = rng.normal(size=(9, 5, 4)).astype(np.float32) * 2
    logits[0, 0] = [0.0, 1.0, -1.0, 30.0]  # a large backspace logit at position 0
    t = t._replace(
        length=np.concatenate([[0], t.length[1:]]).astype(np.int32),
        action=np.concatenate([[1], t.action[1:]]).astype(np.int32),
        weight=np.concatenate([[1.0], t.weight[1:]]).astype(np.float32),
    )
    got = NLL(logits, t, backspace=backspace)
    want = []
    for i in range(9):
        n, a = int(t.length[i]), int(t.action[i])
        row = logits[i, n].astype(np.float64)
        norm = np_lse(np_allowed(row, n, backspace) if backspace is not None else row)
        want.append(-float(t.weight[i]) * (row[a] - norm))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[np.asarray(t.weight) == 0] == 0)
    # Without the mask, the backspace logit at () takes nearly all of the empty state's mass.
    assert (got[0] > 25) == (backspace is None)


# -------------------------------------------------------------------------------------------------
# augment_with_backspace.
# -------------------------------------------------------------------------------------------------

B, L, V = 64, 5, 4
AUG = dict(vocab_size=V, backspace=V)


def tokens_fixture(seed=5, batch=B, width=L):
    return np.random.default_rng(seed).integers(0, V, size=(batch, width)).astype(np.int32)


def split_rows(t, width):
    n = width + 2
    return [
        sq.Transitions(*(np.asarray(x)[b * n : (b + 1) * n] for x in t))
        for b in range(len(t.length) // n)
    ]


def check_replay(t, tokens):
    """Replay each sequence's transitions from the empty state; return the insertion positions."""
    width = tokens.shape[1]
    inputs = np.asarray(INPUTS(t, backspace=V)).reshape(len(tokens), width + 2, width)
    positions = []
    for b, row in enumerate(split_rows(t, width)):
        inserted = bool(np.any(row.action == V))
        real = width + 2 if inserted else width
        # Padding: the two last slots of a row without insertion.
        assert np.all(row.weight[real:] == 0) and np.all(row.length[real:] == 0)
        assert np.all(row.action[real:] == 0) and np.all(row.prefix[real:] == 0)
        state = []
        for i in range(real):
            n, a = int(row.length[i]), int(row.action[i])
            assert n == len(state)
            np.testing.assert_array_equal(row.prefix[i][:n], state)
            assert np.all(row.prefix[i][n:] == 0)
            if a == V:
                assert row.weight[i] == 1 and i >= 1 and row.weight[i - 1] == 0
                state = state[:-1]
            else:
                state = [*state, a]
                np.testing.assert_array_equal(inputs[b, i][: len(state)], state)
                # The wrong token: weight 0, followed by its backspace, differs from the truth.
                if row.weight[i] == 0:
                    assert row.action[i + 1] == V and a != tokens[b, n]
                    positions.append(n)
                else:
                    assert row.weight[i] == 1 and a == tokens[b, n]
        np.testing.assert_array_equal(state, tokens[b])
        assert np.sum(row.action == V) == (1 if inserted else 0)
        assert np.sum(row.weight[:real] == 0) == (1 if inserted else 0)
    return positions


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_augment_replays_to_the_sequence(rate):
    tokens = tokens_fixture()
    t = AUGMENT(jax.random.key(0), tokens, rate=rate, **AUG)
    assert t.prefix.shape == (B * (L + 2), L)
    assert t.prefix.dtype == t.length.dtype == t.action.dtype == jnp.int32
    assert t.weight.dtype == jnp.float32
    positions = check_replay(t, tokens)
    if rate == 0.0:
        assert not positions
        # Exactly the teacher-forced transitions, each row followed by two padding slots.
        mle = sq.mle_transitions(tokens)
        keep = (np.arange(B * (L + 2)) % (L + 2)) < L
        for got, want in zip(t, mle, strict=True):
            np.testing.assert_array_equal(np.asarray(got)[keep], want)
    elif rate == 1.0:
        assert len(positions) == B  # one insertion per row
        assert set(positions) == set(range(L - 1))  # k ~ U{0 .. L - 2}, never L - 1
    else:
        assert 0 < len(positions) < B


def test_augment_wrong_tokens_cover_the_alternatives():
    tokens = tokens_fixture(seed=6, batch=128)
    t = AUGMENT(jax.random.key(1), tokens, rate=1.0, **AUG)  # jitted (as every AUGMENT call)
    check_replay(t, tokens)
    wrong = np.asarray(t.weight) == 0
    k = np.asarray(t.length)[wrong]
    w = np.asarray(t.action)[wrong]
    y_k = tokens[np.arange(128), k]
    assert np.all(w != y_k)
    # Each of the V - 1 other tokens appears as the offset from the truth.
    assert set(((w - y_k) % V).tolist()) == set(range(1, V))
    # The augmented batch trains end to end through the loss.
    logits = jnp.zeros((t.prefix.shape[0], L + 1, V + 1))
    loss, _ = LOSS(logits, t, logits, t, backspace=V, terminal_length=L)
    assert np.isfinite(loss)


def test_augment_length_one_has_no_insertion():
    tokens = tokens_fixture(batch=8, width=1)
    t = AUGMENT(jax.random.key(2), tokens, rate=1.0, **AUG)
    assert not np.any(np.asarray(t.action) == V)
    check_replay(t, tokens)


# -------------------------------------------------------------------------------------------------
# Validation.
# -------------------------------------------------------------------------------------------------


def test_bad_arguments_raise(batches):
    dl, d, pl, p = batches
    with pytest.raises(ValueError, match="alpha"):
        sq.sequencematch_loss(dl, d, pl, p, alpha=0.0, **KW)
    with pytest.raises(ValueError, match="gamma"):
        sq.sequencematch_loss(dl, d, pl, p, gamma=1.5, **KW)
    with pytest.raises(ValueError, match="terminal_length"):
        sq.soft_q_terms(dl, d, backspace=BACKSPACE, terminal_length=WIDTH + 1)
    with pytest.raises(ValueError, match="terminal_length"):
        sq.soft_q_terms(dl, d, backspace=BACKSPACE, terminal_length=0)
    with pytest.raises(ValueError, match="backspace"):
        sq.soft_q_terms(dl, d, backspace=VOCAB + 1, terminal_length=WIDTH)
    with pytest.raises(ValueError, match="logits"):
        sq.soft_q_terms(dl[:, :-1], d, backspace=BACKSPACE, terminal_length=WIDTH)
    with pytest.raises(ValueError, match="weight"):
        sq.transition_nll(dl, d._replace(weight=np.ones(3)))
    tokens = tokens_fixture(batch=2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="rate"):
        sq.augment_with_backspace(key, tokens, rate=1.5, **AUG)
    with pytest.raises(ValueError, match="vocab_size"):
        sq.augment_with_backspace(key, tokens, rate=0.5, vocab_size=1, backspace=1)
    with pytest.raises(ValueError, match="backspace"):
        sq.augment_with_backspace(key, tokens, rate=0.5, vocab_size=V, backspace=V - 1)
