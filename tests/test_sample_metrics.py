"""Tests for the sample-quality metrics of ``fdiv.metrics`` and the 2-D / image plots.

Expected values come from sources independent of the code under test:

- a hand-worked mode-statistics example (assignments, counts, coverage, HQ and TV in comments);
- plain numpy float64 brute-force U-/V-statistics for MMD and the energy distance, and
  ``scipy.stats.energy_distance`` in 1-D;
- ``sklearn.neighbors.NearestNeighbors`` + ``scipy.spatial.distance.cdist`` for k-NN
  precision / recall;
- the Fréchet formula with ``scipy.linalg.sqrtm`` on the sample covariances, and the 1-D
  closed form ``(m_x - m_y)^2 + (s_x - s_y)^2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import scipy.stats
from sklearn.neighbors import NearestNeighbors

from fdiv import metrics, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(params=[None, 7], ids=["one-block", "tiny-blocks"])
def block(request, monkeypatch):
    """Run with the default row blocks and with tiny ones (many blocks, a ragged last one)."""
    if request.param is not None:
        monkeypatch.setattr(metrics, "_PAIR_BLOCK_ELEMENTS", request.param)
    return request.param


def _data(seed, n, m, d=2, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.normal(size=(m, d)) + shift).astype(np.float32)
    return x, y


# ------------------------------------------------------------------------- mode statistics


def test_mode_statistics_hand_example(block):
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    weights = np.array([2.0, 1.0, 1.0], np.float32)  # normalised: [0.5, 0.25, 0.25]
    samples = np.array(
        [
            [0.0, 0.0],  # mode 0, distance 0        -> assigned to 0
            [1.0, 1.0],  # mode 0, distance 1.41     -> assigned to 0
            [0.0, 2.0],  # mode 0, distance 2 = 2*1  -> on the radius: assigned to 0
            [3.0, 0.0],  # mode 0, distance 3 > 2    -> not assigned
            [10.0, 1.0],  # mode 1, distance 1       -> assigned to 1
            [-5.0, -5.0],  # mode 0, distance 7.07   -> not assigned
            [11.0, 0.0],  # mode 1, distance 1       -> assigned to 1
            [9.0, -1.0],  # mode 1, distance 1.41    -> assigned to 1
        ],
        np.float32,
    )
    stats = metrics.mode_statistics(samples, means, weights, std=1.0, num_std=2.0, min_fraction=0.5)
    # counts = [3, 3, 0]; n = 8.
    np.testing.assert_array_equal(stats.counts, [3, 3, 0])
    assert stats.counts.dtype == jnp.int32
    # Expected counts w n = [4, 2, 2]; thresholds 0.5 * that = [2, 1, 1]:
    # 3 >= 2 yes, 3 >= 1 yes, 0 >= 1 no -> coverage 2/3.
    np.testing.assert_allclose(stats.coverage, 2.0 / 3.0, rtol=1e-6)
    # 6 assigned of 8 samples.
    np.testing.assert_allclose(stats.high_quality, 0.75, rtol=1e-6)
    # Empirical weights [3, 3, 0] / 6 = [0.5, 0.5, 0]:
    # TV = 0.5 (|0.5 - 0.5| + |0.5 - 0.25| + |0 - 0.25|) = 0.25.
    np.testing.assert_allclose(stats.weight_tv, 0.25, rtol=1e-6)

    jitted = jax.jit(
        lambda s, m, w: metrics.mode_statistics(s, m, w, std=1.0, num_std=2.0, min_fraction=0.5)
    )(samples, means, weights)
    for got, want in zip(jitted, stats, strict=True):
        np.testing.assert_allclose(got, want)

    # The per-sample assignment behind those counts (the comments above).
    nearest, inside = metrics.mode_assignment(samples, means, std=1.0, num_std=2.0)
    np.testing.assert_array_equal(nearest, [0, 0, 0, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(inside, [True, True, True, False, True, False, True, True])


def test_mode_statistics_none_assigned_and_perfect():
    means = np.array([[0.0, 0.0], [4.0, 0.0]], np.float32)
    weights = np.array([0.75, 0.25], np.float32)
    far = np.full((5, 2), 100.0, np.float32)
    stats = metrics.mode_statistics(far, means, weights, std=0.1)
    np.testing.assert_array_equal(stats.counts, [0, 0])
    assert float(stats.coverage) == 0.0
    assert float(stats.high_quality) == 0.0
    assert float(stats.weight_tv) == 1.0  # documented convention: no assigned sample -> TV 1

    # Exactly the true proportions, all at the centres: full coverage, HQ 1, TV 0.
    exact = np.array([[0.0, 0.0]] * 3 + [[4.0, 0.0]], np.float32)
    stats = metrics.mode_statistics(exact, means, weights, std=0.1)
    np.testing.assert_array_equal(stats.counts, [3, 1])
    assert float(stats.coverage) == 1.0
    assert float(stats.high_quality) == 1.0
    assert float(stats.weight_tv) == 0.0


def test_mode_statistics_matches_numpy_on_random_data(block):
    rng = np.random.default_rng(3)
    angles = np.arange(8) * np.pi / 4
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    weights = np.arange(1, 9) / 36.0
    samples = (means[rng.integers(0, 8, 400)] + 0.3 * rng.normal(size=(400, 2))).astype(np.float32)
    stats = metrics.mode_statistics(samples, means, weights, std=0.1, num_std=3.0)

    d = scipy.spatial.distance.cdist(samples.astype(np.float64), means)
    nearest, inside = d.argmin(1), d.min(1) <= 0.3
    counts = np.bincount(nearest[inside], minlength=8)
    np.testing.assert_array_equal(stats.counts, counts)
    np.testing.assert_allclose(stats.coverage, np.mean(counts >= 0.2 * weights * 400), rtol=1e-6)
    np.testing.assert_allclose(stats.high_quality, inside.mean(), rtol=1e-6)
    tv = 0.5 * np.abs(counts / counts.sum() - weights).sum()
    np.testing.assert_allclose(stats.weight_tv, tv, rtol=1e-5)


def test_mode_statistics_rejects_bad_arguments():
    means, weights = np.zeros((2, 2)), np.ones(2)
    with pytest.raises(ValueError, match="std"):
        metrics.mode_statistics(np.zeros((3, 2)), means, weights, std=0.0)
    with pytest.raises(ValueError, match="num_std"):
        metrics.mode_statistics(np.zeros((3, 2)), means, weights, std=1.0, num_std=-1.0)
    with pytest.raises(ValueError, match="min_fraction"):
        metrics.mode_statistics(np.zeros((3, 2)), means, weights, std=1.0, min_fraction=-0.1)
    with pytest.raises(ValueError, match="same number of features"):
        metrics.mode_statistics(np.zeros((3, 3)), means, weights, std=1.0)
    with pytest.raises(ValueError, match="samples"):
        metrics.mode_statistics(np.zeros(3), means, weights, std=1.0)
    with pytest.raises(ValueError, match="weights"):
        metrics.mode_statistics(np.zeros((3, 2)), means, np.ones(3), std=1.0)


# ------------------------------------------------------------------------------------- MMD


def np_mmd_u(x, y, bandwidths):
    """Brute-force unbiased MMD^2 (U-statistic) in float64 with explicit i != j loops."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def k(a, b):
        d2 = np.sum((a - b) ** 2)
        return sum(np.exp(-d2 / (2.0 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2.0 * kxy


@pytest.mark.parametrize("bandwidths", [(0.1, 0.5, 1.0, 2.0, 5.0), (0.7,), 1.3])
def test_mmd_matches_brute_force(block, bandwidths):
    x, y = _data(0, 23, 17, d=3, shift=0.4)
    scales = bandwidths if isinstance(bandwidths, tuple) else (bandwidths,)
    want = np_mmd_u(x, y, scales)
    got = metrics.mmd_rbf(x, y, bandwidths=bandwidths)
    np.testing.assert_allclose(got, want, atol=1e-5)
    jitted = jax.jit(lambda a, b: metrics.mmd_rbf(a, b, bandwidths=bandwidths))(x, y)
    np.testing.assert_allclose(jitted, want, atol=1e-5)
    # Symmetric in (x, y).
    np.testing.assert_allclose(metrics.mmd_rbf(y, x, bandwidths=bandwidths), got, atol=1e-6)


def test_mmd_same_vs_shifted_distribution():
    x, y = _data(1, 600, 500)
    same = float(metrics.mmd_rbf(x, y))
    shifted = float(metrics.mmd_rbf(x, y + 1.0))
    assert abs(same) < 0.01  # unbiased: centred on 0, may be slightly negative
    assert shifted > 0.2
    # Duplicated points of distinct indices count (exclusion is by index, not by distance).
    a = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(
        metrics.mmd_rbf(a, a), np_mmd_u(a, a, (0.1, 0.5, 1, 2, 5)), atol=1e-5
    )


def test_mmd_rejects_bad_arguments():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="bandwidths"):
        metrics.mmd_rbf(x, x, bandwidths=())
    with pytest.raises(ValueError, match="bandwidths"):
        metrics.mmd_rbf(x, x, bandwidths=(1.0, 0.0))
    with pytest.raises(ValueError, match="x must have at least 2 rows"):
        metrics.mmd_rbf(x[:1], x)
    with pytest.raises(ValueError, match="same number of features"):
        metrics.mmd_rbf(x, np.zeros((3, 1)))


# ------------------------------------------------------------------------- energy distance


def np_energy(x, y, unbiased=False):
    """Brute-force energy distance in float64 from full distance matrices."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dxy = scipy.spatial.distance.cdist(x, y)
    dxx = scipy.spatial.distance.cdist(x, x)
    dyy = scipy.spatial.distance.cdist(y, y)
    n, m = len(x), len(y)
    if unbiased:  # diagonals are 0, so the sums already exclude i = j
        return 2 * dxy.mean() - dxx.sum() / (n * (n - 1)) - dyy.sum() / (m * (m - 1))
    return 2 * dxy.mean() - dxx.mean() - dyy.mean()


@pytest.mark.parametrize("unbiased", [False, True], ids=["V", "U"])
def test_energy_distance_matches_brute_force(block, unbiased):
    x, y = _data(2, 31, 19, d=3, shift=0.5)
    want = np_energy(x, y, unbiased)
    np.testing.assert_allclose(
        metrics.energy_distance(x, y, unbiased=unbiased), want, rtol=1e-5, atol=1e-6
    )
    jitted = jax.jit(lambda a, b: metrics.energy_distance(a, b, unbiased=unbiased))(x, y)
    np.testing.assert_allclose(jitted, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        metrics.energy_distance(y, x, unbiased=unbiased), want, rtol=1e-5, atol=1e-6
    )


def test_energy_distance_matches_scipy_in_1d():
    rng = np.random.default_rng(4)
    u = rng.normal(size=40).astype(np.float32)
    v = (rng.normal(size=25) * 1.5 + 0.3).astype(np.float32)
    # scipy returns sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) of the V-statistic.
    want = scipy.stats.energy_distance(u.astype(np.float64), v.astype(np.float64)) ** 2
    np.testing.assert_allclose(metrics.energy_distance(u[:, None], v[:, None]), want, rtol=1e-5)


def test_energy_distance_identical_and_gradient_at_zero_distance():
    x, _ = _data(5, 20, 2)
    x[3] = x[7]  # a duplicate pair: zero distance off the diagonal too
    assert abs(float(metrics.energy_distance(x, x))) < 1e-6
    grads = jax.grad(lambda a, b: metrics.energy_distance(a, b), argnums=(0, 1))(x, x + 0.0)
    for g in grads:
        assert np.all(np.isfinite(g))
    # The gradient of the V-statistic in x matches central finite differences (float32).
    y = _data(6, 2, 15)[1]
    g = jax.grad(lambda a: metrics.energy_distance(a, y))(x)
    eps = 1e-2
    for i, j in [(0, 0), (3, 1), (7, 0)]:
        step = np.zeros_like(x)
        step[i, j] = eps
        fd = (np_energy(x + step, y) - np_energy(x - step, y)) / (2 * eps)
        np.testing.assert_allclose(g[i, j], fd, atol=2e-3)


# --------------------------------------------------------------------- k-NN precision/recall


def np_precision_recall(real, fake, k):
    """Kynkäänniemi et al. (2019) with sklearn k-NN radii and brute-force membership."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def radii(points):
        # The query points are in the index, so neighbour 0 is the point itself.
        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
        return dist[:, k]

    def inside(queries, centres, r):
        d = scipy.spatial.distance.cdist(queries, centres)
        return np.mean(np.any(d <= r[None, :], axis=1))

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3, 5, 20])
def test_knn_precision_recall_matches_sklearn(block, k):
    real, fake = _data(7, 60, 45, d=2, shift=0.8)
    fake[:10] *= 3.0  # some outliers: precision < 1
    want = np_precision_recall(real, fake, k)
    got = metrics.knn_precision_recall(real, fake, k=k)
    np.testing.assert_allclose(got.precision, want[0], atol=1e-6)
    np.testing.assert_allclose(got.recall, want[1], atol=1e-6)
    if k <= 5:  # non-trivial values (k = 20 balls swallow every real point)
        assert 0.0 < float(got.precision) < 1.0 and 0.0 < float(got.recall) < 1.0
    jitted = jax.jit(lambda a, b: metrics.knn_precision_recall(a, b, k=k))(real, fake)
    np.testing.assert_allclose(jitted, got)
    precision, recall = got  # unpacks as a pair
    assert precision is got.precision and recall is got.recall


def test_knn_precision_recall_identical_sets_and_errors():
    real, _ = _data(8, 50, 2, d=4)
    precision, recall = metrics.knn_precision_recall(real, real.copy(), k=5)
    assert float(precision) == 1.0 and float(recall) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        metrics.knn_precision_recall(real, real, k=0)
    with pytest.raises(ValueError, match="at least 6 rows"):
        metrics.knn_precision_recall(real[:5], real, k=5)


# -------------------------------------------------------------------------- Fréchet distance


def sqrtm_frechet(x, y):
    """Reference: the usual FID formula with scipy.linalg.sqrtm on the sample covariances."""
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(sx @ sy).real
    return float(np.sum((mx - my) ** 2) + np.trace(sx + sy - 2.0 * root))


def test_frechet_distance_matches_sqrtm_reference():
    rng = np.random.default_rng(9)
    f = 5
    a, b = rng.normal(size=(f, f)), rng.normal(size=(f, f))
    cov_x, cov_y = a @ a.T + 0.1 * np.eye(f), b @ b.T + 0.5 * np.eye(f)
    mu_x, mu_y = rng.normal(size=f), rng.normal(size=f) + 1.0
    x = rng.multivariate_normal(mu_x, cov_x, size=4000)
    y = rng.multivariate_normal(mu_y, cov_y, size=3000)
    got = metrics.frechet_distance(x, y)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, sqrtm_frechet(x, y), rtol=1e-8)
    np.testing.assert_allclose(metrics.frechet_distance(y, x), got, rtol=1e-8)
    # Close to the population value of the two Gaussians (sampling error only).
    population = np.sum((mu_x - mu_y) ** 2) + np.trace(
        cov_x + cov_y - 2.0 * scipy.linalg.sqrtm(cov_x @ cov_y).real
    )
    np.testing.assert_allclose(got, population, rtol=0.1)
    # jax float32 input is accepted (copied to float64 numpy).
    np.testing.assert_allclose(
        metrics.frechet_distance(jnp.asarray(x, jnp.float32), y), got, rtol=1e-4
    )


def test_frechet_distance_1d_closed_form_and_identical():
    rng = np.random.default_rng(10)
    x, y = rng.normal(1.0, 2.0, size=(500, 1)), rng.normal(-0.5, 0.5, size=(300, 1))
    sx, sy = x.std(ddof=1), y.std(ddof=1)
    want = (x.mean() - y.mean()) ** 2 + (sx - sy) ** 2
    np.testing.assert_allclose(metrics.frechet_distance(x, y), want, rtol=1e-10)
    z = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    assert abs(metrics.frechet_distance(z, z.copy())) < 1e-6
    # Fewer samples than features: singular covariances are fine.
    small = rng.normal(size=(4, 10))
    assert 0.0 <= metrics.frechet_distance(small, small + 1.0) < np.inf
    np.testing.assert_allclose(metrics.frechet_distance(small, small + 1.0), 10.0, rtol=1e-6)


def test_frechet_distance_rejects_bad_arguments():
    with pytest.raises(ValueError, match="x_features"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="y_features"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="same number of features"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 2)))


# ------------------------------------------------------------------------------------ plots


def _mixture():
    angles = np.arange(8) * np.pi / 4
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    log_w = np.log(np.arange(1, 9) / 36.0)
    std = 0.15

    def log_density(points):
        d2 = np.sum((points[:, None, :] - means) ** 2, axis=-1)
        return scipy.special.logsumexp(
            log_w - d2 / (2 * std**2) - np.log(2 * np.pi * std**2), axis=1
        )

    rng = np.random.default_rng(11)
    samples = means[rng.choice(8, size=2000, p=np.exp(log_w))] + std * rng.normal(size=(2000, 2))
    return log_density, samples


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_scatter_2d_writes_png(tmp_path):
    log_density, samples = _mixture()
    fake = samples * 1.1
    fake[:3] = 50.0  # outliers: counted, not shown
    path = tmp_path / "sub" / "scatter.png"
    plots.scatter_2d(
        fake, path, density_fn=log_density, title="mixture", reference=samples, max_points=500
    )
    assert _is_png(path)
    plain = tmp_path / "plain.png"
    plots.scatter_2d(jnp.asarray(samples), plain, extent=(-3, 3, -3, 3))
    assert _is_png(plain)
    with pytest.raises(ValueError, match="samples"):
        plots.scatter_2d(np.zeros((5, 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="extent"):
        plots.scatter_2d(samples, tmp_path / "bad.png", extent=(1, 0, 0, 1))
    with pytest.raises(ValueError, match="density_fn"):
        plots.scatter_2d(samples, tmp_path / "bad.png", density_fn=lambda p: p)


def test_scatter_grid_writes_png(tmp_path):
    log_density, samples = _mixture()
    panels = {
        "teacher": samples,
        "student": samples + 0.2,
        "collapsed": samples[:100] * 0.05 + 2.0,
        "wide": samples * 1.3,
        "five": samples[:50],
    }
    path = tmp_path / "grid.png"
    plots.scatter_grid(panels, path, density_fn=log_density, ncols=3, title="methods")
    assert _is_png(path)
    single = tmp_path / "single.png"
    plots.scatter_grid({"only": samples}, single)
    assert _is_png(single)
    with pytest.raises(ValueError, match="panels"):
        plots.scatter_grid({}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="ncols"):
        plots.scatter_grid(panels, tmp_path / "bad.png", ncols=0)


def test_heatmap_grid_writes_png_and_checks_shapes(tmp_path):
    rng = np.random.default_rng(13)
    matrices = {f"method {i}": rng.uniform(size=(3, 2)) for i in range(4)}
    path = tmp_path / "heatmaps.png"
    plots.heatmap_grid(matrices, path, row_names=["a", "b", "c"], col_names=["x", "y"], ncols=3)
    assert _is_png(path)
    with pytest.raises(ValueError, match=r"\(3, 2\) arrays"):
        plots.heatmap_grid(
            {**matrices, "bad": np.ones((2, 2))}, tmp_path / "bad.png",
            row_names=["a", "b", "c"], col_names=["x", "y"],
        )  # fmt: skip
    with pytest.raises(ValueError, match="non-empty"):
        plots.heatmap_grid({}, tmp_path / "bad.png", row_names=["a"], col_names=["x"])


def test_image_grid_writes_png(tmp_path):
    rng = np.random.default_rng(12)
    images = rng.uniform(0, 16, size=(20, 8, 8))
    path = tmp_path / "images.png"
    plots.image_grid(images, path, ncols=6, title="digits")
    assert _is_png(path)
    channel = tmp_path / "channel.png"
    plots.image_grid(images[..., None], channel, vmin=0.0, vmax=16.0)
    assert _is_png(channel)
    with pytest.raises(ValueError, match="images"):
        plots.image_grid(rng.normal(size=(4, 8, 8, 3)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="ncols"):
        plots.image_grid(images, tmp_path / "bad.png", ncols=2.5)
