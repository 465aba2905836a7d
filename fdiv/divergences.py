r"""f-divergences between categoricals given logits, Gaussians, and Monte Carlo / variational estimators.

Argument order is always ``(P, Q)``: ``D_f(P || Q) = sum_x q(x) f(p(x)/q(x))``. ``divergence("kl",
p, q)`` is the forward KL ``KL(P || Q)``; this is *not* torch's ``kl_div(input, target)`` order.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import generators as gen

__all__ = [
    "divergence",
    "divergence_terms",
    "gaussian_kl_diag",
    "gaussian_kl",
    "monte_carlo_divergence",
    "importance_weighted_divergence",
    "variational_lower_bound",
]


class DivergenceTerms(NamedTuple):
    """Per-class pieces of ``D = sum_k term_k`` for log-probabilities ``lp``, ``lq`` ([..., V]).

    ``term = q f_n(p/q) >= 0`` (``f_n`` the normalised generator), ``dp = p * d term/dp`` and
    ``dq = q * d term/dq`` with ``p``, ``q`` treated as free variables. The logit gradients follow
    through the softmax Jacobian: ``dD/dx_p = dp - p sum(dp)``, ``dD/dx_q = dq - q sum(dq)``.
    """

    term: jax.Array
    dp: jax.Array
    dq: jax.Array


def _generic_terms(g: gen.Generator, lp, lq, p, q) -> DivergenceTerms:
    """Any generator, evaluating ``f`` and its dual only at ratios <= 1 (no overflow).

    Where ``p <= q`` the term is ``q f(p/q)``; where ``p > q`` it is ``p f_dual(q/p)`` with
    ``f_dual(v) = v f(1/v)`` (classes absent from both: see :func:`divergence_terms`); ``q = 0 < p`` gives
    ``p f'(inf)`` (``+inf`` for unbounded ``f``), ``p = 0 < q`` gives ``q f(0)``.
    """
    below = lp <= lq
    log_u = jnp.where(below, lp - lq, 0.0)  # <= 0, -inf where p = 0 < q
    log_v = jnp.where(below, 0.0, lq - lp)  # <= 0, -inf where q = 0 < p
    dual = g.dual
    if dual == g:
        # Self-dual f (JS, Hellinger, TV, Jeffreys, triangular ...): f_dual = f, so one evaluation
        # at log(min(p, q) / max(p, q)) = log_u + log_v serves both branches.
        log_w = log_u + log_v
        f_w, fp_w = g._f_normalized(log_w), g._f_prime_normalized(log_w)
        big, small = jnp.where(below, q, p), jnp.where(below, p, q)
        term = nx.mul0(big, f_w)
        d_small = nx.mul0(small, fp_w)  # small * d term / d small
        d_big = term - d_small
        dp, dq = jnp.where(below, d_small, d_big), jnp.where(below, d_big, d_small)
        return DivergenceTerms(term, dp, dq)
    term_a = nx.mul0(q, g._f_normalized(log_u))
    dp_a = nx.mul0(p, g._f_prime_normalized(log_u))
    term_b = nx.mul0(p, dual._f_normalized(log_v))
    dq_b = nx.mul0(q, dual._f_prime_normalized(log_v))
    term = jnp.where(below, term_a, term_b)
    dp = jnp.where(below, dp_a, term_b - dq_b)  # p d/dp [p f_dual(q/p)] = p f_dual - q f_dual'
    dq = jnp.where(below, term_a - dp_a, dq_b)  # q d/dq [q f(p/q)] = q f - p f'
    return DivergenceTerms(term, dp, dq)


def _kl_terms(lp, lq, p, q) -> DivergenceTerms:
    """KL: ``term = p log(p/q) - p + q``, ``dp = p log(p/q)``, ``dq = q - p``."""
    log_ratio = jnp.where(lp == -jnp.inf, 0.0, lp - lq)  # +inf where q = 0 < p: KL = inf
    dp = nx.mul0(p, log_ratio)
    return DivergenceTerms(dp - p + q, dp, q - p)


def _reverse_kl_terms(lp, lq, p, q) -> DivergenceTerms:
    term, dq, dp = _kl_terms(lq, lp, q, p)
    return DivergenceTerms(term, dp, dq)


def _js_terms(lp, lq, p, q) -> DivergenceTerms:
    """JS fast path: ``dp = p log(p/m)/2``, ``dq = q log(q/m)/2``, ``term = dp + dq``, ``m = (p+q)/2``.

    ``log m`` is one ``log`` of the probability-space mixture (not a ``logaddexp``), floored by
    ``max(log p, log q) - log 2``, which ``m`` always exceeds, so an ``m`` lost to underflow never
    gives an infinite ``log(p/m)``.
    """
    lm = jnp.maximum(jnp.log(0.5 * (p + q)), jnp.maximum(lp, lq) - math.log(2.0))
    dp = 0.5 * nx.mul0(p, lp - lm)
    dq = 0.5 * nx.mul0(q, lq - lm)
    return DivergenceTerms(dp + dq, dp, dq)


def _log_abs_expm1(x):
    """``log |expm1(x)|`` without overflow for large ``x`` (``-inf`` at 0)."""
    pos = x > 0
    return jnp.where(
        pos,
        x + jnp.log(-jnp.expm1(-jnp.where(pos, x, 1.0))),
        jnp.log(-jnp.expm1(jnp.where(pos, -1.0, x))),
    )


def _power_terms(a: float, lp, lq, p, q) -> DivergenceTerms:
    """Alpha-divergence terms (Pearson = 2 alpha(2), Neyman = 2 alpha(-1)) exact at extreme ratios.

    The generic rule multiplies ``q`` by ``f'(v)``, which for power generators overflows long
    before the product does (``q / v^2 = p^2 / q`` is finite at ``p/q = e^50`` in float32, ``1/v^2``
    is not). Where ``|log(p/q)|`` exceeds a threshold the terms are formed in log space instead:
    ``q u^a = exp(a log p + (1 - a) log q)``, ``p f'(u) = p expm1((a - 1) d) / (a - 1)`` with
    ``d = log(p/q)``; below it (where those forms would cancel) the generic rule is exact.
    """
    generic = _generic_terms(gen.Alpha(a), lp, lq, p, q)
    d = lp - lq
    far = jnp.abs(d) > min(20.0, 40.0 / max(abs(a), abs(a - 1.0)))
    log_q_ua = jnp.where(lp == -jnp.inf, -jnp.inf, a * lp) + jnp.where(
        lq == -jnp.inf, -jnp.inf, (1.0 - a) * lq
    )
    if a < 0:  # p = 0 < q: q u^a = +inf; q = 0 < p: 0
        log_q_ua = jnp.where(lp == -jnp.inf, jnp.inf, jnp.where(lq == -jnp.inf, -jnp.inf, log_q_ua))
    elif a > 1:  # q = 0 < p: +inf
        log_q_ua = jnp.where(lq == -jnp.inf, jnp.inf, log_q_ua)
    term = (jnp.exp(log_q_ua) - q - a * (p - q)) / (a * (a - 1.0))
    x = (a - 1.0) * jnp.where(far, d, 1.0)
    dp = jnp.where(lp == -jnp.inf, 0.0, jnp.sign(x) * jnp.exp(lp + _log_abs_expm1(x)) / (a - 1.0))
    return DivergenceTerms(
        jnp.where(far, term, generic.term),
        jnp.where(far, dp, generic.dp),
        jnp.where(far, jnp.where(lq == -jnp.inf, 0.0, term - dp), generic.dq),  # q = 0: exact 0
    )


def _scaled(scale: float, terms: DivergenceTerms) -> DivergenceTerms:
    return DivergenceTerms(*(scale * t for t in terms))


def _fast_path(g: gen.Generator):
    """Closed-form per-class terms for generators that have them, else ``None``."""
    kind = type(g)
    if kind is gen.KL:
        return _kl_terms
    if kind is gen.ReverseKL:
        return _reverse_kl_terms
    if kind is gen.JS:
        return _js_terms
    if kind is gen.Pearson:
        return lambda *args: _scaled(2.0, _power_terms(2.0, *args))
    if kind is gen.Neyman:
        return lambda *args: _scaled(2.0, _power_terms(-1.0, *args))
    # Near a = 0 or 1 the power form cancels, and the generic rule only overflows at
    # |log(p/q)| > 88 / |a - 1| or 88 / |a|: keep the generic rule there.
    if kind is gen.Alpha and min(abs(g.alpha), abs(1.0 - g.alpha)) >= 0.05:
        return functools.partial(_power_terms, g.alpha)
    return None


_ZERO_SAFE_RULES = (_kl_terms, _reverse_kl_terms, _js_terms)


def divergence_terms(
    g: gen.Generator,
    log_p: jax.Array,
    log_q: jax.Array,
    p: jax.Array | None = None,
    q: jax.Array | None = None,
) -> DivergenceTerms:
    """Per-class terms of ``D_f`` for normalised log-probabilities (see :class:`DivergenceTerms`).

    ``p = exp(log_p)`` and ``q = exp(log_q)`` may be passed when already at hand (a softmax gives
    both from one ``exp``), saving two transcendentals per class.

    Classes absent from both distributions: the KL and JS rules give exact zeros there by
    themselves (every product is ``mul0`` with a zero probability); for the others they are handled
    here, once: the rule sees them as ``p = q = 1`` (a harmless finite point) and their terms are
    set to exactly 0 after. (Masking the closed-form rules too would cost them ~0.5 GB of extra
    working memory at [2048, 32000], measured with benchmarks/categorical.py.)
    """
    p = jnp.exp(log_p) if p is None else p
    q = jnp.exp(log_q) if q is None else q
    fast = _fast_path(g)
    if fast in _ZERO_SAFE_RULES:
        return fast(log_p, log_q, p, q)
    both = (log_p == -jnp.inf) & (log_q == -jnp.inf)
    lp, lq = jnp.where(both, 0.0, log_p), jnp.where(both, 0.0, log_q)
    p, q = jnp.where(both, 1.0, p), jnp.where(both, 1.0, q)
    rule = fast if fast is not None else functools.partial(_generic_terms, g)
    terms = rule(lp, lq, p, q)
    return DivergenceTerms(*(jnp.where(both, 0.0, t) for t in terms))


def _sum_terms(term):
    return jnp.sum(jnp.maximum(term, 0.0), axis=-1)  # each term is >= 0 exactly; drop rounding


def value_and_logit_grads(g, p_logits, q_logits, *, need_p=True, need_q=True):
    """``D_f`` per row and its gradients w.r.t. both logits (``None`` where not needed), ``[..., V]``.

    The one rule behind :func:`divergence` and the fused kernels: one ``exp`` per logit gives both
    log-probabilities and probabilities, the per-class terms give the value, and the softmax
    Jacobian gives ``dD/dx_p = dp - p sum(dp)``, ``dD/dx_q = dq - q sum(dq)``.
    """
    lp, p = nx.log_softmax_and_softmax(p_logits)
    lq, q = nx.log_softmax_and_softmax(q_logits)
    term, dp, dq = divergence_terms(g, lp, lq, p, q)
    grad_p = dp - p * jnp.sum(dp, axis=-1, keepdims=True) if need_p else None
    grad_q = dq - q * jnp.sum(dq, axis=-1, keepdims=True) if need_q else None
    return _sum_terms(term), grad_p, grad_q


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _categorical(g, p_logits, q_logits):
    return value_and_logit_grads(g, p_logits, q_logits, need_p=False, need_q=False)[0]


@_categorical.defjvp
def _categorical_jvp(g, primals, tangents):
    # Value and both logit gradients in one pass: the gradient is a closed form of quantities the
    # value already needs (softmaxes, f and f' at each ratio), so reverse mode stores only the two
    # [..., V] gradients instead of every intermediate of an autodiffed composition. Being a JVP
    # rule (not a VJP), forward mode, jax.hessian and jvp-of-grad keep working.
    p_logits, q_logits = primals
    tp, tq = tangents
    value, grad_p, grad_q = value_and_logit_grads(g, p_logits, q_logits)
    tangent = jnp.sum(grad_p * tp, axis=-1) + jnp.sum(grad_q * tq, axis=-1)
    return value, tangent


def divergence(
    name_or_generator: str | gen.Generator,
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""``D_f(P || Q) = sum_k q_k f(p_k / q_k)`` between categoricals given by logits, per example.

    ``P = softmax(p_logits)`` and ``Q = softmax(q_logits)`` along ``axis``. Zero-probability
    classes (``-inf`` logits) are exact: a class absent from both contributes 0, a class with
    ``p = 0 < q`` contributes ``q f(0)``, one with ``q = 0 < p`` contributes ``p f'(inf)``, which
    is ``+inf`` for unbounded generators (KL, Pearson, ...) and finite for bounded ones (JS, TV,
    squared Hellinger, triangular: e.g. JS = log 2 at disjoint supports). Gradients at ``-inf``
    logits are exactly 0 wherever the value is finite. Each term ``q f_n(p/q)`` with
    ``f_n(u) = f(u) - f'(1)(u - 1) >= 0`` is non-negative, so the result is never below 0.
    bfloat16 / float16 inputs are computed in float32 and returned in the input dtype.
    Temperature is the caller's: pass ``logits / tau``.

    Value and gradient come from one fused pass (a ``custom_jvp``); KL, reverse KL and JS use
    closed forms (``sum p log(p/q)``; ``sum [p log(p/m) + q log(q/m)] / 2``), every other
    generator a generic rule that evaluates ``f`` and its dual only at ratios ``<= 1``.

    Args:
      name_or_generator: a registry name (``"kl"``, ``"js"``, ... see
        ``fdiv.generators.names()``) or a :class:`fdiv.generators.Generator`.
      p_logits: logits of ``P`` (the target / teacher), ``[..., V]``.
      q_logits: logits of ``Q`` (the model / student), broadcastable to ``p_logits``.
      axis: the class axis.
      where: optional boolean mask broadcastable to the logits: ``False`` classes are removed from
        *both* distributions before normalising (e.g. invalid actions, padding in the vocabulary).
        To drop whole examples (padding tokens), reduce the per-example output with your own mask.

    Returns:
      ``[...]``: the divergence per example (the class axis removed), in the input dtype.

    References:
      Csiszar (1967); Ali and Silvey (1966); Liese and Vajda, "On divergences and informations in
      statistics and information theory" (2006).
    """
    g = gen.resolve(name_or_generator)
    p_logits = jnp.asarray(p_logits)
    q_logits = jnp.asarray(q_logits)
    try:
        shape = jnp.broadcast_shapes(p_logits.shape, q_logits.shape)
    except ValueError as err:
        raise ValueError(
            f"divergence: p_logits {p_logits.shape} and q_logits {q_logits.shape} do not broadcast"
        ) from err
    if not shape:
        raise ValueError("divergence: logits need a class axis; got scalars")
    out_dtype = nx.output_dtype(p_logits, q_logits)
    dtype = nx.compute_dtype(p_logits, q_logits)
    p_logits = jnp.broadcast_to(p_logits.astype(dtype), shape)
    q_logits = jnp.broadcast_to(q_logits.astype(dtype), shape)
    if where is not None:
        mask = jnp.broadcast_to(jnp.asarray(where, bool), shape)
        p_logits = jnp.where(mask, p_logits, -jnp.inf)
        q_logits = jnp.where(mask, q_logits, -jnp.inf)
    p_logits = jnp.moveaxis(p_logits, axis, -1)
    q_logits = jnp.moveaxis(q_logits, axis, -1)
    return _categorical(g, p_logits, q_logits).astype(out_dtype)


# ------------------------------------------------------------------------------------------------
# Gaussians.
# ------------------------------------------------------------------------------------------------


def gaussian_kl_diag(
    mean_p: ArrayLike, log_var_p: ArrayLike, mean_q: ArrayLike, log_var_q: ArrayLike
) -> jax.Array:
    r"""``KL(N(mu_p, diag e^{s_p}) || N(mu_q, diag e^{s_q}))`` over the last axis.

    ``= 1/2 sum_i [expm1(s_p - s_q) - (s_p - s_q) + (mu_p - mu_q)^2 e^{-s_q}]``, written with
    ``expm1(d) - d >= 0`` so equal variances give an exact 0 and the sum cannot go negative.

    Args:
      mean_p, log_var_p, mean_q, log_var_q: ``[..., d]`` means and log-variances (broadcastable).

    Returns:
      ``[...]`` the KL per example.
    """
    mean_p, log_var_p, mean_q, log_var_q = (
        jnp.asarray(a) for a in (mean_p, log_var_p, mean_q, log_var_q)
    )
    out_dtype = nx.output_dtype(mean_p, log_var_p, mean_q, log_var_q)
    dtype = nx.compute_dtype(mean_p, log_var_p, mean_q, log_var_q)
    mean_p, log_var_p, mean_q, log_var_q = (
        a.astype(dtype) for a in (mean_p, log_var_p, mean_q, log_var_q)
    )
    d = log_var_p - log_var_q
    per_dim = jnp.expm1(d) - d + jnp.square(mean_p - mean_q) * jnp.exp(-log_var_q)
    return (0.5 * jnp.sum(per_dim, axis=-1)).astype(out_dtype)


def gaussian_kl(
    mean_p: ArrayLike, cov_p: ArrayLike, mean_q: ArrayLike, cov_q: ArrayLike
) -> jax.Array:
    r"""``KL(N(mu_p, S_p) || N(mu_q, S_q))`` for full covariances, through Cholesky factors.

    ``= 1/2 [tr(S_q^-1 S_p) + (mu_q - mu_p)^T S_q^-1 (mu_q - mu_p) - d + log det S_q - log det S_p]``
    with ``S = L L^T``: ``tr = ||L_q^-1 L_p||_F^2``, the quadratic form ``||L_q^-1 (mu_q - mu_p)||^2``,
    ``log det S = 2 sum log diag L``.

    Args:
      mean_p, mean_q: ``[..., d]``.
      cov_p, cov_q: ``[..., d, d]`` symmetric positive definite.

    Returns:
      ``[...]`` the KL per example.
    """
    mean_p, cov_p, mean_q, cov_q = (jnp.asarray(a) for a in (mean_p, cov_p, mean_q, cov_q))
    dim = mean_p.shape[-1]
    if mean_q.shape[-1] != dim or any(c.shape[-2:] != (dim, dim) for c in (cov_p, cov_q)):
        raise ValueError(
            f"gaussian_kl: means must be [..., d] and covariances [..., d, d] with one d; got "
            f"{mean_p.shape}, {cov_p.shape}, {mean_q.shape}, {cov_q.shape}"
        )
    batch = jnp.broadcast_shapes(
        mean_p.shape[:-1], mean_q.shape[:-1], cov_p.shape[:-2], cov_q.shape[:-2]
    )
    out_dtype = nx.output_dtype(mean_p, cov_p, mean_q, cov_q)
    dtype = nx.compute_dtype(mean_p, cov_p, mean_q, cov_q)
    chol_p = jnp.broadcast_to(jnp.linalg.cholesky(cov_p.astype(dtype)), (*batch, dim, dim))
    chol_q = jnp.broadcast_to(jnp.linalg.cholesky(cov_q.astype(dtype)), (*batch, dim, dim))
    diff = jnp.broadcast_to((mean_q - mean_p).astype(dtype), (*batch, dim))
    solved = jax.scipy.linalg.solve_triangular(chol_q, chol_p, lower=True)
    maha = jax.scipy.linalg.solve_triangular(chol_q, diff[..., None], lower=True)[..., 0]
    trace = jnp.sum(jnp.square(solved), axis=(-2, -1))
    log_det_diff = 2.0 * jnp.sum(
        jnp.log(jnp.diagonal(chol_q, axis1=-2, axis2=-1))
        - jnp.log(jnp.diagonal(chol_p, axis1=-2, axis2=-1)),
        axis=-1,
    )
    kl = 0.5 * (trace + jnp.sum(jnp.square(maha), axis=-1) - dim + log_det_diff)
    return kl.astype(out_dtype)


# ------------------------------------------------------------------------------------------------
# Estimators from samples.
# ------------------------------------------------------------------------------------------------


def monte_carlo_divergence(
    name_or_generator: str | gen.Generator,
    log_ratio: ArrayLike,
    *,
    axis: int = -1,
    control_variate: bool = True,
) -> jax.Array:
    r"""Unbiased Monte Carlo ``D_f(P || Q) ~= mean_i f(u_i)``, ``u_i = p(x_i)/q(x_i)``, ``x_i ~ Q``.

    With ``control_variate=True`` the summand is ``f(u) - f'(1)(u - 1) >= 0``: still unbiased
    because ``E_Q[u] = 1``, never negative, and usually of lower variance (for reverse KL it is
    the ``(u - 1) - log u`` estimator). That needs *normalised* log densities; for unnormalised
    ones use :func:`importance_weighted_divergence` (self-normalised) instead.

    Args:
      name_or_generator: generator name or object.
      log_ratio: ``[..., n]`` values ``log p(x_i) - log q(x_i)`` at samples ``x_i ~ Q``.
      axis: the sample axis.
      control_variate: subtract ``f'(1)(u - 1)``.

    Returns:
      ``[...]`` the estimate.
    """
    g = gen.resolve(name_or_generator)
    log_ratio = jnp.asarray(log_ratio)
    out_dtype = nx.output_dtype(log_ratio)
    log_ratio = log_ratio.astype(nx.compute_dtype(log_ratio))
    values = g._f_normalized(log_ratio) if control_variate else g._f(log_ratio)
    return jnp.mean(values, axis=axis).astype(out_dtype)


def importance_weighted_divergence(
    name_or_generator: str | gen.Generator,
    log_p: ArrayLike,
    log_q: ArrayLike,
    log_proposal: ArrayLike,
    *,
    axis: int = -1,
    self_normalize: bool = True,
) -> jax.Array:
    r"""``D_f(P || Q)`` from samples ``x_i ~ pi`` of a proposal, by importance weighting.

    ``self_normalize=True`` (densities may be unnormalised): with weights
    ``w^p = softmax(log p - log pi)`` and ``w^q = softmax(log q - log pi)`` over the samples, the
    estimate ``sum_i w^q_i f(w^p_i / w^q_i)`` is exactly the categorical divergence between those
    weight vectors, so it inherits :func:`divergence`'s zero-safety and fused gradient. Consistent,
    biased at finite ``n``. ``self_normalize=False`` (normalised densities): the unbiased
    ``mean_i (q_i / pi_i) f(p_i / q_i)``.

    Args:
      name_or_generator: generator name or object.
      log_p, log_q, log_proposal: ``[..., n]`` log densities at the samples ``x_i ~ pi``.
      axis: the sample axis.
      self_normalize: see above.

    Returns:
      ``[...]`` the estimate.
    """
    g = gen.resolve(name_or_generator)
    log_p, log_q, log_proposal = (jnp.asarray(a) for a in (log_p, log_q, log_proposal))
    if self_normalize:
        return divergence(g, log_p - log_proposal, log_q - log_proposal, axis=axis)
    out_dtype = nx.output_dtype(log_p, log_q, log_proposal)
    dtype = nx.compute_dtype(log_p, log_q, log_proposal)
    lp = (log_p - log_proposal).astype(dtype)
    lq = (log_q - log_proposal).astype(dtype)
    # (q/pi) f(p/q) is the perspective of f at (p/pi, q/pi): the same zero-safe per-class terms.
    terms = divergence_terms(g, lp, lq).term
    return jnp.mean(terms, axis=axis).astype(out_dtype)


def variational_lower_bound(
    name_or_generator: str | gen.Generator,
    critic_on_p: ArrayLike,
    critic_on_q: ArrayLike,
    *,
    axis: int = -1,
) -> jax.Array:
    r"""Variational (f-GAN / NWJ) lower bound ``D_f(P || Q) >= E_P[T] - E_Q[f*(T)]``.

    The critic outputs ``v`` are read as log density-ratio estimates and mapped into the
    conjugate's domain by ``T = f'(e^v)``, so ``f*(T) = e^v f'(e^v) - f(e^v)`` in closed form. The
    bound is tight at ``v = log(p/q)``; maximise it over the critic to estimate ``D_f``.

    Args:
      name_or_generator: generator name or object.
      critic_on_p: ``[..., n]`` critic outputs ``v`` at samples of ``P``.
      critic_on_q: ``[..., m]`` critic outputs at samples of ``Q``.
      axis: the sample axis (of both).

    Returns:
      ``[...]`` the bound.
    """
    g = gen.resolve(name_or_generator)
    v_p, v_q = jnp.asarray(critic_on_p), jnp.asarray(critic_on_q)
    out_dtype = nx.output_dtype(v_p, v_q)
    dtype = nx.compute_dtype(v_p, v_q)
    v_p, v_q = v_p.astype(dtype), v_q.astype(dtype)
    t_p = g._f_prime(v_p)
    conj_q = nx.mul0(jnp.exp(v_q), g._f_prime(v_q)) - g._f(v_q)
    bound = jnp.mean(t_p, axis=axis) - jnp.mean(conj_q, axis=axis)
    return bound.astype(out_dtype)
