r"""f-divergences between categoricals given logits, Gaussians, and Monte Carlo / variational estimators.

Argument order is always ``(P, Q)``: ``D_f(P || Q) = sum_x q(x) f(p(x)/q(x))``. ``divergence("kl",
p, q)`` is the forward KL ``KL(P || Q)``; this is *not* torch's ``kl_div(input, target)`` order.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import generators as gen
from fdiv._core import DivergenceTerms, default_chunk_rows, divergence_terms, fused_dense

__all__ = [
    "DivergenceTerms",
    "divergence",
    "divergence_terms",
    "gaussian_kl_diag",
    "gaussian_kl",
    "monte_carlo_divergence",
    "importance_weighted_divergence",
    "variational_lower_bound",
]


def divergence(
    divergence: str | gen.Generator,
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
    bfloat16 / float16 inputs are computed and returned in float32 (the package's dtype rule).
    Temperature is the caller's: pass ``logits / tau``.

    Value and gradient come from one fused pass (a ``custom_jvp``); KL, reverse KL and JS use
    closed forms (``sum p log(p/q)``; ``sum [p log(p/m) + q log(q/m)] / 2``), every other
    generator a generic rule that evaluates ``f`` and its dual only at ratios ``<= 1``.

    Args:
      divergence: a registry name (``"kl"``, ``"js"``, ... see
        ``fdiv.generators.names()``) or a :class:`fdiv.generators.Generator`.
      p_logits: logits of ``P`` (the target / teacher), ``[..., V]``.
      q_logits: logits of ``Q`` (the model / student), broadcastable to ``p_logits``.
      axis: the class axis.
      where: optional boolean mask broadcastable to the logits: ``False`` classes are removed from
        *both* distributions before normalising (e.g. invalid actions, padding in the vocabulary).
        To drop whole examples (padding tokens), reduce the per-example output with your own mask.

    Returns:
      ``[...]``: the divergence per example (the class axis removed), in float32 (float64 for float64
      logits); NaN for
      a row where P or Q has no class at all (every logit ``-inf``, as ``jax.nn.log_softmax``), with
      gradient 0 there.

    Raises:
      TypeError: for complex logits. ValueError: for an empty class axis or shapes that do not
      broadcast.

    References:
      Csiszar (1967); Ali and Silvey (1966); Liese and Vajda, "On divergences and informations in
      statistics and information theory" (2006).
    """
    g = gen.resolve(divergence)
    p_logits = jnp.asarray(p_logits)
    q_logits = jnp.asarray(q_logits)
    nx.check_logits("divergence", p_logits, q_logits, axis=axis)
    try:
        shape = jnp.broadcast_shapes(p_logits.shape, q_logits.shape)
    except ValueError as err:
        raise ValueError(
            f"divergence: p_logits {p_logits.shape} and q_logits {q_logits.shape} do not broadcast"
        ) from err
    if not shape:
        raise ValueError("divergence: logits need a class axis; got scalars")
    out_dtype = nx.compute_dtype(p_logits, q_logits)
    dtype = nx.compute_dtype(p_logits, q_logits)
    p_logits = jnp.broadcast_to(p_logits.astype(dtype), shape)
    q_logits = jnp.broadcast_to(q_logits.astype(dtype), shape)
    if where is not None:
        mask = jnp.broadcast_to(jnp.asarray(where, bool), shape)
        p_logits = jnp.where(mask, p_logits, -jnp.inf)
        q_logits = jnp.where(mask, q_logits, -jnp.inf)
    p_logits = jnp.moveaxis(p_logits, axis, -1)
    q_logits = jnp.moveaxis(q_logits, axis, -1)
    batch, vocab = p_logits.shape[:-1], p_logits.shape[-1]
    if math.prod(batch) == 0:
        return jnp.zeros(batch, out_dtype)
    rows = (p_logits.reshape(-1, vocab), q_logits.reshape(-1, vocab))
    keep = jnp.ones(rows[0].shape[:1], bool)
    values = fused_dense(g, default_chunk_rows(vocab), 1.0, *rows, keep)
    return values.reshape(batch).astype(out_dtype)


# ------------------------------------------------------------------------------------------------
# Gaussians.
# ------------------------------------------------------------------------------------------------


_categorical = divergence  # for the functions below, whose generator argument shadows the name


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
    out_dtype = nx.compute_dtype(mean_p, log_var_p, mean_q, log_var_q)
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
    out_dtype = nx.compute_dtype(mean_p, cov_p, mean_q, cov_q)
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
    divergence: str | gen.Generator,
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
      divergence: generator name or object.
      log_ratio: ``[..., n]`` values ``log p(x_i) - log q(x_i)`` at samples ``x_i ~ Q``.
      axis: the sample axis.
      control_variate: subtract ``f'(1)(u - 1)``.

    Returns:
      ``[...]`` the estimate.
    """
    g = gen.resolve(divergence)
    log_ratio = jnp.asarray(log_ratio)
    out_dtype = nx.compute_dtype(log_ratio)
    log_ratio = log_ratio.astype(nx.compute_dtype(log_ratio))
    values = g._f_normalized(log_ratio) if control_variate else g._f(log_ratio)
    return jnp.mean(values, axis=axis).astype(out_dtype)


def importance_weighted_divergence(
    divergence: str | gen.Generator,
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
      divergence: generator name or object.
      log_p, log_q, log_proposal: ``[..., n]`` log densities at the samples ``x_i ~ pi``.
      axis: the sample axis.
      self_normalize: see above.

    Returns:
      ``[...]`` the estimate.
    """
    g = gen.resolve(divergence)
    log_p, log_q, log_proposal = (jnp.asarray(a) for a in (log_p, log_q, log_proposal))
    if self_normalize:
        return _categorical(g, log_p - log_proposal, log_q - log_proposal, axis=axis)
    out_dtype = nx.compute_dtype(log_p, log_q, log_proposal)
    dtype = nx.compute_dtype(log_p, log_q, log_proposal)
    lp = (log_p - log_proposal).astype(dtype)
    lq = (log_q - log_proposal).astype(dtype)
    # (q/pi) f(p/q) is the perspective of f at (p/pi, q/pi): the same zero-safe per-class terms.
    terms = divergence_terms(g, lp, lq).term
    return jnp.mean(terms, axis=axis).astype(out_dtype)


def variational_lower_bound(
    divergence: str | gen.Generator,
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
      divergence: generator name or object.
      critic_on_p: ``[..., n]`` critic outputs ``v`` at samples of ``P``.
      critic_on_q: ``[..., m]`` critic outputs at samples of ``Q``.
      axis: the sample axis (of both).

    Returns:
      ``[...]`` the bound.
    """
    g = gen.resolve(divergence)
    v_p, v_q = jnp.asarray(critic_on_p), jnp.asarray(critic_on_q)
    out_dtype = nx.compute_dtype(v_p, v_q)
    dtype = nx.compute_dtype(v_p, v_q)
    v_p, v_q = v_p.astype(dtype), v_q.astype(dtype)
    t_p = g._f_prime(v_p)
    conj_q = nx.mul0(jnp.exp(v_q), g._f_prime(v_q)) - g._f(v_q)
    bound = jnp.mean(t_p, axis=axis) - jnp.mean(conj_q, axis=axis)
    return bound.astype(out_dtype)
