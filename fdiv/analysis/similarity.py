r"""Similarity of two sets of representations of the same ``n`` examples: CKA and RSA.

``x`` ``[n, p]`` and ``y`` ``[n, q]`` hold the features two networks (or two layers) give the same
``n`` inputs, row ``i`` for input ``i``; trailing axes are flattened (``[n, h, w, c]`` is
``[n, h*w*c]``). ``p`` and ``q`` may differ. Every function is a pure, jit-able jnp function of
its arrays (keyword options are static Python values) and vmaps over a leading batch of
representation pairs. Computation is in float32 for (b)float16 inputs, float64 for float64.

**CKA** (centered kernel alignment; Kornblith, Norouzi, Lee & Hinton 2019) compares Gram matrices
``K = k(x_i, x_j)`` and ``L`` through the Hilbert-Schmidt independence criterion::

    HSIC(K, L) = tr(K H L H) / (n - 1)^2,   H = I - 1 1^T / n        (biased; Gretton et al. 2005)
    CKA(K, L)  = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))            in [0, 1]

With ``debiased=True`` HSIC is the unbiased estimator of Song et al. (2012),
``[tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))`` with
``K~ = K`` with its diagonal set to 0, computed as the inner product of U-centred Gram matrices
(needs ``n >= 4``; debiased CKA can be slightly negative). Linear CKA (``k(a, b) = a.b``) is
computed in feature space, ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with
column-centred features, which costs ``O(n p q)`` instead of ``O(n^2)`` memory. RBF CKA uses
``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))`` with ``sigma^2 = bandwidth^2 * median_ij ||x_i -
x_j||^2`` over all ``n^2`` pairs (the diagonal's zeros included): the convention of the CKA
paper's reference code, so ``bandwidth`` is the kernel width as a fraction of the median
distance, chosen per representation. As ``bandwidth -> inf`` RBF CKA tends to linear CKA (the
centred ``1 - d^2 / (2 sigma^2)`` is ``x_c . y_c / sigma^2``). CKA is invariant to orthogonal
transforms and isotropic scaling of either representation (linear and RBF), and RBF CKA to
translations. A representation that is constant over the examples has ``HSIC(K, K) = 0``: its
CKA is NaN (0 / 0), as in the reference code: it is undefined, not zero.

**Minibatch CKA** (Nguyen, Raghu & Kornblith 2021) for ``n`` too large for one Gram matrix:
unbiased HSICs averaged over minibatches of ``batch_size`` consecutive rows before the ratio,
``mean_b HSIC_1(K_b, L_b) / sqrt(mean_b HSIC_1(K_b, K_b) mean_b HSIC_1(L_b, L_b))``; the rows
after the last whole minibatch are left out (shuffle first if the order means anything).

**RSA** (representational similarity analysis; Kriegeskorte, Mur & Bandettini 2008): each
representation's dissimilarity matrix (RDM) ``D_ij = d(x_i, x_j)``, with ``metric="correlation"``
(``1 - Pearson correlation of the feature vectors x_i and x_j``, scipy's ``correlation``) or
``"euclidean"``, compared by the Spearman (default) or Pearson correlation of their ``n (n-1)/2``
upper-triangle entries. Spearman ranks give ties their average rank, as ``scipy.stats.spearmanr``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv.metrics import _points, _row_map, _safe_sqrt

__all__ = [
    "cka",
    "hsic",
    "linear_cka",
    "linear_gram",
    "minibatch_cka",
    "rbf_cka",
    "rbf_gram",
    "rdm",
    "rsa",
]

Kernel = Literal["linear", "rbf"]
_RDM_METRICS = ("correlation", "euclidean")
_COMPARISONS = ("spearman", "pearson")


def _features(x: ArrayLike, name: str, min_rows: int = 2) -> jax.Array:
    """``x`` ``[n, ...]`` as real ``[n, features]`` in its computation dtype."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{name} must be [n, features...], got shape {x.shape}")
    x = _points(x.reshape(x.shape[0], -1), name, min_rows)
    return x.astype(nx.compute_dtype(x))


def _pair(x: ArrayLike, y: ArrayLike, min_rows: int = 2) -> tuple[jax.Array, jax.Array]:
    x, y = _features(x, "x", min_rows), _features(y, "y", min_rows)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must describe the same examples: {x.shape[0]} != {y.shape[0]}")
    dtype = nx.compute_dtype(x, y)
    return x.astype(dtype), y.astype(dtype)


def _squared_distances(x: jax.Array) -> jax.Array:
    """``[n, n]`` ``||x_i - x_j||^2`` from differences, a block of rows at a time (as the sample
    metrics: never negative, exactly 0 on the diagonal)."""
    return _row_map(lambda d2, _: d2, x, x)


def linear_gram(x: ArrayLike) -> jax.Array:
    """Linear kernel ``K_ij = x_i . x_j``; ``x`` ``[n, ...]`` -> ``[n, n]``."""
    x = _features(x, "x", 1)
    return x @ x.T


def rbf_gram(x: ArrayLike, *, bandwidth: float = 1.0) -> jax.Array:
    """RBF kernel ``exp(-||x_i - x_j||^2 / (2 sigma^2))``, ``sigma^2 = bandwidth^2 *
    median(||x_i - x_j||^2)`` over all ``n^2`` pairs; ``x`` ``[n, ...]`` -> ``[n, n]``."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth={bandwidth}: must be > 0 (a fraction of the median distance)")
    d2 = _squared_distances(_features(x, "x"))
    return jnp.exp(-d2 / (2.0 * bandwidth**2 * jnp.median(d2)))


def _center(k: jax.Array, debiased: bool) -> jax.Array:
    """``H K H`` (biased) or the U-centred ``K`` (debiased: its inner products with another
    U-centred matrix are ``n (n - 3)`` times the unbiased HSIC)."""
    n = k.shape[0]
    if not debiased:
        k = k - jnp.mean(k, axis=0, keepdims=True)
        return k - jnp.mean(k, axis=1, keepdims=True)
    off_diagonal = 1.0 - jnp.eye(n, dtype=k.dtype)
    k = k * off_diagonal
    means = jnp.sum(k, axis=0) / (n - 2)
    means = means - jnp.sum(means) / (2 * (n - 1))
    return (k - means[:, None] - means[None, :]) * off_diagonal


def _grams(k: ArrayLike, l: ArrayLike, debiased: bool) -> tuple[jax.Array, jax.Array]:
    k, l = jnp.asarray(k), jnp.asarray(l)
    for name, m in (("k", k), ("l", l)):
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{name} must be a square Gram matrix [n, n], got shape {m.shape}")
    if k.shape != l.shape:
        raise ValueError(f"k and l must be Gram matrices of the same examples: {k.shape} != {l.shape}")  # fmt: skip
    n = k.shape[0]
    if n < (4 if debiased else 2):
        raise ValueError(f"{'debiased ' if debiased else ''}HSIC needs n >= {4 if debiased else 2} examples, got {n}")  # fmt: skip
    dtype = nx.compute_dtype(k, l)
    return k.astype(dtype), l.astype(dtype)


def hsic(k: ArrayLike, l: ArrayLike, *, debiased: bool = False) -> jax.Array:
    """HSIC of Gram matrices ``k``, ``l`` ``[n, n]``: ``tr(K H L H) / (n-1)^2`` or, debiased, the
    unbiased estimator of Song et al. (2012) (module docstring). Scalar."""
    k, l = _grams(k, l, debiased)
    n = k.shape[0]
    scale = n * (n - 3) if debiased else (n - 1) ** 2
    return jnp.sum(_center(k, debiased) * _center(l, debiased)) / scale


def cka(k: ArrayLike, l: ArrayLike, *, debiased: bool = False) -> jax.Array:
    """CKA of two Gram matrices ``[n, n]`` of the same examples:
    ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``. Scalar."""
    k, l = _grams(k, l, debiased)
    kc, lc = _center(k, debiased), _center(l, debiased)
    return jnp.sum(kc * lc) / jnp.sqrt(jnp.sum(kc * kc) * jnp.sum(lc * lc))


def linear_cka(x: ArrayLike, y: ArrayLike, *, debiased: bool = False) -> jax.Array:
    """Linear CKA of representations ``x`` ``[n, ...]`` and ``y`` ``[n, ...]``; biased in feature
    space (``O(n p q)``), debiased through the ``[n, n]`` Gram matrices. Scalar."""
    x, y = _pair(x, y, 4 if debiased else 2)
    if debiased:
        return cka(x @ x.T, y @ y.T, debiased=True)
    x, y = x - jnp.mean(x, axis=0), y - jnp.mean(y, axis=0)
    cross = jnp.sum(jnp.square(y.T @ x))
    return cross / jnp.sqrt(jnp.sum(jnp.square(x.T @ x)) * jnp.sum(jnp.square(y.T @ y)))


def rbf_cka(
    x: ArrayLike, y: ArrayLike, *, bandwidth: float = 1.0, debiased: bool = False
) -> jax.Array:
    """RBF CKA of ``x`` and ``y`` ``[n, ...]``, each kernel's width ``bandwidth`` times its own
    median distance (:func:`rbf_gram`). Scalar."""
    x, y = _pair(x, y, 4 if debiased else 2)
    return cka(rbf_gram(x, bandwidth=bandwidth), rbf_gram(y, bandwidth=bandwidth), debiased=debiased)  # fmt: skip


def minibatch_cka(
    x: ArrayLike,
    y: ArrayLike,
    *,
    batch_size: int,
    kernel: Kernel = "linear",
    bandwidth: float = 1.0,
) -> jax.Array:
    """Minibatch CKA (Nguyen et al. 2021): unbiased HSICs of ``floor(n / batch_size)`` minibatches
    of consecutive rows, averaged before the ratio; ``kernel`` ``"linear"`` or ``"rbf"`` (each
    minibatch's own median). Memory ``O(batch_size^2)`` per minibatch. Scalar."""
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel={kernel!r}: must be 'linear' or 'rbf'")
    if not (isinstance(batch_size, int) and batch_size >= 4):
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 4 (unbiased HSIC)")
    x, y = _pair(x, y, batch_size)
    num_batches = x.shape[0] // batch_size
    used = num_batches * batch_size
    xb = x[:used].reshape(num_batches, batch_size, -1)
    yb = y[:used].reshape(num_batches, batch_size, -1)

    def gram(z):
        return z @ z.T if kernel == "linear" else rbf_gram(z, bandwidth=bandwidth)

    def three_hsics(a, b):
        kc, lc = _center(gram(a), True), _center(gram(b), True)
        return jnp.stack([jnp.sum(kc * lc), jnp.sum(kc * kc), jnp.sum(lc * lc)])

    kl, kk, ll = jnp.mean(jax.lax.map(lambda ab: three_hsics(*ab), (xb, yb)), axis=0)
    return kl / jnp.sqrt(kk * ll)  # the common 1 / (b (b - 3)) cancels


def rdm(x: ArrayLike, *, metric: str = "correlation") -> jax.Array:
    """Representational dissimilarity matrix ``[n, n]`` of ``x`` ``[n, ...]``: ``1 - corr(x_i,
    x_j)`` (``"correlation"``) or ``||x_i - x_j||`` (``"euclidean"``); 0 on the diagonal."""
    if metric not in _RDM_METRICS:
        raise ValueError(f"metric={metric!r}: must be one of {_RDM_METRICS}")
    x = _features(x, "x")
    if metric == "euclidean":
        return _safe_sqrt(_squared_distances(x))  # gradient 0, not NaN, on the diagonal
    z = x - jnp.mean(x, axis=1, keepdims=True)  # each example's features centred, as scipy
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    return (1.0 - z @ z.T) * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype))


def _average_ranks(v: jax.Array) -> jax.Array:
    """1-based ranks of a vector, ties sharing their average rank (``scipy.stats.rankdata``)."""
    s = jnp.sort(v)
    below = jnp.searchsorted(s, v, side="left")
    through = jnp.searchsorted(s, v, side="right")
    return (below + through + 1) / 2.0


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    a, b = a - jnp.mean(a), b - jnp.mean(b)
    return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))


def rsa(
    x: ArrayLike,
    y: ArrayLike,
    *,
    metric: str = "correlation",
    compare: str = "spearman",
) -> jax.Array:
    """RSA score of ``x`` and ``y`` ``[n, ...]``: the Spearman (or Pearson) correlation of the
    upper triangles (``i < j``) of their :func:`rdm` s. Scalar in [-1, 1]; needs ``n >= 3``."""
    if compare not in _COMPARISONS:
        raise ValueError(f"compare={compare!r}: must be one of {_COMPARISONS}")
    x, y = _pair(x, y, 3)
    i, j = jnp.triu_indices(x.shape[0], k=1)
    a, b = rdm(x, metric=metric)[i, j], rdm(y, metric=metric)[i, j]
    if compare == "spearman":
        a, b = _average_ranks(a), _average_ranks(b)
    return _pearson(a, b)
