"""The one per-class rule behind every categorical divergence in fdiv, and the chunked loop (private).

``divergence_terms`` gives, per class, ``q f_n(p/q)`` and its derivatives; ``value_and_logit_grads``
turns them into a per-row value and closed-form logit gradients; ``fused_dense`` runs that over
chunks of rows inside one ``custom_jvp`` (symbolic zeros: only differentiated inputs get a
gradient), so neither ``fdiv.divergence`` nor ``fdiv.fused`` ever holds more than ``O(chunk * V)``
intermediates beyond the gradients themselves.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from fdiv import _numerics as nx
from fdiv import generators as gen


class DivergenceTerms(NamedTuple):
    """Per-class pieces of ``D = sum_k term_k`` for log-probabilities ``lp``, ``lq`` ([..., V]).

    ``term = q f_n(p/q) >= 0`` (``f_n`` the normalised generator), ``dp = p * d term/dp`` and
    ``dq = q * d term/dq`` with ``p``, ``q`` treated as free variables. The logit gradients follow
    through the softmax Jacobian: ``dD/dx_p = dp - p sum(dp)``, ``dD/dx_q = dq - q sum(dq)``.
    """

    term: jax.Array
    dp: jax.Array
    dq: jax.Array


def _generic_terms(g: gen.Generator, lp, lq, p, q, r) -> DivergenceTerms:
    """Any generator, evaluating ``f`` and its dual only at ratios <= 1 (no overflow).

    Where ``p <= q`` the term is ``q f(p/q)``; where ``p > q`` it is ``p f_dual(q/p)`` with
    ``f_dual(v) = v f(1/v)`` (classes absent from both: see :func:`divergence_terms`); ``q = 0 < p`` gives
    ``p f'(inf)`` (``+inf`` for unbounded ``f``), ``p = 0 < q`` gives ``q f(0)``.

    Every product has the *larger* probability as its factor: the derivative term of the smaller
    one is ``small f'(w) = big (w f'(w))`` with ``w = small / big``, and ``w f'(w)`` is formed from
    ``log w`` in closed form. (``small * f'(w)`` is ``0 * inf`` once ``|log(p/q)|`` passes the float
    range, which lost e.g. Jeffreys' ``-big`` limit: ``small`` underflows to 0 while its log is
    finite.) A class whose log-probability is ``-inf`` gets exactly 0. ``r = log(p/q)``.
    """
    below = r <= 0
    big = jnp.where(below, q, p)
    log_w = -jnp.abs(r)  # log(small / big) <= 0; -inf where small = 0

    def small_times_f_prime(h):  # small * h'(w) = big * w h'(w); exactly 0 at a -inf logit
        return jnp.where(log_w == -jnp.inf, 0.0, big * h._u_f_prime_normalized(log_w))

    dual = g.dual
    if dual == g:
        # Self-dual f (JS, Hellinger, TV, Jeffreys, triangular ...): f_dual = f, so one evaluation
        # at log(min(p, q) / max(p, q)) serves both branches.
        term = nx.mul0(big, g._f_normalized(log_w))
        d_small = small_times_f_prime(g)
        d_big = term - d_small
        dp, dq = jnp.where(below, d_small, d_big), jnp.where(below, d_big, d_small)
        return DivergenceTerms(term, dp, dq)
    log_u = jnp.where(below, log_w, 0.0)  # log(p/q) where p <= q
    log_v = jnp.where(below, 0.0, log_w)  # log(q/p) where p > q
    term_a = nx.mul0(q, g._f_normalized(log_u))
    dp_a = small_times_f_prime(g)  # p f'(u)
    term_b = nx.mul0(p, dual._f_normalized(log_v))
    dq_b = small_times_f_prime(dual)  # q f_dual'(v)
    term = jnp.where(below, term_a, term_b)
    dp = jnp.where(below, dp_a, term_b - dq_b)  # p d/dp [p f_dual(q/p)] = p f_dual - q f_dual'
    dq = jnp.where(below, term_a - dp_a, dq_b)  # q d/dq [q f(p/q)] = q f - p f'
    return DivergenceTerms(term, dp, dq)


def _near(r):
    """Classes whose log-ratio is inside the generators' series radius, and ``r`` clipped to it
    (finite everywhere: a series evaluated where it is not used stays harmless)."""
    radius = gen.NEAR_ONE_RADIUS
    return jnp.abs(r) < radius, jnp.clip(r, -radius, radius)


def _times_log(prob, x):
    """``prob * x`` for a log ``x`` that is never ``+inf`` and is ``-inf`` only where ``prob = 0``
    (product 0 there). Cheaper than :func:`fdiv._numerics.mul0`: no ``where``."""
    return prob * jnp.maximum(x, jnp.finfo(x.dtype).min)


def _small_over_big(p, q):
    """``min(p, q) / max(p, q) = e^-|r|`` from the probabilities (a division, not an ``exp``);
    0 where both are 0."""
    return jnp.minimum(p, q) / _nonzero(jnp.maximum(p, q))


def _nonzero(x):
    """``x`` with its zeros replaced by 1, as a divisor: a ``max(x, tiny)`` floor would make the
    division's second derivative ``0 / tiny^2 = 0 / 0`` (NaN Hessians at masked classes)."""
    return jnp.where(x > 0, x, 1.0)


def _one_minus_exp_neg(r, p, q, scale=1.0):
    """``1 - e^(-scale |r|)`` for ``scale`` 1 or 1/2, exact to its own size: its Taylor series near
    ``p = q`` (``|r| < R``), ``1 - min(p, q) / max(p, q)`` (or its square root) elsewhere, where
    it is at least ``1 - e^(-scale R)`` and so does not cancel."""
    near, r_near = _near(r)
    w = _small_over_big(p, q)
    far = 1.0 - (w if scale == 1.0 else jnp.sqrt(w))
    return jnp.where(near, -nx.expm1_near(-scale * jnp.abs(r_near)), far)


def _kl_terms(lp, lq, p, q, r) -> DivergenceTerms:
    """KL: ``term = p log(p/q) - p + q``, ``dp = p log(p/q)``, ``dq = q - p``.

    Near ``p = q`` the term and ``dq`` cancel; there they are ``q phi(r)`` (the generator's series)
    and ``-q expm1(r)`` (its Taylor series: no transcendental anywhere in this rule).
    """
    dp = nx.mul0(p, r)  # +inf where q = 0 < p: KL = inf; 0 where p underflows to 0 there
    near, r_near = _near(r)  # not where p = 0 < q (r = -inf): the term is q there
    term = jnp.where(near, q * gen.near_one(_KL, r_near), dp - p + q)
    return DivergenceTerms(term, dp, jnp.where(near, -q * nx.expm1_near(r_near), q - p))


def _reverse_kl_terms(lp, lq, p, q, r) -> DivergenceTerms:
    term, dq, dp = _kl_terms(lq, lp, q, p, -r)
    return DivergenceTerms(term, dp, dq)


def _js_terms(lp, lq, p, q, r) -> DivergenceTerms:
    """JS fast path: ``dp = p log(p/m)/2``, ``dq = q log(q/m)/2``, ``term = dp + dq``, ``m = (p+q)/2``.

    ``log(p/m) = log 2 + min(r, 0) - log1p(w)`` with ``w = min(p, q) / max(p, q) = e^-|r|``
    (finite wherever ``p > 0``, even when ``m`` underflows; ``w`` from the probabilities costs a
    division instead of an ``exp``, and where it underflows ``log1p(w)`` is below rounding anyway),
    ``log(q/m)`` the same at ``-r``. Near ``p = q`` (``|r| < R``), where those cancel, the generator's
    series give ``term = q phi(r)``, ``dp = q phi'(r)`` (``p d term/dp = q u f_n'(u)``) and
    ``dq = term - dp``, which does not cancel (``dp ~ r``, ``term ~ r^2``).
    """
    near, r_near = _near(r)
    soft = math.log(2.0) - jnp.log1p(_small_over_big(p, q))
    dp = 0.5 * _times_log(p, soft + jnp.minimum(r, 0.0))
    dq = 0.5 * _times_log(q, soft + jnp.minimum(-r, 0.0))
    phi = q * gen.near_one(_JS, r_near)
    d_phi = q * gen.near_one(_JS, r_near, derivative=True)
    return DivergenceTerms(
        jnp.where(near, phi, dp + dq), jnp.where(near, d_phi, dp), jnp.where(near, phi - d_phi, dq)
    )


def _squared_hellinger_terms(lp, lq, p, q, r) -> DivergenceTerms:
    """Squared Hellinger, ``(sqrt p - sqrt q)^2``: with ``big = max(p, q)`` and ``t = e^-|r|/2 =
    sqrt(min / max)``, ``a = 1 - t``,

        term = big a^2,   d(big) = big - sqrt(p q) = big a,   d(small) = small - sqrt(p q) = -big t a

    (``dp``, ``dq`` by which is larger; their sum is the term). One ``sqrt`` and one division per
    class; ``a`` from :func:`_one_minus_exp_neg`, exact near ``p = q``. Zero-safe: ``p = 0 < q``
    gives ``(q, 0, q)``, ``p = q = 0`` (``r = 0``) zeros.
    """
    a = _one_minus_exp_neg(r, p, q, scale=0.5)
    big = jnp.maximum(p, q)
    term, d_big, d_small = big * jnp.square(a), big * a, -big * (1.0 - a) * a
    below = r <= 0
    return DivergenceTerms(term, jnp.where(below, d_small, d_big), jnp.where(below, d_big, d_small))


def _total_variation_terms(lp, lq, p, q, r) -> DivergenceTerms:
    """Total variation, ``|p - q| / 2``: ``term = max(p, q) (1 - e^-|r|) / 2`` (exact near
    ``p = q``, see :func:`_one_minus_exp_neg`), ``dp = sign(r) p / 2``,
    ``dq = -sign(r) q / 2`` (the subgradient 0 where ``p = q``, as the generic rule's ``sign``).
    No transcendental. Zero-safe: ``p = 0 < q`` gives ``(q/2, 0, q/2)``, ``p = q = 0`` zeros."""
    a = _one_minus_exp_neg(r, p, q)
    s = 0.5 * jnp.sign(r)
    return DivergenceTerms(0.5 * jnp.maximum(p, q) * a, s * p, -s * q)


def _pearson_terms(lp, lq, p, q, r) -> DivergenceTerms:
    """Pearson: ``term = q e^2``, ``dp = 2 p e``, ``dq = term - dp = -q e (e + 2)``, ``e = p/q - 1``.

    Near ``p = q`` (``|r| < R``) ``e = expm1(r)`` is its Taylor series, exact to its own size, and
    nothing cancels (``term`` and ``-dp`` have the same sign). Elsewhere one ``exp`` per class, of
    ``x = log(p u) = log p + r`` where ``p > q`` and of ``x = r`` where ``p <= q``:

    - ``p <= q``: ``e = e^r - 1`` (relative error <= 1.6 ulp at ``r <= -R``), and the forms above;
    - ``p > q``: with ``v = p u = p^2 / q`` and ``w = q / p``, ``term = q (u - 1)^2 = v (1 - w)^2``,
      ``dp = 2 p (u - 1) = 2 (v - p)`` and ``dq = -q (u^2 - 1) = q - v``: no cancellation
      (``w <= e^-R``), the larger probability as factor (a subnormal ``q`` costs no precision), and
      ``v`` overflows only where the true value does (``+inf`` where ``q = 0 < p``, whose ``dq`` is
      exactly 0).

    Zero-safe: ``p = 0 < q`` gives ``(q, 0, q)``, ``p = q = 0`` (``r = 0``) zeros.
    """
    near, r_near = _near(r)
    pos = r > 0
    ex = jnp.exp(jnp.where(pos, lp + r, r))  # v where p > q, u elsewhere
    # e is only used where p <= q (u <= 1) or near; capped at 0 so that it stays finite (and the
    # unused branch autodiff-safe) where p > q.
    e = jnp.where(near, nx.expm1_near(r_near), jnp.minimum(ex, 1.0) - 1.0)
    term_q = (q * e) * e
    dp_q = 2.0 * p * e
    # w = q / p where p > q (0 where both underflow); p / q, also finite, where it is unused.
    w = _small_over_big(p, q)
    closed = near | ~pos
    term = jnp.where(closed, term_q, ex * jnp.square(1.0 - w))
    dp = jnp.where(closed, dp_q, 2.0 * (ex - p))
    dq = jnp.where(closed, term_q - dp_q, jnp.where(lq == -jnp.inf, q, q - ex))  # q = 0: 0
    return DivergenceTerms(term, dp, dq)


def _neyman_terms(lp, lq, p, q, r) -> DivergenceTerms:
    """Neyman: ``D(P || Q)`` is Pearson's ``D(Q || P)``, so its rule with the roles swapped."""
    term, dq, dp = _pearson_terms(lq, lp, q, p, -r)
    return DivergenceTerms(term, dp, dq)


def _skew_reverse_kl_terms(g, lp, lq, p, q, r) -> DivergenceTerms:
    """Skew reverse KL, ``f(u) = -log m``, ``m = lam + (1 - lam) u``, normalised:

        term = (1 - lam)(p - q) - q log m
        dp   = (1 - lam)^2 p K            K = (u - 1) / m = (p - q) / (lam q + (1 - lam) p)
        dq   = lam (1 - lam) q K - q log m   (= term - dp)

    all from ``E = expm1(-|r|)`` in ``[-1, 0]``, never overflowing: for ``r <= 0``, ``u = 1 + E``,
    ``m = 1 + (1 - lam) E``; for ``r > 0``, ``1/u = 1 + E``, ``m = u (1 + lam E)``. So with
    ``c = 1 - lam`` (``r <= 0``) or ``lam`` (``r > 0``) and ``D = 1 + c E >= min(lam, 1 - lam)``:
    ``log m = max(r, 0) + log1p(c E)`` and ``K = E / D`` (``r <= 0``) or ``-E / D`` (``r > 0``),
    neither of which cancels. ``E`` is ``min(p, q) / max(p, q) - 1`` for ``|r| >= R`` (a division
    instead of an ``expm1``) and its Taylor series below (:func:`_one_minus_exp_neg`). Near
    ``p = q`` the term (a difference of ``O(r)`` quantities) is ``q phi(r)``
    from the generator's series and ``dq = term - dp`` (``dp ~ r``, ``term ~ r^2``). One
    transcendental per class (``log1p``), against the generic rule's evaluation of ``f`` and its
    dual. Zero-safe: ``q = 0 < p`` gives ``((1 - lam) p, (1 - lam) p, 0)``, ``p = 0 < q`` gives
    ``(-q log lam - (1 - lam) q, 0, term)``, ``p = q = 0`` (``r = 0``) zeros. ``0 < lam < 1``, static.
    """
    lam = g.lam
    near, r_near = _near(r)
    e = -_one_minus_exp_neg(r, p, q)
    pos = r > 0
    ce = jnp.where(pos, lam * e, (1.0 - lam) * e)
    k = jnp.where(pos, -e, e) / (1.0 + ce)
    # q log m, 0 where q = 0 < p (log m = inf there, finite wherever q > 0)
    q_log_m = q * jnp.minimum(jnp.maximum(r, 0.0) + jnp.log1p(ce), jnp.finfo(p.dtype).max)
    dp = (1.0 - lam) ** 2 * p * k
    phi = q * gen.near_one(g, r_near)
    term = jnp.where(near, phi, (1.0 - lam) * (p - q) - q_log_m)
    dq = jnp.where(near, phi - dp, lam * (1.0 - lam) * q * k - q_log_m)
    return DivergenceTerms(term, dp, dq)


def _skew_kl_terms(g, lp, lq, p, q, r) -> DivergenceTerms:
    """Skew KL, ``KL(P || lam P + (1 - lam) Q)``: skew reverse KL with the roles swapped."""
    term, dq, dp = _skew_reverse_kl_terms(g.dual, lq, lp, q, p, -r)
    return DivergenceTerms(term, dp, dq)


_KL, _JS = gen.KL(), gen.JS()


def _log_abs_expm1(x):
    """``log |expm1(x)|`` without overflow for large ``x`` (``-inf`` at 0)."""
    pos = x > 0
    return jnp.where(
        pos,
        x + jnp.log(-jnp.expm1(-jnp.where(pos, x, 1.0))),
        jnp.log(-jnp.expm1(jnp.where(pos, -1.0, x))),
    )


def _power_terms(a: float, lp, lq, p, q, r) -> DivergenceTerms:
    """Alpha-family terms for ``a < 0`` or ``a > 1``: the generic rule, plus log-space terms
    where the ratio is extreme.

    The log-space branch only runs (``lax.cond``) when some class of the block has
    ``|log(p/q)|`` beyond the threshold, so ordinary inputs pay for one rule, not two.
    """
    far = jnp.abs(r) > min(20.0, 40.0 / max(abs(a), abs(a - 1.0)))
    return jax.lax.cond(
        jnp.any(far),
        lambda: _power_terms_far(a, lp, lq, p, q, r, far),
        lambda: _generic_terms(gen.Alpha(a), lp, lq, p, q, r),
    )


def _power_terms_far(a: float, lp, lq, p, q, r, far) -> DivergenceTerms:
    """Alpha-divergence terms (Pearson = 2 alpha(2), Neyman = 2 alpha(-1)) exact at extreme ratios.

    The generic rule multiplies ``q`` by ``f'(v)``, which for power generators overflows long
    before the product does (``q / v^2 = p^2 / q`` is finite at ``p/q = e^50`` in float32, ``1/v^2``
    is not). Where ``|log(p/q)|`` exceeds a threshold the terms are formed in log space instead:
    ``q u^a = exp(a log p + (1 - a) log q)``, ``p f'(u) = p expm1((a - 1) r) / (a - 1)`` with
    ``r = log(p/q)``; below it (where those forms would cancel) the generic rule is exact.
    """
    generic = _generic_terms(gen.Alpha(a), lp, lq, p, q, r)
    log_q_ua = jnp.where(lp == -jnp.inf, -jnp.inf, a * lp) + jnp.where(
        lq == -jnp.inf, -jnp.inf, (1.0 - a) * lq
    )
    if a < 0:  # p = 0 < q: q u^a = +inf; q = 0 < p: 0
        log_q_ua = jnp.where(lp == -jnp.inf, jnp.inf, jnp.where(lq == -jnp.inf, -jnp.inf, log_q_ua))
    elif a > 1:  # q = 0 < p: +inf
        log_q_ua = jnp.where(lq == -jnp.inf, jnp.inf, log_q_ua)
    term = (jnp.exp(log_q_ua) - q - a * (p - q)) / (a * (a - 1.0))
    x = (a - 1.0) * jnp.where(far, r, 1.0)
    dp = jnp.where(lp == -jnp.inf, 0.0, jnp.sign(x) * jnp.exp(lp + _log_abs_expm1(x)) / (a - 1.0))
    return DivergenceTerms(
        jnp.where(far, term, generic.term),
        jnp.where(far, dp, generic.dp),
        jnp.where(far, jnp.where(lq == -jnp.inf, 0.0, term - dp), generic.dq),  # q = 0: exact 0
    )


def _fast_path(g: gen.Generator):
    """Closed-form per-class terms for generators that have them, else ``None``."""
    kind = type(g)
    if kind is gen.KL:
        return _kl_terms
    if kind is gen.ReverseKL:
        return _reverse_kl_terms
    if kind is gen.JS:
        return _js_terms
    if kind is gen.SquaredHellinger:
        return _squared_hellinger_terms
    if kind is gen.TotalVariation:
        return _total_variation_terms
    if kind is gen.Pearson:
        return _pearson_terms
    if kind is gen.Neyman:
        return _neyman_terms
    if kind in (gen.SkewKL, gen.SkewReverseKL) and not g.traced:
        if g.lam == 0:
            return _kl_terms if kind is gen.SkewKL else _reverse_kl_terms
        if gen._near_one_series(g) is not None:  # smooth at 1 for every lam < 1; checked anyway
            rule = _skew_kl_terms if kind is gen.SkewKL else _skew_reverse_kl_terms
            return functools.partial(rule, g)
    # Alpha outside [0, 1]: the generic rule's w^a or w^(1 - a) (w = min/max <= 1) overflows at
    # |log(p/q)| > 88 / |a| or 88 / |a - 1| in float32 while the term may not: log-space terms
    # there. Inside [0, 1] it never overflows, and near a = 0 or 1 the power form would cancel
    # (and the overflow is far out): the generic rule is exact there on its own.
    if kind is gen.Alpha and not g.traced and (g.alpha < -0.05 or g.alpha > 1.05):
        return functools.partial(_power_terms, g.alpha)
    return None


# Rules exact at classes absent from both distributions by themselves (zero products, r = 0).
_ZERO_SAFE_RULES = (
    _kl_terms,
    _reverse_kl_terms,
    _js_terms,
    _squared_hellinger_terms,
    _total_variation_terms,
    _pearson_terms,
    _neyman_terms,
    _skew_kl_terms,
    _skew_reverse_kl_terms,
)


def divergence_terms(
    g: gen.Generator,
    log_p: jax.Array,
    log_q: jax.Array,
    p: jax.Array | None = None,
    q: jax.Array | None = None,
    log_ratio: jax.Array | None = None,
) -> DivergenceTerms:
    """Per-class terms of ``D_f`` for normalised log-probabilities (see :class:`DivergenceTerms`).

    ``p = exp(log_p)`` and ``q = exp(log_q)`` may be passed when already at hand (a softmax gives
    both from one ``exp``), saving two transcendentals per class. ``log_ratio`` is ``log(p/q)``
    (default ``log_p - log_q``); from logits, :func:`fdiv._numerics.log_softmax_pair` forms it
    without the cancellation of that difference (what :func:`value_and_logit_grads` passes).

    Classes absent from both distributions: the closed-form rules (``_ZERO_SAFE_RULES``) give exact
    zeros there by themselves (zero products, ``r = 0``); for the others they are handled
    here, once: the rule sees them as ``p = q = 1`` (a harmless finite point) and their terms are
    set to exactly 0 after. (Masking the closed-form rules too would cost them ~0.5 GB of extra
    working memory at [2048, 32000], measured with benchmarks/categorical.py.)
    """
    p = jnp.exp(log_p) if p is None else p
    q = jnp.exp(log_q) if q is None else q
    both = (log_p == -jnp.inf) & (log_q == -jnp.inf)
    if log_ratio is None:
        log_ratio = jnp.where(both, 0.0, log_p) - jnp.where(both, 0.0, log_q)
    log_ratio = jnp.where(both, 0.0, log_ratio)
    fast = _fast_path(g)
    if getattr(fast, "func", fast) in _ZERO_SAFE_RULES:
        return fast(log_p, log_q, p, q, log_ratio)
    lp, lq = jnp.where(both, 0.0, log_p), jnp.where(both, 0.0, log_q)
    p, q = jnp.where(both, 1.0, p), jnp.where(both, 1.0, q)
    rule = fast if fast is not None else functools.partial(_generic_terms, g)
    terms = rule(lp, lq, p, q, log_ratio)
    return DivergenceTerms(*(jnp.where(both, 0.0, t) for t in terms))


def _sum_terms(term):
    # Each term is >= 0 exactly: drop rounding (NaN stays NaN). A where, not jnp.maximum: XLA's CPU
    # reduction would take maximum's zero operand as one more [rows, V] buffer.
    return jnp.sum(jnp.where(term < 0, 0.0, term), axis=-1)


def value_and_logit_grads(g, p_logits, q_logits, *, need_p=True, need_q=True):
    """``D_f`` per row and its gradients w.r.t. both logits (``None`` where not needed), ``[..., V]``.

    The one rule behind :func:`divergence` and the fused kernels: one ``exp`` per logit gives both
    log-probabilities and probabilities, the per-class terms give the value, and the softmax
    Jacobian gives ``dD/dx_p = dp - p sum(dp)``, ``dD/dx_q = dq - q sum(dq)``.
    """
    lp, p, lq, q, log_ratio, empty = nx.log_softmax_pair(p_logits, q_logits)
    term, dp, dq = divergence_terms(g, lp, lq, p, q, log_ratio)
    # A row whose logits are all -inf is no distribution: NaN, as jax.nn.log_softmax gives. Its
    # gradient is 0 so that a caller who masks such rows out does not get NaN gradients.

    def logit_grad(d, prob):
        return jnp.where(empty, 0.0, d - prob * jnp.sum(d, axis=-1, keepdims=True))

    grad_p = logit_grad(dp, p) if need_p else None
    grad_q = logit_grad(dq, q) if need_q else None
    return jnp.where(empty[..., 0], jnp.nan, _sum_terms(term)), grad_p, grad_q


# ------------------------------------------------------------------------------------------------
# Chunks of rows.
# ------------------------------------------------------------------------------------------------


def default_chunk_rows(vocab: int, target_elements: int = 1 << 19) -> int:
    """Rows per chunk so one ``[chunk, V]`` float32 intermediate is about 2 MiB (measured on CPU:
    halving it from 4 MiB halves the working memory at equal or better speed)."""
    return max(1, target_elements // max(vocab, 1))


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _dense_chunk(g, p_chunk, q_chunk, inv_tau, need_p, need_q):
    """Per-row values and (optionally) logit gradients for dense logits ``[C, V]`` (float32)."""
    value, grad_p, grad_q = value_and_logit_grads(
        g, p_chunk * inv_tau, q_chunk * inv_tau, need_p=need_p, need_q=need_q
    )
    grad_p = grad_p * inv_tau if need_p else None
    grad_q = grad_q * inv_tau if need_q else None
    return value, grad_p, grad_q


def _chunk_loop(n_rows, chunk, body, init):
    """Run ``body(start, is_new_row_mask, carry)`` over row chunks covering ``[0, n_rows)``.

    The last chunk starts at ``n_rows - chunk`` and may overlap its predecessor; ``is_new`` marks
    the rows it has not seen before, for accumulations that must not count a row twice.
    """
    n_chunks = -(-n_rows // chunk)
    if n_chunks == 1:  # no loop to compile: small inputs stay as cheap as a plain composition
        return body(0, jnp.ones((chunk,), bool), init)

    def step(i, carry):
        nominal = i * chunk
        start = jnp.minimum(nominal, n_rows - chunk)
        is_new = (start + jnp.arange(chunk)) >= nominal
        return body(start, is_new, carry)

    return jax.lax.fori_loop(0, n_chunks, step, init)


def _rows(x, start, chunk):
    return jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0)


def _put_rows(buf, rows, start):
    return jax.lax.dynamic_update_slice_in_dim(buf, rows.astype(buf.dtype), start, axis=0)


# ------------------------------------------------------------------------------------------------
# Hyperparameters: static where they are Python numbers, traced arguments where they are arrays.
# ------------------------------------------------------------------------------------------------


class Static(NamedTuple):
    """The hashable half of a (generator, 1/tau) configuration: its tree and its Python numbers."""

    treedef: object
    leaves: tuple


def split_config(g: gen.Generator, inv_tau) -> tuple[Static, tuple]:
    """``(static, dynamic)`` for ``(g, inv_tau)``: Python-number leaves stay static (jit keys, trace-time
    branches, the near-one series), arrays (tracers under jit / vmap / grad) become ``dynamic``, a
    primal argument of the ``custom_jvp`` kernels, so a loss can be differentiated w.r.t. them."""
    leaves, treedef = jax.tree.flatten((g, inv_tau))
    static = tuple(x if nx.is_static(x) else None for x in leaves)
    dynamic = tuple(None if nx.is_static(x) else x for x in leaves)
    return Static(treedef, static), dynamic


def merge_config(static: Static, dynamic: tuple):
    """``(g, inv_tau)`` from :func:`split_config`'s halves."""
    leaves = [d if s is None else s for s, d in zip(static.leaves, dynamic, strict=True)]
    return jax.tree.unflatten(static.treedef, leaves)


def hyperparameter_tangent(values_fn, dynamic, t_dynamic):
    """Forward-mode derivative of ``values_fn(dynamic)`` along ``t_dynamic``, or ``None`` when no
    traced hyperparameter is being differentiated (symbolic zeros only: the usual case)."""
    tangents = jax.tree.leaves(t_dynamic, is_leaf=_is_zero)
    if all(_is_zero(t) for t in tangents):
        return None
    filled = jax.tree.map(
        lambda d, t: jnp.zeros_like(d) if _is_zero(t) else t, dynamic, t_dynamic, is_leaf=_is_zero
    )
    return jax.jvp(values_fn, (dynamic,), (filled,))[1]


# jit with static configuration: eager callers hit a compile cache instead of re-tracing the
# loop and its conds on every call.
@functools.partial(jax.jit, static_argnums=(0, 1, 6, 7))
def _dense_forward(static, chunk, p, q, row_mask, dynamic, need_p, need_q):
    g, inv_tau = merge_config(static, dynamic)
    n, _ = q.shape
    chunk = min(chunk, n)
    dtype = nx.compute_dtype(p, q)  # float32 for (b)float16, float64 stays float64
    init = (
        jnp.zeros((n,), dtype),
        jnp.zeros(p.shape, p.dtype) if need_p else None,
        jnp.zeros(q.shape, q.dtype) if need_q else None,
    )

    def body(start, _, carry):
        values, grad_p, grad_q = carry
        mask = _rows(row_mask, start, chunk)
        v, gp, gq = _dense_chunk(
            g,
            _rows(p, start, chunk).astype(dtype),
            _rows(q, start, chunk).astype(dtype),
            inv_tau,
            need_p,
            need_q,
        )
        values = _put_rows(values, jnp.where(mask, v, 0.0), start)
        if need_p:
            grad_p = _put_rows(grad_p, jnp.where(mask[:, None], gp, 0.0), start)
        if need_q:
            grad_q = _put_rows(grad_q, jnp.where(mask[:, None], gq, 0.0), start)
        return values, grad_p, grad_q

    return _chunk_loop(n, chunk, body, init)


def fused_dense(g, chunk, inv_tau, p, q, row_mask):
    """Per-row ``D_f`` of dense logits ``[N, V]`` scaled by ``inv_tau``, chunked, one custom_jvp.

    ``g`` and ``inv_tau`` may be traced (see :func:`split_config`)."""
    static, dynamic = split_config(g, inv_tau)
    return _fused_dense(static, chunk, p, q, row_mask, dynamic)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _fused_dense(static, chunk, p, q, row_mask, dynamic):
    return _dense_forward(static, chunk, p, q, row_mask, dynamic, False, False)[0]


def _fused_dense_jvp(static, chunk, primals, tangents):
    p, q, row_mask, dynamic = primals
    tp, tq, _, t_dynamic = tangents
    need_p, need_q = not _is_zero(tp), not _is_zero(tq)
    values, grad_p, grad_q = _dense_forward(static, chunk, p, q, row_mask, dynamic, need_p, need_q)
    tangent = jnp.zeros_like(values)
    if need_p:
        tangent = tangent + jnp.sum(grad_p.astype(values.dtype) * tp.astype(values.dtype), axis=-1)
    if need_q:
        tangent = tangent + jnp.sum(grad_q.astype(values.dtype) * tq.astype(values.dtype), axis=-1)
    t_hyper = hyperparameter_tangent(
        lambda d: _dense_forward(static, chunk, p, q, row_mask, d, False, False)[0],
        dynamic,
        t_dynamic,
    )
    if t_hyper is not None:
        tangent = tangent + t_hyper
    return values, tangent


_fused_dense.defjvp(_fused_dense_jvp, symbolic_zeros=True)
