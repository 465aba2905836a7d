r"""Classifier metrics from logits (accuracy, NLL, ECE, agreement) and sample-quality metrics.

All take logits ``[B, C]`` (log space in; never probabilities) and an optional example mask
``mask`` (``[B]`` booleans, ``False`` examples are left out, e.g. the padding of the last
evaluation batch), and return a scalar mean over the kept examples. A mask that keeps no example
gives 0 (not NaN), so per-batch values can be combined weighted by their counts. Computation is in
float32 for bfloat16 / float16 logits (float64 for float64), and results are returned in that
computation dtype: a metric such as ``0.9931`` does not survive a round trip through bfloat16.
Metrics are jit-able; ``num_bins`` is static.

Sample-quality metrics compare a set of generated samples ``[m, d]`` with real samples ``[n, d]``
or with a known Gaussian mixture: mode statistics (:func:`mode_statistics`), kernel MMD
(:func:`mmd_rbf`), energy distance (:func:`energy_distance`), k-NN precision / recall
(:func:`knn_precision_recall`) and the Fréchet distance of features (:func:`frechet_distance`).
Pairwise distances are computed from differences ``||a - b||^2 = sum_k (a_k - b_k)^2`` (exact,
never negative, exactly 0 on duplicates, unlike ``|a|^2 + |b|^2 - 2 a.b``), a block of rows at a
time, so that no more than about 2^22 numbers of the ``[n, m, d]`` differences are alive at once
(``n = m = 5000`` in 2-D is about 12 blocks). All but :func:`frechet_distance` (a float64 numpy
host-side metric) are pure, jit-able jnp functions; their keyword options are static Python numbers.

Generation metrics: :func:`pass_at_k`, the unbiased pass@k estimator from ``n`` samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jax.typing import ArrayLike

from fdiv import _numerics as nx

__all__ = [
    "CalibrationBins",
    "ModeStats",
    "PrecisionRecall",
    "accuracy",
    "agreement",
    "energy_distance",
    "expected_calibration_error",
    "frechet_distance",
    "knn_precision_recall",
    "mmd_rbf",
    "mode_assignment",
    "mode_statistics",
    "nll",
    "pass_at_k",
]


class CalibrationBins(NamedTuple):
    """Per-bin statistics of :func:`expected_calibration_error` (for reliability diagrams).

    Attributes:
      counts: ``[num_bins]`` int32, the number of (kept) examples whose confidence is in the bin.
      confidence: ``[num_bins]``, the mean confidence in the bin; 0 for an empty bin.
      accuracy: ``[num_bins]``, the fraction of correct predictions in the bin; 0 for an empty bin.
      edges: ``[num_bins + 1]``, the bin edges ``0 = e_0 < e_1 < ... < e_num_bins = 1``; bin ``b``
        is ``(e_b, e_{b+1}]``, and a confidence of exactly 0 belongs to bin 0.
    """

    counts: jax.Array
    confidence: jax.Array
    accuracy: jax.Array
    edges: jax.Array


def _prepare(logits: ArrayLike, where: ArrayLike | None, name: str = "logits"):
    """Logits in the computation dtype and a float mask ``[B]`` (ones when ``mask=`` is None)."""
    logits = jnp.asarray(logits)
    chex.assert_rank(logits, 2, custom_message=f"{name} must have shape [B, C]")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating array, got dtype {logits.dtype}")
    dtype = nx.compute_dtype(logits)
    logits = logits.astype(dtype)
    if where is None:
        mask = jnp.ones(logits.shape[:1], dtype)
    else:
        where = jnp.asarray(where)
        chex.assert_shape(where, logits.shape[:1], custom_message="mask must have shape [B]")
        mask = where.astype(bool).astype(dtype)
    return logits, mask


def _labels(labels: ArrayLike, batch: int) -> jax.Array:
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    chex.assert_shape(labels, (batch,), custom_message="labels must have shape [B]")
    return labels


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(mask * values) / sum(mask)``; masked entries may be NaN/inf; 0 for an empty mask."""
    total = jnp.sum(jnp.where(mask > 0, values, 0.0))
    count = jnp.sum(mask)
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def accuracy(logits: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None) -> jax.Array:
    r"""Top-1 accuracy ``mean_i [argmax_c logits_ic == labels_i]`` over the kept examples.

    Ties in the logits go to the lowest class index (``argmax``'s rule).

    Args:
      logits: ``[B, C]``.
      labels: ``[B]`` integer class indices in ``[0, C)``.
      mask: optional ``[B]`` boolean mask of the examples to keep (default: all).

    Returns:
      ``[]``: the accuracy in ``[0, 1]``; 0 when no example is kept.

    References:
      Any textbook; e.g. Murphy, "Probabilistic Machine Learning: An Introduction" (2022), 5.1.
    """
    logits, mask = _prepare(logits, mask)
    labels = _labels(labels, logits.shape[0])
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype)
    return _masked_mean(correct, mask)


def nll(logits: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None) -> jax.Array:
    r"""Mean negative log-likelihood ``mean_i -log softmax(logits_i)[labels_i]`` (cross-entropy, nats).

    Computed from ``log_softmax`` (no ``log(p + eps)``): ``-inf`` logits in the other classes
    are exact and give a finite value; a ``-inf`` logit at the label gives ``+inf``.

    Args:
      logits: ``[B, C]``.
      labels: ``[B]`` integer class indices in ``[0, C)``.
      mask: optional ``[B]`` boolean mask of the examples to keep (default: all). Left-out
        examples may hold anything (NaN logits, label -1): they do not reach the value.

    Returns:
      ``[]``: the mean NLL; 0 when no example is kept.

    References:
      Murphy, "Probabilistic Machine Learning: An Introduction" (2022), 4.2.
    """
    logits, mask = _prepare(logits, mask)
    labels = _labels(labels, logits.shape[0])
    log_p, _ = nx.log_softmax_and_softmax(logits)
    safe_labels = jnp.clip(labels, 0, logits.shape[-1] - 1)
    picked = jnp.take_along_axis(log_p, safe_labels[:, None], axis=-1)[:, 0]
    return _masked_mean(-picked, mask)


def expected_calibration_error(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    num_bins: int = 15,
    mask: ArrayLike | None = None,
) -> tuple[jax.Array, CalibrationBins]:
    r"""Expected calibration error ``ECE = sum_b (n_b / n) |acc_b - conf_b|`` with equal-width bins.

    The confidence of an example is its top softmax probability ``max_c softmax(logits)_c``
    (computed as ``1 / sum_c exp(logits_c - max logits)``), its prediction the ``argmax``.
    Confidences are binned into ``num_bins`` equal-width bins on ``[0, 1]`` with edges
    ``e_b = b / num_bins`` (``jnp.linspace(0, 1, num_bins + 1)``). Bin ``b`` is the half-open
    interval ``(e_b, e_{b+1}]`` (right-closed), and a confidence of exactly 0 (impossible for
    finite logits, since the confidence is ``>= 1/C``) goes to bin 0: so a confidence on an
    edge ``e_b`` belongs to the bin *below* it, and a confidence of 1 to the last bin.
    ``n_b``, ``acc_b`` and ``conf_b`` are the count, accuracy and mean confidence of the kept
    examples in bin ``b``; empty bins contribute 0. Binning uses ``searchsorted`` and
    ``segment_sum`` (no Python loop over the data), so this is jit-able.

    Args:
      logits: ``[B, C]``.
      labels: ``[B]`` integer class indices in ``[0, C)``.
      num_bins: number of equal-width bins, a Python int ``>= 1``.
      mask: optional ``[B]`` boolean mask of the examples to keep (default: all).

    Returns:
      ``(ece [], bins)``: the ECE in ``[0, 1]`` (0 when no example is kept) and the per-bin
      :class:`CalibrationBins` for a reliability diagram.

    References:
      Naeini, Cooper and Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
      Binning" (AAAI 2015); Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural
      Networks" (ICML 2017).
    """
    num_bins = nx.positive_int("num_bins", num_bins)
    logits, mask = _prepare(logits, mask)
    labels = _labels(labels, logits.shape[0])
    dtype = logits.dtype

    peak = jnp.max(logits, axis=-1, keepdims=True)
    confidence = 1.0 / jnp.sum(jnp.exp(logits - peak), axis=-1)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(dtype)

    edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=dtype)
    # searchsorted(side="left") gives i with edges[i-1] < conf <= edges[i]: bin i - 1.
    index = jnp.clip(jnp.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)

    keep = mask > 0
    weights = keep.astype(dtype)
    counts = jax.ops.segment_sum(weights, index, num_segments=num_bins)
    conf_sum = jax.ops.segment_sum(jnp.where(keep, confidence, 0.0), index, num_segments=num_bins)
    acc_sum = jax.ops.segment_sum(jnp.where(keep, correct, 0.0), index, num_segments=num_bins)

    n = jnp.sum(weights)
    ece = jnp.where(n > 0, jnp.sum(jnp.abs(acc_sum - conf_sum)) / jnp.maximum(n, 1.0), 0.0)
    safe_counts = jnp.maximum(counts, 1.0)
    bins = CalibrationBins(
        counts=counts.astype(jnp.int32),
        confidence=jnp.where(counts > 0, conf_sum / safe_counts, 0.0),
        accuracy=jnp.where(counts > 0, acc_sum / safe_counts, 0.0),
        edges=edges,
    )
    return ece, bins


def agreement(
    logits_a: ArrayLike, logits_b: ArrayLike, *, mask: ArrayLike | None = None
) -> jax.Array:
    r"""Top-1 agreement ``mean_i [argmax_c a_ic == argmax_c b_ic]`` (e.g. student vs teacher).

    Args:
      logits_a: ``[B, C]``.
      logits_b: ``[B, C]``.
      mask: optional ``[B]`` boolean mask of the examples to keep (default: all).

    Returns:
      ``[]``: the fraction of kept examples with the same predicted class; 0 when none is kept.

    References:
      Stanton et al., "Does Knowledge Distillation Really Work?" (NeurIPS 2021), top-1 agreement.
    """
    logits_a, mask = _prepare(logits_a, mask, "logits_a")
    logits_b, _ = _prepare(logits_b, None, "logits_b")
    chex.assert_equal_shape(
        [logits_a, logits_b], custom_message="logits_a and logits_b must have the same shape"
    )
    dtype = jnp.promote_types(logits_a.dtype, logits_b.dtype)
    same = (jnp.argmax(logits_a, axis=-1) == jnp.argmax(logits_b, axis=-1)).astype(dtype)
    return _masked_mean(same, mask.astype(dtype))


# --------------------------------------------------------------------------------------------
# Sample-quality metrics.
# --------------------------------------------------------------------------------------------

_PAIR_BLOCK_ELEMENTS = 1 << 22  # numbers of the [rows, m, d] differences alive at once


class ModeStats(NamedTuple):
    """Mode statistics of samples against a known mixture (:func:`mode_statistics`).

    Attributes:
      counts: ``[K]`` int32, the samples assigned to mode ``k``: those whose nearest mean is
        ``mu_k`` and that lie within ``num_std * std`` of it.
      coverage: ``[]``, the fraction of modes with ``counts_k >= min_fraction * w_k * n``.
      high_quality: ``[]``, the fraction of *all* ``n`` samples within ``num_std * std`` of their
        nearest mean (``counts.sum() / n``).
      weight_tv: ``[]``, ``0.5 * sum_k |counts_k / counts.sum() - w_k|``, the total variation
        between the empirical mode weights of the assigned samples and the true weights; 1 (its
        maximum) when no sample is assigned.
    """

    counts: jax.Array
    coverage: jax.Array
    high_quality: jax.Array
    weight_tv: jax.Array


class PrecisionRecall(NamedTuple):
    """k-NN precision and recall (:func:`knn_precision_recall`); unpacks as ``(precision, recall)``.

    Attributes:
      precision: ``[]``, the fraction of fake samples inside the real k-NN manifold.
      recall: ``[]``, the fraction of real samples inside the fake k-NN manifold.
    """

    precision: jax.Array
    recall: jax.Array


def _points(x: ArrayLike, name: str, min_rows: int = 1) -> jax.Array:
    """``x`` as a real ``[n, d]`` array with ``n >= min_rows``, else ``ValueError``."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d], got shape {x.shape}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real (floating or integer) array, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got shape {x.shape}")
    return x


def _point_pair(x: ArrayLike, y: ArrayLike, names: tuple[str, str], min_rows: int = 1):
    """Two point sets ``[n, d]``, ``[m, d]`` with the same ``d``, in their computation dtype."""
    x = _points(x, names[0], min_rows)
    y = _points(y, names[1], min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of features, got shapes "
            f"{x.shape} and {y.shape}"
        )
    dtype = nx.compute_dtype(x, y)
    return x.astype(dtype), y.astype(dtype)


def _number(name: str, value, *, minimum: float = 0.0, strict: bool = True) -> float:
    """``value`` as a finite Python float ``> minimum`` (``>=`` when not strict), else ``ValueError``."""
    relation = ">" if strict else ">="
    message = f"{name} must be a finite number {relation} {minimum}, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(message)
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(message) from err
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(message)
    return value


def _row_map(fn: Callable[[jax.Array, jax.Array], jax.Array], a: jax.Array, b: jax.Array):
    """``stack_i fn(d2_i, i)`` with ``d2_i = ||a_i - b_j||^2 [m]``, a block of rows at a time."""
    m, d = b.shape
    block = max(1, min(a.shape[0], _PAIR_BLOCK_ELEMENTS // max(1, m * d)))

    def row(args):
        a_i, i = args
        return fn(jnp.sum(jnp.square(b - a_i), axis=-1), i)

    return jax.lax.map(row, (a, jnp.arange(a.shape[0])), batch_size=block)


def _safe_sqrt(d2: jax.Array) -> jax.Array:
    """``sqrt(d2)`` with gradient 0 (not NaN) at ``d2 = 0`` (double ``where``)."""
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def _assign(samples, means, std, num_std):
    d2 = _row_map(lambda d2, _: d2, samples, means)  # [n, K]
    return jnp.argmin(d2, axis=-1), jnp.min(d2, axis=-1) <= (num_std * std) ** 2


def mode_assignment(
    samples: ArrayLike, means: ArrayLike, *, std: float, num_std: float = 3.0
) -> tuple[jax.Array, jax.Array]:
    """Each sample's nearest mode and whether it is assigned to it, as :func:`mode_statistics`
    counts them: ``nearest_i = argmin_k ||x_i - mu_k||`` (ties to the lowest index) and
    ``inside_i = ||x_i - mu_nearest_i|| <= num_std * std``.

    Args:
      samples: ``[n, d]``; means: ``[K, d]``; std, num_std: Python floats ``> 0``.

    Returns:
      ``(nearest [n] int, inside [n] bool)``.
    """
    std = _number("std", std)
    num_std = _number("num_std", num_std)
    samples, means = _point_pair(samples, means, ("samples", "means"))
    return _assign(samples, means, std, num_std)


def mode_statistics(
    samples: ArrayLike,
    means: ArrayLike,
    weights: ArrayLike,
    *,
    std: float,
    num_std: float = 3.0,
    min_fraction: float = 0.2,
) -> ModeStats:
    r"""Mode counts, coverage, sample quality and weight error against a known mixture.

    Each sample ``x_i`` goes to its nearest mean ``k(i) = argmin_k ||x_i - mu_k||`` (ties to the
    lowest index) and is *assigned* to that mode when ``||x_i - mu_k(i)|| <= num_std * std``
    (on the boundary counts as inside); other samples are assigned to no mode. With
    ``c_k = #{i assigned to k}``, ``A = sum_k c_k`` and the weights normalised to ``w_k / sum w``:

    - ``coverage = (1/K) #{k : c_k >= min_fraction * w_k * n}`` (a mode expected to get
      ``w_k n`` samples is covered when it gets at least ``min_fraction`` of that; a mode of
      weight 0 is always covered);
    - ``high_quality = A / n``;
    - ``weight_tv = 0.5 sum_k |c_k / A - w_k|`` in ``[0, 1]``, and ``weight_tv = 1`` when
      ``A = 0``: with no assigned sample the empirical mode weights are undefined, and the
      maximum (worst) value keeps a generator whose samples all miss the modes from scoring well.

    Args:
      samples: ``[n, d]`` samples, ``n >= 1``.
      means: ``[K, d]`` mode centres.
      weights: ``[K]`` non-negative mixture weights (normalised here; need not sum to 1).
      std: the (isotropic) standard deviation of each mode, a Python float ``> 0``.
      num_std: the assignment radius in units of ``std``, a Python float ``> 0``.
      min_fraction: the fraction of its expected count a mode needs to be covered, ``>= 0``.

    Returns:
      :class:`ModeStats` ``(counts [K] int32, coverage [], high_quality [], weight_tv [])``.

    References:
      Srivastava et al., "VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational
      Learning" (NeurIPS 2017), modes captured and high-quality samples within 3 std.
    """
    std = _number("std", std)
    num_std = _number("num_std", num_std)
    min_fraction = _number("min_fraction", min_fraction, strict=False)
    samples, means = _point_pair(samples, means, ("samples", "means"))
    weights = jnp.asarray(weights)
    num_modes = means.shape[0]
    if weights.shape != (num_modes,):
        raise ValueError(
            f"weights must have shape [K] = ({num_modes},) like means, got {weights.shape}"
        )
    dtype = samples.dtype
    weights = weights.astype(dtype)
    weights = weights / jnp.sum(weights)
    n = samples.shape[0]

    nearest, inside = _assign(samples, means, std, num_std)
    counts = jax.ops.segment_sum(inside.astype(jnp.int32), nearest, num_segments=num_modes)

    counts_f = counts.astype(dtype)
    assigned = jnp.sum(counts_f)
    covered = counts_f >= min_fraction * weights * n
    empirical = counts_f / jnp.maximum(assigned, 1.0)
    tv = 0.5 * jnp.sum(jnp.abs(empirical - weights))
    return ModeStats(
        counts=counts,
        coverage=jnp.mean(covered.astype(dtype)),
        high_quality=assigned / n,
        weight_tv=jnp.where(assigned > 0, tv, jnp.ones((), dtype)),
    )


def _bandwidths(bandwidths) -> tuple[float, ...]:
    if isinstance(bandwidths, int | float) and not isinstance(bandwidths, bool):
        bandwidths = (bandwidths,)
    if not isinstance(bandwidths, Sequence) or len(bandwidths) == 0:
        raise ValueError(
            f"bandwidths must be a non-empty sequence of numbers > 0, got {bandwidths!r}"
        )
    return tuple(_number("bandwidths", h) for h in bandwidths)


def mmd_rbf(
    x: ArrayLike,
    y: ArrayLike,
    *,
    bandwidths: float | Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0),
) -> jax.Array:
    r"""Unbiased squared MMD with a sum of RBF kernels (a U-statistic).

    With ``k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2))`` over the bandwidths ``h``,

    ``MMD_u^2 = 1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
    - 2/(n m) sum_{i, j} k(x_i, y_j)``.

    The within-set sums leave out the diagonal ``i = j`` (by index, so exact duplicates of
    distinct samples still count), which makes this an unbiased estimate of the population
    ``MMD^2``: it is symmetric in ``(x, y)`` and can be slightly negative when the two
    distributions are (nearly) the same. The kernel is the plain *sum* (not the mean) of the RBF
    kernels, so ``k(a, a) = len(bandwidths)`` and the value is at most ``2 len(bandwidths)``.

    Args:
      x: ``[n, d]`` samples, ``n >= 2``.
      y: ``[m, d]`` samples, ``m >= 2``.
      bandwidths: a number or non-empty sequence of numbers ``h > 0`` (static).

    Returns:
      ``[]``: the unbiased ``MMD^2`` estimate (not its square root).

    References:
      Gretton, Borgwardt, Rasch, Schölkopf and Smola, "A Kernel Two-Sample Test" (JMLR 2012),
      lemma 6 (``MMD_u^2``); Li, Swersky and Zemel, "Generative Moment Matching Networks"
      (ICML 2015), sums of RBF kernels over several bandwidths.
    """
    scales = _bandwidths(bandwidths)
    x, y = _point_pair(x, y, ("x", "y"), min_rows=2)
    dtype = x.dtype
    inv = jnp.asarray([0.5 / (h * h) for h in scales], dtype)
    n, m = x.shape[0], y.shape[0]

    def kernel(d2):
        return jnp.sum(jnp.exp(-d2[..., None] * inv), axis=-1)

    def within(d2, i):
        return jnp.sum(jnp.where(jnp.arange(d2.shape[0]) == i, 0.0, kernel(d2)))

    def across(d2, _):
        return jnp.sum(kernel(d2))

    kxx = jnp.sum(_row_map(within, x, x)) / (n * (n - 1))
    kyy = jnp.sum(_row_map(within, y, y)) / (m * (m - 1))
    kxy = jnp.sum(_row_map(across, x, y)) / (n * m)
    return kxx + kyy - 2.0 * kxy


def energy_distance(x: ArrayLike, y: ArrayLike, *, unbiased: bool = False) -> jax.Array:
    r"""Energy distance ``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` between two sample sets.

    By default the V-statistic: every expectation is the plain mean over all pairs,
    ``2/(n m) sum_{i,j} ||x_i - y_j|| - 1/n^2 sum_{i,j} ||x_i - x_j|| - 1/m^2 sum_{i,j}
    ||y_i - y_j||`` (the zero ``i = j`` terms included). This is the energy distance between the
    two empirical distributions, so it is ``>= 0`` (up to rounding), 0 for identical sets, and
    in 1-D it equals ``scipy.stats.energy_distance(x, y) ** 2`` (scipy returns the square root).
    With ``unbiased=True`` the within-set means are over ``i != j`` (divided by ``n(n-1)`` and
    ``m(m-1)``): the U-statistic, unbiased for the population value but possibly negative.

    The norms use a double-``where`` square root, so the value is differentiable in ``x`` and
    ``y`` with a finite gradient (0 for that term) at coincident points, including the diagonal.

    Args:
      x: ``[n, d]`` samples (``n >= 2`` when ``unbiased``).
      y: ``[m, d]`` samples (``m >= 2`` when ``unbiased``).
      unbiased: U-statistic instead of the V-statistic (static).

    Returns:
      ``[]``: the (squared-scale) energy distance; take ``sqrt`` for scipy's convention.

    References:
      Székely and Rizzo, "Energy statistics: A class of statistics based on distances"
      (J. Stat. Plan. Inference 2013), definition 1 and section 4.
    """
    x, y = _point_pair(x, y, ("x", "y"), min_rows=2 if unbiased else 1)
    n, m = x.shape[0], y.shape[0]

    def row_sum(d2, _):
        return jnp.sum(_safe_sqrt(d2))

    dxy = jnp.sum(_row_map(row_sum, x, y)) / (n * m)
    sxx = jnp.sum(_row_map(row_sum, x, x))
    syy = jnp.sum(_row_map(row_sum, y, y))
    if unbiased:
        dxx, dyy = sxx / (n * (n - 1)), syy / (m * (m - 1))
    else:
        dxx, dyy = sxx / (n * n), syy / (m * m)
    return 2.0 * dxy - dxx - dyy


def _knn_radius2(points: jax.Array, k: int) -> jax.Array:
    """Squared distance from each point to its ``k``-th nearest other point (self left out)."""

    def kth(d2, i):
        index = jnp.arange(d2.shape[0])
        d2 = jnp.where(index == i, jnp.inf, d2)
        if k > 16:
            return -jax.lax.top_k(-d2, k)[0][k - 1]
        # Small k: drop the current minimum (one entry, so duplicates count) k - 1 times;
        # several times faster than top_k on CPU.
        for _ in range(k - 1):
            d2 = jnp.where(index == jnp.argmin(d2), jnp.inf, d2)
        return jnp.min(d2)

    return _row_map(kth, points, points)


def _inside_fraction(queries: jax.Array, centres: jax.Array, radius2: jax.Array) -> jax.Array:
    """Fraction of queries within ``sqrt(radius2_j)`` of at least one centre ``j``."""

    def inside(d2, _):
        return jnp.any(d2 <= radius2)

    return jnp.mean(_row_map(inside, queries, centres).astype(queries.dtype))


def knn_precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = 5) -> PrecisionRecall:
    r"""Improved precision and recall of fake samples against real ones with k-NN balls.

    The real manifold is the union of the balls ``B(r_i, rho_i)`` around the real samples, with
    ``rho_i`` the distance from ``r_i`` to its ``k``-th nearest *other* real sample (``r_i``
    itself is left out by index; an exact duplicate of ``r_i`` is a neighbour at distance 0).
    The fake manifold is built from the fake samples the same way. Then

    - ``precision = (1/m) #{j : exists i, ||f_j - r_i|| <= rho_i}``;
    - ``recall = (1/n) #{i : exists j, ||r_i - f_j|| <= rho'_j}`` (``rho'_j``: fake radii).

    Balls are closed (a point on the sphere is inside), so identical sets give exactly 1, 1.

    Args:
      real: ``[n, d]`` real samples, ``n >= k + 1``.
      fake: ``[m, d]`` generated samples, ``m >= k + 1``.
      k: the neighbour defining the ball radii, a Python int ``>= 1`` (static; the paper uses 3).

    Returns:
      :class:`PrecisionRecall` ``(precision [], recall [])``, each in ``[0, 1]``.

    References:
      Kynkäänniemi, Karras, Laine, Lehtinen and Aila, "Improved Precision and Recall Metric for
      Assessing Generative Models" (NeurIPS 2019), equations 1-3.
    """
    k = nx.positive_int("k", k)
    real, fake = _point_pair(real, fake, ("real", "fake"), min_rows=k + 1)
    real_radius2 = _knn_radius2(real, k)
    fake_radius2 = _knn_radius2(fake, k)
    return PrecisionRecall(
        precision=_inside_fraction(fake, real, real_radius2),
        recall=_inside_fraction(real, fake, fake_radius2),
    )


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by ``eigh`` (negative eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def frechet_distance(x_features: ArrayLike, y_features: ArrayLike) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets (FID on given features).

    ``FD = ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^{1/2})`` with the sample means and the
    unbiased (``ddof = 1``) sample covariances. ``S_x S_y`` is not symmetric, so the trace of
    its square root is computed as ``Tr((S_x^{1/2} S_y S_x^{1/2})^{1/2}) = sum_l sqrt(lambda_l)``
    from the eigenvalues of the symmetric PSD matrix ``S_x^{1/2} S_y S_x^{1/2}`` (similar to
    ``S_x S_y``, so the traces agree), with ``S_x^{1/2}`` from ``eigh`` too and negative
    rounding-error eigenvalues clipped to 0: always real, no ``sqrtm`` iterations, and fine for
    singular covariances (fewer samples than features). A tiny negative total from rounding is
    clipped to 0.

    This is a host-side metric: inputs are copied to float64 numpy and the result is a Python
    float. It is not jit-able or differentiable.

    Args:
      x_features: ``[n, f]`` features, ``n >= 2``.
      y_features: ``[m, f]`` features, ``m >= 2``.

    Returns:
      The Fréchet distance (a squared distance, ``>= 0``) as a Python float.

    References:
      Dowson and Landau, "The Fréchet distance between multivariate normal distributions"
      (J. Multivariate Anal. 1982); Heusel et al., "GANs Trained by a Two Time-Scale Update Rule
      Converge to a Local Nash Equilibrium" (NeurIPS 2017), the FID.
    """
    arrays = []
    for name, value in (("x_features", x_features), ("y_features", y_features)):
        array = np.asarray(value)
        if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
            raise ValueError(f"{name} must have shape [n, f] with n >= 2, got {array.shape}")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{name} must be a real array, got dtype {array.dtype}")
        arrays.append(array.astype(np.float64))
    x, y = arrays
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            "x_features and y_features must have the same number of features, got shapes "
            f"{x.shape} and {y.shape}"
        )
    diff = x.mean(axis=0) - y.mean(axis=0)
    cov_x = np.atleast_2d(np.cov(x, rowvar=False))
    cov_y = np.atleast_2d(np.cov(y, rowvar=False))
    root_x = _psd_sqrt(cov_x)
    middle = root_x @ cov_y @ root_x
    middle = 0.5 * (middle + middle.T)
    trace_root = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh(middle), 0.0)))
    value = diff @ diff + np.trace(cov_x) + np.trace(cov_y) - 2.0 * trace_root
    return float(max(value, 0.0))


# ------------------------------------------------------------------------------------------------
# pass@k.
# ------------------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    """``x`` as a numpy array when its value is known (not traced under ``jit``), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def pass_at_k(num_samples: ArrayLike, num_correct: ArrayLike, k: int | ArrayLike) -> jax.Array:
    r"""Unbiased pass@k estimate ``1 - C(n - c, k) / C(n, k)`` from ``n`` samples, ``c`` correct.

    The probability that at least one of ``k`` samples drawn without replacement from the ``n``
    generated ones is correct; its expectation over ``c ~ Binomial(n, p)`` is ``1 - (1 - p)^k``,
    the pass@k of a per-sample success rate ``p`` (the naive ``1 - (1 - c/n)^k`` is biased).
    Exactly 1 when ``n - c < k``, exactly 0 when ``c = 0``. Elementwise and jit-able.

    In log space: for a Python int ``k`` (the usual case), ``C(n - c, k) / C(n, k) =
    prod_{i < k} (1 - c / (n - i))`` is summed as ``sum_i log1p(-c / (n - i))`` (accurate to a
    few float32 ulps for any ``n``); for an array ``k`` the log ratio is
    ``gammaln(n - c + 1) - gammaln(n - c - k + 1) - gammaln(n + 1) + gammaln(n - k + 1)``
    (``jax.scipy.special.gammaln``), which loses accuracy in float32 for large ``n``
    (absolute errors ~1e-2 at ``n`` ~ 1e4): enable float64 there. The result is ``-expm1`` of it.

    Args:
      num_samples: ``n``, integers ``>= k`` (any shape, broadcast with the others).
      num_correct: ``c``, integers in ``[0, n]``.
      k: a Python int ``>= 1`` (static), or an integer array.

    Returns:
      pass@k estimates in ``[0, 1]``: float32, or float64 when x64 is enabled and the inputs are
      integers or float64.

    Raises:
      ValueError: ``k < 1``, ``k > n`` or ``c`` outside ``[0, n]``, wherever the values are known
        (not traced).

    References:
      Chen et al. (2021), Evaluating Large Language Models Trained on Code (the Codex paper),
      equation (1).
    """
    if isinstance(k, bool):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    static_k = isinstance(k, (int, np.integer))
    n, c = jnp.asarray(num_samples), jnp.asarray(num_correct)
    k_arr = None if static_k else jnp.asarray(k)
    k_np = np.asarray(k) if static_k else _concrete(k)
    n_np, c_np = _concrete(num_samples), _concrete(num_correct)
    if k_np is not None and np.any(k_np < 1):
        raise ValueError(f"k must be >= 1, got {k}")
    if n_np is not None and k_np is not None and np.any(k_np > n_np):
        raise ValueError(f"k must be <= num_samples, got k={k} and num_samples={num_samples}")
    if n_np is not None and c_np is not None and (np.any(c_np < 0) or np.any(c_np > n_np)):
        raise ValueError(
            f"num_correct must be in [0, num_samples], got {num_correct} and {num_samples}"
        )
    dtype = jnp.result_type(n, c) if k_arr is None else jnp.result_type(n, c, k_arr)
    if jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.promote_types(dtype, jnp.float32)
    else:
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    n, c = n.astype(dtype), c.astype(dtype)
    if static_k:
        i = jnp.arange(int(k), dtype=dtype)
        remaining = n[..., None] - i  # n - i >= 1 for i < k <= n
        nonzero = (remaining - c[..., None]) > 0  # every factor (n - c - i)/(n - i) > 0
        terms = jnp.log1p(-c[..., None] / jnp.where(nonzero, remaining, 1.0))
        log_ratio = jnp.sum(jnp.where(nonzero, terms, 0.0), axis=-1)
        impossible = n - c < k
    else:
        kk = k_arr.astype(dtype)
        impossible = n - c < kk
        fail = jnp.where(impossible, kk, n - c)  # n - c >= k wherever the value is used
        log_ratio = (
            gammaln(fail + 1.0)
            - gammaln(fail - kk + 1.0)
            - gammaln(n + 1.0)
            + gammaln(jnp.maximum(n - kk, 0.0) + 1.0)
        )
    value = jnp.where(impossible, 1.0, -jnp.expm1(jnp.minimum(log_ratio, 0.0)))
    return (value + 0.0).astype(dtype)  # + 0.0 turns the -0.0 of c = 0 into 0.0
