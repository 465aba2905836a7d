"""Provenance tracing (fdiv.analysis.provenance) on hand-built actions whose category is written
out, against plain-numpy loops of the documented rules, segment sums, KL / JS and selection; exact
zero probabilities, the threshold boundaries and refused inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdiv.analysis import provenance as pv
from fdiv.analysis.provenance import BOOSTED, MISSING, SHARED, STUDENT, TEACHER

COMMON = pv.COMMON
NEG_INF = -np.inf


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def classify(*logps, **options):
    """``classify_actions`` on positional (teacher, student[, distilled]) log-probabilities."""
    roles = ("teacher_logp", "student_logp", "distilled_logp")
    return pv.classify_actions(**dict(zip(roles, logps, strict=False)), **options)


def exp(log_p):
    """``p = exp(log p)`` as the definition evaluates it (XLA's exp; numpy's differs in the last
    ulp for some inputs, which matters only exactly at a threshold)."""
    return np.asarray(jnp.exp(jnp.asarray(log_p, jnp.float64)))


def np_rule(pt, ps, pd=None, alpha=0.05, beta=0.1):
    """The module docstring's rule, one action at a time."""
    if any(np.isnan(v) for v in (pt, ps) + (() if pd is None else (pd,))):
        return MISSING
    d_ts = pt - ps
    if pd is not None and abs(d_ts) <= alpha and abs(pt - pd) <= alpha and abs(ps - pd) <= alpha:
        return SHARED
    if d_ts > beta:
        return TEACHER
    if d_ts < -beta:
        return STUDENT
    return COMMON if pd is None else BOOSTED


def test_category_names_match_the_codes():
    assert pv.CATEGORIES == ("shared", "teacher", "student", "boosted")
    assert pv.THREE_WAY_CATEGORIES == ("common", "teacher", "student")
    for name, code in [("shared", SHARED), ("teacher", TEACHER), ("student", STUDENT), ("boosted", BOOSTED)]:  # fmt: skip
        assert pv.CATEGORIES[code] == name
    assert pv.THREE_WAY_CATEGORIES[COMMON] == "common" and MISSING == -1


# (p_teacher, p_student, p_distilled) -> category, written out by hand (alpha 0.05, beta 0.1).
HAND = [
    ((0.9, 0.1, 0.8), TEACHER),  # the teacher and the distilled model like it, the student not
    ((0.1, 0.9, 0.7), STUDENT),  # the mirror case: the original student's habit
    ((0.6, 0.62, 0.58), SHARED),  # all three about equal
    ((0.3, 0.32, 0.9), BOOSTED),  # T and S agree, distillation amplified it
    ((0.3, 0.32, 0.05), BOOSTED),  # T and S agree, D lower: the residual class as written
    ((0.5, 0.2, 0.1), TEACHER),  # the teacher rule does not look at p_D
    ((0.5, 0.45, 0.3), BOOSTED),  # |D_TS| <= beta but D apart from both
    ((0.5, 0.45, 0.47), SHARED),  # every difference <= alpha
]


def test_hand_built_actions_get_their_category():
    p = np.array([row for row, _ in HAND])
    got = classify(*np.log(p).T)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, [c for _, c in HAND])
    three = classify(*np.log(p[:, :2]).T, rule="three_way")
    np.testing.assert_array_equal(three, [TEACHER, STUDENT, COMMON, COMMON, COMMON, TEACHER, COMMON, COMMON])  # fmt: skip


def test_zero_probabilities_are_exact():
    # log p = -inf is p = 0 exactly: no epsilon moves a difference off 0 or 1.
    t = np.array([0.0, NEG_INF, NEG_INF, NEG_INF, 0.0])
    s = np.array([NEG_INF, 0.0, NEG_INF, NEG_INF, 0.0])
    d = np.array([NEG_INF, NEG_INF, NEG_INF, 0.0, 0.0])
    np.testing.assert_array_equal(pv.classify_actions(teacher_logp=t, student_logp=s, distilled_logp=d), [TEACHER, STUDENT, SHARED, BOOSTED, SHARED])  # fmt: skip
    # alpha = 0: shared only for exact equality, which 0 == 0 and 1 == 1 are.
    np.testing.assert_array_equal(pv.classify_actions(teacher_logp=t, student_logp=s, distilled_logp=d, alpha=0.0), [TEACHER, STUDENT, SHARED, BOOSTED, SHARED])  # fmt: skip


def test_missing_actions_are_minus_one():
    t = np.array([np.nan, -0.1, -0.1])
    s = np.array([-0.1, np.nan, -0.1])
    d = np.array([-0.1, -0.1, np.nan])
    np.testing.assert_array_equal(
        pv.classify_actions(teacher_logp=t, student_logp=s, distilled_logp=d), [MISSING] * 3
    )
    np.testing.assert_array_equal(pv.classify_actions(teacher_logp=t, student_logp=s, rule="three_way"), [MISSING, MISSING, COMMON])  # fmt: skip


def test_boundaries_at_exact_probabilities():
    # p in {0, 1} is exact, so D_TS = 1 and |D_TD| = 1 exactly.
    one, zero = np.array([0.0]), np.array([NEG_INF])
    below_one = float(np.nextafter(1.0, 0.0))
    assert (
        pv.classify_actions(teacher_logp=one, student_logp=zero, rule="three_way", beta=1.0)
        == COMMON
    )  # D_TS > beta strict
    assert (
        pv.classify_actions(teacher_logp=one, student_logp=zero, rule="three_way", beta=below_one)
        == TEACHER
    )
    assert (
        pv.classify_actions(teacher_logp=zero, student_logp=one, rule="three_way", beta=1.0)
        == COMMON
    )
    assert (
        pv.classify_actions(teacher_logp=zero, student_logp=one, rule="three_way", beta=below_one)
        == STUDENT
    )
    assert pv.classify_actions(teacher_logp=one, student_logp=zero, distilled_logp=one, alpha=1.0, beta=0.5) == SHARED  # shared first, <= inclusive  # fmt: skip
    assert (
        pv.classify_actions(
            teacher_logp=one, student_logp=zero, distilled_logp=one, alpha=below_one, beta=0.5
        )
        == TEACHER
    )
    assert (
        pv.classify_actions(teacher_logp=one, student_logp=one, distilled_logp=zero, alpha=1.0)
        == SHARED
    )
    assert (
        pv.classify_actions(
            teacher_logp=one, student_logp=one, distilled_logp=zero, alpha=below_one
        )
        == BOOSTED
    )


def test_boundaries_in_the_middle():
    lt, ls, ld = np.log([0.7, 0.4, 0.55])
    pt, ps, pd = exp(lt), exp(ls), exp(ld)
    beta = float(pt - ps)  # D_TS exactly beta: not teacher (strict), so boosted / common
    args = np.array([lt]), np.array([ls]), np.array([ld])
    assert classify(*args, beta=beta) == BOOSTED
    assert classify(*args, beta=float(np.nextafter(beta, 0.0))) == TEACHER
    assert classify(*args[:2], rule="three_way", beta=beta) == COMMON
    assert (
        pv.classify_actions(teacher_logp=args[1], student_logp=args[0], rule="three_way", beta=beta)
        == COMMON
    )
    assert pv.classify_actions(teacher_logp=args[1], student_logp=args[0], rule="three_way", beta=float(np.nextafter(beta, 0.0))) == STUDENT  # fmt: skip
    # alpha: shared needs the largest of the three differences <= alpha (inclusive).
    alpha = float(max(abs(pt - ps), abs(pt - pd), abs(ps - pd)))
    assert classify(*args, alpha=alpha, beta=0.9) == SHARED
    assert classify(*args, alpha=float(np.nextafter(alpha, 0.0)), beta=0.9) == BOOSTED


@pytest.mark.parametrize("alpha, beta", [(0.05, 0.1), (0.2, 0.1), (0.0, 0.0)])
def test_rules_match_a_numpy_loop(alpha, beta):
    rng = np.random.default_rng(0)
    # probabilities on a coarse grid too, so exact ties and equalities occur
    grid = rng.integers(0, 5, (3, 100)) / 4.0  # 0 included: log-prob -inf
    with np.errstate(divide="ignore"):
        logp = np.log(np.concatenate([rng.uniform(size=(3, 300)), grid], axis=1))
    logp[0, :5] = np.nan
    p = exp(logp)
    want4 = [np_rule(*col, alpha=alpha, beta=beta) for col in p.T]
    want3 = [np_rule(*col[:2], alpha=alpha, beta=beta) for col in p.T]
    np.testing.assert_array_equal(classify(*logp, alpha=alpha, beta=beta), want4)
    np.testing.assert_array_equal(classify(*logp[:2], rule="three_way", alpha=alpha, beta=beta), want3)  # fmt: skip
    assert set(want4) == {MISSING, SHARED, TEACHER, STUDENT, BOOSTED} or alpha == beta == 0.0


def test_classify_under_jit_with_traced_thresholds():
    p = np.array([row for row, _ in HAND])
    f = jax.jit(
        lambda t, s, d, a, b: pv.classify_actions(
            teacher_logp=t, student_logp=s, distilled_logp=d, alpha=a, beta=b
        )
    )
    np.testing.assert_array_equal(f(*np.log(p).T, 0.05, 0.1), [c for _, c in HAND])


def np_action_log_probs(lp, ids, num, normalize, mask=None):
    out = np.full(num, np.nan)
    for a in range(num):
        sel = ids == a if mask is None else (ids == a) & mask
        if sel.any():
            out[a] = lp[sel].sum() if normalize == "sum" else lp[sel].mean()
    return out


@pytest.mark.parametrize("normalize", ["mean", "sum"])
def test_action_log_probs_match_a_numpy_loop(normalize):
    rng = np.random.default_rng(1)
    lp = -rng.exponential(size=(3, 20))
    ids = rng.integers(-1, 6, size=(3, 20))
    ids[ids == 4] = 5  # action 4 has no token: NaN
    lp[ids == -1] = np.nan  # padding may hold anything
    lp[0, np.flatnonzero(ids[0] == 2)[:1]] = NEG_INF  # one zero-probability token in action 2
    mask = rng.uniform(size=ids.shape) < 0.9
    want = np_action_log_probs(lp, ids, 7, normalize)
    got = pv.action_log_probs(lp, ids, 7, normalize=normalize)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(got[4]) and np.isnan(got[6]) and got[2] == NEG_INF
    masked = pv.action_log_probs(lp, ids, 7, normalize=normalize, mask=mask)
    np.testing.assert_allclose(masked, np_action_log_probs(lp, ids, 7, normalize, mask), rtol=1e-12)
    jitted = jax.jit(lambda x: pv.action_log_probs(x, ids, 7, normalize=normalize))(lp)
    np.testing.assert_allclose(jitted, want, rtol=1e-12)


def test_geometric_mean_by_hand():
    # tokens of probability 1/2, 1/8 -> geometric mean 1/4; joint 1/16
    lp = np.log([0.5, 0.125, 0.9])
    ids = np.array([0, 0, -1])
    np.testing.assert_allclose(np.exp(pv.action_log_probs(lp, ids, 1)), [0.25], rtol=1e-14)
    np.testing.assert_allclose(np.exp(pv.action_log_probs(lp, ids, 1, normalize="sum")), [1 / 16], rtol=1e-14)  # fmt: skip


def test_a_zero_probability_token_makes_a_teacher_action():
    # Sentence 0: the student gives one of its tokens probability 0; sentence 1: every model agrees.
    ids = np.array([0, 0, 0, 1, 1])
    teacher = np.log([0.9, 0.8, 0.9, 0.5, 0.5])
    student = np.array([np.log(0.9), NEG_INF, np.log(0.9), np.log(0.5), np.log(0.5)])
    distilled = np.log([0.9, 0.7, 0.9, 0.5, 0.5])
    a = [pv.action_log_probs(x, ids, 2) for x in (teacher, student, distilled)]
    assert a[1][0] == NEG_INF
    np.testing.assert_array_equal(classify(*a), [TEACHER, SHARED])


def test_token_log_probs_gather_the_realised_token():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 7))
    logits[0, 1, 3] = NEG_INF
    tokens = rng.integers(0, 7, size=(2, 5))
    tokens[0, 1] = 3
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = np.take_along_axis(log_softmax, tokens[..., None], -1)[..., 0]
    got = pv.token_log_probs(logits, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0, 1] == NEG_INF


def test_provenance_summary_matches_a_numpy_loop():
    rng = np.random.default_rng(3)
    cats = rng.integers(-1, 4, size=60)
    seqs = rng.integers(-1, 5, size=60)
    seqs[seqs == 3] = 4  # sequence 3 has no action
    counts = np.zeros((6, 4), int)
    for c, q in zip(cats, seqs, strict=True):
        if c >= 0 and q >= 0:
            counts[q, c] += 1
    got = pv.provenance_summary(cats, seqs, 6)
    np.testing.assert_array_equal(got.counts, counts)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got.fractions, counts / counts.sum(1, keepdims=True), rtol=1e-14)
    assert np.isnan(got.fractions[3]).all() and np.isnan(got.fractions[5]).all()
    np.testing.assert_array_equal(got.total_counts, counts.sum(0))
    np.testing.assert_allclose(got.total_fractions, counts.sum(0) / counts.sum(), rtol=1e-14)


def test_provenance_summary_by_hand_three_way():
    cats = np.array([[TEACHER, TEACHER, COMMON], [STUDENT, MISSING, TEACHER]])
    seqs = np.array([[0, 0, 0], [1, 1, 1]])
    got = pv.provenance_summary(cats, seqs, 2, num_categories=3)
    np.testing.assert_array_equal(got.counts, [[1, 2, 0], [0, 1, 1]])
    np.testing.assert_allclose(got.fractions, [[1 / 3, 2 / 3, 0], [0, 0.5, 0.5]], rtol=1e-14)
    np.testing.assert_allclose(got.total_fractions, [0.2, 0.6, 0.2], rtol=1e-14)
    # the paper's selection: per problem, the response with the most teacher actions
    assert list(pv.select_per_group(np.asarray(got.counts[:, TEACHER]), np.array([7, 7]))) == [0]


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1)


def np_js(p, q):
    m = (p + q) / 2
    return (np_kl(p, m) + np_kl(q, m)) / 2


def test_selection_scores_match_numpy_kl_and_js():
    rng = np.random.default_rng(4)
    t, s = rng.normal(size=(3, 6, 5)), rng.normal(size=(3, 6, 5))

    # Zero probabilities, by hand: teacher one-hot vs student uniform: KL = log 5; student one-hot
    # where the teacher is uniform: KL = +inf; disjoint one-hots: JS = log 2.
    def one_hot(k):
        return np.where(np.arange(5) == k, 0.0, NEG_INF)

    t[0, 0], s[0, 0] = one_hot(0), np.zeros(5)
    t[0, 1], s[0, 1] = np.zeros(5), one_hot(2)
    t[0, 2], s[0, 2] = one_hot(0), one_hot(1)
    mask = rng.uniform(size=(3, 6)) < 0.7
    mask[0, :3], mask[2] = True, False
    t[~mask] = np.nan  # masked positions may hold anything
    p, q = np_softmax(t), np_softmax(s)
    kl = pv.selection_scores(teacher_logits=t, student_logits=s, mask=mask, reduce="token")
    assert kl[0, 0] == pytest.approx(math.log(5), rel=1e-14) and kl[0, 1] == np.inf
    np.testing.assert_allclose(kl, np.where(mask, np_kl(p, q), np.nan), rtol=1e-10)
    js = pv.selection_scores(
        teacher_logits=t, student_logits=s, divergence="js", mask=mask, reduce="token"
    )
    assert js[0, 2] == pytest.approx(math.log(2), rel=1e-14)
    np.testing.assert_allclose(js, np.where(mask, np_js(p, q), np.nan), rtol=1e-10)
    # per sequence: the mean over the unmasked positions (row 0 holds the +inf), NaN for none
    seq = pv.selection_scores(teacher_logits=t, student_logits=s, mask=mask)
    assert seq[0] == np.inf and np.isnan(seq[2])
    np.testing.assert_allclose(seq[1], np_kl(p, q)[1][mask[1]].mean(), rtol=1e-10)
    # no mask: every position
    u, v = rng.normal(size=(3, 6, 5)), rng.normal(size=(3, 6, 5))
    np.testing.assert_allclose(pv.selection_scores(teacher_logits=u, student_logits=v), np_kl(np_softmax(u), np_softmax(v)).mean(-1), rtol=1e-10)  # fmt: skip


def test_select_top_ties_and_rounding():
    scores = np.array([1.0, 3.0, 2.0, 3.0, -np.inf, np.inf, 2.0])
    np.testing.assert_array_equal(pv.select_top(scores, 7), [5, 1, 3, 2, 6, 0, 4])
    np.testing.assert_array_equal(pv.select_top(scores, 3), [5, 1, 3])  # tie 1 / 3: index order
    np.testing.assert_array_equal(pv.select_top(scores, 4), [5, 1, 3, 2])  # tie 2 / 6 cut: 2 first
    assert len(pv.select_top(scores, 0.5)) == 3  # floor(3.5)
    assert len(pv.select_top(scores, 0.01)) == 1  # at least one
    assert len(pv.select_top(scores, 1.0)) == 7
    assert len(pv.select_top(np.arange(100.0), 0.29)) == 29  # 0.29 * 100 is 28.999... in floats
    assert len(pv.select_top(np.arange(10.0), 0.7)) == 7
    with_nan = np.array([np.nan, 1.0, 2.0, np.nan])
    np.testing.assert_array_equal(pv.select_top(with_nan, 1.0, mask=~np.isnan(with_nan)), [2, 1])


def test_select_per_group():
    scores = np.array([1.0, 5.0, 5.0, 2.0, 0.0, 9.0])
    groups = np.array([3, 3, 3, 1, 1, 8])
    np.testing.assert_array_equal(pv.select_per_group(scores, groups), [3, 1, 5])  # group 1, 3, 8
    mask = np.array([True, False, True, False, True, False])
    np.testing.assert_array_equal(pv.select_per_group(scores, groups, mask=mask), [4, 2])


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: pv.classify_actions(
                teacher_logp=[-0.1], student_logp=[-0.1], distilled_logp=[-0.1], rule="five_way"
            ),
            "rule=",
        ),
        (
            lambda: pv.classify_actions(teacher_logp=[-0.1], student_logp=[-0.1]),
            "needs distilled_logp",
        ),
        (
            lambda: pv.classify_actions(
                teacher_logp=[-0.1], student_logp=[-0.1], distilled_logp=[-0.1], rule="three_way"
            ),
            "takes none",
        ),
        (
            lambda: pv.classify_actions(
                teacher_logp=[-0.1], student_logp=[-0.1], distilled_logp=[-0.1], alpha=-0.1
            ),
            "alpha must be",
        ),
        (
            lambda: pv.classify_actions(
                teacher_logp=[-0.1], student_logp=[-0.1], distilled_logp=[-0.1], beta=1.5
            ),
            "beta must be",
        ),
        (
            lambda: pv.classify_actions(
                teacher_logp=[-0.1], student_logp=[-0.1, -0.2], distilled_logp=[-0.1]
            ),
            "same shape",
        ),
        (
            lambda: pv.classify_actions(
                teacher_logp=[0.1], student_logp=[-0.1], distilled_logp=[-0.1]
            ),
            "<= 0",
        ),
        (
            lambda: pv.classify_actions(
                teacher_logp=[np.inf], student_logp=[-0.1], distilled_logp=[-0.1]
            ),
            "<= 0",
        ),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0, 3], 3), r"\[-1, 3\)"),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0, -2], 3), r"\[-1, 3\)"),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0.0, 1.0], 3), "integers"),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0, 1, 1], 3), "same shape"),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0, 1], 0), "num_segments"),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0, 1], 2.0), "num_segments"),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0, 1], 2, normalize="max"), "normalize="),
        (lambda: pv.action_log_probs([-0.1, 0.2], [0, 1], 2), "<= 0"),
        (lambda: pv.action_log_probs([-0.1, np.nan], [0, 1], 2), "NaN"),
        (lambda: pv.action_log_probs([-0.1, -0.2], [0, 1], 2, mask=[1, 0]), "boolean"),
        (lambda: pv.token_log_probs(np.zeros((2, 3)), [0, 3]), r"\[0, 3\)"),
        (lambda: pv.token_log_probs(np.zeros((2, 3)), [0, 1, 2]), r"\[\.\.\., T\]"),
        (lambda: pv.provenance_summary([0, 4], [0, 0], 1), r"\[-1, 4\)"),
        (lambda: pv.provenance_summary([0, 1], [0, 2], 2), r"\[-1, 2\)"),
        (lambda: pv.provenance_summary([0, 1], [0], 2), "same shape"),
        (
            lambda: pv.selection_scores(
                teacher_logits=np.zeros((2, 3)), student_logits=np.zeros((2, 3)), reduce="max"
            ),
            "reduce=",
        ),
        (
            lambda: pv.selection_scores(
                teacher_logits=np.zeros((2, 3)), student_logits=np.zeros((2, 4))
            ),
            "one shape",
        ),
        (
            lambda: pv.selection_scores(teacher_logits=np.zeros(3), student_logits=np.zeros(3)),
            r"\[\.\.\., T, V\]",
        ),
        (
            lambda: pv.selection_scores(
                teacher_logits=np.zeros((2, 3)),
                student_logits=np.zeros((2, 3)),
                mask=np.ones(3, bool),
            ),
            "mask",
        ),  # fmt: skip
        (lambda: pv.select_top([1.0, 2.0], 0), r"\[1, 2\]"),
        (lambda: pv.select_top([1.0, 2.0], 3), r"\[1, 2\]"),
        (lambda: pv.select_top([1.0, 2.0], 0.0), r"\(0, 1\]"),
        (lambda: pv.select_top([1.0, 2.0], 1.5), r"\(0, 1\]"),
        (lambda: pv.select_top([1.0, 2.0], True), "budget="),
        (lambda: pv.select_top([1.0, np.nan], 1), "NaN"),
        (lambda: pv.select_top([[1.0, 2.0]], 1), r"vector"),
        (lambda: pv.select_top([1.0, 2.0], 1, mask=[False, False]), "no candidates"),
        (lambda: pv.select_per_group([1.0, 2.0], [0.0, 1.0]), "group_ids"),
    ],
)
def test_bad_inputs_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unknown_divergence_is_refused():
    with pytest.raises((ValueError, KeyError)):
        pv.selection_scores(
            teacher_logits=np.zeros((2, 3)), student_logits=np.zeros((2, 3)), divergence="no-such-f"
        )


def test_exported_from_fdiv_analysis():
    import fdiv.analysis as analysis

    assert analysis.provenance is pv
    for name in pv.__all__:
        assert getattr(analysis, name) is getattr(pv, name)
