"""Divergences and logit gradients at log-ratios far beyond the float range, against mpmath.

Classes with ``|log(p/q)|`` of 80, 90, 200 and 700: in float32 the smaller probability of such a
class underflows (below ``e^-87``) while its logit stays finite, so any product
``small * f'(small / big)`` becomes ``0 * inf``. The reference is independent of fdiv: each
generator's textbook ``f(u)`` written in mpmath (60 digits), ``D = sum_k q_k f(p_k / q_k)`` from the
logits, and its logit gradient by mpmath's numerical differentiation of that sum.

Where the true value (or a gradient entry) is beyond the dtype's largest float, fdiv must not
return a finite wrong number: the value is ``+inf``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from _mp_reference import SPECS, mp_softmax

import fdiv
from fdiv import generators

mp.mp.dps = 60

LOG_RATIOS = (80.0, 90.0, 200.0, 700.0)


def _xlogx(u):
    return jax.scipy.special.xlogy(u, u)


def _triangular_u(u):
    return u - 3.0 + 4.0 / (u + 1.0)  # (u - 1)^2 / (u + 1) without overflowing (u - 1)^2


# Two user generators written in u (not log u): f(0) finite and f(0) = 0 * log 0.
FROM_FUNCTION = {
    "user_kl": (_xlogx, SPECS[("kl", ())], jnp.inf),
    "user_triangular": (_triangular_u, SPECS[("triangular", ())], 1.0),
}


def _logit_rows(log_ratios):
    """Pairs of logit rows with classes at log-ratio +-L for each L; two-class pairs get a third
    class absent from both (-inf logits, contributing exactly 0), so every row has 3 classes."""
    rows = []
    for L in log_ratios:
        rows += [
            ([0.0, 0.0, -np.inf], [0.0, -L, -np.inf]),  # p/q ~ e^L in class 1
            ([0.0, -L, -np.inf], [0.0, 0.0, -np.inf]),  # p/q ~ e^-L
            ([0.0, -L, 1.0], [1.0, 0.0, -L]),  # both in one row
        ]
    return rows


def _mp_divergence(f, xp, xq):
    p, q = mp_softmax(xp), mp_softmax(xq)
    return mp.fsum(qk * f(pk / qk) for pk, qk in zip(p, q, strict=True) if pk or qk)


@functools.cache
def _reference(key, xp, xq):
    """(value, grad wrt p logits, grad wrt q logits) in mpmath, as float64-safe Python floats."""
    f = SPECS[key] if isinstance(key, tuple) else FROM_FUNCTION[key][1]
    xp, xq = list(xp), list(xq)
    value = _mp_divergence(f, xp, xq)

    def partial(which, k):
        def shifted(h):
            a, b = list(xp), list(xq)
            (a if which == 0 else b)[k] += h
            return _mp_divergence(f, a, b)

        return mp.diff(shifted, 0)

    gp = [partial(0, k) if xp[k] != -np.inf else mp.mpf(0) for k in range(len(xp))]
    gq = [partial(1, k) if xq[k] != -np.inf else mp.mpf(0) for k in range(len(xq))]
    return value, gp, gq


def _as_float(x, dtype):
    """mpmath -> numpy in dtype's range: +-inf beyond its largest float."""
    top = np.finfo(dtype).max
    return float(x) if abs(x) <= top else float(mp.sign(x)) * np.inf


def _generator(key):
    if isinstance(key, tuple):
        name, params = key
        return generators.get(name, **dict(params))
    fn, _, slope = FROM_FUNCTION[key]
    return generators.from_function(fn, name=key, slope_at_infinity=slope)


@functools.partial(jax.jit, static_argnums=0)
def _values_and_grads(g, p, q):
    """Per-row divergences and logit gradients (rows are independent: grad of the sum)."""
    values = fdiv.divergence(g, p, q)
    grads = jax.grad(lambda a, b: jnp.sum(fdiv.divergence(g, a, b)), argnums=(0, 1))(p, q)
    return values, grads


def _check(g, key, log_ratios, dtype):
    """fdiv (one batched call, so one compilation) against the reference, row by row."""
    rtol = 1e-4 if dtype == np.float32 else 1e-9
    rows = _logit_rows(log_ratios)
    p = jnp.asarray([r[0] for r in rows], dtype)
    q = jnp.asarray([r[1] for r in rows], dtype)
    values, (gp, gq) = _values_and_grads(g, p, q)
    for i, (xp, xq) in enumerate(rows):
        msg = f"{key} {dtype.__name__} p={xp} q={xq}"
        want, want_gp, want_gq = _reference(key, tuple(xp), tuple(xq))
        want_value = _as_float(want, dtype)
        if np.isinf(want_value):  # not representable: never a finite wrong number
            assert float(values[i]) == np.inf, msg
            continue
        np.testing.assert_allclose(float(values[i]), want_value, rtol=rtol, atol=0, err_msg=msg)
        refs = [np.array([_as_float(r, dtype) for r in ref]) for ref in (want_gp, want_gq)]
        # The softmax Jacobian (dD/dx = dp - p sum(dp)) subtracts O(1) terms: an absolute error
        # of rounding times the largest entry (at least 1e-3) is all any float rule can promise.
        scale = max([1e-3] + [np.max(np.abs(r)) for r in refs if np.isfinite(r).all()])
        for got, ref in zip((gp[i], gq[i]), refs, strict=True):
            if not np.all(np.abs(ref) < np.finfo(dtype).max / 8):
                # Documented limit: within a factor 8 of the largest float the Jacobian's sums
                # and the 2x of Pearson / Neyman may overflow (the value itself is still exact).
                continue
            got = np.asarray(got, np.float64)
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=msg)


CATALOG_KEYS = sorted(SPECS, key=repr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("key", CATALOG_KEYS, ids=repr)
def test_catalog_exact_at_extreme_log_ratios(key, dtype):
    with jax.enable_x64(dtype == np.float64):
        _check(_generator(key), key, LOG_RATIOS, dtype)


@pytest.mark.parametrize("key", sorted(FROM_FUNCTION))
def test_from_function_exact_where_the_ratio_is_a_float(key):
    """A user's f is evaluated at u = p/q itself, so it is exact while u is a normal float of the
    dtype (|log u| < 87 in float32, every ratio here in float64); the catalog's log-space forms
    have no such limit."""
    g = _generator(key)
    _check(g, key, (80.0,), np.float32)
    with jax.enable_x64(True):
        _check(g, key, LOG_RATIOS, np.float64)


def test_issue_repro_lost_gradient_term():
    """p = [0, 0], q = [0, -90] logits in float32: d/dq of KL-like generators is [0.5, -0.5]."""
    p, q = jnp.zeros(2), jnp.array([0.0, -90.0])
    cases = [
        "kl",
        "jeffreys",
        generators.get("alpha", alpha=1.0),
        generators.get("skew_js", beta=0.0, normalize=True),
    ]
    for g in cases:
        grad = jax.grad(lambda b, g=g: fdiv.divergence(g, p, b))(q)
        np.testing.assert_allclose(np.asarray(grad), [0.5, -0.5], rtol=1e-6, err_msg=repr(g))


@pytest.mark.parametrize("key", [("jeffreys", ()), ("alpha", (("alpha", 1.0),))], ids=repr)
def test_fused_divergence_exact_at_extreme_log_ratios(key):
    g = _generator(key)
    rows = _logit_rows(LOG_RATIOS)
    p = jnp.asarray([r[0] for r in rows], jnp.float32)
    q = jnp.asarray([r[1] for r in rows], jnp.float32)
    values = fdiv.fused.fused_divergence(g, p, q)
    gq = jax.grad(lambda b: jnp.sum(fdiv.fused.fused_divergence(g, p, b)))(q)
    for i, (xp, xq) in enumerate(rows):
        want, _, want_gq = _reference(key, tuple(xp), tuple(xq))
        np.testing.assert_allclose(float(values[i]), float(want), rtol=1e-4)
        ref = np.array([float(r) for r in want_gq])
        scale = max(1e-3, np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(gq[i]), ref, rtol=1e-4, atol=1e-4 * scale)
