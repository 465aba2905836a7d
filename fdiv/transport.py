r"""Entropic optimal transport by log-domain Sinkhorn iterations, batch-wise (used by SinKD).

The entropic plan for a cost ``C`` (``[n, m]``) and marginals ``a`` (``[n]``), ``b`` (``[m]``) is

    ``P = diag(u) K diag(v)``,  ``K = exp(-C / epsilon)``,

with the scalings ``u, v`` found by alternating the row and column normalisations
``u <- a / (K v)``, ``v <- b / (K^T u)``. Here everything is done with ``log u``, ``log v`` and
``-C / epsilon`` through ``logsumexp``: ``K`` is never formed, so a small ``epsilon`` or a large
cost cannot overflow or underflow the iterations.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx

__all__ = ["SinkhornOutput", "l1_cost", "sinkhorn", "sinkhorn_cost"]


class SinkhornOutput(NamedTuple):
    """What :func:`sinkhorn` returns; ``plan = exp(log_u[..., :, None] - cost / epsilon + log_v[..., None, :])``.

    Attributes:
      plan: ``[..., n, m]``, the transport plan ``diag(u) K diag(v)``; exactly 0 where the cost
        is ``+inf``.
      log_u: ``[..., n]``, log of the row scaling ``u`` (``-inf`` for rows that carry no mass).
      log_v: ``[..., m]``, log of the column scaling ``v``.
      row_error: ``[...]``, ``max_i |sum_j plan_ij - a_i|``. The last normalisation is the column
        one, so this is the convergence diagnostic.
      col_error: ``[...]``, ``max_j |sum_i plan_ij - b_j|``: rounding error only (columns are
        normalised last).
    """

    plan: jax.Array
    log_u: jax.Array
    log_v: jax.Array
    row_error: jax.Array
    col_error: jax.Array


def _check_hyperparameters(epsilon, num_iters) -> int:
    num_iters = nx.positive_int("num_iters", num_iters)
    try:
        eps = float(epsilon)
    except (TypeError, jax.errors.ConcretizationTypeError):
        eps = None  # a traced epsilon (e.g. an annealing schedule): not checkable here
    if eps is not None and not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    return num_iters


def _safe_logsumexp(x: jax.Array, axis: int) -> jax.Array:
    """``logsumexp`` over ``axis``; ``-inf`` (value) and zero gradient for an all ``-inf`` slice."""
    peak = jnp.max(x, axis=axis, keepdims=True)
    peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    total = jnp.sum(jnp.exp(x - peak), axis=axis)
    empty = total == 0
    log_total = jnp.log(jnp.where(empty, 1.0, total)) + jnp.squeeze(peak, axis)
    return jnp.where(empty, -jnp.inf, log_total)


def _log_scaling(log_target: jax.Array, log_sum: jax.Array) -> jax.Array:
    """``log(target / sum)``, ``-inf`` when the target is 0 or nothing can reach it."""
    dead = (log_target == -jnp.inf) | (log_sum == -jnp.inf)
    return jnp.where(dead, -jnp.inf, log_target - jnp.where(dead, 0.0, log_sum))


def _marginal(log_x, shape, dtype, name: str) -> jax.Array:
    log_x = jnp.asarray(log_x).astype(dtype)
    try:
        return jnp.broadcast_to(log_x, shape)
    except ValueError as err:
        raise ValueError(
            f"sinkhorn: {name} has shape {log_x.shape}, which does not broadcast to {shape}"
        ) from err


def sinkhorn(
    cost: ArrayLike,
    *,
    epsilon: float = 0.1,
    num_iters: int = 20,
    log_a: ArrayLike | None = None,
    log_b: ArrayLike | None = None,
) -> SinkhornOutput:
    r"""Entropic transport plan ``P = diag(u) exp(-C / epsilon) diag(v)`` by log-domain Sinkhorn.

    Starting from ``log v = 0``, each of the ``num_iters`` iterations applies a row then a column
    normalisation::

        log u_i = log a_i - logsumexp_j(log v_j - C_ij / epsilon)
        log v_j = log b_j - logsumexp_i(log u_i - C_ij / epsilon)

    so the columns of the returned plan sum to ``b`` (to rounding) and the rows approximately to
    ``a``; ``row_error`` says how far. ``P`` approximately solves
    ``min_P <P, C> - epsilon H(P)`` subject to ``P 1 = a``, ``P^T 1 = b``; as ``epsilon -> 0`` it
    tends to an optimal transport plan (enough iterations are then needed: roughly
    ``max |C| / epsilon`` of them for a given accuracy).

    Default marginals (the SinKD setting): ``a = 1`` (every row sums to 1) and ``b = n / m``
    (every column sums to ``n / m``, so both carry total mass ``n``). For a square cost between
    the ``B`` examples of a batch this is the *doubly stochastic* plan: rows and columns each sum
    to 1. When only one of ``log_a`` / ``log_b`` is given, the other defaults to uniform with the
    same total mass (``log b_j = logsumexp(log a) - log m`` and vice versa). Marginals of
    unequal total mass have no plan; the iterations then leave the columns exact and the rows
    scaled by ``sum(b) / sum(a)`` (visible in ``row_error``).

    Forbidden pairs: ``C_ij = +inf`` gives ``P_ij = 0`` exactly, and zero gradient to ``C_ij``.
    A row (column) whose costs are all ``+inf`` or whose target mass is 0 (``log a_i = -inf``)
    gets ``log u_i = -inf`` (``log v_j = -inf``) and an all-zero row (column) in the plan, never
    NaN. Costs must not be ``-inf`` or NaN.

    Gradients flow through the unrolled iterations (``jax.lax.fori_loop`` with a static trip
    count, reverse-differentiable); memory for the backward pass grows as ``num_iters * n * m``.
    bfloat16 / float16 costs are computed and returned in float32 (the package's dtype rule).

    Precision: each row's smallest finite cost is subtracted before iterating (the row scaling
    absorbs a row shift exactly at every iteration, so the result is unchanged), so the exponents
    have the size of ``S = max_ij (C_ij - min_j C_ij) / epsilon``, not of ``max C / epsilon``.
    Nothing overflows for any ``S``, but in float32 the plan entries carry a relative rounding
    error of about ``S * 2^-24`` (0.1% at ``S = 2e4``): use float64 when that matters.

    Args:
      cost: ``[..., n, m]`` cost matrices; leading dimensions are independent problems.
      epsilon: entropic regularisation, a number ``> 0`` (in the units of the cost); may be a
        traced scalar (e.g. an annealing schedule under ``jit``), which is then not checked.
      num_iters: number of (row, column) normalisation pairs, a Python int ``>= 1``.
      log_a: log of the target row sums, broadcastable to ``[..., n]``; ``-inf`` allowed.
      log_b: log of the target column sums, broadcastable to ``[..., m]``; ``-inf`` allowed.

    Returns:
      A :class:`SinkhornOutput` ``(plan [..., n, m], log_u [..., n], log_v [..., m],
      row_error [...], col_error [...])``.

    References:
      Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport" (NeurIPS 2013);
      Peyre and Cuturi, "Computational Optimal Transport", section 4.4 (log-domain stabilisation)
      (2019); Cui et al., "SinKD: Sinkhorn Distance Minimization for Knowledge Distillation"
      (IEEE TNNLS 2024).
    """
    num_iters = _check_hyperparameters(epsilon, num_iters)
    cost = jnp.asarray(cost)
    if cost.ndim < 2:
        raise ValueError(f"sinkhorn: cost must have shape [..., n, m], got shape {cost.shape}")
    return _sinkhorn(cost, epsilon, log_a, log_b, num_iters=num_iters)


# Compiled as a unit even when called eagerly (an eager, differentiated loop dispatches thousands of
# small ops); inside a caller's jit this is simply inlined.
@functools.partial(jax.jit, static_argnames=("num_iters",))
def _sinkhorn(cost, epsilon, log_a, log_b, *, num_iters: int) -> SinkhornOutput:
    dtype = nx.compute_dtype(cost)
    out_dtype = nx.compute_dtype(cost)
    *batch, n, m = cost.shape
    batch = tuple(batch)
    cost = cost.astype(dtype)
    eps = jnp.asarray(epsilon, dtype)
    # Subtract each row's smallest finite cost: the row update absorbs a row shift exactly at
    # every iteration (u scales by exp(shift / eps), v is unchanged), and the exponents stay of
    # the size of the spread within rows instead of the size of the cost (float32 rounding).
    finite = jnp.isfinite(cost)
    shift = jnp.min(jnp.where(finite, cost, jnp.inf), axis=-1, keepdims=True)
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    log_k = -(cost - shift) / eps

    if log_a is None and log_b is None:
        log_a = jnp.zeros(batch + (n,), dtype)
        log_b = jnp.full(batch + (m,), math.log(n / m), dtype)
    elif log_b is None:
        log_a = _marginal(log_a, batch + (n,), dtype, "log_a")
        log_b = jnp.broadcast_to(
            (_safe_logsumexp(log_a, -1) - math.log(m))[..., None], batch + (m,)
        )
    elif log_a is None:
        log_b = _marginal(log_b, batch + (m,), dtype, "log_b")
        log_a = jnp.broadcast_to(
            (_safe_logsumexp(log_b, -1) - math.log(n))[..., None], batch + (n,)
        )
    else:
        log_a = _marginal(log_a, batch + (n,), dtype, "log_a")
        log_b = _marginal(log_b, batch + (m,), dtype, "log_b")

    def row_update(log_v):
        return _log_scaling(log_a, _safe_logsumexp(log_k + log_v[..., None, :], -1))

    def col_update(log_u):
        return _log_scaling(log_b, _safe_logsumexp(log_k + log_u[..., :, None], -2))

    def body(_, carry):
        _, log_v = carry
        log_u = row_update(log_v)
        return log_u, col_update(log_u)

    init = (jnp.zeros(batch + (n,), dtype), jnp.zeros(batch + (m,), dtype))
    log_u, log_v = jax.lax.fori_loop(0, num_iters, body, init)

    plan = jnp.exp(log_u[..., :, None] + log_k + log_v[..., None, :])
    log_u = log_u + shift[..., 0] / eps  # undo the row shift: plan = exp(log_u - C/eps + log_v)
    row_error = jnp.max(jnp.abs(jnp.sum(plan, axis=-1) - jnp.exp(log_a)), axis=-1)
    col_error = jnp.max(jnp.abs(jnp.sum(plan, axis=-2) - jnp.exp(log_b)), axis=-1)
    return SinkhornOutput(
        plan=plan.astype(out_dtype),
        log_u=log_u.astype(out_dtype),
        log_v=log_v.astype(out_dtype),
        row_error=row_error.astype(out_dtype),
        col_error=col_error.astype(out_dtype),
    )


def sinkhorn_cost(
    cost: ArrayLike,
    *,
    epsilon: float = 0.1,
    num_iters: int = 20,
    log_a: ArrayLike | None = None,
    log_b: ArrayLike | None = None,
) -> jax.Array:
    r"""Transport cost ``<P, C> = sum_ij P_ij C_ij`` of the entropic plan ``P`` of :func:`sinkhorn`.

    The entropy term is not included. Forbidden pairs (``C_ij = +inf``, ``P_ij = 0``) contribute
    exactly 0 to the value and to the gradient. Differentiable in ``cost`` through the Sinkhorn
    iterations (the plan depends on the cost), as used as a distillation loss by SinKD.

    Args:
      cost: ``[..., n, m]`` cost matrices.
      epsilon: entropic regularisation, a number ``> 0``.
      num_iters: number of Sinkhorn iterations, a Python int ``>= 1``.
      log_a: log target row sums, broadcastable to ``[..., n]`` (default: rows sum to 1).
      log_b: log target column sums, broadcastable to ``[..., m]`` (default: columns sum to
        ``n / m``).

    Returns:
      ``[...]``: the transport cost per problem, in float32 (float64 for float64 costs).

    References:
      Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport" (NeurIPS 2013);
      Cui et al., "SinKD: Sinkhorn Distance Minimization for Knowledge Distillation" (2024).
    """
    cost = jnp.asarray(cost)
    out = sinkhorn(cost, epsilon=epsilon, num_iters=num_iters, log_a=log_a, log_b=log_b)
    dtype = nx.compute_dtype(cost)
    c = cost.astype(dtype)
    plan = out.plan.astype(dtype)
    forbidden = c == jnp.inf
    terms = jnp.where(forbidden, 0.0, plan * jnp.where(forbidden, 0.0, c))
    return jnp.sum(terms, axis=(-2, -1)).astype(nx.compute_dtype(cost))


def l1_cost(x: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""Pairwise L1 cost ``W_ij = sum_k |x_ik - y_jk|``.

    Forms the ``[..., n, m, d]`` difference tensor; fine for a batch of class-probability vectors
    (SinKD), not for vocabulary-sized ``d`` with large ``n, m``.

    Args:
      x: ``[..., n, d]``.
      y: ``[..., m, d]`` (leading dimensions broadcast with ``x``'s).

    Returns:
      ``[..., n, m]``: the cost matrix, in the inputs' floating dtype (float32 for integers).

    References:
      Cui et al., "SinKD: Sinkhorn Distance Minimization for Knowledge Distillation" (2024).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim < 2 or y.ndim < 2:
        raise ValueError(
            f"l1_cost: x and y must have shapes [..., n, d] and [..., m, d], got {x.shape} "
            f"and {y.shape}"
        )
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"l1_cost: x and y must have the same last dimension d, got {x.shape} and {y.shape}"
        )
    dtype = nx.compute_dtype(x, y)
    diff = x.astype(dtype)[..., :, None, :] - y.astype(dtype)[..., None, :, :]
    return jnp.sum(jnp.abs(diff), axis=-1).astype(nx.compute_dtype(x, y))
