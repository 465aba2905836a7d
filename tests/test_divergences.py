"""Tests for ``fdiv.divergence``: categorical f-divergences ``sum_k q_k f(p_k / q_k)`` from logits.

Every expected value comes from an independent float64 reference written in this file:

- ``ref_divergence``: a direct numpy sum of ``q f(p/q)`` with the textbook form of each generator
  (``_spec``) and the zero-probability conventions (absent from both: 0; ``p = 0 < q``:
  ``q f(0+)``; ``q = 0 < p``: ``p lim f(u)/u``), from probabilities ``np_softmax(logits)``;
- scipy: ``scipy.special.rel_entr`` (KL and the mixture forms of the skew divergences) and
  ``scipy.spatial.distance.jensenshannon`` (which returns sqrt(JS) in nats);
- hand computations (disjoint supports, bounds, closed forms at extreme logits);
- central finite differences of the numpy reference (gradients, Hessians).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
from _catalog import CATALOG_NAMES
from _reference import f_of_u
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

import fdiv

INF = np.inf
LOG2 = math.log(2.0)

EXPECTED_NAMES = CATALOG_NAMES

# Parameters the registry uses when a generator is given by name.
DEFAULTS = {
    "alpha": {"alpha": 0.5},
    "skew_js": {"beta": 0.5, "normalize": False},
    "skew_kl": {"lam": 0.1},
    "skew_reverse_kl": {"lam": 0.1},
}

# (name, params): every name at its defaults, plus the parametrised generators at special points.
VALUE_CASES = [(name, {}) for name in EXPECTED_NAMES] + [
    ("alpha", {"alpha": -1.0}),
    ("alpha", {"alpha": 0.0}),
    ("alpha", {"alpha": 1.0}),
    ("alpha", {"alpha": 2.0}),
    ("skew_js", {"beta": 0.0, "normalize": True}),
    ("skew_js", {"beta": 0.3, "normalize": True}),
    ("skew_js", {"beta": 1.0, "normalize": True}),
    ("skew_kl", {"lam": 0.0}),
    ("skew_kl", {"lam": 0.3}),
    ("skew_reverse_kl", {"lam": 0.0}),
    ("skew_reverse_kl", {"lam": 0.3}),
]


def case_id(case) -> str:
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


CASE_IDS = [case_id(c) for c in VALUE_CASES]


# ------------------------------------------------------------------------------------------------
# Independent numpy references.
# ------------------------------------------------------------------------------------------------


def _spec(name: str, **params):
    """``(f, f(0+), lim_{u->inf} f(u)/u)`` of a generator from the shared reference table
    (``tests/_reference.py``: textbook forms, the two limits by hand), ``f`` at ``u > 0`` only."""
    return f_of_u(name, **{**DEFAULTS.get(name, {}), **params})


def ref_divergence(name: str, p, q, **params) -> np.ndarray:
    """``sum_k q_k f(p_k/q_k)`` over the last axis in float64, with the zero-probability rules."""
    f, f0, slope = _spec(name, **params)
    p, q = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(q, np.float64))
    inner = (p > 0) & (q > 0)
    u = np.where(inner, p, 1.0) / np.where(inner, q, 1.0)
    with np.errstate(all="ignore"):
        terms = np.select(
            [inner, (p == 0) & (q > 0), (q == 0) & (p > 0)],
            [q * f(u), q * f0, p * slope],
            0.0,
        )
    return terms.sum(-1)


def np_log_softmax(x, axis=-1) -> np.ndarray:
    """Float64 log-softmax; ``-inf`` logits give ``-inf``, an all ``-inf`` slice stays all ``-inf``."""
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return x - m - np.where(np.isneginf(lse), 0.0, lse)


def np_softmax(x, axis=-1) -> np.ndarray:
    return np.exp(np_log_softmax(x, axis))


def ref_from_logits(name, p_logits, q_logits, **params) -> np.ndarray:
    return ref_divergence(name, np_softmax(p_logits), np_softmax(q_logits), **params)


def fd_rows(fun, x, eps=1e-5) -> np.ndarray:
    """Central differences of a row-wise ``fun([..., V]) -> [...]`` w.r.t. each of the V entries."""
    x = np.asarray(x, np.float64)
    step = np.eye(x.shape[-1]) * eps
    return (fun(x[..., None, :] + step) - fun(x[..., None, :] - step)) / (2 * eps)


# ------------------------------------------------------------------------------------------------
# Helpers around the library.
# ------------------------------------------------------------------------------------------------


def generator(name, params):
    """What to pass to ``fdiv.divergence``: the name, or a Generator object when parametrised."""
    return fdiv.generators.get(name, **params) if params else name


# One [B, V] shape for most tests: eager JAX compiles each primitive once per shape and dtype, so
# sharing the shape keeps the file fast.
SHAPE = (6, 6)


def random_logits(seed, shape=SHAPE, scale=1.5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) * scale, rng.normal(size=shape) * scale


def as_f64(x) -> np.ndarray:
    """The exact values of a (possibly low-precision) array, in float64."""
    return np.asarray(x).astype(np.float64)


def value_and_grads(g, p, q, **kwargs):
    """Per-example values and the gradients of their sum w.r.t. both logits (eager)."""
    fn = lambda a, b: jnp.sum(fdiv.divergence(g, a, b, **kwargs))
    grads = jax.grad(fn, argnums=(0, 1))(p, q)
    return fdiv.divergence(g, p, q, **kwargs), grads


@functools.cache
def jitted_value_and_grads(name: str):
    def fn(p, q):
        values = fdiv.divergence(name, p, q)
        grads = jax.grad(lambda a, b: jnp.sum(fdiv.divergence(name, a, b)), argnums=(0, 1))(p, q)
        return values, grads

    return jax.jit(fn)


# ------------------------------------------------------------------------------------------------
# 1. Values against numpy / scipy on random logits.
# ------------------------------------------------------------------------------------------------


def test_registry_names():
    """Reference: the list of generators in the specification."""
    assert sorted(fdiv.generators.names()) == EXPECTED_NAMES


@pytest.mark.parametrize("name,params", VALUE_CASES, ids=CASE_IDS)
def test_values_match_numpy_float64(name, params):
    """Reference: numpy float64 sum of q f(p/q) (ref_divergence)."""
    p, q = random_logits(0)
    with jax.enable_x64(True):
        got = fdiv.divergence(generator(name, params), jnp.asarray(p), jnp.asarray(q))
        assert got.dtype == jnp.float64
        assert got.shape == SHAPE[:1]
        got = np.asarray(got)
    np.testing.assert_allclose(got, ref_from_logits(name, p, q, **params), rtol=1e-9)


@pytest.mark.parametrize("name,params", VALUE_CASES, ids=CASE_IDS)
def test_values_match_numpy_float32(name, params):
    """Reference: numpy float64 sum of q f(p/q) on the float32-rounded logits."""
    p, q = random_logits(1)
    p32, q32 = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
    got = fdiv.divergence(generator(name, params), p32, q32)
    assert got.dtype == jnp.float32
    want = ref_from_logits(name, as_f64(p32), as_f64(q32), **params)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kl_and_js_match_scipy(dtype):
    """Reference: scipy.special.rel_entr (KL) and scipy.spatial.distance.jensenshannon**2 (JS)."""
    p, q = random_logits(2)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    with jax.enable_x64(dtype == "float64"):
        pj, qj = jnp.asarray(p, dtype), jnp.asarray(q, dtype)
        kl = np.asarray(fdiv.divergence("kl", pj, qj), np.float64)
        js = np.asarray(fdiv.divergence("js", pj, qj), np.float64)
        gan = np.asarray(fdiv.divergence("gan", pj, qj), np.float64)
    P, Q = np_softmax(as_f64(pj)), np_softmax(as_f64(qj))
    np.testing.assert_allclose(kl, scipy.special.rel_entr(P, Q).sum(-1), rtol=rtol)
    scipy_js = scipy.spatial.distance.jensenshannon(P, Q, axis=-1) ** 2
    np.testing.assert_allclose(js, scipy_js, rtol=rtol)
    np.testing.assert_allclose(gan, 2 * scipy_js, rtol=rtol)


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.3])
def test_skew_divergences_match_scipy_mixture_forms(lam):
    """Reference: rel_entr on mixtures: skew_kl = KL(P || lam P + (1-lam) Q), skew_reverse_kl =
    KL(Q || lam Q + (1-lam) P), skew_js(beta) = beta KL(P || M) + (1-beta) KL(Q || M)."""
    p, q = random_logits(3)
    P, Q = np_softmax(p), np_softmax(q)
    beta = 0.3
    M = beta * P + (1 - beta) * Q
    with jax.enable_x64(True):
        pj, qj = jnp.asarray(p), jnp.asarray(q)
        skl = fdiv.divergence(fdiv.generators.get("skew_kl", lam=lam), pj, qj)
        srkl = fdiv.divergence(fdiv.generators.get("skew_reverse_kl", lam=lam), pj, qj)
        sjs = fdiv.divergence(fdiv.generators.get("skew_js", beta=beta), pj, qj)
        sjs_n = fdiv.divergence(fdiv.generators.get("skew_js", beta=beta, normalize=True), pj, qj)
    rel = lambda a, b: scipy.special.rel_entr(a, b).sum(-1)
    np.testing.assert_allclose(skl, rel(P, lam * P + (1 - lam) * Q), rtol=1e-9)
    np.testing.assert_allclose(srkl, rel(Q, lam * Q + (1 - lam) * P), rtol=1e-9)
    want_js = beta * rel(P, M) + (1 - beta) * rel(Q, M)
    np.testing.assert_allclose(sjs, want_js, rtol=1e-9)
    np.testing.assert_allclose(sjs_n, want_js / (beta * (1 - beta)), rtol=1e-9)


def test_identical_distributions_give_zero():
    """Reference: D_f(P || P) = f(1) = 0 for every generator (hand computation)."""
    p, _ = random_logits(4)
    for name, params in VALUE_CASES:
        got = np.asarray(fdiv.divergence(generator(name, params), p, p + 3.0))  # shift-invariant
        assert np.all(got >= 0.0), (name, params, got)
        np.testing.assert_allclose(got, 0.0, atol=1e-6, err_msg=case_id((name, params)))


# ------------------------------------------------------------------------------------------------
# 2. Zero-probability classes.
# ------------------------------------------------------------------------------------------------

_ZP = np.array(
    [
        # P has a zero class, Q full support
        [[0.3, -np.inf, 1.2, -0.5, 0.0, 0.7], [0.1, 0.4, -1.0, 0.2, 0.9, -0.3]],
        # Q has a zero class, P full support
        [[0.3, 0.8, 1.2, -0.5, 0.0, 0.7], [0.1, 0.4, -np.inf, 0.2, 0.9, -0.3]],
        # a class absent from both
        [[0.3, 0.8, 1.2, -np.inf, 0.0, 0.7], [0.1, 0.4, -1.0, -np.inf, 0.9, -0.3]],
        # zero in P only, zero in Q only, and zero in both, in one row
        [[-np.inf, 0.8, -np.inf, -0.5, 0.0, 0.7], [0.1, 0.4, -np.inf, 0.2, 0.9, -np.inf]],
        # two shared zeros, otherwise full
        [[-np.inf, -np.inf, 1.2, -0.5, 0.0, 0.7], [-np.inf, -np.inf, -1.0, 0.2, 0.9, -0.3]],
        # no zeros
        [[0.3, 0.8, 1.2, -0.5, 0.0, 0.7], [0.1, 0.4, -1.0, 0.2, 0.9, -0.3]],
    ]
)
ZP_P, ZP_Q = _ZP[:, 0], _ZP[:, 1]


@pytest.mark.parametrize("name,params", VALUE_CASES, ids=CASE_IDS)
def test_zero_probability_classes_values(name, params):
    """Reference: numpy masked sums (ref_divergence) with q f(0+) / p f'(inf) / 0 conventions."""
    want = ref_from_logits(name, ZP_P, ZP_Q, **params)
    with jax.enable_x64(True):
        got = np.asarray(fdiv.divergence(generator(name, params), ZP_P, ZP_Q))
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, rtol=1e-9)  # also requires inf exactly where want is inf
    # the swapped pair, too
    want_swapped = ref_from_logits(name, ZP_Q, ZP_P, **params)
    with jax.enable_x64(True):
        got_swapped = np.asarray(fdiv.divergence(generator(name, params), ZP_Q, ZP_P))
    np.testing.assert_allclose(got_swapped, want_swapped, rtol=1e-9)


def test_zero_probability_kl_matches_rel_entr():
    """Reference: scipy.special.rel_entr handles 0 log 0 = 0 and p log(p/0) = inf."""
    want = scipy.special.rel_entr(np_softmax(ZP_P), np_softmax(ZP_Q)).sum(-1)
    with jax.enable_x64(True):
        got = np.asarray(fdiv.divergence("kl", ZP_P, ZP_Q))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert np.isinf(got[[1, 3]]).all() and np.isfinite(got[[0, 2, 4, 5]]).all()


# Hand computations at disjoint supports: D = f(0+) + lim f(u)/u (all of Q where P is 0, all of P
# where Q is 0).
DISJOINT_BOUNDED = {
    "js": LOG2,
    "gan": 2 * LOG2,
    "total_variation": 1.0,
    "squared_hellinger": 2.0,
    "triangular": 2.0,
    "alpha": 4.0,  # alpha = 1/2: 1/alpha + 1/(1 - alpha)
    "skew_js": LOG2,  # beta = 1/2 is JS
    "skew_kl": -math.log(0.1),  # KL(P || 0.1 P) = log 10
    "skew_reverse_kl": -math.log(0.1),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_disjoint_supports(dtype):
    """Reference: hand computations (bounded generators hit their maximum, the others are +inf)."""
    x = -np.inf
    p = np.array(
        [
            [0.0, 1.0, x, x, x, x],
            [x, x, x, 2.0, -3.0, x],
            [x, x, x, x, x, 0.0],
            [3.0, x, 3.0, x, 3.0, x],
            [0.0, x, x, x, x, x],
            [x, 5.0, -2.0, x, x, x],
        ]
    )
    q = np.array(
        [
            [x, x, 0.0, 2.0, -1.0, x],
            [0.5, 0.0, x, x, x, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, x],
            [x, 1.0, x, 1.0, x, 1.0],
            [x, 0.0, x, x, x, x],
            [x, x, x, 0.0, x, 0.0],
        ]
    )
    rtol = 1e-12 if dtype == "float64" else 1e-6
    with jax.enable_x64(dtype == "float64"):
        pj, qj = jnp.asarray(p, dtype), jnp.asarray(q, dtype)
        for name in EXPECTED_NAMES:
            got = np.asarray(fdiv.divergence(name, pj, qj), np.float64)
            if name in DISJOINT_BOUNDED:
                np.testing.assert_allclose(got, DISJOINT_BOUNDED[name], rtol=rtol, err_msg=name)
            else:
                assert np.all(got == np.inf), (name, got)
        unbounded = [("alpha", {"alpha": a}) for a in (-1.0, 0.0, 1.0, 2.0)] + [
            ("skew_js", {"beta": 0.0, "normalize": True}),
            ("skew_js", {"beta": 1.0, "normalize": True}),
            ("skew_kl", {"lam": 0.0}),
            ("skew_reverse_kl", {"lam": 0.0}),
        ]
        for name, params in unbounded:
            got = np.asarray(fdiv.divergence(generator(name, params), pj, qj))
            assert np.all(got == np.inf), (name, params, got)
        bounded = {
            ("skew_js", 0.3): -(0.7 * math.log(0.7) + 0.3 * math.log(0.3)) / 0.21,
            ("skew_kl", 0.3): -math.log(0.3),
            ("skew_reverse_kl", 0.3): -math.log(0.3),
        }
        for (name, x), want in bounded.items():
            params = {"beta": x, "normalize": True} if name == "skew_js" else {"lam": x}
            got = np.asarray(fdiv.divergence(generator(name, params), pj, qj), np.float64)
            np.testing.assert_allclose(got, want, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("name,params", VALUE_CASES, ids=CASE_IDS)
def test_zero_probability_gradients(name, params):
    """Gradients at -inf logits are exactly 0; elsewhere they match central differences of the
    numpy reference (on rows whose value is finite)."""
    g = generator(name, params)
    for p, q in ((ZP_P, ZP_Q), (ZP_Q, ZP_P)):
        finite_rows = np.isfinite(ref_from_logits(name, p, q, **params))
        p, q = p[finite_rows], q[finite_rows]
        assert len(p) >= 3
        with jax.enable_x64(True):
            _, (gp, gq) = value_and_grads(g, jnp.asarray(p), jnp.asarray(q))
        gp, gq = np.asarray(gp), np.asarray(gq)
        assert np.all(gp[np.isneginf(p)] == 0.0) and np.all(gq[np.isneginf(q)] == 0.0)
        assert np.isfinite(gp).all() and np.isfinite(gq).all()
        if name == "total_variation":
            continue  # |u - 1| has kinks; its values are checked above
        fd_p = fd_rows(lambda a, q=q: ref_from_logits(name, a, q[:, None, :], **params), p)
        fd_q = fd_rows(lambda b, p=p: ref_from_logits(name, p[:, None, :], b, **params), q)
        np.testing.assert_allclose(gp, fd_p, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(gq, fd_q, rtol=1e-6, atol=1e-8)


def test_all_neg_inf_rows_are_nan_with_zero_gradients():
    """A row of all -inf logits is no distribution: NaN like jax.nn.log_softmax (not a plausible
    finite value), for every generator; its logit gradients are exactly 0 (so a caller who masks
    such rows out keeps finite gradients), and the well-formed rows are unaffected."""
    full = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
    part = np.array([0.5, -np.inf, 2.0, -np.inf, 1.0, -0.5])
    empty = np.full(6, -np.inf)
    p = np.stack([empty, full, empty, empty, part, empty, full])
    q = np.stack([full, empty, empty, part, empty, empty, part])
    for name in EXPECTED_NAMES:
        values, (gp, gq) = value_and_grads(name, jnp.asarray(p, jnp.float32), jnp.asarray(q))
        values, gp, gq = np.asarray(values), np.asarray(gp), np.asarray(gq)
        assert np.isnan(values[:6]).all(), (name, values)
        assert np.all(gp[:6] == 0.0) and np.all(gq[:6] == 0.0), name
        want = ref_divergence(name, np_softmax(full), np_softmax(part), **DEFAULTS.get(name, {}))
        np.testing.assert_allclose(values[6], want, rtol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------------
# 4. The ``where`` mask.
# ------------------------------------------------------------------------------------------------

MASK = np.array(
    [
        [True, True, True, True, True, True],
        [True, False, True, False, True, True],
        [False, False, True, False, True, False],
        [False, False, False, True, False, False],  # one class left: P = Q, D = 0
        [True, True, False, False, False, True],
        [False, True, True, True, True, True],
    ]
)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_where_equals_sub_vector(name):
    """Reference: numpy divergence of the softmaxes over the kept classes only; junk logits in
    masked classes have no influence and get exactly zero gradient."""
    p, q = random_logits(5, shape=MASK.shape)
    p = np.where(MASK, p, 1e4)  # junk that would dominate if it leaked
    q = np.where(MASK, q, -1e4)
    want = np.array([ref_from_logits(name, p[b, m], q[b, m]) for b, m in enumerate(MASK)])
    with jax.enable_x64(True):
        got, (gp, gq) = value_and_grads(name, jnp.asarray(p), jnp.asarray(q), where=MASK)
    got = np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    assert got[3] == 0.0
    gp, gq = np.asarray(gp), np.asarray(gq)
    assert np.all(gp[~MASK] == 0.0) and np.all(gq[~MASK] == 0.0)
    assert np.all(gp[3] == 0.0) and np.all(gq[3] == 0.0)
    if name == "total_variation":
        return
    for b, m in enumerate(MASK):
        fd_p = fd_rows(lambda a, b=b, m=m: ref_from_logits(name, a, q[b, m]), p[b, m])
        fd_q = fd_rows(lambda c, b=b, m=m: ref_from_logits(name, p[b, m], c), q[b, m])
        np.testing.assert_allclose(gp[b, m], fd_p, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(gq[b, m], fd_q, rtol=1e-6, atol=1e-8)


def test_where_broadcasts_class_mask():
    """A [V] mask with [B, V] logits: reference = numpy on the kept columns."""
    p, q = random_logits(6)
    mask = np.array([True, False, True, True, False, True])
    for name in ("kl", "js", "pearson", "total_variation"):
        with jax.enable_x64(True):
            got, (gp, gq) = value_and_grads(name, jnp.asarray(p), jnp.asarray(q), where=mask)
        np.testing.assert_allclose(
            np.asarray(got), ref_from_logits(name, p[:, mask], q[:, mask]), rtol=1e-9
        )
        assert gp.shape == p.shape and gq.shape == q.shape
        assert np.all(np.asarray(gp)[:, ~mask] == 0.0) and np.all(np.asarray(gq)[:, ~mask] == 0.0)


def test_where_combines_with_neg_inf_logits():
    """Masked classes and -inf logits together. Reference: numpy on the kept classes."""
    p, q = random_logits(22)
    rng = np.random.default_rng(23)
    p = np.where(rng.random(SHAPE) < 0.25, -np.inf, p)
    q = np.where(rng.random(SHAPE) < 0.25, -np.inf, q)
    mask = rng.random(SHAPE) < 0.7
    # keep some class with mass in both P and Q in every row (the value is then finite for all)
    p[:, 0] = q[:, 0] = 0.0
    mask[:, 0] = True
    assert np.isneginf(np.where(mask, p, 0.0)).any() and np.isneginf(np.where(mask, q, 0)).any()
    for name in ("js", "kl", "reverse_kl", "squared_hellinger", "triangular"):
        want = np.array([ref_from_logits(name, p[b, m], q[b, m]) for b, m in enumerate(mask)])
        with jax.enable_x64(True):
            got = np.asarray(fdiv.divergence(name, p, q, where=mask))
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=name)


# ------------------------------------------------------------------------------------------------
# 5. ``axis`` and broadcasting.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, -3])
def test_axis_argument(axis):
    """Reference: numpy divergence along ``axis`` (np.moveaxis to the end)."""
    p, q = random_logits(7, shape=(6, 6, 6))
    mask = np.random.default_rng(8).random((6, 6, 6)) < 0.8
    mask[0] = mask[:, 0] = True  # every slice along any axis keeps a class
    for name in ("kl", "js", "pearson", "triangular"):
        want = ref_from_logits(name, np.moveaxis(p, axis, -1), np.moveaxis(q, axis, -1))
        with jax.enable_x64(True):
            got, (gp, _) = value_and_grads(name, jnp.asarray(p), jnp.asarray(q), axis=axis)
        assert got.shape == want.shape and gp.shape == p.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9)
        # a full-shape mask is interpreted in the original layout
        pm, qm = np.where(mask, p, -np.inf), np.where(mask, q, -np.inf)
        want_m = ref_from_logits(name, np.moveaxis(pm, axis, -1), np.moveaxis(qm, axis, -1))
        with jax.enable_x64(True):
            got_m = fdiv.divergence(name, jnp.asarray(p), jnp.asarray(q), axis=axis, where=mask)
        np.testing.assert_allclose(np.asarray(got_m), want_m, rtol=1e-9)


@pytest.mark.parametrize("name", ["kl", "js", "neyman", "skew_kl"])
def test_broadcast_q_against_batch(name):
    """q_logits [V] against p_logits [B, V]: numpy reference per row; the gradient has q's shape
    and equals central differences of sum_b D(P_b || Q) (numpy)."""
    p, _ = random_logits(9)
    q = np.random.default_rng(10).normal(size=SHAPE[-1])
    with jax.enable_x64(True):
        got, (gp, gq) = value_and_grads(name, jnp.asarray(p), jnp.asarray(q))
        got_t = fdiv.divergence(name, jnp.asarray(q), jnp.asarray(p))  # [V] as p_logits
    np.testing.assert_allclose(np.asarray(got), ref_from_logits(name, p, q), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(got_t), ref_from_logits(name, q, p), rtol=1e-9)
    assert gp.shape == SHAPE and gq.shape == SHAPE[-1:]
    fd_q = fd_rows(lambda b: ref_from_logits(name, p[None], b[..., None, :]).sum(-1), q)
    np.testing.assert_allclose(np.asarray(gq), fd_q, rtol=1e-6, atol=1e-8)


def test_outer_broadcasting_shapes():
    """[B, 1, V] against [1, C, V] gives [B, C]. Reference: numpy on the broadcast arrays."""
    p, _ = random_logits(11, shape=(6, 1, 6))
    _, q = random_logits(12, shape=(1, 6, 6))
    with jax.enable_x64(True):
        got = fdiv.divergence("kl", p, q)
    assert got.shape == (6, 6)
    np.testing.assert_allclose(np.asarray(got), ref_from_logits("kl", p, q), rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# 6. Composition with JAX transformations.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kl", "js", "pearson", "total_variation", "skew_js"])
def test_jit_and_vmap_agree_with_eager(name):
    """Reference: numpy values; jit / vmap / eager agree with each other to float32 rounding."""
    p, q = random_logits(13)
    p32, q32 = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
    eager_v, eager_g = value_and_grads(name, p32, q32)
    jit_v, jit_g = jitted_value_and_grads(name)(p32, q32)
    np.testing.assert_allclose(np.asarray(jit_v), np.asarray(eager_v), rtol=1e-6, atol=1e-7)
    for a, b in zip(jit_g, eager_g, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    vmapped = jax.vmap(lambda a, b: fdiv.divergence(name, a, b))(p32, q32)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(eager_v), rtol=1e-6, atol=1e-7)
    vmapped_q = jax.vmap(lambda a: fdiv.divergence(name, a, q32[0]))(p32)
    want = ref_from_logits(name, as_f64(p32), as_f64(q32[0]))
    np.testing.assert_allclose(np.asarray(vmapped_q), want, rtol=1e-4)
    per_row_grad = jax.vmap(jax.grad(lambda a, b: fdiv.divergence(name, a, b)))(p32, q32)
    # One row per program vs all rows in one: a few roundings of the row's largest entry apart.
    scale = float(jnp.max(jnp.abs(eager_g[0])))
    np.testing.assert_allclose(
        np.asarray(per_row_grad), np.asarray(eager_g[0]), rtol=1e-5, atol=4e-7 * scale
    )


def test_grad_of_sum_of_two_divergences():
    """Reference: central differences of the numpy sum kl + 0.5 js (per row, float64)."""
    p, q = random_logits(14)

    def loss(a, b):
        return jnp.sum(fdiv.divergence("kl", a, b) + 0.5 * fdiv.divergence("js", a, b))

    with jax.enable_x64(True):
        gp, gq = jax.grad(loss, argnums=(0, 1))(jnp.asarray(p), jnp.asarray(q))
    ref = lambda a, b: ref_from_logits("kl", a, b) + 0.5 * ref_from_logits("js", a, b)
    fd_p = fd_rows(lambda a: ref(a, q[:, None, :]), p)
    fd_q = fd_rows(lambda b: ref(p[:, None, :], b), q)
    np.testing.assert_allclose(np.asarray(gp), fd_p, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(gq), fd_q, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "name,params",
    [("kl", {}), ("js", {}), ("pearson", {}), ("alpha", {"alpha": 2.0}), ("skew_kl", {})],
    ids=["kl", "js", "pearson", "alpha-2", "skew_kl"],
)
def test_check_grads_second_order_fwd_and_rev(name, params):
    """jax.test_util.check_grads (numerical differences) through the custom_jvp, order 2."""
    p, q = random_logits(15)
    g = generator(name, params)
    with jax.enable_x64(True):
        f = lambda a, b: fdiv.divergence(g, a, b)
        check_grads(f, (jnp.asarray(p), jnp.asarray(q)), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "squared_hellinger", "triangular"])
def test_hessian_matches_finite_differences(name):
    """jax.hessian w.r.t. p_logits ([B, V]: block diagonal, symmetric blocks) vs second central
    differences of the numpy reference and vs central differences of the gradient."""
    p, q = random_logits(16)
    nb, nv = SHAPE
    with jax.enable_x64(True):
        f = lambda a: jnp.sum(fdiv.divergence(name, a, jnp.asarray(q)))
        hess = np.asarray(jax.hessian(f)(jnp.asarray(p)))  # [B, V, B, V]
        grad = jax.grad(f)
        eps = 1e-5
        steps = np.eye(nv)[:, None, :] * eps * np.ones((nb, 1))  # step j in every row at once
        fd_of_grad = np.stack(
            [
                np.asarray(grad(jnp.asarray(p + e))) - np.asarray(grad(jnp.asarray(p - e)))
                for e in steps
            ],
            axis=1,
        ) / (2 * eps)  # [B, V(j), V]
    blocks = hess[np.arange(nb), :, np.arange(nb), :]  # [B, V, V]
    off_diagonal = hess.copy()
    off_diagonal[np.arange(nb), :, np.arange(nb), :] = 0.0
    assert np.all(off_diagonal == 0.0)
    h = 1e-4
    E = np.eye(nv) * h
    ref = lambda a: ref_from_logits(name, a, q[:, None, None, :])
    x = p[:, None, None, :]
    fd2 = (
        ref(x + E[:, None] + E[None, :])
        - ref(x + E[:, None] - E[None, :])
        - ref(x - E[:, None] + E[None, :])
        + ref(x - E[:, None] - E[None, :])
    ) / (4 * h * h)
    np.testing.assert_allclose(blocks, np.swapaxes(blocks, 1, 2), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(blocks, fd2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blocks, fd_of_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name,params", VALUE_CASES, ids=CASE_IDS)
def test_fdiv_check_divergence_grads(name, params):
    """fdiv.testing.check_divergence_grads (jax.test_util.check_grads in float64) for every
    generator, forward and reverse mode at order 1 (forward mode runs the custom_jvp rule itself);
    TV with logits away from its kink p = q. Order 2 (the helper's default, ~5x the compile time):
    test_check_grads_second_order_fwd_and_rev and tests/test_testing_helpers.py."""
    p, q = random_logits(17, shape=(2, 4))
    fdiv.testing.check_divergence_grads(generator(name, params), p, q, order=1)


@pytest.mark.parametrize("name", ["kl", "js", "neyman"])
def test_check_divergence_grads_with_where(name):
    """A masked class (``-inf`` in both) inside the checked function; order 1 (JS at order 2 with
    a masked class: tests/test_testing_helpers.py)."""
    p, q = random_logits(18, shape=(2, 4))
    mask = np.array([True, False, True, True])
    fdiv.testing.check_divergence_grads(name, p, q, where=mask, order=1)


# ------------------------------------------------------------------------------------------------
# 7. Low-precision inputs.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_inputs(dtype):
    """The package's dtype rule: values computed and returned in float32, gradients in the
    input's dtype; the values are those of the numpy float64 reference on the rounded logits (no
    rounding of the result back to the input's precision); finite gradients."""
    p, q = random_logits(19, scale=1.0)
    pj, qj = jnp.asarray(p, dtype), jnp.asarray(q, dtype)
    for name, params in VALUE_CASES:
        g = generator(name, params)
        values, (gp, gq) = value_and_grads(g, pj, qj)
        assert values.dtype == jnp.float32 and gp.dtype == dtype and gq.dtype == dtype
        want = ref_from_logits(name, as_f64(pj), as_f64(qj), **params)
        got = np.asarray(values, np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=case_id((name, params)))
        assert np.isfinite(np.asarray(gp.astype(jnp.float32))).all()
        assert np.isfinite(np.asarray(gq.astype(jnp.float32))).all()


def test_mixed_precision_computes_in_float32():
    """float32 p with bfloat16 q: result is float32 and matches numpy on the rounded logits."""
    p, q = random_logits(20, scale=1.0)
    qj = jnp.asarray(q, jnp.bfloat16)
    got = fdiv.divergence("js", jnp.asarray(p, jnp.float32), qj)
    assert got.dtype == jnp.float32
    want = ref_from_logits("js", as_f64(jnp.asarray(p, jnp.float32)), as_f64(qj))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# 8. Errors.
# ------------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as excinfo:
        fdiv.divergence("not_a_divergence", jnp.zeros(3), jnp.zeros(3))
    message = str(excinfo.value)
    assert "not_a_divergence" in message
    for name in EXPECTED_NAMES:
        assert name in message


@pytest.mark.parametrize("p_shape,q_shape", [((3, 4), (3, 5)), ((2, 4), (3, 4)), ((4,), (5,))])
def test_non_broadcastable_shapes_raise(p_shape, q_shape):
    with pytest.raises(ValueError):
        fdiv.divergence("kl", jnp.zeros(p_shape), jnp.zeros(q_shape))


def test_scalar_logits_raise():
    with pytest.raises(ValueError):
        fdiv.divergence("kl", jnp.float32(0.0), jnp.float32(1.0))


# ------------------------------------------------------------------------------------------------
# 9. Temperature belongs to the caller.
# ------------------------------------------------------------------------------------------------


def test_temperature_is_callers():
    """divergence(name, p / tau, q / tau) is the divergence of softmax(p / tau) (numpy)."""
    p, q = random_logits(21)
    tau = 0.37
    for name in ("kl", "js", "squared_hellinger"):
        with jax.enable_x64(True):
            got = np.asarray(fdiv.divergence(name, p / tau, q / tau))
        np.testing.assert_allclose(got, ref_from_logits(name, p / tau, q / tau), rtol=1e-9)
        assert not np.allclose(got, ref_from_logits(name, p, q), rtol=1e-3)


# ------------------------------------------------------------------------------------------------
# 3. Hostile logits (hypothesis). Placed after the deterministic tests so that a failure here
#    (see test_power_type_* below) does not hide them under ``pytest -x``.
# ------------------------------------------------------------------------------------------------

HOSTILE = (1e4, -1e4, -np.inf, 0.0, 1.0, -2.5, 30.0, -30.0, 88.0, -104.0)
B, V = SHAPE

# Upper bounds of the bounded generators at their default parameters: f(0+) + lim f(u)/u.
BOUNDS = dict(DISJOINT_BOUNDED)
# Unbounded generators: (the support inclusion that makes them finite, power-type?). Power-type
# values can exceed the float range on a shared support, so their finiteness is required only
# for modest log-ratios.
SUPPORT_RULES = {
    "kl": ("p_in_q", False),
    "reverse_kl": ("q_in_p", False),
    "jeffreys": ("equal", False),
    "pearson": ("p_in_q", True),
    "neyman": ("q_in_p", True),
}
# Log-ratios up to ~80 are where the library documents overflow-free evaluation in float32.
MODEST_LOG_RATIO = 75.0
# A class counts as "surely present" when its log-probability is far from float32 underflow.
PRESENT_LOG_PROB = -80.0


def test_hostile_rules_cover_every_name():
    assert sorted(set(BOUNDS) | set(SUPPORT_RULES)) == EXPECTED_NAMES


@st.composite
def hostile_logit_pairs(draw):
    elements = st.one_of(st.sampled_from(HOSTILE), st.floats(-20, 20, width=32))
    p = draw(hnp.arrays(np.float32, (B, V), elements=elements))
    q = draw(hnp.arrays(np.float32, (B, V), elements=elements))
    for b in range(B):
        mode = draw(st.sampled_from(["free", "same", "same_support", "one_hot"]))
        if mode == "same":
            q[b] = p[b]
        elif mode == "same_support":
            q[b] = np.where(np.isfinite(p[b]), q[b], -np.inf)
            q[b] = np.where(np.isfinite(p[b]) & np.isneginf(q[b]), 1e4, q[b])
        elif mode == "one_hot":
            p[b] = -1e4
            p[b, draw(st.integers(0, V - 1))] = 1e4
        for x in (p, q):
            if not np.isfinite(x[b]).any():
                x[b, draw(st.integers(0, V - 1))] = draw(st.sampled_from([0.0, 1e4, -1e4]))
    return (q, p) if draw(st.booleans()) else (p, q)


def _expected_finiteness(name, lp, lq):
    """Rows that must be finite and rows that must be +inf, from float64 log-probabilities."""
    if name in BOUNDS:
        return np.ones(len(lp), bool), np.zeros(len(lp), bool)
    rule, power = SUPPORT_RULES[name]
    fp, fq = np.isfinite(lp), np.isfinite(lq)
    p_out = fp & ~fq  # P has mass where Q has none
    q_out = fq & ~fp
    bad = {"p_in_q": p_out, "q_in_p": q_out, "equal": p_out | q_out}[rule]
    must_finite = ~bad.any(-1)
    if power:
        with np.errstate(invalid="ignore"):
            gap = np.where(fp & fq, np.abs(lp - lq), 0.0)
        must_finite &= gap.max(-1) <= MODEST_LOG_RATIO
    surely_p = p_out & (lp > PRESENT_LOG_PROB)
    surely_q = q_out & (lq > PRESENT_LOG_PROB)
    surely_bad = {"p_in_q": surely_p, "q_in_p": surely_q, "equal": surely_p | surely_q}[rule]
    return must_finite, surely_bad.any(-1)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
@settings(max_examples=25, deadline=None)
@given(pair=hostile_logit_pairs())
def test_hostile_logits(name, pair):
    """No NaN, never negative, finite where the true value is finite (support rules and hand
    bounds), +inf where P (or Q) surely has mass the other lacks; gradients finite wherever the
    value is finite (and below 1e30), exactly 0 at -inf logits. float32 and bfloat16 inputs."""
    p, q = pair
    for dtype in (jnp.float32, jnp.bfloat16):
        pj, qj = jnp.asarray(p, dtype), jnp.asarray(q, dtype)
        lp, lq = np_log_softmax(as_f64(pj)), np_log_softmax(as_f64(qj))
        values, (gp, gq) = jitted_value_and_grads(name)(pj, qj)
        # the dtype rule: the value in float32, each gradient in its input's dtype
        assert values.dtype == jnp.float32 and gp.dtype == dtype and gq.dtype == dtype
        v = as_f64(values)
        gp, gq = as_f64(gp), as_f64(gq)
        msg = f"{name} {jnp.dtype(dtype).name}\nvalues={v}\ngrad_p={gp}\ngrad_q={gq}"
        assert not np.isnan(v).any(), msg
        assert np.all(v >= -1e-6), msg
        must_finite, must_inf = _expected_finiteness(name, lp, lq)
        assert np.isfinite(v[must_finite]).all(), msg
        assert np.all(v[must_inf] == np.inf), msg
        if name in BOUNDS:
            slack = 1e-2 if dtype == jnp.bfloat16 else 1e-5
            assert np.all(v <= BOUNDS[name] * (1 + slack) + slack), msg
        rows = np.isfinite(v) & (v < 1e30)
        assert np.isfinite(gp[rows]).all() and np.isfinite(gq[rows]).all(), msg
        assert np.all(gp[rows][np.isneginf(p[rows])] == 0.0), msg
        assert np.all(gq[rows][np.isneginf(q[rows])] == 0.0), msg


# ------------------------------------------------------------------------------------------------
# Extreme log-ratios of the power-type generators (Pearson, Neyman, alpha = 2) in float32.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,p,q,want",
    [
        # sum p^2/q - 1 with p = softmax([0, -50]), q = softmax([0, -150]): ~ e^50 (numpy float64)
        ("pearson", [0.0, -50.0], [0.0, -150.0], None),
        ("neyman", [0.0, -150.0], [0.0, -50.0], None),
        # a = e^-1e4: p = (1, a)/(1+a), q = (1, a^2)/(1+a^2): sum p^2/q - 1 = 2(1+a^2)/(1+a)^2 - 1
        # = 1 - 4a + O(a^2) = 1 (hand computation): tiny masses, ratio p^2/q of order 1.
        ("pearson", [0.0, -1e4], [0.0, -2e4], 1.0),
        ("neyman", [0.0, -2e4], [0.0, -1e4], 1.0),
    ],
)
def test_power_type_extreme_log_ratio_float32(name, p, q, want):
    """Pearson/Neyman in float32 where the true value is representable (<= ~5e21)."""
    if want is None:
        P, Q = np_softmax(p), np_softmax(q)
        want = ref_divergence(name, P, Q)
        assert np.isfinite(want) and want < 1e22
    got = float(fdiv.divergence(name, jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize(
    "name,p,q",
    [
        ("pearson", [0.0, 0.0], [0.0, -50.0]),
        ("neyman", [0.0, -50.0], [0.0, 0.0]),
        ("alpha", [0.0, 0.0], [0.0, -50.0]),  # alpha = 2 below: pearson / 2
    ],
)
def test_power_type_gradient_where_value_finite_float32(name, p, q):
    """Value ~1e21 (finite in float32); its gradient is ~1e21 too. Reference: numpy float64 value
    and central differences of it."""
    g = fdiv.generators.get("alpha", alpha=2.0) if name == "alpha" else name
    params = {"alpha": 2.0} if name == "alpha" else {}
    p, q = np.array(p), np.array(q)
    want = ref_from_logits(name, p, q, **params)
    want_gp = fd_rows(lambda a: ref_from_logits(name, a, q, **params), p)
    want_gq = fd_rows(lambda b: ref_from_logits(name, p, b, **params), q)
    value, (gp, gq) = value_and_grads(g, jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32))
    np.testing.assert_allclose(float(value), want, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(gp), want_gp, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(gq), want_gq, rtol=1e-3)
