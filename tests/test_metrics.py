"""Tests for ``fdiv.metrics`` (accuracy, NLL, ECE, agreement) and ``fdiv.plots``.

Expected values come from sources independent of the code under test:

- a hand-worked ECE example (bins, counts and the exact fraction written out below);
- ``np_ece``: a plain numpy loop over bins with the documented edge convention;
- constructed perfectly calibrated predictions (ECE exactly 0);
- numpy / ``scipy.special.log_softmax`` for accuracy, NLL and agreement.
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from fdiv import metrics

INF = np.inf
LOG4, LOG27 = math.log(4.0), math.log(27.0)


@pytest.fixture(params=[False, True], ids=["nojit", "jit"])
def maybe_jit(request):
    def wrap(f):
        if not request.param:
            return f
        names = inspect.signature(f).parameters
        return jax.jit(f, static_argnames=("num_bins",) if "num_bins" in names else ())

    return wrap


def np_ece(logits, labels, num_bins, where=None):
    """Reference ECE: numpy float64 loop over bins (e_b, e_{b+1}], confidence 0 in bin 0."""
    logits = np.asarray(logits, np.float64)
    keep = np.ones(len(labels), bool) if where is None else np.asarray(where, bool)
    probs = scipy.special.softmax(logits, axis=-1)
    conf = probs.max(-1)[keep]
    correct = (probs.argmax(-1) == np.asarray(labels))[keep]
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    n = keep.sum()
    ece, counts, accs, confs = 0.0, [], [], []
    for b in range(num_bins):
        in_bin = (conf > edges[b]) & (conf <= edges[b + 1])
        if b == 0:
            in_bin |= conf == 0
        counts.append(in_bin.sum())
        accs.append(correct[in_bin].mean() if in_bin.any() else 0.0)
        confs.append(conf[in_bin].mean() if in_bin.any() else 0.0)
        ece += in_bin.sum() / n * abs(accs[-1] - confs[-1])
    return ece, np.array(counts), np.array(accs), np.array(confs)


# The hand example: C = 4 classes, 4 bins with edges 0, 1/4, 1/2, 3/4, 1 (right-closed bins).
#
#  i  logits                  top prob = 1 / sum exp(l - max)   argmax  label  correct  bin
#  0  [0, 0, 0, 0]            1/4 (on an edge -> bin below)     0       0      yes      0
#  1  [0, 0, 0, -inf]         1/3                               0       2      no       1
#  2  [0, 0, -inf, -inf]      1/2 (on an edge -> bin below)     0       1      no       1
#  3  [log 4, 0, 0, 0]        4/7 = 0.5714                      0       0      yes      2
#  4  [0, -inf, -inf, -inf]   1 (the last edge -> last bin)     0       0      yes      3
#  5  [log 27, 0, 0, 0]       27/30 = 0.9                       0       3      no       3
#
# counts = [1, 2, 1, 2]
# conf   = [1/4, (1/3 + 1/2)/2 = 5/12, 4/7, (1 + 0.9)/2 = 0.95]
# acc    = [1, 0, 1, 1/2]
# ECE = (1 |1 - 1/4| + 2 |0 - 5/12| + 1 |1 - 4/7| + 2 |1/2 - 0.95|) / 6
#     = (3/4 + 5/6 + 3/7 + 9/10) / 6 = (315 + 350 + 180 + 378) / 420 / 6 = 1223 / 2520
# Masking example 5 out: bin 3 keeps only example 4 (conf 1, acc 1, gap 0), n = 5:
# ECE = (3/4 + 5/6 + 3/7) / 5 = 845 / 2100 = 169 / 420.
HAND_LOGITS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, -INF],
        [0.0, 0.0, -INF, -INF],
        [LOG4, 0.0, 0.0, 0.0],
        [0.0, -INF, -INF, -INF],
        [LOG27, 0.0, 0.0, 0.0],
    ],
    np.float32,
)
HAND_LABELS = np.array([0, 2, 1, 0, 0, 3], np.int32)


def test_ece_hand_example(maybe_jit):
    ece, bins = maybe_jit(lambda l, y: metrics.expected_calibration_error(l, y, num_bins=4))(
        HAND_LOGITS, HAND_LABELS
    )
    assert float(ece) == pytest.approx(1223 / 2520, abs=1e-6)
    np.testing.assert_array_equal(bins.counts, [1, 2, 1, 2])
    np.testing.assert_allclose(bins.confidence, [1 / 4, 5 / 12, 4 / 7, 0.95], atol=1e-6)
    np.testing.assert_allclose(bins.accuracy, [1.0, 0.0, 1.0, 0.5], atol=1e-7)
    np.testing.assert_array_equal(bins.edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert bins.counts.dtype == jnp.int32


def test_ece_hand_example_masked(maybe_jit):
    where = np.array([True, True, True, True, True, False])
    fn = maybe_jit(lambda l, y, w: metrics.expected_calibration_error(l, y, num_bins=4, mask=w))
    ece, bins = fn(HAND_LOGITS, HAND_LABELS, where)
    assert float(ece) == pytest.approx(169 / 420, abs=1e-6)
    np.testing.assert_array_equal(bins.counts, [1, 2, 1, 1])
    np.testing.assert_allclose(bins.confidence, [1 / 4, 5 / 12, 4 / 7, 1.0], atol=1e-6)
    np.testing.assert_allclose(bins.accuracy, [1.0, 0.0, 1.0, 1.0], atol=1e-7)


def test_ece_edge_convention_two_bins():
    """Confidence exactly 1/2 with 2 bins lands in bin 0 = (0, 1/2]; exactly 1 in bin 1."""
    logits = np.array([[0.0, 0.0], [0.0, -INF], [5.0, 0.0]], np.float32)
    labels = np.array([1, 0, 0])
    _, bins = metrics.expected_calibration_error(logits, labels, num_bins=2)
    np.testing.assert_array_equal(bins.counts, [1, 2])
    np.testing.assert_allclose(bins.accuracy, [0.0, 1.0])
    # One bin: everything in it; ECE = |accuracy - mean confidence|.
    ece, bins = metrics.expected_calibration_error(logits, labels, num_bins=1)
    conf = np.array([0.5, 1.0, 1.0 / (1.0 + math.exp(-5.0))])
    assert float(ece) == pytest.approx(abs(2 / 3 - conf.mean()), abs=1e-6)
    np.testing.assert_array_equal(bins.counts, [3])


@pytest.mark.parametrize("num_bins", [1, 7, 15])
@pytest.mark.parametrize("use_mask", [False, True])
def test_ece_matches_numpy_loop(num_bins, use_mask, maybe_jit):
    rng = np.random.default_rng(num_bins)
    logits = (rng.normal(size=(300, 10)) * rng.uniform(0.2, 4.0, size=(300, 1))).astype(np.float32)
    labels = rng.integers(0, 10, size=300)
    where = rng.uniform(size=300) < 0.7 if use_mask else None
    want, counts, accs, confs = np_ece(logits, labels, num_bins, where)
    fn = maybe_jit(metrics.expected_calibration_error)
    ece, bins = fn(logits, labels, num_bins=num_bins, mask=where)
    assert float(ece) == pytest.approx(want, abs=1e-6)
    np.testing.assert_array_equal(bins.counts, counts)
    np.testing.assert_allclose(bins.accuracy, accs, atol=1e-6)
    np.testing.assert_allclose(bins.confidence, confs, atol=1e-6)
    assert int(bins.counts.sum()) == (300 if where is None else where.sum())


def test_ece_perfect_calibration_is_zero(maybe_jit):
    """Confidence = accuracy in every bin (exact probabilities 1/4, 1/2, 1) gives ECE 0."""
    quarter = [0.0, 0.0, 0.0, 0.0]  # confidence 1/4: 1 of 4 correct
    half = [0.0, 0.0, -INF, -INF]  # confidence 1/2: 2 of 4 correct
    one = [0.0, -INF, -INF, -INF]  # confidence 1: all correct
    logits = np.array([quarter] * 4 + [half] * 4 + [one] * 3, np.float32)
    labels = np.array([0, 1, 2, 3] + [0, 0, 1, 1] + [0, 0, 0])
    ece, bins = maybe_jit(metrics.expected_calibration_error)(logits, labels, num_bins=10)
    assert float(ece) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(bins.accuracy[bins.counts > 0], [0.25, 0.5, 1.0], atol=1e-7)


def test_ece_bfloat16_in_float32():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(64, 5)) * 2, jnp.bfloat16)
    labels = rng.integers(0, 5, size=64)
    ece, bins = metrics.expected_calibration_error(logits, labels, num_bins=5)
    assert ece.dtype == jnp.float32 and bins.confidence.dtype == jnp.float32
    want, *_ = np_ece(np.asarray(logits.astype(jnp.float32)), labels, 5)
    assert float(ece) == pytest.approx(want, abs=1e-6)


def test_ece_bad_num_bins():
    for bad in [0, -3, 2.5, True]:
        with pytest.raises(ValueError, match="num_bins"):
            metrics.expected_calibration_error(HAND_LOGITS, HAND_LABELS, num_bins=bad)


# --------------------------------------------------------------------------------------------
# accuracy, nll, agreement


def _data(seed=0, b=50, c=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, c)).astype(np.float32) * 3
    labels = rng.integers(0, c, size=b)
    where = rng.uniform(size=b) < 0.6
    return logits, labels, where


def test_accuracy_matches_numpy(maybe_jit):
    logits, labels, where = _data()
    correct = logits.argmax(-1) == labels
    fn = maybe_jit(metrics.accuracy)
    assert float(fn(logits, labels)) == pytest.approx(correct.mean(), abs=1e-7)
    assert float(fn(logits, labels, mask=where)) == pytest.approx(correct[where].mean(), abs=1e-7)


def test_nll_matches_scipy(maybe_jit):
    logits, labels, where = _data(1)
    per_example = -scipy.special.log_softmax(logits.astype(np.float64), axis=-1)[
        np.arange(len(labels)), labels
    ]
    fn = maybe_jit(metrics.nll)
    assert float(fn(logits, labels)) == pytest.approx(per_example.mean(), rel=1e-6)
    assert float(fn(logits, labels, mask=where)) == pytest.approx(
        per_example[where].mean(), rel=1e-6
    )


def test_nll_float64():
    logits, labels, _ = _data(2)
    want = -scipy.special.log_softmax(logits.astype(np.float64), axis=-1)[
        np.arange(len(labels)), labels
    ].mean()
    with jax.enable_x64(True):
        got = metrics.nll(logits.astype(np.float64), labels)
        assert got.dtype == jnp.float64
        assert float(got) == pytest.approx(want, rel=1e-12)


def test_nll_neg_inf_logits(maybe_jit):
    """-inf logits outside the label are exact (finite NLL, zero gradient there); at the label, +inf."""
    logits = np.array([[2.0, -INF, 0.5], [-INF, -INF, 1.0], [0.0, 3.0, -INF]], np.float32)
    labels = np.array([0, 2, 1])
    finite_logits = np.where(np.isinf(logits), -1e30, logits).astype(np.float64)
    want = -scipy.special.log_softmax(finite_logits, axis=-1)[np.arange(3), labels].mean()
    fn = maybe_jit(metrics.nll)
    got = fn(logits, labels)
    assert np.isfinite(float(got))
    assert float(got) == pytest.approx(want, rel=1e-6)
    grad = np.asarray(jax.grad(lambda l: metrics.nll(l, labels))(jnp.asarray(logits)))
    assert np.isfinite(grad).all()
    assert (grad[np.isinf(logits)] == 0).all()
    assert float(fn(logits, np.array([1, 2, 1]))) == np.inf


def test_mask_ignores_garbage_in_padding(maybe_jit):
    """Padded examples (NaN logits, label -1) are left out of every metric."""
    logits, labels, _ = _data(4, b=10)
    padded = np.concatenate([logits, np.full((3, 7), np.nan, np.float32)])
    padded_labels = np.concatenate([labels, [-1, -1, -1]])
    where = np.arange(13) < 10
    for name in ["accuracy", "nll"]:
        fn = maybe_jit(getattr(metrics, name))
        assert float(fn(padded, padded_labels, mask=where)) == pytest.approx(
            float(fn(logits, labels)), rel=1e-6
        )
    ece_fn = maybe_jit(metrics.expected_calibration_error)
    got, got_bins = ece_fn(padded, padded_labels, num_bins=5, mask=where)
    want, want_bins = ece_fn(logits, labels, num_bins=5)
    assert float(got) == pytest.approx(float(want), abs=1e-7)
    np.testing.assert_array_equal(got_bins.counts, want_bins.counts)
    np.testing.assert_allclose(got_bins.confidence, want_bins.confidence, atol=1e-7)
    agree = maybe_jit(metrics.agreement)(padded, padded, mask=where)
    assert float(agree) == 1.0


def test_empty_mask_gives_zero():
    logits, labels, _ = _data(5, b=4)
    none = np.zeros(4, bool)
    assert float(metrics.accuracy(logits, labels, mask=none)) == 0.0
    assert float(metrics.nll(logits, labels, mask=none)) == 0.0
    assert float(metrics.agreement(logits, logits, mask=none)) == 0.0
    ece, bins = metrics.expected_calibration_error(logits, labels, mask=none)
    assert float(ece) == 0.0 and int(bins.counts.sum()) == 0


def test_agreement_matches_numpy(maybe_jit):
    logits_a, _, where = _data(6)
    rng = np.random.default_rng(7)
    logits_b = logits_a + rng.normal(size=logits_a.shape).astype(np.float32) * 2
    same = logits_a.argmax(-1) == logits_b.argmax(-1)
    assert 0.2 < same.mean() < 0.95  # a non-trivial case
    fn = maybe_jit(metrics.agreement)
    assert float(fn(logits_a, logits_b)) == pytest.approx(same.mean(), abs=1e-7)
    assert float(fn(logits_a, logits_b, mask=where)) == pytest.approx(same[where].mean(), abs=1e-7)
    assert float(fn(logits_a, logits_a)) == 1.0


def test_bfloat16_metrics_return_float32():
    logits, labels, _ = _data(8)
    lb = jnp.asarray(logits, jnp.bfloat16)
    exact = np.asarray(lb.astype(jnp.float32), np.float64)
    for value in [metrics.accuracy(lb, labels), metrics.nll(lb, labels), metrics.agreement(lb, lb)]:
        assert value.dtype == jnp.float32
    want = -scipy.special.log_softmax(exact, axis=-1)[np.arange(len(labels)), labels].mean()
    assert float(metrics.nll(lb, labels)) == pytest.approx(want, rel=1e-6)
    assert float(metrics.accuracy(lb, labels)) == pytest.approx(
        (exact.argmax(-1) == labels).mean(), abs=1e-7
    )


def test_bad_inputs():
    logits, labels, _ = _data(9, b=5)
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match="logits"):
        metrics.nll(logits.astype(np.int32), labels)
    with pytest.raises(AssertionError):
        metrics.accuracy(logits[0], labels)  # rank 1 logits
    with pytest.raises(AssertionError):
        metrics.accuracy(logits, labels, mask=np.ones(4, bool))
    with pytest.raises(AssertionError):
        metrics.agreement(logits, logits[:, :3])


# --------------------------------------------------------------------------------------------
# fdiv.plots (figures for the experiments' report hooks; written through fdiv.train.paths)


def test_reliability_diagram_and_line_plot_write_png(tmp_path):
    from fdiv import plots

    rng = np.random.default_rng(10)
    logits = rng.normal(size=(2000, 10)).astype(np.float32) * 3
    labels = np.where(rng.uniform(size=2000) < 0.6, logits.argmax(-1), rng.integers(0, 10, 2000))
    ece, bins = metrics.expected_calibration_error(logits, labels, num_bins=10)
    path = tmp_path / "sub" / "reliability.png"
    plots.reliability_diagram(bins, path, title="random logits", ece=float(ece))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    curves = tmp_path / "curves.png"
    plots.line_plot(
        {"train": ([0, 10, 20, 30], [2.3, 1.1, 0.7, 0.5]), "eval": ([0, 30], [2.3, 0.8])},
        curves,
        ylabel="loss",
        title="loss",
    )
    data = curves.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    with pytest.raises(ValueError, match="series"):
        plots.line_plot({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="train"):
        plots.line_plot({"train": ([0, 1], [1.0])}, tmp_path / "x.png")
