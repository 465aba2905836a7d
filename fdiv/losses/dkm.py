r"""Deep kernel machines (DKMs): the objective of the Bayesian representation-learning limit.

A deep Gaussian process over ``P`` points has, at each layer ``l = 1..L``, features
``F_l`` (``[P, N_l]``) whose columns are drawn from ``N(0, K(G_{l-1}))``, with Gram matrix
``G_l = F_l F_l^T / N_l`` and ``G_0 = X X^T / N_0`` from the inputs; the outputs are
``F_{L+1} ~ N(0, K(G_L))`` per channel and ``Y = F_{L+1} + noise``. ``K`` is a kernel that can be
computed from a Gram matrix alone (:func:`kernel`: the arc-cosine / ReLU kernel and the
squared-exponential kernel). In the *Bayesian representation-learning limit* (widths
``N_l = N nu_l``, ``N -> inf``) the posterior over every ``G_l`` is a point mass at the maximiser
of (Yang et al. 2023)

    L(G_1, ..., G_L) = log P(Y | G_L) - sum_l nu_l KL( N(0, G_l) || N(0, K(G_{l-1})) ),

with ``log P(Y | G_L) = sum_c log N(y_c; 0, K(G_L) + sigma^2 I)`` (:func:`dkm_objective`).
``nu_l`` is layer ``l``'s width relative to the data-set size: it weighs how strongly ``G_l`` is
held at its prior ``K(G_{l-1})``. ``nu_l -> inf`` pins ``G_l = K(G_{l-1})``, the NNGP (no
representation learning, :func:`nngp_grams`); ``nu_l -> 0`` leaves only the likelihood.
Taking this objective with any kernels as a model in its own right is a *deep kernel machine*.

The full objective costs ``O(P^3)``. The *sparse* DKM (the paper's inducing-point DKM; the
authors' ``GramLayer`` / ``Output``) keeps ``G_l`` only at ``M`` inducing points ``i`` as
parameters and gives every other point ``t`` its Gram entries by the Gaussian conditional of the
features,

    G_ti = K_ti K_ii^-1 G_ii,
    g_t  = k_t - diag(K_ti K_ii^-1 K_it) + diag(K_ti K_ii^-1 G_ii K_ii^-1 K_it),

(only the diagonal ``g_t`` of the data block is ever needed), and a Gaussian ``q(f_i^c) =
N(mu_c, S)`` at the inducing points of the output layer, so the objective becomes the bound

    sum_t E_q[log p(y_t | f_t)] - sum_l nu_l KL(N(0, G_ii^l) || N(0, K(G^{l-1})_ii))
                                - sum_c KL(N(mu_c, S) || N(0, K(G^L)_ii)),

linear in the number of data points (:func:`sparse_dkm_objective`, :func:`sparse_dkm_predict`).
With the inducing points equal to the data and the optimal ``q`` (:func:`optimal_output`) it equals
the full objective.

Jitter (as in the authors' code): every kernel matrix over inducing points is stabilised to
``K (1 + eps_mul I) + eps_abs I`` and every data-point variance to ``k_t (1 + eps_mul) + eps_abs``
(``jitter=(eps_mul, eps_abs)``, default ``(1e-4, 1e-4)``); the arc-cosine kernel also takes its
norms from the jittered diagonal so that ``|cos theta| < 1`` off the diagonal (finite gradients).
The jitter is part of ``K``: the NNGP stack and the KL terms use the same jittered matrices.

Shapes: ``P`` data points (``T`` in the sparse form), ``M`` inducing points, ``C`` output
channels, ``L`` hidden layers. Inputs are promoted to float32 at least; float64 stays float64
(the experiments run in float64, as the authors do).

References:
  Yang, Robeyns, Milsom, Anson, Schoots, Aitchison. A theory of representation learning gives a
  deep generalisation of kernel methods. ICML 2023.
  Cho & Saul. Kernel methods for deep learning. NeurIPS 2009 (the arc-cosine kernel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv.divergences import gaussian_kl

__all__ = [
    "KERNELS",
    "DKMTerms",
    "GramBlocks",
    "SparseDKMTerms",
    "cholesky_param",
    "conditional_gram",
    "dkm_objective",
    "feature_gram",
    "feature_gram_blocks",
    "gaussian_expected_log_lik",
    "gaussian_log_marginal",
    "gram_from_param",
    "gram_kl",
    "kernel",
    "kernel_blocks",
    "nngp_grams",
    "optimal_output",
    "output_kl",
    "predictive",
    "sparse_dkm_forward",
    "sparse_dkm_objective",
    "sparse_dkm_predict",
]

KERNELS = ("relu", "arccos", "sqexp")
"""Kernel names: ``"relu"`` (alias ``"arccos"``, the order-1 arc-cosine kernel) and ``"sqexp"``."""

DEFAULT_JITTER = (1e-4, 1e-4)
_LOG_2PI = math.log(2.0 * math.pi)
_TINY = 1e-30  # floor under square roots that can reach 0 only through rounding


class GramBlocks(NamedTuple):
    """A Gram (or kernel) matrix over inducing points ``i`` and data points ``t``, in blocks.

    Attributes:
      ii: ``[M, M]`` the inducing block.
      ti: ``[T, M]`` the data-inducing block.
      tt: ``[T]`` the diagonal of the data block (the rest is never needed).
    """

    ii: jax.Array
    ti: jax.Array
    tt: jax.Array


class DKMTerms(NamedTuple):
    """The parts of :func:`dkm_objective`: ``log_lik`` (scalar), ``kls`` (``[L]``, 0 for an NNGP
    layer) and the output kernel ``k_out = K(G_L)`` (``[P, P]``)."""

    log_lik: jax.Array
    kls: jax.Array
    k_out: jax.Array


class SparseDKMTerms(NamedTuple):
    """The parts of :func:`sparse_dkm_objective`.

    Attributes:
      expected_log_lik: ``[T]`` ``E_q[log p(y_t | f_t)]`` summed over channels, per data point.
      kls: ``[L]`` ``KL(N(0, G_ii^l) || N(0, K(G^{l-1})_ii))`` (0 for an NNGP layer).
      output_kl: scalar, ``sum_c KL(N(mu_c, S) || N(0, K(G^L)_ii))``.
      mean: ``[T, C]`` predictive mean of ``f_t``.
      var: ``[T]`` predictive variance of ``f_t`` (shared by the channels).
    """

    expected_log_lik: jax.Array
    kls: jax.Array
    output_kl: jax.Array
    mean: jax.Array
    var: jax.Array


# ------------------------------------------------------------------------------------------------
# Gram matrices and their parametrisation.
# ------------------------------------------------------------------------------------------------


def feature_gram(features: ArrayLike) -> jax.Array:
    """``G = F F^T / N`` from features ``F`` of shape ``[P, N]`` (the input layer's ``G_0``)."""
    (f,) = nx.in_compute_dtype(features)
    if f.ndim != 2:
        raise ValueError(f"features must have shape [P, N], got {f.shape}")
    return f @ f.T / f.shape[1]


def feature_gram_blocks(inducing: ArrayLike, features: ArrayLike) -> GramBlocks:
    """``G_0`` in blocks from inducing inputs ``[M, N]`` and data inputs ``[T, N]``: ``ii =
    X_i X_i^T / N``, ``ti = X_t X_i^T / N``, ``tt = |x_t|^2 / N``."""
    xi, xt = nx.in_compute_dtype(inducing, features)
    if xi.ndim != 2 or xt.ndim != 2 or xi.shape[1] != xt.shape[1]:
        raise ValueError(
            f"inducing and features must be [M, N] and [T, N] with one N, got {xi.shape} and "
            f"{xt.shape}"
        )
    n = xi.shape[1]
    return GramBlocks(xi @ xi.T / n, xt @ xi.T / n, jnp.sum(xt * xt, axis=-1) / n)


def gram_from_param(v: ArrayLike) -> jax.Array:
    """``G = L L^T`` from an unconstrained ``[M, M]`` parameter ``V``: ``L = (tril(V, -1) +
    diag(exp(diag V))) / sqrt(M)``, lower triangular with a positive diagonal, so ``G`` is
    positive definite for every ``V`` (the authors' ``LayerCholesky``; the ``1/sqrt(M)`` keeps the
    parameter's entries O(1) for the optimiser)."""
    (v,) = nx.in_compute_dtype(v)
    m = v.shape[-1]
    chol = (jnp.tril(v, -1) + jnp.diag(jnp.exp(jnp.diagonal(v)))) / math.sqrt(m)
    return chol @ chol.T


def cholesky_param(gram: ArrayLike) -> jax.Array:
    """The inverse of :func:`gram_from_param`: ``V`` with ``gram_from_param(V) == gram``.

    Used to initialise a layer at its NNGP value ``G_ii = K(G^{l-1})_ii``.
    """
    (g,) = nx.in_compute_dtype(gram)
    m = g.shape[-1]
    chol = jnp.linalg.cholesky(g) * math.sqrt(m)
    return jnp.tril(chol, -1) + jnp.diag(jnp.log(jnp.diagonal(chol)))


# ------------------------------------------------------------------------------------------------
# Kernels from Gram matrices.
# ------------------------------------------------------------------------------------------------


def _check_kernel(name: str) -> str:
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; known kernels: {', '.join(KERNELS)}")
    return "relu" if name == "arccos" else name


def _check_params(name: str, params: Mapping[str, ArrayLike]) -> None:
    allowed = {"relu": ("weight_var", "bias_var"), "sqexp": ("lengthscale",)}[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameters {unknown} for kernel {name!r}; it takes {', '.join(allowed)}"
        )


def _jittered(g, jitter):
    return g * (1.0 + jitter[0]) + jitter[1]


def _cross(name, gram, g_rows, g_cols, params, jitter):
    """``K(G)_ab`` from ``G_ab`` ``[A, B]`` and the diagonals ``g_a`` ``[A]``, ``g_b`` ``[B]``."""
    if name == "sqexp":
        ell2 = jnp.square(jnp.asarray(params.get("lengthscale", 1.0), gram.dtype))
        sq_dist = g_rows[:, None] + g_cols[None, :] - 2.0 * gram
        return jnp.exp(-0.5 * sq_dist / ell2)
    # arc-cosine of order 1 (He-scaled ReLU): (1/pi)(sqrt(g_a g_b - G^2) + (pi - theta) G).
    norms = _jittered(g_rows, jitter)[:, None] * _jittered(g_cols, jitter)[None, :]
    cos = jnp.clip(gram * jax.lax.rsqrt(norms), -1.0, 1.0)
    sin_part = jnp.sqrt(jnp.maximum(norms - jnp.square(gram), _TINY))
    k = (sin_part + (jnp.pi - jnp.arccos(cos)) * gram) / jnp.pi
    w = jnp.asarray(params.get("weight_var", 1.0), gram.dtype)
    return w * k + jnp.asarray(params.get("bias_var", 0.0), gram.dtype)


def _diag(name, g, params, jitter):
    """``K(G)_tt`` from ``g_t``: 1 for ``sqexp``; ``w g~_t + b`` for the arc-cosine kernel."""
    if name == "sqexp":
        return jnp.ones_like(g)
    w = jnp.asarray(params.get("weight_var", 1.0), g.dtype)
    return w * _jittered(g, jitter) + jnp.asarray(params.get("bias_var", 0.0), g.dtype)


def _stabilise(k, jitter):
    eye = jnp.eye(k.shape[-1], dtype=k.dtype)
    return k * (1.0 + jitter[0] * eye) + jitter[1] * eye


def kernel(
    name: str,
    gram: ArrayLike,
    *,
    params: Mapping[str, ArrayLike] | None = None,
    jitter: tuple[float, float] = DEFAULT_JITTER,
) -> jax.Array:
    r"""``K(G)``: a kernel matrix computed from a Gram matrix alone, jittered.

    - ``"relu"`` / ``"arccos"``: the arc-cosine kernel of order 1 with He scaling (the NNGP
      kernel of a ReLU layer, ``2 E[relu(u_i) relu(u_j)]``, ``u ~ N(0, G)``):
      ``K_ij = w (1/pi) (sqrt(g_i g_j - G_ij^2) + (pi - theta_ij) G_ij) + b``,
      ``cos theta_ij = G_ij / sqrt(g_i g_j)``, so ``K_ii = w g_i + b``; ``params``:
      ``weight_var`` (``w``, default 1), ``bias_var`` (``b``, default 0).
    - ``"sqexp"``: ``K_ij = exp(-(g_i + g_j - 2 G_ij) / (2 l^2))``, i.e.
      ``exp(-|f_i - f_j|^2 / (2 N l^2))`` for ``G = F F^T / N``; ``params``: ``lengthscale``
      (``l``, default 1, as in the authors' code).

    Then ``K (1 + eps_mul I) + eps_abs I`` with ``jitter = (eps_mul, eps_abs)``.

    Args:
      name: one of :data:`KERNELS`.
      gram: ``[P, P]`` symmetric positive semi-definite.
      params: the kernel's hyperparameters (scalars, differentiable).
      jitter: ``(eps_mul, eps_abs)``.

    Returns:
      ``[P, P]`` the kernel matrix.
    """
    name = _check_kernel(name)
    params = dict(params or {})
    _check_params(name, params)
    (g,) = nx.in_compute_dtype(gram)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"gram must be a square [P, P] matrix, got {g.shape}")
    diag = jnp.diagonal(g)
    k = _cross(name, g, diag, diag, params, jitter)
    # The exact diagonal (the off-diagonal formula's jittered norms would perturb it).
    eye = jnp.eye(g.shape[0], dtype=bool)
    k = jnp.where(eye, jnp.diag(_diag(name, diag, params, jitter)), k)
    return _stabilise(k, jitter)


def kernel_blocks(
    name: str,
    gram: GramBlocks,
    *,
    params: Mapping[str, ArrayLike] | None = None,
    jitter: tuple[float, float] = DEFAULT_JITTER,
) -> GramBlocks:
    """:func:`kernel` applied to a Gram matrix held in blocks (inducing / data points).

    ``ii`` is exactly ``kernel(name, gram.ii)``; ``ti`` uses ``G_ti``, ``g_t`` and
    ``diag(G_ii)``; ``tt`` is the jittered diagonal. The same as taking the blocks of ``kernel``
    applied to the joint ``[[G_ii, G_it], [G_ti, G_tt]]``.
    """
    name = _check_kernel(name)
    params = dict(params or {})
    _check_params(name, params)
    ii = kernel(name, gram.ii, params=params, jitter=jitter)
    ti = _cross(name, gram.ti, gram.tt, jnp.diagonal(gram.ii), params, jitter)
    tt = _jittered(_diag(name, gram.tt, params, jitter), jitter)
    return GramBlocks(ii, ti.astype(ii.dtype), tt.astype(ii.dtype))


# ------------------------------------------------------------------------------------------------
# KL terms.
# ------------------------------------------------------------------------------------------------


def gram_kl(gram: ArrayLike, prior: ArrayLike) -> jax.Array:
    r"""``KL(N(0, G) || N(0, K))`` between zero-mean Gaussians over ``P`` points:

        1/2 [tr(K^-1 G) - P + log det K - log det G],

    through :func:`fdiv.gaussian_kl` (Cholesky factors; log-determinants ``2 sum log diag L``).
    ``nu_l`` times this is layer ``l``'s penalty in the DKM objective. No jitter is added here:
    both matrices must be positive definite (``K`` from :func:`kernel` is jittered).

    Args:
      gram: ``[..., P, P]`` the posterior Gram ``G``.
      prior: ``[..., P, P]`` the prior covariance ``K``.

    Returns:
      ``[...]`` the KL.
    """
    g, k = nx.in_compute_dtype(gram, prior)
    zeros = jnp.zeros(g.shape[:-1], g.dtype)
    return gaussian_kl(zeros, g, jnp.zeros(k.shape[:-1], k.dtype), k)


def output_kl(mean: ArrayLike, cov: ArrayLike, prior: ArrayLike) -> jax.Array:
    """``sum_c KL(N(mu_c, S) || N(0, K))``: the output layer's KL, ``mean`` ``[M, C]``, one
    covariance ``S`` ``[M, M]`` shared by the channels (as in the authors' ``Output``)."""
    mu, s, k = nx.in_compute_dtype(mean, cov, prior)
    return jnp.sum(gaussian_kl(mu.T, s, jnp.zeros_like(mu.T), k))


def _nu_per_layer(nu, num_layers: int) -> list:
    per_layer = isinstance(nu, Sequence) or getattr(nu, "ndim", 0) == 1
    values = list(nu) if per_layer else [nu] * num_layers
    if len(values) != num_layers:
        raise ValueError(
            f"nu must be a scalar or have one value per layer ({num_layers}), got {nu}"
        )
    for v in values:
        if isinstance(v, int | float) and not v >= 0:
            raise ValueError(f"nu must be >= 0 for every layer, got {nu}")
    return values


def _per_kernel(params, count: int) -> list[dict]:
    if params is None or isinstance(params, Mapping):
        return [dict(params or {})] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(
            f"kernel_params must be one mapping or one per kernel ({count}: the L hidden layers' "
            f"priors and the output's), got {len(params)}"
        )
    return [dict(p or {}) for p in params]


# ------------------------------------------------------------------------------------------------
# The full DKM objective.
# ------------------------------------------------------------------------------------------------


def nngp_grams(
    input_gram: ArrayLike,
    num_layers: int,
    *,
    kernel_name: str = "relu",
    kernel_params=None,
    jitter: tuple[float, float] = DEFAULT_JITTER,
) -> list[jax.Array]:
    """The NNGP stack ``G_l = K(G_{l-1})``, ``l = 1..L``: the ``nu -> inf`` maximiser.

    Args:
      input_gram: ``[P, P]`` ``G_0``.
      num_layers: ``L``.
      kernel_name, kernel_params, jitter: as in :func:`dkm_objective`.

    Returns:
      ``L`` arrays ``[P, P]``.
    """
    params = _per_kernel(kernel_params, num_layers + 1)
    grams, g = [], input_gram
    for layer in range(num_layers):
        g = kernel(kernel_name, g, params=params[layer], jitter=jitter)
        grams.append(g)
    return grams


def gaussian_log_marginal(k: ArrayLike, targets: ArrayLike, noise_var: ArrayLike) -> jax.Array:
    """``sum_c log N(y_c; 0, K + sigma^2 I)`` for ``K`` ``[P, P]`` and ``Y`` ``[P, C]``."""
    k, y, s2 = nx.in_compute_dtype(k, targets, noise_var)
    p = k.shape[0]
    chol = jnp.linalg.cholesky(k + s2 * jnp.eye(p, dtype=k.dtype))
    white = jax.scipy.linalg.solve_triangular(chol, y, lower=True)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    c = y.shape[1]
    return -0.5 * (jnp.sum(jnp.square(white)) + c * log_det + c * p * _LOG_2PI)


def dkm_objective(
    grams: Sequence[ArrayLike | None],
    input_gram: ArrayLike,
    targets: ArrayLike,
    *,
    nu,
    noise_var: ArrayLike,
    kernel_name: str = "relu",
    kernel_params=None,
    jitter: tuple[float, float] = DEFAULT_JITTER,
) -> tuple[jax.Array, DKMTerms]:
    r"""The DKM objective over ``P`` points (to be *maximised*; ``O(P^3)``):

        L(G_1..G_L) = sum_c log N(y_c; 0, K(G_L) + sigma^2 I)
                      - sum_l nu_l KL(N(0, G_l) || N(0, K(G_{l-1}))).

    Args:
      grams: ``L`` posterior Gram matrices ``G_l`` ``[P, P]`` (positive definite, e.g. from
        :func:`gram_from_param`); ``None`` for a layer held at its NNGP value ``K(G_{l-1})``
        (``nu_l = inf``, KL 0).
      input_gram: ``[P, P]`` ``G_0`` (:func:`feature_gram` of the inputs).
      targets: ``[P, C]`` ``Y``.
      nu: ``nu_l >= 0``, a scalar for every layer or one per layer. ``nu_l = N_l / N``, layer
        ``l``'s width relative to the data: large ``nu`` holds ``G_l`` at its prior, ``0`` frees it.
      noise_var: ``sigma^2 > 0``, the Gaussian likelihood's noise variance.
      kernel_name: one of :data:`KERNELS`, used at every layer.
      kernel_params: one mapping for every kernel, or ``L + 1`` (layer ``l``'s prior
        ``K(G_{l-1})`` for ``l = 1..L``, then the output's ``K(G_L)``).
      jitter: ``(eps_mul, eps_abs)`` of every kernel.

    Returns:
      ``(objective, DKMTerms(log_lik, kls, k_out))``.
    """
    num_layers = len(grams)
    nus = _nu_per_layer(nu, num_layers)
    params = _per_kernel(kernel_params, num_layers + 1)
    g = input_gram
    kls = []
    for layer, gram in enumerate(grams):
        k = kernel(kernel_name, g, params=params[layer], jitter=jitter)
        if gram is None:
            g = k
            kls.append(jnp.zeros((), k.dtype))
        else:
            g = jnp.asarray(gram, k.dtype)
            kls.append(gram_kl(g, k))
    k_out = kernel(kernel_name, g, params=params[-1], jitter=jitter)
    log_lik = gaussian_log_marginal(k_out, targets, noise_var)
    kls = jnp.stack(kls) if kls else jnp.zeros((0,), k_out.dtype)
    penalty = sum((n * kl for n, kl in zip(nus, kls, strict=True)), jnp.zeros((), k_out.dtype))
    return log_lik - penalty, DKMTerms(log_lik, kls, k_out)


# ------------------------------------------------------------------------------------------------
# The sparse (inducing-point) DKM.
# ------------------------------------------------------------------------------------------------


def _chol_logdet(chol):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def _conditional(k: GramBlocks, chol_k, chol_g):
    """``G`` blocks and ``KL(N(0, G_ii) || N(0, K_ii))`` from ``chol(K_ii)`` and ``chol(G_ii)``.

    One triangular solve gives ``X = L_K^-1 K_it`` and ``Y = L_K^-1 L_G``; then ``G_ti = X^T Y
    L_G^T``, ``g_t = k_t - sum_m X^2 + sum_m (X^T Y)^2``, and ``tr(K^-1 G) = |Y|_F^2`` (the
    authors' ``GramLayer`` does the same).
    """
    m = chol_k.shape[0]
    solved = jax.scipy.linalg.solve_triangular(
        chol_k, jnp.concatenate([k.ti.T, chol_g], axis=1), lower=True
    )
    x, y = solved[:, : k.ti.shape[0]], solved[:, k.ti.shape[0] :]
    xty = x.T @ y
    gram = GramBlocks(
        chol_g @ chol_g.T,
        xty @ chol_g.T,
        k.tt - jnp.sum(jnp.square(x), axis=0) + jnp.sum(jnp.square(xty), axis=-1),
    )
    kl = 0.5 * (jnp.sum(jnp.square(y)) - m + _chol_logdet(chol_k) - _chol_logdet(chol_g))
    return gram, kl


def conditional_gram(k: GramBlocks, gram_ii: ArrayLike) -> GramBlocks:
    r"""Layer ``l``'s Gram in blocks from its prior ``K = K(G^{l-1})`` and its inducing block:

        G_ti = K_ti K_ii^-1 G_ii,
        g_t  = k_t - diag(K_ti K_ii^-1 K_it) + diag(K_ti K_ii^-1 G_ii K_ii^-1 K_it),

    the Gram of features whose inducing rows have Gram ``G_ii`` and whose data rows follow the
    prior's Gaussian conditional given them. ``G_ii = K_ii`` gives back ``K``.

    Args:
      k: the prior kernel in blocks (``ii`` ``[M, M]``, ``ti`` ``[T, M]``, ``tt`` ``[T]``).
      gram_ii: ``[M, M]`` positive definite.

    Returns:
      :class:`GramBlocks` of ``G^l``.
    """
    g_ii = jnp.asarray(gram_ii, k.ii.dtype)
    gram, _ = _conditional(k, jnp.linalg.cholesky(k.ii), jnp.linalg.cholesky(g_ii))
    return GramBlocks(g_ii, gram.ti, gram.tt)


def _output(k: GramBlocks, chol_k, mean, chol_s):
    """Predictive ``(mean [T, C], var [T])`` and ``sum_c KL(N(mu_c, S) || N(0, K_ii))`` from
    one triangular solve of ``[K_it, L_S, mu]`` by ``L_K`` (the authors' ``Output``)."""
    t, m = k.ti.shape
    solved = jax.scipy.linalg.solve_triangular(
        chol_k, jnp.concatenate([k.ti.T, chol_s, mean], axis=1), lower=True
    )
    x, y, z = solved[:, :t], solved[:, t : t + m], solved[:, t + m :]
    mean_t = x.T @ z
    var_t = k.tt - jnp.sum(jnp.square(x), axis=0) + jnp.sum(jnp.square(x.T @ y), axis=-1)
    per_channel = jnp.sum(jnp.square(y)) - m + _chol_logdet(chol_k) - _chol_logdet(chol_s)
    kl = 0.5 * (mean.shape[1] * per_channel + jnp.sum(jnp.square(z)))
    return mean_t, var_t, kl


def predictive(k: GramBlocks, mean: ArrayLike, cov: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r"""The output layer's ``q(f_t)`` from ``q(f_i^c) = N(mu_c, S)`` and ``K = K(G^L)``:

    E[f_t]   = K_ti K_ii^-1 mu                                  ([T, C]),
    Var[f_t] = k_t - diag(K_ti K_ii^-1 K_it) + diag(K_ti K_ii^-1 S K_ii^-1 K_it)   ([T]).
    """
    mu, s = (jnp.asarray(a, k.ii.dtype) for a in (mean, cov))
    mean_t, var_t, _ = _output(k, jnp.linalg.cholesky(k.ii), mu, jnp.linalg.cholesky(s))
    return mean_t, var_t


def gaussian_expected_log_lik(
    targets: ArrayLike, mean: ArrayLike, var: ArrayLike, noise_var: ArrayLike
) -> jax.Array:
    r"""``E_{f ~ N(m, v)}[log N(y; f, sigma^2)] = -1/2 log(2 pi sigma^2) - ((y - m)^2 + v) /
    (2 sigma^2)``, summed over channels: ``targets``, ``mean`` ``[T, C]``, ``var`` ``[T]`` -> ``[T]``.
    The closed form of what the authors' code estimates by Monte Carlo."""
    y, m, v, s2 = nx.in_compute_dtype(targets, mean, var, noise_var)
    per = -0.5 * (_LOG_2PI + jnp.log(s2)) - 0.5 * (jnp.square(y - m) + v[:, None]) / s2
    return jnp.sum(per, axis=-1)


def sparse_dkm_forward(
    inducing_grams: Sequence[ArrayLike | None],
    input_gram: GramBlocks,
    *,
    kernel_name: str = "relu",
    kernel_params=None,
    jitter: tuple[float, float] = DEFAULT_JITTER,
) -> tuple[GramBlocks, jax.Array, list[GramBlocks]]:
    """Propagate the Gram blocks through the layers: ``(K(G^L) blocks, kls [L], [G^1..G^L])``.

    ``inducing_grams[l]`` is ``G_ii^{l+1}`` ``[M, M]``, or ``None`` for an NNGP layer
    (``G^l = K(G^{l-1})``, KL 0). ``kls[l] = KL(N(0, G_ii^l) || N(0, K(G^{l-1})_ii))``.
    """
    num_layers = len(inducing_grams)
    params = _per_kernel(kernel_params, num_layers + 1)
    g = input_gram
    kls, grams = [], []
    for layer, gram_ii in enumerate(inducing_grams):
        k = kernel_blocks(kernel_name, g, params=params[layer], jitter=jitter)
        if gram_ii is None:
            g = k
            kls.append(jnp.zeros((), k.ii.dtype))
        else:
            chol_g = jnp.linalg.cholesky(jnp.asarray(gram_ii, k.ii.dtype))
            g, kl = _conditional(k, jnp.linalg.cholesky(k.ii), chol_g)
            kls.append(kl)
        grams.append(g)
    k_out = kernel_blocks(kernel_name, g, params=params[-1], jitter=jitter)
    kls = jnp.stack(kls) if kls else jnp.zeros((0,), k_out.ii.dtype)
    return k_out, kls, grams


def sparse_dkm_objective(
    inducing_grams: Sequence[ArrayLike | None],
    inducing_inputs: ArrayLike,
    inputs: ArrayLike,
    targets: ArrayLike,
    output_mean: ArrayLike,
    output_cov: ArrayLike,
    *,
    nu,
    noise_var: ArrayLike,
    num_data: int | None = None,
    kernel_name: str = "relu",
    kernel_params=None,
    jitter: tuple[float, float] = DEFAULT_JITTER,
) -> tuple[jax.Array, SparseDKMTerms]:
    r"""The sparse DKM objective (an evidence lower bound; to be *maximised*), ``O(T M^2 + L M^3)``:

        (N / T) sum_t E_q[log N(y_t; f_t, sigma^2)]
          - sum_l nu_l KL(N(0, G_ii^l) || N(0, K(G^{l-1})_ii))
          - sum_c KL(N(mu_c, S) || N(0, K(G^L)_ii)).

    ``T`` data points are a minibatch of ``N = num_data`` (default ``T``): the likelihood sum is
    rescaled to the whole data set, the KL terms are not. The authors' code divides the whole
    objective by ``N`` to get a per-point loss; so can the caller.

    Args:
      inducing_grams: ``L`` inducing Grams ``G_ii^l`` ``[M, M]`` (``None``: an NNGP layer).
      inducing_inputs: ``[M, N_0]`` inducing inputs ``X_i``.
      inputs: ``[T, N_0]`` data inputs.
      targets: ``[T, C]``.
      output_mean: ``[M, C]`` ``mu``; output_cov: ``[M, M]`` ``S``.
      nu: ``nu_l >= 0``, scalar or one per layer (ignored for ``None`` layers).
      noise_var: ``sigma^2``.
      num_data: ``N``.
      kernel_name, kernel_params, jitter: as in :func:`dkm_objective`.

    Returns:
      ``(objective, SparseDKMTerms)``.
    """
    g0 = feature_gram_blocks(inducing_inputs, inputs)
    nus = _nu_per_layer(nu, len(inducing_grams))
    k_out, kls, _ = sparse_dkm_forward(
        inducing_grams, g0, kernel_name=kernel_name, kernel_params=kernel_params, jitter=jitter
    )
    mu, cov = (jnp.asarray(a, k_out.ii.dtype) for a in (output_mean, output_cov))
    mean, var, out_kl = _output(k_out, jnp.linalg.cholesky(k_out.ii), mu, jnp.linalg.cholesky(cov))
    ell = gaussian_expected_log_lik(targets, mean, var, noise_var)
    scale = (ell.shape[0] if num_data is None else num_data) / max(ell.shape[0], 1)
    penalty = sum(
        (jnp.zeros((), kls.dtype) if g is None else n * kl)
        for n, kl, g in zip(nus, kls, inducing_grams, strict=True)
    )
    objective = scale * jnp.sum(ell) - penalty - out_kl
    return objective, SparseDKMTerms(ell, kls, out_kl, mean, var)


def sparse_dkm_predict(
    inducing_grams: Sequence[ArrayLike | None],
    inducing_inputs: ArrayLike,
    inputs: ArrayLike,
    output_mean: ArrayLike,
    output_cov: ArrayLike,
    *,
    kernel_name: str = "relu",
    kernel_params=None,
    jitter: tuple[float, float] = DEFAULT_JITTER,
) -> tuple[jax.Array, jax.Array]:
    """Predictive mean ``[T, C]`` and variance ``[T]`` of ``f`` at test inputs ``[T, N_0]`` (add
    ``sigma^2`` for ``y``): the data block of every layer is the conditional given the inducing
    block, so test points cost ``O(T M^2)`` and never touch the training data."""
    g0 = feature_gram_blocks(inducing_inputs, inputs)
    k_out, _, _ = sparse_dkm_forward(
        inducing_grams, g0, kernel_name=kernel_name, kernel_params=kernel_params, jitter=jitter
    )
    return predictive(k_out, output_mean, output_cov)


def optimal_output(
    k: GramBlocks, targets: ArrayLike, noise_var: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""The optimal Gaussian ``q(f_i) = N(mu, S)`` of the output layer for a Gaussian likelihood
    (Titsias 2009), given ``K = K(G^L)`` over inducing and training points:

        S  = K_ii (K_ii + sigma^-2 K_it K_ti)^-1 K_ii,      mu = sigma^-2 S K_ii^-1 K_it Y.

    With the inducing points equal to the data the bound is then tight: the sparse objective
    equals :func:`dkm_objective`.

    Returns:
      ``(mu [M, C], S [M, M])``.
    """
    y, s2 = nx.in_compute_dtype(targets, noise_var)
    y = y.astype(k.ii.dtype)
    sigma = k.ii + k.ti.T @ k.ti / s2
    chol = jnp.linalg.cholesky(sigma)
    inv_k = jax.scipy.linalg.cho_solve((chol, True), k.ii)  # Sigma^-1 K_ii
    cov = k.ii @ inv_k
    cov = 0.5 * (cov + cov.T)
    mean = k.ii @ jax.scipy.linalg.cho_solve((chol, True), k.ti.T @ y) / s2
    return mean, cov
