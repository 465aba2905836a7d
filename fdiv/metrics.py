r"""Classifier metrics from logits: accuracy, negative log-likelihood, calibration (ECE), agreement.

All take logits ``[B, C]`` (log space in; never probabilities) and an optional example mask
``where`` (``[B]`` booleans, ``False`` examples are left out, e.g. the padding of the last
evaluation batch), and return a scalar mean over the kept examples. A mask that keeps no example
gives 0 (not NaN), so per-batch values can be combined weighted by their counts. Computation is in
float32 for bfloat16 / float16 logits (float64 for float64), and results are returned in that
computation dtype: a metric such as ``0.9931`` does not survive a round trip through bfloat16.
Metrics are jit-able; ``num_bins`` is static.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx

__all__ = [
    "CalibrationBins",
    "accuracy",
    "agreement",
    "expected_calibration_error",
    "nll",
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
    """Logits in the computation dtype and a float mask ``[B]`` (ones when ``where`` is None)."""
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
        chex.assert_shape(where, logits.shape[:1], custom_message="where must have shape [B]")
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


def accuracy(logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Top-1 accuracy ``mean_i [argmax_c logits_ic == labels_i]`` over the kept examples.

    Ties in the logits go to the lowest class index (``argmax``'s rule).

    Args:
      logits: ``[B, C]``.
      labels: ``[B]`` integer class indices in ``[0, C)``.
      where: optional ``[B]`` boolean mask of the examples to keep (default: all).

    Returns:
      ``[]``: the accuracy in ``[0, 1]``; 0 when no example is kept.

    References:
      Any textbook; e.g. Murphy, "Probabilistic Machine Learning: An Introduction" (2022), 5.1.
    """
    logits, mask = _prepare(logits, where)
    labels = _labels(labels, logits.shape[0])
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype)
    return _masked_mean(correct, mask)


def nll(logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None) -> jax.Array:
    r"""Mean negative log-likelihood ``mean_i -log softmax(logits_i)[labels_i]`` (cross-entropy, nats).

    Computed from ``log_softmax`` (no ``log(p + eps)``): ``-inf`` logits in the other classes
    are exact and give a finite value; a ``-inf`` logit at the label gives ``+inf``.

    Args:
      logits: ``[B, C]``.
      labels: ``[B]`` integer class indices in ``[0, C)``.
      where: optional ``[B]`` boolean mask of the examples to keep (default: all). Left-out
        examples may hold anything (NaN logits, label -1): they do not reach the value.

    Returns:
      ``[]``: the mean NLL; 0 when no example is kept.

    References:
      Murphy, "Probabilistic Machine Learning: An Introduction" (2022), 4.2.
    """
    logits, mask = _prepare(logits, where)
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
    where: ArrayLike | None = None,
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
      where: optional ``[B]`` boolean mask of the examples to keep (default: all).

    Returns:
      ``(ece [], bins)``: the ECE in ``[0, 1]`` (0 when no example is kept) and the per-bin
      :class:`CalibrationBins` for a reliability diagram.

    References:
      Naeini, Cooper and Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
      Binning" (AAAI 2015); Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural
      Networks" (ICML 2017).
    """
    num_bins = nx.positive_int("num_bins", num_bins)
    logits, mask = _prepare(logits, where)
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
    logits_a: ArrayLike, logits_b: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
    r"""Top-1 agreement ``mean_i [argmax_c a_ic == argmax_c b_ic]`` (e.g. student vs teacher).

    Args:
      logits_a: ``[B, C]``.
      logits_b: ``[B, C]``.
      where: optional ``[B]`` boolean mask of the examples to keep (default: all).

    Returns:
      ``[]``: the fraction of kept examples with the same predicted class; 0 when none is kept.

    References:
      Stanton et al., "Does Knowledge Distillation Really Work?" (NeurIPS 2021), top-1 agreement.
    """
    logits_a, mask = _prepare(logits_a, where, "logits_a")
    logits_b, _ = _prepare(logits_b, None, "logits_b")
    chex.assert_equal_shape(
        [logits_a, logits_b], custom_message="logits_a and logits_b must have the same shape"
    )
    dtype = jnp.promote_types(logits_a.dtype, logits_b.dtype)
    same = (jnp.argmax(logits_a, axis=-1) == jnp.argmax(logits_b, axis=-1)).astype(dtype)
    return _masked_mean(same, mask.astype(dtype))
