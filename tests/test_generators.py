"""Tests of ``fdiv.generators`` against independent numpy / scipy references.

Every expected value below comes from a reference written here in numpy / scipy: the closed forms
of f, f', h = r^2 f'' and f* (written from the textbook definitions, not from fdiv), scipy's
``lambertw`` for the Lambert-W conjugates, a numerical supremum (``scipy.optimize``) for f*, and
the inverse of f' for the maximiser u* = (f*)'(t). Nothing is compared with fdiv's own output
except where a test is explicitly about an identity between two fdiv objects (duals, aliases).

float64 checks run inside ``with jax.enable_x64(True):`` so that x64 never leaks to other files.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _catalog import CATALOG_NAMES
from _reference import Ref, reference
from scipy import optimize, special

import fdiv
from fdiv import generators as G

INF = math.inf
LOG2 = math.log(2.0)
# log u in [-20, 20]; an even number of points leaves out u = 1 (the kink of total variation).
GRID = np.linspace(-20.0, 20.0, 400)
F32_TINY = float(np.finfo(np.float32).tiny)


# ------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------


def assert_close(got, want, *, rtol, atol=0.0, what="", at=None):
    """``got`` matches ``want`` elementwise: same +-inf entries, no NaN, finite ones within
    ``atol + rtol |want|``. The message names the worst point (``at`` gives its coordinate)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    at = np.broadcast_to(np.asarray(at if at is not None else np.arange(want.size)), want.shape)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.size == 0:
        return
    nan = np.isnan(got)
    assert not nan.any(), f"{what}: NaN at {at[nan]} (expected {want[nan]})"
    inf_mismatch = (np.isposinf(got) != np.isposinf(want)) | (np.isneginf(got) != np.isneginf(want))
    assert not inf_mismatch.any(), (
        f"{what}: infinities differ at {at[inf_mismatch]}: got {got[inf_mismatch]}, "
        f"expected {want[inf_mismatch]}"
    )
    fin = np.isfinite(want)
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        err = np.where(fin, np.abs(got - want) - (atol + rtol * np.abs(want)), 0.0)
    i = int(np.argmax(err))
    assert err.flat[i] <= 0, (
        f"{what}: at {at.flat[i]!r} got {got.flat[i]!r}, expected {want.flat[i]!r} "
        f"(rel err {abs(got.flat[i] - want.flat[i]) / max(abs(want.flat[i]), 1e-300):.3g})"
    )


def to_f32(x):
    """The float32 value of a float64 reference (``inf`` where it overflows float32)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


def objective(f_of_l, t, x):
    """``t u - f(u)`` at ``u = exp(x)``, with the numpy reference ``f``."""
    with np.errstate(all="ignore"):
        return t * math.exp(x) - float(f_of_l(np.array(x)))


def to_dtype(x, dtype):
    """A float64 reference rounded to a low-precision dtype (numpy / ml_dtypes rounding)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, np.float64).astype(np.float32)
        return x.astype(np.dtype(dtype)).astype(np.float64)


def numerical_sup(f_of_l, t, lo=-50.0, hi=50.0):
    """Independent ``f*(t) = sup_u (t u - f(u))`` by bounded Brent search over ``x = log u``
    (``t u - f(u)`` is concave in ``u``, hence unimodal in ``log u``)."""

    res = optimize.minimize_scalar(
        lambda x: -objective(f_of_l, t, x),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return -res.fun, res.x


def _label(name, params):
    return name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def _case(name, **params):
    return pytest.param(name, params, id=_label(name, params))


CASE_LIST = [
    *[(n, {}) for n in ("kl", "reverse_kl", "js", "squared_hellinger", "total_variation")],
    *[(n, {}) for n in ("pearson", "neyman", "jeffreys", "triangular", "gan")],
    *[("alpha", {"alpha": a}) for a in (-1.0, 0.0, 1e-6, 0.3, 0.5, 1.0 - 1e-6, 1.0, 2.0, 3.5)],
    *[("skew_js", {"beta": b}) for b in (0.1, 0.5, 0.9, 0.99)],
    *[("skew_js", {"beta": b, "normalize": True}) for b in (0.0, 1e-6, 0.2, 0.7, 1.0)],
    *[("skew_kl", {"lam": lam}) for lam in (0.0, 0.1, 0.5)],
    *[("skew_reverse_kl", {"lam": lam}) for lam in (0.0, 0.1, 0.5)],
]
CASES = [_case(name, **params) for name, params in CASE_LIST]

METHODS = ("f", "f_prime", "weight", "f_double_prime")


def ref_values(ref: Ref, l):
    """The four reference arrays matching ``METHODS`` (f'' = h / u^2)."""
    l = np.asarray(l, np.float64)
    with np.errstate(all="ignore"):
        return {
            "f": ref.f(l),
            "f_prime": ref.fp(l),
            "weight": ref.h(l),
            "f_double_prime": ref.h(l) * np.exp(-2.0 * l),
        }


def all_t(ref: Ref):
    return np.array(ref.t_in + ref.t_flat + ref.t_edge + ref.t_out, np.float64)


def dense_t(ref: Ref, n=64):
    """``n`` points filling the span of ``t_in`` (inside the convex domain of f*)."""
    return np.linspace(min(ref.t_in), max(ref.t_in), n)


# ------------------------------------------------------------------------------------------------
# 1. Values of f, f', h, f'' and f* against the closed forms.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", CASES)
def test_values_float64(name, params):
    """f, f', h, f'' on log u in [-20, 20] vs the numpy closed forms (float64, rtol 1e-9)."""
    g, ref = G.get(name, **params), reference(name, **params)
    want = ref_values(ref, GRID)
    with jax.enable_x64(True):
        l = jnp.asarray(GRID)
        got = {m: getattr(g, m)(l) for m in METHODS}
        assert all(v.dtype == jnp.float64 for v in got.values())
    for m in METHODS:
        assert_close(got[m], want[m], rtol=1e-9, atol=1e-12, what=f"{g!r}.{m}", at=GRID)


@pytest.mark.parametrize("name,params", CASE_LIST, ids=[_label(*c) for c in CASE_LIST])
def test_f_prime_at_one(name, params):
    """``f_prime_at_one`` is f'(1) of the numpy closed form (l = 0)."""
    want = float(reference(name, **params).fp(np.array(0.0)))
    assert G.get(name, **params).f_prime_at_one == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name,params", CASES)
def test_conjugate_float64(name, params):
    """f*(t) vs the closed form (scipy ``lambertw`` for jeffreys / skew_kl) on interior points,
    points where the maximiser is u = 0, the closed edge of dom f*, and +inf outside it."""
    g, ref = G.get(name, **params), reference(name, **params)
    t = np.concatenate([all_t(ref), dense_t(ref)])
    want = ref.conj(t)
    assert np.isposinf(want[len(ref.t_in + ref.t_flat + ref.t_edge) : len(all_t(ref))]).all()
    with jax.enable_x64(True):
        got = g.conjugate(jnp.asarray(t))
    assert_close(got, want, rtol=1e-9, atol=1e-12, what=f"{g!r}.conjugate", at=t)


@pytest.mark.parametrize("name,params", CASES)
def test_values_float32(name, params):
    """Same checks in float32 at the float32-rounded arguments: rtol 1e-4, with an absolute floor
    of 1e-6 (~8 ulp of 1) for values near the zero of f at u = 1. Edge / outside points of dom f*
    are kept only where float32 rounding leaves them outside (rounding may move an edge inside)."""
    g, ref = G.get(name, **params), reference(name, **params)
    l32 = GRID.astype(np.float32)
    want = ref_values(ref, l32)
    for m in METHODS:
        got = getattr(g, m)(jnp.asarray(l32))
        assert got.dtype == jnp.float32
        assert_close(got, to_f32(want[m]), rtol=1e-4, atol=1e-6, what=f"{g!r}.{m}", at=l32)
    t_out = np.array(ref.t_out, np.float32)
    t_out = t_out[np.isposinf(ref.conj(t_out))]
    t32 = np.concatenate([ref.t_in, ref.t_flat, dense_t(ref), t_out]).astype(np.float32)
    got = g.conjugate(jnp.asarray(t32))
    assert got.dtype == jnp.float32
    assert_close(got, ref.conj(t32), rtol=1e-4, atol=1e-6, what=f"{g!r}.conjugate", at=t32)


@pytest.mark.parametrize("name,params", CASES)
def test_conjugate_is_numerical_supremum(name, params):
    """f*(t) vs sup_u (t u - f(u)) found by scipy's bounded Brent search on log u with the numpy f;
    outside dom f* the objective must still grow at u ~ e^30 (unbounded) while fdiv returns +inf."""
    g, ref = G.get(name, **params), reference(name, **params)
    t_sup = np.array(ref.t_in + ref.t_flat)
    with jax.enable_x64(True):
        got = np.asarray(g.conjugate(jnp.asarray(t_sup)))
        got_out = np.asarray(g.conjugate(jnp.asarray(np.array(ref.t_out, np.float64))))
    want = np.array([numerical_sup(ref.f, t)[0] for t in t_sup])
    assert_close(got, want, rtol=1e-7, atol=1e-9, what=f"{g!r}.conjugate vs sup", at=t_sup)
    for t in ref.t_out:  # t u - f(u) is concave in u and still growing by > 1 at u ~ e^30
        gain = objective(ref.f, t, 30.0) - objective(ref.f, t, 20.0)
        assert gain > 1.0, f"t={t} does not look outside dom f* of {g!r}: gain {gain}"
    assert np.isposinf(got_out).all(), f"{g!r}.conjugate({ref.t_out}) = {got_out}"


@pytest.mark.parametrize("name,params", CASES)
def test_conjugate_gradient_is_maximiser(name, params):
    """d f*/dt (autodiff) = u*(t), the inverse of f' (written in numpy; scipy ``lambertw`` for
    jeffreys and skew_kl), and Brent's numerical argmax agrees with that inverse."""
    g, ref = G.get(name, **params), reference(name, **params)
    t = np.array(ref.t_in)
    want = ref.ustar(t)
    # Cross-check of the numpy inverse by Brent's argmax, where the objective is curved enough
    # for the argmax to be well determined (1e-3 < u* < 1e3; not at the kink of TV).
    ok = (want > 1e-3) & (want < 1e3) & (name != "total_variation")
    argmax = np.exp([numerical_sup(ref.f, ti)[1] for ti in t[ok]])
    assert_close(argmax, want[ok], rtol=1e-5, what="Brent argmax vs u*", at=t[ok])
    with jax.enable_x64(True):
        got = jax.vmap(jax.grad(g.conjugate))(jnp.asarray(t))
    assert_close(got, want, rtol=1e-8, atol=1e-12, what=f"grad {g!r}.conjugate", at=t)


# ------------------------------------------------------------------------------------------------
# 2. Log-space stability in float32 and the limits at log u = +-inf.
# ------------------------------------------------------------------------------------------------

EXTREME = np.array([-80.0, -60.0, -40.0, 40.0, 60.0, 80.0], np.float32)


@pytest.mark.parametrize("name,params", CASES)
def test_extreme_log_args_float32(name, params):
    """f, f', h at |log u| in {40, 60, 80} in float32 equal the float64 closed form rounded to
    float32: finite (to 1e-3) wherever the true value fits in float32, +-inf only where it does
    not (e.g. pearson f at log u = 80), never NaN."""
    g, ref = G.get(name, **params), reference(name, **params)
    want = ref_values(ref, EXTREME)
    for m in ("f", "f_prime", "weight"):
        got = getattr(g, m)(jnp.asarray(EXTREME))
        assert_close(got, to_f32(want[m]), rtol=1e-3, atol=F32_TINY, what=f"{g!r}.{m}", at=EXTREME)


def test_extreme_log_args_f_double_prime_float32():
    """f'' = h(u)/u^2 at |log u| in {40, 60, 80} in float32 vs the float64 closed form rounded to
    float32 (e.g. kl: f''(u) = 1/u = e^80 ~ 5.5e34 at log u = -80; pearson: f'' = 2 everywhere).
    One test over every case so that the report lists all of them."""
    problems = []
    for name, params in CASE_LIST:
        g, ref = G.get(name, **params), reference(name, **params)
        want = to_f32(ref_values(ref, EXTREME)["f_double_prime"])
        got = np.asarray(g.f_double_prime(jnp.asarray(EXTREME)), np.float64)
        try:
            assert_close(got, want, rtol=1e-3, atol=F32_TINY, what=f"{g!r}.f''", at=EXTREME)
        except AssertionError as err:
            first = str(err).splitlines()[0]
            problems.append(f"{first}\n    log u {EXTREME}\n    got  {got}\n    want {want}")
    assert not problems, "\n".join(problems)


F_AT_ZERO = {  # f(0+) for the catalog defaults, as listed in the specification
    "kl": 0.0,
    "js": 0.5 * LOG2,
    "squared_hellinger": 1.0,
    "total_variation": 0.5,
    "pearson": 1.0,
    "triangular": 1.0,
    "gan": LOG2,
    "reverse_kl": INF,
    "neyman": INF,
    "jeffreys": INF,
}


@pytest.mark.parametrize("name,params", CASES)
def test_f_at_minus_inf_is_f_of_zero(name, params):
    """``f(-inf) = f(0+)`` (the documented limit) in float32 and float64, from the closed form."""
    g, ref = G.get(name, **params), reference(name, **params)
    if not params and name in F_AT_ZERO:
        assert ref.f0 == pytest.approx(F_AT_ZERO[name], rel=1e-15)
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(True):
            got = np.asarray(g.f(jnp.asarray(np.array([-np.inf, -np.inf], dtype))))
        assert_close(got, [ref.f0] * 2, rtol=1e-6, what=f"{g!r}.f(-inf) [{dtype.__name__}]")


def test_no_nan_at_zero_ratio():
    """f, f', h and f'' at log u = -inf (u = 0, float32) are their limits, never NaN: each limit
    exists in [-inf, inf] for every generator here (from the closed forms). log u = +inf is outside
    the documented domain: the u -> inf limit is read from the dual at 0 (tested with the duals)."""
    l = jnp.array([-jnp.inf], jnp.float32)
    problems = []
    for name, params in CASE_LIST:
        g = G.get(name, **params)
        for m in METHODS:
            got = np.asarray(getattr(g, m)(l))
            if np.isnan(got).any():
                problems.append(f"{g!r}.{m}(-inf) = {got}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# 3. Limits, continuity and identities between generators.
# ------------------------------------------------------------------------------------------------

# The gap to the limit is O(d u^2) / O(d l^2): log u in [-5, 5] keeps it well below 1e-4.
L5 = np.linspace(-5.0, 5.0, 200)


def _kl_normalized(l):
    return np.exp(l) * l - np.expm1(l)


def _reverse_kl_normalized(l):
    return np.expm1(l) - l


def _f64(g, method, x):
    with jax.enable_x64(True):
        return np.asarray(getattr(g, method)(jnp.asarray(x, jnp.float64)))


@pytest.mark.parametrize("delta", [1e-6, -1e-6])
def test_alpha_continuous_at_one_and_zero(delta):
    """alpha(1 + d) ~ u log u - u + 1 and alpha(d) ~ u - 1 - log u (numpy) up to O(d): relative
    gap below 1e-4 on log u in [-5, 5]; f' likewise (l and 1 - 1/u)."""
    near_one, near_zero = G.get("alpha", alpha=1.0 + delta), G.get("alpha", alpha=delta)
    assert_close(_f64(near_one, "f", L5), _kl_normalized(L5), rtol=1e-4, atol=1e-12, at=L5)
    assert_close(_f64(near_zero, "f", L5), _reverse_kl_normalized(L5), rtol=1e-4, atol=1e-12)
    assert_close(_f64(near_one, "f_prime", L5), L5, rtol=1e-4, atol=1e-12, at=L5)
    assert_close(_f64(near_zero, "f_prime", L5), -np.expm1(-L5), rtol=1e-4, atol=1e-12)
    t = np.array([-3.0, 0.0, 0.5])
    assert_close(_f64(near_one, "conjugate", t), np.expm1(t), rtol=1e-4, at=t)
    assert_close(_f64(near_zero, "conjugate", t), -np.log1p(-t), rtol=1e-4, at=t)


@pytest.mark.parametrize(
    "alpha,other,scale,want_f",
    [
        (0.5, "squared_hellinger", 2.0, lambda l: 2.0 * (np.exp(l / 2) - 1.0) ** 2),
        (2.0, "pearson", 0.5, lambda l: 0.5 * np.expm1(l) ** 2),
        (-1.0, "neyman", 0.5, lambda l: 0.5 * np.expm1(l) ** 2 / np.exp(l)),
    ],
)
def test_alpha_special_cases(alpha, other, scale, want_f):
    """alpha(1/2) = 2 hellinger, alpha(2) = pearson/2, alpha(-1) = neyman/2: f against numpy, and
    f, f', h, f* against ``scale`` times the other generator ((c f)*(t) = c f*(t / c))."""
    a, b = G.get("alpha", alpha=alpha), G.get(other)
    assert_close(_f64(a, "f", GRID), want_f(GRID), rtol=1e-9, atol=1e-12, at=GRID)
    for m in ("f", "f_prime", "weight"):
        assert_close(_f64(a, m, GRID), scale * _f64(b, m, GRID), rtol=1e-9, atol=1e-12, what=m)
    t = np.linspace(-4.0, 0.45, 40)
    want = scale * _f64(b, "conjugate", t / scale)
    assert_close(_f64(a, "conjugate", t), want, rtol=1e-9, atol=1e-12, what="f*", at=t)


@pytest.mark.parametrize("beta,limit", [(1e-7, "kl"), (1.0 - 1e-7, "reverse_kl")])
def test_skew_js_normalized_end_limits(beta, limit):
    """skew_js(beta, normalize=True) tends to u log u - u + 1 as beta -> 0 and to u - 1 - log u as
    beta -> 1 (numpy), continuously: relative gap below 1e-4 at beta within 1e-7 of the end."""
    g = G.get("skew_js", beta=beta, normalize=True)
    want = _kl_normalized(L5) if limit == "kl" else _reverse_kl_normalized(L5)
    want_fp = L5 if limit == "kl" else -np.expm1(-L5)
    want_h = np.exp(L5) if limit == "kl" else np.ones_like(L5)
    assert_close(_f64(g, "f", L5), want, rtol=1e-4, atol=1e-12, what="f", at=L5)
    assert_close(_f64(g, "f_prime", L5), want_fp, rtol=1e-4, atol=1e-12, what="f'", at=L5)
    assert_close(_f64(g, "weight", L5), want_h, rtol=1e-4, what="h", at=L5)
    t = np.array([-3.0, 0.0, 0.5])
    want_c = np.expm1(t) if limit == "kl" else -np.log1p(-t)
    assert_close(_f64(g, "conjugate", t), want_c, rtol=1e-4, what="f*", at=t)


def test_skew_js_half_is_js_and_gan_is_twice_js():
    """skew_js(1/2) and js agree (f, f', h, f*); gan = 2 js, so gan*(t) = 2 js*(t/2)."""
    js, skew, gan = G.get("js"), G.get("skew_js", beta=0.5), G.get("gan")
    for m in ("f", "f_prime", "weight"):
        assert_close(_f64(skew, m, GRID), _f64(js, m, GRID), rtol=1e-12, atol=1e-15, what=m)
        assert_close(_f64(gan, m, GRID), 2 * _f64(js, m, GRID), rtol=1e-12, atol=1e-15, what=m)
    t = np.linspace(-5.0, 0.3, 30)
    assert_close(_f64(skew, "conjugate", t), _f64(js, "conjugate", t), rtol=1e-12, atol=1e-15)
    assert_close(_f64(gan, "conjugate", 2 * t), 2 * _f64(js, "conjugate", t), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# 4. Csiszar duals.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", CASES)
def test_dual_matches_v_f_of_inverse(name, params):
    """dual.f(v) = v f(1/v), dual.f'(v) = f(1/v) - f'(1/v)/v, dual.h(r) = r h(1/r) (numpy closed
    forms), dual.f(0+) = lim f(u)/u, and dual.dual has the original f. The f' reference
    subtracts two terms that can be ~1e9 apart from their difference, so its tolerance is
    1e-9 times the size of those terms. Parameters within 1e-5 of an end (beta, alpha near 0/1)
    get the float64 tolerance 1e-6: there fdiv's f loses ~7 digits to cancellation at large u
    (e.g. skew_js(1 - 1e-6, normalize=True).f at log u = 20: relative error 7e-8)."""
    g, ref = G.get(name, **params), reference(name, **params)
    near_end = any(0 < abs(p - e) < 1e-5 for p in params.values() for e in (0.0, 1.0))
    rtol = 1e-6 if near_end else 1e-9
    d = g.dual
    v = np.exp(GRID)
    fu, fpu = ref.f(-GRID), ref.fp(-GRID)
    assert_close(_f64(d, "f", GRID), v * fu, rtol=rtol, atol=1e-12, what=f"{d!r}.f", at=GRID)
    scale = np.abs(fu) + np.abs(fpu / v)
    fp = _f64(d, "f_prime", GRID)
    assert_close(fp, fu - fpu / v, rtol=rtol, atol=rtol * scale, what=f"{d!r}.f'", at=GRID)
    h = _f64(d, "weight", GRID)
    assert_close(h, v * ref.h(-GRID), rtol=rtol, atol=1e-12, what=f"{d!r}.weight", at=GRID)
    assert_close(_f64(d, "f", [-np.inf]), [ref.slope], rtol=1e-9, what=f"{d!r}.f(0)")
    assert_close(_f64(d.dual, "f", GRID), ref.f(GRID), rtol=1e-9, atol=1e-12, what="dual.dual")


@pytest.mark.parametrize(
    "g,want",
    [
        (G.get("kl"), G.get("reverse_kl")),
        (G.get("reverse_kl"), G.get("kl")),
        (G.get("pearson"), G.get("neyman")),
        (G.get("neyman"), G.get("pearson")),
        (G.get("alpha", alpha=0.25), G.get("alpha", alpha=0.75)),
        (G.get("alpha", alpha=2.0), G.get("alpha", alpha=-1.0)),
        (G.get("alpha", alpha=1.0), G.get("alpha", alpha=0.0)),
        (G.get("skew_js", beta=0.25), G.get("skew_js", beta=0.75)),
        (G.get("skew_js", beta=0.0, normalize=True), G.get("skew_js", beta=1.0, normalize=True)),
        (G.get("skew_kl", lam=0.1), G.get("skew_reverse_kl", lam=0.1)),
        (G.get("skew_reverse_kl", lam=0.5), G.get("skew_kl", lam=0.5)),
        *[(G.get(n), G.get(n)) for n in ("js", "squared_hellinger", "total_variation")],
        *[(G.get(n), G.get(n)) for n in ("jeffreys", "triangular", "gan")],
    ],
    ids=repr,
)
def test_named_duals(g, want):
    """The closed-form duals are the expected catalogued generators (equal objects), and their f
    is v f(1/v) of the numpy reference of ``g``; ``dual.dual == g``."""
    assert g.dual == want
    assert g.dual.dual == g
    ref = reference(g.name, **g.params)
    assert_close(_f64(g.dual, "f", GRID), np.exp(GRID) * ref.f(-GRID), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# 5. bounded.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,params,want",
    [
        *[(n, {}, True) for n in ("js", "squared_hellinger", "total_variation", "triangular")],
        ("gan", {}, True),
        ("skew_js", {"beta": 0.1}, True),
        ("skew_js", {"beta": 0.2, "normalize": True}, True),
        ("alpha", {"alpha": 0.3}, True),
        ("alpha", {"alpha": 0.5}, True),
        ("skew_kl", {"lam": 0.1}, True),
        ("skew_reverse_kl", {"lam": 0.5}, True),
        *[(n, {}, False) for n in ("kl", "reverse_kl", "pearson", "neyman", "jeffreys")],
        *[("alpha", {"alpha": a}, False) for a in (-1.0, 0.0, 1.0, 2.0)],
        ("skew_js", {"beta": 0.0, "normalize": True}, False),
        ("skew_js", {"beta": 1.0, "normalize": True}, False),
        ("skew_kl", {"lam": 0.0}, False),
        ("skew_reverse_kl", {"lam": 0.0}, False),
    ],
)
def test_bounded(name, params, want):
    """``bounded`` is True exactly when f(0+) and lim f(u)/u are both finite (the closed-form
    limits in the reference agree with the expected flag)."""
    ref = reference(name, **params)
    assert (math.isfinite(ref.f0) and math.isfinite(ref.slope)) == want
    assert G.get(name, **params).bounded is want


# ------------------------------------------------------------------------------------------------
# 6. Low-precision inputs.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,params",
    [_case("kl"), _case("js"), _case("jeffreys"), _case("alpha", alpha=0.3), _case("skew_kl")],
)
@pytest.mark.parametrize("dtype,bound", [(jnp.bfloat16, 20.0), (jnp.float16, 3.0)])
def test_low_precision_inputs(name, params, dtype, bound):
    """bfloat16 / float16 inputs come back in their dtype, within rtol 1e-2 of the numpy value at
    the rounded argument, rounded to that dtype (float16 overflows above 65504: jeffreys f*(20)
    ~ 1.8e8 is inf there)."""
    g, ref = G.get(name, **params), reference(name, **params)
    l = jnp.linspace(-bound, bound, 41).astype(dtype)
    l64 = np.asarray(l.astype(jnp.float32), np.float64)
    want = ref_values(ref, l64)
    for m in ("f", "f_prime", "weight"):
        got = getattr(g, m)(l)
        assert got.dtype == dtype
        want_m = to_dtype(want[m], dtype)
        assert_close(got.astype(jnp.float32), want_m, rtol=1e-2, atol=1e-3, what=m, at=l64)
    t = jnp.asarray(np.array(ref.t_in), dtype)
    got = g.conjugate(t)
    assert got.dtype == dtype
    want_c = to_dtype(ref.conj(np.asarray(t.astype(jnp.float32), np.float64)), dtype)
    assert_close(got.astype(jnp.float32), want_c, rtol=1e-2, atol=1e-3, what="conjugate")


# ------------------------------------------------------------------------------------------------
# 7. Registry.
# ------------------------------------------------------------------------------------------------

NAMES = CATALOG_NAMES


def test_names():
    assert G.names() == NAMES


@pytest.mark.parametrize(
    "alias,target,params",
    [
        ("forward_kl", "kl", {}),
        ("jensen_shannon", "js", {}),
        ("hellinger", "squared_hellinger", {}),
        ("tv", "total_variation", {}),
        ("chi2", "pearson", {}),
        ("pearson_chi2", "pearson", {}),
        ("neyman_chi2", "neyman", {}),
        ("le_cam", "triangular", {}),
        ("generalized_js", "skew_js", {"beta": 0.3}),
    ],
)
def test_aliases(alias, target, params):
    g = G.get(alias, **params)
    assert g == G.get(target, **params)
    assert g.name == target


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown") as err:
        G.get("kullback")
    assert all(n in str(err.value) for n in NAMES)


@pytest.mark.parametrize(
    "name,params",
    [
        ("skew_js", {"beta": 1.5}),
        ("skew_js", {"beta": 0.0}),
        ("skew_js", {"beta": 1.0}),
        ("skew_js", {"beta": -0.1, "normalize": True}),
        ("skew_kl", {"lam": 1.0}),
        ("skew_kl", {"lam": -0.1}),
        ("skew_reverse_kl", {"lam": 1.0}),
        ("alpha", {"alpha": math.inf}),
        ("alpha", {"alpha": math.nan}),
        ("alpha", {"beta": 0.5}),
        ("kl", {"alpha": 0.5}),
        ("js", {"beta": 0.3}),
    ],
)
def test_bad_params_raise_value_error(name, params):
    with pytest.raises(ValueError):
        G.get(name, **params)


def test_hash_and_equality():
    a, b = G.get("alpha", alpha=0.5), G.get("alpha", alpha=0.5)
    assert a == b and hash(a) == hash(b)
    assert G.get("alpha", alpha=1) == G.get("alpha", alpha=1.0)
    assert a != G.get("alpha", alpha=0.6)
    assert a != G.get("squared_hellinger")
    assert G.get("skew_js", beta=0.2) != G.get("skew_js", beta=0.2, normalize=True)
    table = {a: "a", G.get("kl"): "kl", G.get("skew_kl", lam=0.1): "skew"}
    assert table[b] == "a" and table[G.get("forward_kl")] == "kl"
    assert table[G.get("skew_kl", lam=0.1)] == "skew"
    assert G.resolve("tv") == G.get("total_variation") and G.resolve(a) is a


# ------------------------------------------------------------------------------------------------
# 8. from_function.
# ------------------------------------------------------------------------------------------------


def _user_kl():
    return G.from_function(lambda u: jax.scipy.special.xlogy(u, u), slope_at_infinity=jnp.inf)


def _user_hellinger():
    return G.from_function(lambda u: (jnp.sqrt(u) - 1.0) ** 2, name="my_hellinger")


@pytest.mark.parametrize(
    "make,ref_name", [(_user_kl, "kl"), (_user_hellinger, "squared_hellinger")], ids=["kl", "hel"]
)
def test_from_function_matches_closed_form(make, ref_name):
    """Autodiff f', h and the bisection conjugate of a user f match the numpy closed forms of the
    same f in float64 (rtol 1e-9 for f, f', h and f*; 1e-8 for the gradient of f*, which must be
    the maximiser u*); f* = +inf outside its domain."""
    ref = reference(ref_name)
    with jax.enable_x64(True):
        g = make()
        want = ref_values(ref, GRID)
        for m in ("f", "f_prime", "weight"):
            assert_close(_f64(g, m, GRID), want[m], rtol=1e-9, atol=1e-12, what=m, at=GRID)
        t = np.concatenate([np.array(ref.t_in), dense_t(ref, 16)])
        assert_close(_f64(g, "conjugate", t), ref.conj(t), rtol=1e-9, atol=1e-12, what="f*", at=t)
        assert np.isposinf(_f64(g, "conjugate", np.array(ref.t_out) + 0.5)).all()
        grad = jax.vmap(jax.grad(g.conjugate))(jnp.asarray(t))
        assert_close(grad, ref.ustar(t), rtol=1e-8, what="grad f*", at=t)
        assert_close(_f64(g, "f", [-np.inf]), [ref.f0], rtol=1e-12, what="f(0)")
    assert g.bounded is (ref_name == "squared_hellinger")


def test_from_function_dual_uses_numeric_conjugate():
    """The generic dual (``v f(1/v)`` built from f) of a user KL is reverse KL: f, f', the weight
    h = 1 and the bisection f* against the numpy reverse-KL closed forms, +inf for t >= 0."""
    ref = reference("reverse_kl")
    with jax.enable_x64(True):
        d = _user_kl().dual
        assert_close(_f64(d, "f", GRID), ref.f(GRID), rtol=1e-9, atol=1e-12, what="f")
        assert_close(_f64(d, "f_prime", GRID), ref.fp(GRID), rtol=1e-9, atol=1e-12, what="f'")
        assert_close(_f64(d, "weight", GRID), ref.h(GRID), rtol=1e-9, what="h = r^2 f''", at=GRID)
        t = np.array([-5.0, -1.0, -0.2, 0.0, 0.5])
        assert_close(_f64(d, "conjugate", t), ref.conj(t), rtol=1e-9, what="f*", at=t)


@pytest.mark.parametrize("fn", [lambda u: u * u, lambda u: jax.scipy.special.xlogy(u, u) + 0.1])
def test_from_function_requires_f_of_one_zero(fn):
    with pytest.raises(ValueError, match="f\\(1\\)"):
        G.from_function(fn)


def _np_softmax(x):
    return special.softmax(np.asarray(x, np.float64), axis=-1)


def test_from_function_in_divergence():
    """``fdiv.divergence`` with user KL / user squared Hellinger equals the catalogued one and the
    numpy sums sum p log(p/q) (``scipy.special.rel_entr``) and sum (sqrt p - sqrt q)^2, including
    a class with p = 0 and a row with q = 0 < p (KL = +inf; Hellinger finite)."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 7)) * 2
    q = rng.normal(size=(4, 7)) * 2
    p[1, 3] = -np.inf  # p = 0 < q
    q[2, 5] = -np.inf  # q = 0 < p
    pp, qq = _np_softmax(p), _np_softmax(q)
    want_kl = special.rel_entr(pp, qq).sum(-1)
    want_hel = ((np.sqrt(pp) - np.sqrt(qq)) ** 2).sum(-1)
    assert np.isposinf(want_kl[2]) and np.isfinite(want_kl[[0, 1, 3]]).all()
    with jax.enable_x64(True):
        pj, qj = jnp.asarray(p), jnp.asarray(q)
        user_kl = fdiv.divergence(_user_kl(), pj, qj)
        assert_close(user_kl, want_kl, rtol=1e-9, atol=1e-12, what="user kl")
        assert_close(fdiv.divergence("kl", pj, qj), want_kl, rtol=1e-9, atol=1e-12, what="kl")
        user_hel = fdiv.divergence(_user_hellinger(), pj, qj)
        assert_close(user_hel, want_hel, rtol=1e-9, atol=1e-12, what="user hellinger")


# ------------------------------------------------------------------------------------------------
# 9. fdiv.testing.check_generator.
# ------------------------------------------------------------------------------------------------


# grad_order=1: the divergence's derivatives at order 2 (check_generator's default) are checked
# per generator in tests/test_testing_helpers.py (every one under -m slow).


@pytest.mark.parametrize("name", NAMES)
def test_check_generator_passes_for_catalog(name):
    fdiv.testing.check_generator(G.get(name), grad_order=1)


def test_check_generator_passes_for_parametrised_generators():
    for g in (
        G.get("alpha", alpha=-1.0),
        G.get("skew_js", beta=0.0, normalize=True),
        G.get("skew_kl", lam=0.5),
        _user_hellinger(),
    ):
        fdiv.testing.check_generator(g, grad_order=1)


class _WrongDerivative(type(G.get("pearson"))):
    def _f_prime(self, l):
        return 2.0 * jnp.expm1(l) + 0.1  # f' off by 0.1


class _NotNormalized(type(G.get("pearson"))):
    def _f(self, l):
        return jnp.square(jnp.expm1(l)) + 0.01  # f(1) = 0.01


class _WrongConjugate(type(G.get("kl"))):
    def _conjugate(self, t):
        return jnp.exp(t - 1.0) - 0.05  # below the true sup: Fenchel-Young fails


class _WrongDual(type(G.get("squared_hellinger"))):
    @property
    def dual(self):
        return G.get("pearson")


def test_check_generator_fails_for_non_convex():
    g = G.from_function(lambda u: -((u - 1.0) ** 2))  # f(1) = 0 but concave
    with pytest.raises(AssertionError, match="convex"):
        fdiv.testing.check_convex(g)
    with pytest.raises(AssertionError):
        fdiv.testing.check_generator(g)


def test_check_generator_fails_for_wrong_derivative():
    g = _WrongDerivative()
    with pytest.raises(AssertionError, match="f'"):
        fdiv.testing.check_derivatives(g)
    with pytest.raises(AssertionError):
        fdiv.testing.check_generator(g)


def test_individual_checks_fail_for_broken_generators():
    with pytest.raises(AssertionError, match="f\\(1\\) = 0"):
        fdiv.testing.check_normalized(_NotNormalized())
    with pytest.raises(AssertionError, match="Fenchel-Young"):
        fdiv.testing.check_fenchel_young(_WrongConjugate())
    with pytest.raises(AssertionError, match="dual"):
        fdiv.testing.check_dual(_WrongDual())
