"""Small numerically careful building blocks shared by the library (private).

Every helper here is safe at the ends of its domain in value *and* gradient: where a naive
expression would produce ``0 * inf`` or ``inf - inf`` it uses the double-``where`` pattern, so that
the branch not taken sees a harmless input and contributes an exact zero to the gradient.
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def compute_dtype(*arrays) -> jnp.dtype:
    """The dtype computations run in: float32 for (b)float16 or integer inputs, else the input's."""
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating) or dtype in LOW_PRECISION:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)


def check_logits(fn: str, *arrays, axis: int = -1) -> None:
    """Reject what a softmax cannot be taken of: complex values and an empty class axis."""
    for a in arrays:
        if jnp.iscomplexobj(a):
            raise TypeError(f"{fn}: logits must be real, got {jnp.result_type(a)}")
        if a.ndim and a.shape[axis] == 0:
            raise ValueError(f"{fn}: the class axis is empty (logits of shape {a.shape})")


def in_compute_dtype(*arrays) -> list[jax.Array]:
    """The arrays cast to one :func:`compute_dtype` (float32 at least; float64 stays float64)."""
    arrays = [jnp.asarray(a) for a in arrays]
    dtype = compute_dtype(*arrays)
    return [a.astype(dtype) for a in arrays]


def output_dtype(*arrays) -> jnp.dtype:
    """The dtype results are returned in: the inputs' floating dtype (float32 for integers)."""
    dtype = jnp.result_type(*arrays)
    return jnp.dtype(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def max_log(dtype) -> float:
    """Largest ``x`` with ``exp(x)`` finite in ``dtype`` (with a small margin)."""
    return float(np.log(np.finfo(dtype).max)) - 1.0


def xexpx(log_u: jax.Array) -> jax.Array:
    """``u log u`` from ``log u``: ``exp(l) * l``, exactly 0 (value and gradient) at ``l = -inf``."""
    at_zero = log_u == -jnp.inf
    safe = jnp.where(at_zero, 0.0, log_u)
    return jnp.where(at_zero, 0.0, jnp.exp(safe) * safe)


def mul0(weight: jax.Array, value: jax.Array) -> jax.Array:
    """``weight * value`` with ``0 * anything = 0`` (also ``0 * inf``), gradient-safe."""
    is_zero = weight == 0
    return jnp.where(is_zero, 0.0, weight * jnp.where(is_zero, 0.0, value))


def _over(fn, a, x: jax.Array) -> jax.Array:
    """``fn(a x) / a`` for ``fn`` with ``fn(0) = 0``, ``fn'(0) = 1``: continuous in the scalar ``a``
    (``x`` at ``a = 0``), which may be a Python number (branch at trace time) or traced."""
    if is_static(a):
        return x if a == 0 else fn(a * x) / a
    zero = a == 0
    safe = jnp.where(zero, 1.0, a)
    return jnp.where(zero, x, fn(safe * x) / safe)


def expm1_over(a, x: jax.Array) -> jax.Array:
    """``expm1(a x) / a``, continuous in the scalar ``a`` (``x`` at ``a = 0``; traced ``a`` too)."""
    return _over(jnp.expm1, a, x)


def log1p_over(a, x: jax.Array) -> jax.Array:
    """``log1p(a x) / a``, continuous in the scalar ``a`` (``x`` at ``a = 0``; traced ``a`` too)."""
    return _over(jnp.log1p, a, x)


def log_softmax_and_softmax(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log_softmax, softmax)`` over the last axis from one ``exp`` per entry.

    ``-inf`` entries stay at ``-inf`` / exactly 0; a row of all ``-inf`` gives all ``-inf`` / 0.
    """
    log_p, p, _ = log_softmax_parts(logits)
    return log_p, p


def log_softmax_parts(logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`log_softmax_and_softmax` and the row's ``logsumexp`` (``[..., 1]``; 0 for a row of
    all ``-inf``, which has no normaliser)."""
    peak = jnp.max(logits, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    shifted = logits - jax.lax.stop_gradient(peak)
    e = jnp.exp(shifted)
    total = jnp.sum(e, axis=-1, keepdims=True)
    empty = total == 0
    log_total = jnp.where(empty, 0.0, jnp.log(jnp.where(empty, 1.0, total)))
    return (
        shifted - log_total,
        e / jnp.where(empty, 1.0, total),
        jax.lax.stop_gradient(peak) + log_total,
    )


# Taylor coefficients 1/(n+1)! of expm1(x)/x; terms enough for |x| <= 1/2 in each dtype (the first
# dropped one is below half an ulp: 0.5^8/9! = 1.1e-8 in float32, 0.5^14/15! = 4.7e-17 in float64).
_EXPM1_COEF = tuple(1.0 / math.factorial(n + 1) for n in range(14))
_EXPM1_TERMS = {jnp.dtype(jnp.float32): 8, jnp.dtype(jnp.float64): 14}


def expm1_near(x: jax.Array) -> jax.Array:
    """``expm1(x)`` for ``|x| <= 1/2`` only, from its Taylor series ``x sum_n x^n / (n + 1)!``.

    Horner's rule in multiply-adds: as accurate as ``jnp.expm1`` there (a few ulp) at a tenth of
    its cost on the CPU (XLA's ``expm1`` is an ``exp`` plus a correction). The caller selects the
    range (``jnp.where``); float32 and float64 (float16 inputs are computed in float32 here).
    """
    coef = _EXPM1_COEF[: _EXPM1_TERMS.get(jnp.dtype(jnp.result_type(x)), 14)]
    acc = coef[-1] * x + coef[-2]
    for c in coef[-3::-1]:
        acc = acc * x + c
    return x * acc


def log_softmax_pair(x_p, x_q):
    """``(log p, p, log q, q, log(p/q), empty)`` for ``p = softmax(x_p)``, ``q = softmax(x_q)``.

    Shapes ``[..., V]``; ``empty`` (``[..., 1]``) marks rows where either logit row is all
    ``-inf`` (no distribution: the caller masks them). One ``exp`` per logit, as in
    :func:`log_softmax_parts`, and no further transcendental per class.

    The log-ratio is accurate to its own size: ``log p - log q`` from two rounded log-softmaxes
    carries an error of ~eps times ``|log p|``, which swamps a log-ratio of 1e-6 (nearly identical
    distributions). Instead ``log(p_k/q_k) = d_k - C`` with ``d = x_p - x_q`` (exact for close
    logits) and ``C = lse_p - lse_q = k + log(S_p / S_q)``, where ``k = m_p - m_q`` is the
    difference of the row maxima and ``S = sum exp(x - m)`` the shifted sums of the softmaxes. With
    ``r0 = d - k``, ``e^{x_q - m_q} e^{r0} = e^{x_p - m_p}``, so

        S_p - S_q = sum_k e^{x_q - m_q} expm1(r0_k),

    a sum taken in the same pass as ``S_p`` and ``S_q`` whose terms are exact to their own size
    where ``|r0| < 1/2`` (:func:`expm1_near`) and are ``e^{x_p - m_p} - e^{x_q - m_q}`` elsewhere
    (classes where ``q = 0`` included). Then ``C = k + log1p((S_p - S_q) / S_q)`` while that ratio
    is within ``1/2`` of 0 (near-identical rows, where it matters), else ``k + log S_p - log S_q``
    (far rows, where the difference of sums would lose ``S_q / S_p`` relative). ``log(p/q)`` is
    ``-inf`` where ``p = 0 < q``, ``+inf`` where ``q = 0 < p`` and NaN where both logits are
    ``-inf`` (:func:`fdiv._core.divergence_terms` sets those classes aside).
    """
    raw_p = jnp.max(x_p, axis=-1, keepdims=True)
    raw_q = jnp.max(x_q, axis=-1, keepdims=True)
    m_p = jax.lax.stop_gradient(jnp.where(jnp.isfinite(raw_p), raw_p, 0.0))
    m_q = jax.lax.stop_gradient(jnp.where(jnp.isfinite(raw_q), raw_q, 0.0))
    e_p, e_q = jnp.exp(x_p - m_p), jnp.exp(x_q - m_q)
    k = m_p - m_q
    r0 = (x_p - x_q) - k  # -inf where p = 0, +inf where q = 0, NaN where both: not near
    near = jnp.abs(r0) < 0.5
    step = jnp.where(near, e_q * expm1_near(jnp.clip(r0, -0.5, 0.5)), e_p - e_q)
    s_p = jnp.sum(e_p, axis=-1, keepdims=True)
    s_q = jnp.sum(e_q, axis=-1, keepdims=True)
    diff = jnp.sum(step, axis=-1, keepdims=True)
    empty_p, empty_q = s_p == 0, s_q == 0
    s_p, s_q = jnp.where(empty_p, 1.0, s_p), jnp.where(empty_q, 1.0, s_q)
    log_s_p, log_s_q = jnp.log(s_p), jnp.log(s_q)
    rel = diff / s_q
    close = jnp.abs(rel) < 0.5
    c = k + jnp.where(close, jnp.log1p(jnp.where(close, rel, 0.0)), log_s_p - log_s_q)
    # r from the inputs again (not from r0): XLA then fuses it into each consumer instead of
    # keeping r0 alive across the reductions.
    return (
        (x_p - m_p) - log_s_p,
        e_p / s_p,
        (x_q - m_q) - log_s_q,
        e_q / s_q,
        (x_p - x_q) - c,
        empty_p | empty_q,
    )


@jax.custom_jvp
def lambertw0(x: jax.Array) -> jax.Array:
    """Principal branch ``W0(x)`` of the Lambert W function for real ``-1/e <= x <= ~1``.

    Halley iterations from the branch-point series near ``-1/e`` and from ``x`` elsewhere; NaN
    below ``-1/e``. Used by closed-form conjugates (skew KL); large arguments go through
    :func:`lambertw0_of_exp` instead.
    """
    x = jnp.asarray(x)
    e = np.e
    p = jnp.sqrt(jnp.maximum(2.0 * (1.0 + e * x), 0.0))
    near_branch = p * p < 0.5  # x within ~0.18 of -1/e: the branch-point series is accurate
    series = -1.0 + p * (1.0 + p * (-1.0 / 3.0 + p * (11.0 / 72.0)))
    w = jnp.where(near_branch, series, jnp.log1p(jnp.maximum(x, -0.3)))
    for _ in range(6):
        ew = jnp.exp(w)
        residual = w * ew - x
        wp1 = w + 1.0
        safe_wp1 = jnp.where(wp1 == 0, 1.0, wp1)
        denom = ew * safe_wp1 - (w + 2.0) * residual / (2.0 * safe_wp1)
        step = jnp.where(
            (wp1 == 0) | (denom == 0), 0.0, residual / jnp.where(denom == 0, 1.0, denom)
        )
        w = w - step
    return jnp.where(x < -1.0 / e, jnp.nan, w)


@lambertw0.defjvp
def _lambertw0_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    w = lambertw0(x)
    # dW/dx = 1 / (exp(W) (1 + W)); infinite at the branch point, as it should be.
    return w, dx / (jnp.exp(w) * (1.0 + w))


def lambertw0_of_exp(c: jax.Array) -> jax.Array:
    """``log W0(exp(c))`` for any real ``c``: the root ``y`` of ``exp(y) + y = c``.

    Works in log space so ``exp(c)`` never overflows. Newton's method on the convex increasing
    ``g(y) = exp(y) + y - c`` started right of the root converges monotonically; the derivative
    follows from the implicit function theorem, ``dy/dc = 1 / (1 + exp(y))``.
    """
    return _log_lambertw_exp(c)


@jax.custom_jvp
def _log_lambertw_exp(c):
    c = jnp.asarray(c)
    # Root y < min(c, log c): start at c (c <= 1) or log c (c > 1), both right of it.
    y = jnp.where(c > 1.0, jnp.log(jnp.maximum(c, 1.0)), c)
    for _ in range(12):
        ey = jnp.exp(y)
        y = y - (ey + y - c) / (ey + 1.0)
    return y


@_log_lambertw_exp.defjvp
def _log_lambertw_exp_jvp(primals, tangents):
    (c,), (dc,) = primals, tangents
    y = _log_lambertw_exp(c)
    return y, dc / (1.0 + jnp.exp(y))


def bisect_increasing(fn, target: jax.Array, lo: float, hi: float, iters: int = 64) -> jax.Array:
    """Elementwise root of the nondecreasing ``fn(y) = target`` on ``[lo, hi]`` by bisection.

    Returns ``lo`` / ``hi`` when the root lies outside. ``iters`` halvings of the bracket.
    """
    lo_arr = jnp.full(jnp.shape(target), lo, dtype=target.dtype)
    hi_arr = jnp.full(jnp.shape(target), hi, dtype=target.dtype)

    def body(_, bracket):
        a, b = bracket
        mid = 0.5 * (a + b)
        below = fn(mid) < target
        return jnp.where(below, mid, a), jnp.where(below, b, mid)

    a, b = jax.lax.fori_loop(0, iters, body, (lo_arr, hi_arr))
    return 0.5 * (a + b)


def promote(fn):
    """Decorator for unary array methods: compute in float32 for low precision, return input dtype."""

    @functools.wraps(fn)
    def wrapper(self, x):
        x = jnp.asarray(x)
        out_dtype = output_dtype(x)
        return fn(self, x.astype(compute_dtype(x))).astype(out_dtype)

    return wrapper


def positive_int(name: str, value) -> int:
    """``value`` as a Python int ``>= 1`` (a static loop count or bin count), else ``ValueError``.

    ``bool`` and floats are rejected even where ``int()`` would accept them: ``True`` iterations or
    ``2.5`` bins are mistakes, not requests.
    """
    message = f"{name} must be a Python int >= 1, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(message)
    try:
        value = operator.index(value)
    except TypeError as err:
        raise ValueError(message) from err
    if value < 1:
        raise ValueError(message)
    return value


# ------------------------------------------------------------------------------------------------
# Hyperparameters: concrete (checked, specialised at trace time) or traced (jit / vmap / grad).
# ------------------------------------------------------------------------------------------------


def is_concrete(x) -> bool:
    """Whether an array's values can be checked now (not traced under ``jit`` / ``vmap`` / ``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def is_static(x) -> bool:
    """Whether ``x`` is a Python (or NumPy) number, which the library may branch on at trace time."""
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def hyperparameter(x):
    """A scalar hyperparameter as a Python float when concrete, else unchanged (a traced or batched
    array: under ``jit`` / ``vmap`` / ``grad``, or any array the caller means to trace)."""
    if is_static(x):
        return float(x)
    if isinstance(x, jax.core.Tracer) or jnp.ndim(x) != 0:
        return x
    return float(x)  # a concrete 0-d array: a plain value


def check_hyperparameter(name: str, value, ok, requirement: str):
    """``value`` (via :func:`hyperparameter`), validated with ``ok(float) -> bool`` when it is a
    Python float. Traced values cannot be checked at trace time and pass unchecked (documented)."""
    value = hyperparameter(value)
    if isinstance(value, float) and not ok(value):
        raise ValueError(f"{name} must be {requirement}, got {value}")
    return value


def where_static(cond, if_true, if_false):
    """``if_true if cond else if_false`` for a Python ``cond``; ``jnp.where`` for a traced one."""
    if isinstance(cond, (bool, np.bool_)):
        return if_true if cond else if_false
    return jnp.where(cond, if_true, if_false)


def log(x):
    """``log x``: a Python float for a Python number (folded at trace time), else ``jnp.log``."""
    return math.log(x) if is_static(x) else jnp.log(x)


def log1p(x):
    """``log1p x``: a Python float for a Python number, else ``jnp.log1p``."""
    return math.log1p(x) if is_static(x) else jnp.log1p(x)
