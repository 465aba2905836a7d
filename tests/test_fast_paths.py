"""The closed-form per-class rules of ``fdiv._core`` against the generic rule and mpmath.

KL, reverse KL, JS, squared Hellinger, total variation, Pearson, Neyman, skew KL and skew reverse
KL have their own rules (one or no transcendental per class) instead of the generic one, which
evaluates ``f`` and its dual. Each must
give the same ``term = q f_n(p/q)``, ``dp = p d term/dp`` and ``dq = q d term/dq`` as

- the textbook per-class terms in 50-digit mpmath (closed forms, written here, not fdiv's code),
  on ordinary, nearly identical (``|log p/q|`` down to 1e-6), extreme (``|log p/q|`` of 80, 90,
  200 and 700: in float32 the smaller probability underflows while its log stays finite) and
  zero-probability classes, in float32 and float64;
- ``_generic_terms`` wherever that rule is exact (``|log p/q| <= 20`` and zero classes);

and the logit gradients :func:`fdiv._core.value_and_logit_grads` forms from them must match the
reference's. The two numerics helpers they stand on (``expm1_near``, ``log_softmax_pair``) are
checked here too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from _mp_reference import mp_softmax

from fdiv import _core, generators
from fdiv import _numerics as nx

mp.mp.dps = 50

# (name, lam): the generators with a fast path (skew ones at a few lam, lam = 0 being KL's rule).
FAST = [
    ("kl", None),
    ("reverse_kl", None),
    ("js", None),
    ("squared_hellinger", None),
    ("total_variation", None),
    ("pearson", None),
    ("neyman", None),
    ("skew_kl", 0.1),
    ("skew_reverse_kl", 0.1),
    ("skew_kl", 0.7),
    ("skew_reverse_kl", 0.9),
]
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 3e-5, np.float64: 1e-11}
EXTREME = (80.0, 90.0, 200.0, 700.0)


def _gen(name, lam):
    return generators.get(name) if lam is None else generators.get(name, lam=lam)


def _ids(case):
    name, lam = case
    return name if lam is None else f"{name}({lam})"


# ------------------------------------------------------------------------------------------------
# Reference: textbook per-class terms in mpmath.
# ------------------------------------------------------------------------------------------------


def _xlog(a, b):
    """``a log(a / b)`` with ``0 log 0 = 0``."""
    return mp.mpf(0) if a == 0 else a * mp.log(a / b)


def _mp_terms(name, lam, p, q):
    """``(term, dp, dq)`` of ``D_f(P || Q)`` for one class; ``dp``/``dq`` None where ``term = inf``."""
    if name in ("reverse_kl", "neyman", "skew_kl"):  # mirror images: D(P || Q) = D'(Q || P)
        mirror = {"reverse_kl": "kl", "neyman": "pearson", "skew_kl": "skew_reverse_kl"}[name]
        term, dq, dp = _mp_terms(mirror, lam, q, p)
        return term, dp, dq
    if q == 0 and name in ("kl", "pearson"):
        return mp.inf, None, None
    if name == "kl":
        return _xlog(p, q) - p + q, _xlog(p, q), q - p
    if name == "pearson":
        return (p - q) ** 2 / q, 2 * p * (p - q) / q, q - p * p / q
    if name == "squared_hellinger":
        g = mp.sqrt(p * q)
        return (mp.sqrt(p) - mp.sqrt(q)) ** 2, p - g, q - g
    if name == "total_variation":
        s = mp.sign(p - q) / 2
        return abs(p - q) / 2, s * p, -s * q
    if name == "js":
        m = (p + q) / 2
        dp, dq = _xlog(p, m) / 2, _xlog(q, m) / 2
        return dp + dq, dp, dq
    assert name == "skew_reverse_kl"  # KL(Q || lam Q + (1 - lam) P), normalised
    lam = mp.mpf(lam)
    m = lam * q + (1 - lam) * p
    k = (p - q) / m
    return (
        _xlog(q, m) + (1 - lam) * (p - q),
        (1 - lam) ** 2 * p * k,
        _xlog(q, m) + lam * (1 - lam) * q * k,
    )


def _mp_exp(x):
    return mp.mpf(0) if x == -np.inf else mp.exp(mp.mpf(float(x)))


@functools.cache
def _reference_terms(name, lam, lp, lq):
    """Per-class ``(term, dp, dq)`` for tuples of log-probabilities (float64 values, ``nan`` for
    ``dp``/``dq`` where the term is infinite; rows of zero classes give zeros)."""
    out = np.zeros((3, len(lp)))
    for k, (a, b) in enumerate(zip(lp, lq, strict=True)):
        if a == -np.inf and b == -np.inf:
            continue
        term, dp, dq = _mp_terms(name, lam, _mp_exp(a), _mp_exp(b))
        out[:, k] = [
            float(term),
            np.nan if dp is None else float(dp),
            np.nan if dq is None else float(dq),
        ]
    return out


# ------------------------------------------------------------------------------------------------
# Inputs: rows of log-probabilities (per-class rules need no normalisation).
# ------------------------------------------------------------------------------------------------

V = 12


def _ordinary_rows(rng, n):
    x = 3.0 * rng.standard_normal((2, n, V))
    return [row for row in np.stack([x[0] - 8.0, x[1] - 8.0], axis=1)]  # [n][2, V]


def _near_rows(rng):
    rows = []
    for eps in (1e-2, 1e-4, 1e-6):
        a = rng.standard_normal(V) - 3.0
        rows.append(np.stack([a, a + eps * rng.standard_normal(V)]))
    return rows


def _extreme_rows():
    """Classes at log-ratio +-L with the larger probability e^0, e^-1 or e^-5 (exact in both dtypes,
    and so are their differences)."""
    rows = []
    for L in EXTREME:
        lp, lq = [], []
        for top in (0.0, -1.0, -5.0):
            lp += [top, top - L]
            lq += [top - L, top]
        lp += [-2.0] * (V - len(lp))
        lq += [-3.0] * (V - len(lq))
        rows.append(np.array([lp, lq]))
    return rows


def _zero_rows():
    ninf = -np.inf
    lp = [ninf, ninf, -1.0, -0.5, ninf, -2.0, -3.0, ninf, -1.0, -4.0, -2.0, ninf]
    lq = [-1.0, ninf, ninf, -0.5, -2.0, ninf, -3.0, ninf, -2.0, ninf, -2.5, -0.1]
    return [np.array([lp, lq])]


def _rows(dtype, kinds=("ordinary", "near", "extreme", "zero")):
    rng = np.random.default_rng(0)
    rows = []
    if "ordinary" in kinds:
        rows += _ordinary_rows(rng, 3)
    if "near" in kinds:
        rows += _near_rows(rng)
    if "extreme" in kinds:
        rows += _extreme_rows()
    if "zero" in kinds:
        rows += _zero_rows()
    pairs = np.stack(rows).astype(dtype)  # [rows, 2, V], rounded to dtype: the reference uses these
    return pairs[:, 0], pairs[:, 1]


def _reference(name, lam, lp, lq):
    as64 = np.asarray(lp, np.float64), np.asarray(lq, np.float64)
    return np.stack(
        [_reference_terms(name, lam, tuple(a), tuple(b)) for a, b in zip(*as64, strict=True)],
        axis=1,
    )  # [3, rows, V]


def _assert_matches(got, want, dtype, msg):
    """``got`` against the reference, row by row: infinite where the reference is beyond the
    dtype's range (values) or skipped within a factor 8 of it (derivatives, which the Jacobian may
    double), else within rtol of each entry plus rtol times the row's largest entry (what a sum
    over the row can resolve)."""
    rtol, top = RTOL[dtype], np.finfo(dtype).max
    for which, (g, w) in enumerate(zip(got, want, strict=True)):
        g = np.asarray(g, np.float64)
        for i in range(w.shape[0]):
            known = ~np.isnan(w[i])
            over = known & (np.abs(w[i]) > (top if which == 0 else top / 8))
            if which == 0:
                assert np.all(g[i][over] == np.sign(w[i][over]) * np.inf), (msg, which, i)
            ok = known & ~over
            scale = np.max(np.abs(w[i][ok]), initial=0.0)
            np.testing.assert_allclose(
                g[i][ok], w[i][ok], rtol=rtol, atol=rtol * scale, err_msg=f"{msg} [{which}] row {i}"
            )


# ------------------------------------------------------------------------------------------------
# The per-class rules.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", FAST, ids=_ids)
def test_fast_path_terms_match_mpmath(case, dtype):
    name, lam = case
    g = _gen(name, lam)
    assert _core._fast_path(g) is not None
    lp, lq = _rows(dtype)
    with jax.enable_x64(dtype == np.float64):
        got = jax.jit(functools.partial(_core.divergence_terms, g))(
            jnp.asarray(lp), jnp.asarray(lq)
        )
        assert all(t.dtype == dtype for t in got)
    _assert_matches(got, _reference(name, lam, lp, lq), dtype, f"{name}({lam}) {dtype.__name__}")


def _generic(g, lp, lq):
    """The generic rule on the same inputs, classes absent from both set aside as
    ``divergence_terms`` does for rules that need it."""
    both = (lp == -jnp.inf) & (lq == -jnp.inf)
    lp, lq = jnp.where(both, 0.0, lp), jnp.where(both, 0.0, lq)
    terms = _core._generic_terms(g, lp, lq, jnp.exp(lp), jnp.exp(lq), lp - lq)
    return [jnp.where(both, 0.0, t) for t in terms]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", FAST, ids=_ids)
def test_fast_path_terms_match_generic_rule(case, dtype):
    """Where the generic rule is exact (no ratio beyond e^20), both rules agree; infinite terms
    (KL, Pearson where q = 0 < p) agree as values, their derivatives are conventions."""
    name, lam = case
    g = _gen(name, lam)
    lp, lq = _rows(dtype, ("ordinary", "near", "zero"))
    with jax.enable_x64(dtype == np.float64):
        lp, lq = jnp.asarray(lp), jnp.asarray(lq)
        fast = jax.jit(functools.partial(_core.divergence_terms, g))(lp, lq)
        generic = jax.jit(functools.partial(_generic, g))(lp, lq)
    finite = np.isfinite(np.asarray(generic[0]))
    np.testing.assert_array_equal(np.asarray(fast[0])[~finite], np.asarray(generic[0])[~finite])
    rtol = RTOL[dtype]
    for which, (f, w) in enumerate(zip(fast, generic, strict=True)):
        f, w = np.asarray(f, np.float64), np.asarray(w, np.float64)
        scale = np.max(np.where(finite, np.abs(w), 0.0), axis=-1, keepdims=True)
        with np.errstate(invalid="ignore"):  # inf - inf where the generic term is infinite
            err = np.abs(np.where(finite, f - w, 0.0))
        bound = rtol * (np.abs(np.where(finite, w, 0.0)) + scale) + np.finfo(dtype).tiny
        np.testing.assert_array_less(
            err, bound, err_msg=f"{name}({lam}) {dtype.__name__} [{which}]"
        )


def test_dispatch():
    """Every generator above has its own rule; skew ones at lam = 0 use (reverse) KL's."""
    assert _core._fast_path(generators.get("skew_kl", lam=0.0)) is _core._kl_terms
    assert _core._fast_path(generators.get("skew_reverse_kl", lam=0.0)) is _core._reverse_kl_terms
    assert _core._fast_path(generators.get("pearson")) is _core._pearson_terms
    assert _core._fast_path(generators.get("neyman")) is _core._neyman_terms
    # alpha inside [0, 1]: the generic rule, exact at every ratio; outside: its log-space guard
    assert _core._fast_path(generators.get("alpha", alpha=0.5)) is None
    assert _core._fast_path(generators.get("alpha", alpha=2.0)).func is _core._power_terms
    for name in ("skew_kl", "skew_reverse_kl"):
        rule = _core._fast_path(generators.get(name, lam=0.3))
        assert rule.func in _core._ZERO_SAFE_RULES


# ------------------------------------------------------------------------------------------------
# Values and logit gradients from logits.
# ------------------------------------------------------------------------------------------------


def _logit_rows(dtype):
    """``[rows, V]`` logit pairs: ordinary, nearly identical (one shifted), extreme and with -inf
    logits."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, V))
    p = [3.0 * a[0], a[1], a[2]]
    q = [3.0 * rng.standard_normal(V), a[1] + 1e-5 * a[0], a[2] + 0.5 + 1e-3 * a[0]]
    for L in EXTREME:
        p.append(np.array([0.0, 0.0, -L, 1.0] + [-2.0] * (V - 4)))
        q.append(np.array([0.0, -L, 0.0, -L] + [-3.0] * (V - 4)))
    zero_p, zero_q = rng.standard_normal(V), rng.standard_normal(V)
    zero_p[[0, 1]] = -np.inf
    zero_q[[1, 2]] = -np.inf
    p.append(zero_p), q.append(zero_q)
    return np.stack(p).astype(dtype), np.stack(q).astype(dtype)


@functools.cache
def _reference_logits(name, lam, xp, xq):
    """Value and logit gradients (``dD/dx = d - prob sum(d)``) of one row pair, from the mpmath
    terms of the exact softmaxes; ``None`` gradients where the value is infinite."""
    p, q = mp_softmax(list(xp)), mp_softmax(list(xq))
    terms = [_mp_terms(name, lam, a, b) for a, b in zip(p, q, strict=True) if a or b]
    value = mp.fsum(t[0] for t in terms)
    if value == mp.inf:
        return float(value), None, None
    cls = [k for k in range(len(p)) if p[k] or q[k]]
    dp, dq = [mp.mpf(0)] * len(p), [mp.mpf(0)] * len(p)
    for k, t in zip(cls, terms, strict=True):
        dp[k], dq[k] = t[1], t[2]
    sp, sq = mp.fsum(dp), mp.fsum(dq)
    gp = np.array([float(d - pk * sp) for d, pk in zip(dp, p, strict=True)])
    gq = np.array([float(d - qk * sq) for d, qk in zip(dq, q, strict=True)])
    return float(value), gp, gq


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", FAST, ids=_ids)
def test_value_and_logit_grads_match_mpmath(case, dtype):
    name, lam = case
    g = _gen(name, lam)
    xp, xq = _logit_rows(dtype)
    rtol = 1e-4 if dtype == np.float32 else 1e-9
    with jax.enable_x64(dtype == np.float64):
        value, gp, gq = jax.jit(functools.partial(_core.value_and_logit_grads, g))(
            jnp.asarray(xp), jnp.asarray(xq)
        )
    top = float(np.finfo(dtype).max)
    for i in range(xp.shape[0]):
        a, b = (tuple(np.asarray(x[i], np.float64)) for x in (xp, xq))
        want, want_gp, want_gq = _reference_logits(name, lam, a, b)
        msg = f"{name}({lam}) {dtype.__name__} row {i}"
        if not abs(want) <= top:
            assert float(value[i]) == np.inf, msg
            continue
        np.testing.assert_allclose(float(value[i]), want, rtol=rtol, err_msg=msg)
        refs = (want_gp, want_gq)
        if not all(np.all(np.abs(r) < top / 8) for r in refs):
            continue  # the Jacobian's sums may overflow within a factor 8 of the largest float
        scale = max(1e-3, *(np.max(np.abs(r)) for r in refs))
        for got, ref in zip((gp[i], gq[i]), refs, strict=True):
            np.testing.assert_allclose(
                np.asarray(got, np.float64), ref, rtol=rtol, atol=rtol * scale, err_msg=msg
            )


@pytest.mark.parametrize("case", FAST, ids=_ids)
def test_value_and_logit_grads_match_generic_rule(case, monkeypatch):
    """Ordinary and nearly identical rows, float64: the fast path and the generic rule give the
    same values and gradients."""
    name, lam = case
    g = _gen(name, lam)
    xp, xq = (x[:3] for x in _logit_rows(np.float64))
    with jax.enable_x64(True):
        fast = _core.value_and_logit_grads(g, jnp.asarray(xp), jnp.asarray(xq))
        monkeypatch.setattr(_core, "_fast_path", lambda g: None)
        generic = _core.value_and_logit_grads(g, jnp.asarray(xp), jnp.asarray(xq))
    for f, w in zip(fast, generic, strict=True):
        w = np.asarray(w)
        scale = np.max(np.abs(w), axis=-1, keepdims=True) if w.ndim > 1 else np.abs(w)
        assert np.all(np.abs(np.asarray(f) - w) <= 1e-10 * scale), (name, lam)


# ------------------------------------------------------------------------------------------------
# The numerics helpers.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_expm1_near(dtype):
    x = np.concatenate([np.linspace(-0.5, 0.5, 2001), np.geomspace(1e-30, 0.5, 200)])
    x = np.concatenate([x, -x]).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        got = np.asarray(jax.jit(nx.expm1_near)(jnp.asarray(x)), np.float64)
    want = np.array([float(mp.expm1(mp.mpf(float(v)))) for v in x])
    ulp = np.finfo(dtype).eps
    np.testing.assert_array_less(np.abs(got - want), 4 * ulp * np.abs(want) + 1e-300)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_log_softmax_pair(dtype):
    """Log-probabilities, probabilities and the log-ratio against mpmath: nearly identical rows
    (the ratio accurate to its own size), shifted logits, disjoint-ish rows (``S_p << S_q``, where
    the refinement must not be used), and -inf logits."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 64))
    xp = np.stack([a[0], a[1], a[2] + 40.0, 30.0 * a[3], a[4]])
    xq = np.stack([a[0] + 1e-6 * a[1], a[1] + 1e-3 * a[0], a[2] - 3.0, a[3], a[4]])
    xq[3] -= 25.0 * (np.arange(64) != 7)  # q peaked on one class, p spread
    xp[4, :3], xq[4, 2:5] = -np.inf, -np.inf
    xp, xq = xp.astype(dtype), xq.astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        lp, p, lq, q, r, empty = jax.jit(nx.log_softmax_pair)(jnp.asarray(xp), jnp.asarray(xq))
    assert not np.asarray(empty).any()
    eps = np.finfo(dtype).eps
    for i in range(xp.shape[0]):
        mp_p = mp_softmax([float(v) for v in xp[i]])
        mp_q = mp_softmax([float(v) for v in xq[i]])
        for k in range(xp.shape[1]):
            want_lp = mp.log(mp_p[k]) if mp_p[k] else -mp.inf
            want_lq = mp.log(mp_q[k]) if mp_q[k] else -mp.inf
            if want_lp == -mp.inf or want_lq == -mp.inf:  # NaN where both (set aside later)
                want = {(True, True): np.nan, (True, False): -np.inf, (False, True): np.inf}
                got_r = float(r[i, k])
                want_r = want[want_lp == -mp.inf, want_lq == -mp.inf]
                assert got_r == want_r or (np.isnan(got_r) and np.isnan(want_r)), (i, k)
                continue
            want_r = want_lp - want_lq
            # To rounding of the logits' difference and of C = lse_p - lse_q (whose size is the
            # row's shift, not |log p|): a log-ratio of 1e-6 keeps its digits.
            d = float(xp[i, k]) - float(xq[i, k])
            tol = 8 * eps * (abs(d) + abs(float(want_r - d)) + abs(float(want_r)))
            assert abs(float(r[i, k]) - float(want_r)) <= tol, (i, k)
            # log p to a few ulp of its size; p = exp(log p) to that error in log p (subnormals
            # may be flushed to 0, as XLA's CPU backend does)
            for got_l, got, want_l, want in ((lp, p, want_lp, mp_p[k]), (lq, q, want_lq, mp_q[k])):
                size = 8 * eps * (abs(float(want_l)) + 1)
                assert abs(float(got_l[i, k]) - float(want_l)) <= size, (i, k)
                tiny = np.finfo(dtype).tiny
                assert abs(float(got[i, k]) - float(want)) <= size * float(want) + tiny, (i, k)
