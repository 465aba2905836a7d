"""CKA and RSA (fdiv.analysis.similarity) against direct numpy / scipy computations of the
textbook formulas (explicit centring matrix, Song et al.'s unbiased HSIC written out, scipy's
pdist / spearmanr), their invariances, and the large-bandwidth limit of RBF CKA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist, pdist

from fdiv.analysis import similarity as sim


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def reps(n=24, p=6, q=4, seed=0, noise=0.3):
    """Two related representations of the same n examples (y a noisy linear map of x)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + noise * rng.normal(size=(n, q))
    return x, y


def np_hsic(k, l):
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def np_unbiased_hsic(k, l):
    """Song et al. (2012), eq. (5), term by term."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return (
        np.trace(k @ l)
        + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ k @ l @ one)
    ) / (n * (n - 3))


def np_cka(k, l, hsic=np_hsic):
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def np_rbf(x, bandwidth=1.0):
    d2 = cdist(x, x, "sqeuclidean")
    return np.exp(-d2 / (2.0 * bandwidth**2 * np.median(d2)))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_and_hsic_match_the_textbook_formulas(debiased):
    x, y = reps()
    hsic_ref = np_unbiased_hsic if debiased else np_hsic
    k, l = x @ x.T, y @ y.T
    np.testing.assert_allclose(sim.hsic(k, l, debiased=debiased), hsic_ref(k, l), rtol=1e-10)
    np.testing.assert_allclose(sim.cka(k, l, debiased=debiased), np_cka(k, l, hsic_ref), rtol=1e-10)  # fmt: skip
    np.testing.assert_allclose(sim.linear_cka(x, y, debiased=debiased), np_cka(k, l, hsic_ref), rtol=1e-10)  # fmt: skip
    for bandwidth in (0.5, 1.0, 2.0):
        want = np_cka(np_rbf(x, bandwidth), np_rbf(y, bandwidth), hsic_ref)
        got = sim.rbf_cka(x, y, bandwidth=bandwidth, debiased=debiased)
        np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(sim.rbf_gram(x, bandwidth=0.7), np_rbf(x, 0.7), rtol=1e-9, atol=1e-14)  # fmt: skip


def test_linear_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling():
    x, y = reps()
    rng = np.random.default_rng(5)
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    base = float(sim.linear_cka(x, y))
    assert 0.2 < base < 0.99  # related, not identical: the invariances are not trivially 1 = 1
    np.testing.assert_allclose(sim.linear_cka(3.7 * x @ rotation, y), base, rtol=1e-10)
    np.testing.assert_allclose(sim.linear_cka(x, 0.01 * y), base, rtol=1e-10)
    # RBF CKA (each kernel's width relative to its own median distance): also translations
    base = float(sim.rbf_cka(x, y))
    np.testing.assert_allclose(sim.rbf_cka(3.7 * x @ rotation + 5.0, y - 2.0), base, rtol=1e-9)
    # not invariant to a general invertible linear map (what tells CKA from CCA)
    stretch = np.diag([10.0, 1.0, 1.0, 1.0, 1.0, 0.1])
    assert abs(float(sim.linear_cka(x @ stretch, y)) - float(sim.linear_cka(x, y))) > 1e-3
    np.testing.assert_allclose(sim.linear_cka(x, x), 1.0, rtol=1e-12)
    np.testing.assert_allclose(sim.rbf_cka(y, y, debiased=True), 1.0, rtol=1e-12)


def test_rbf_cka_tends_to_linear_cka_as_the_bandwidth_grows():
    x, y = reps(seed=2)
    linear = float(sim.linear_cka(x, y))
    gaps = [abs(float(sim.rbf_cka(x, y, bandwidth=b)) - linear) for b in (1.0, 10.0, 100.0)]
    # the first neglected term of exp(-d^2 / (2 sigma^2)) is O(sigma^-4) against O(sigma^-2): the
    # gap falls as 1 / bandwidth^2 (0.097, 0.0013, 1.3e-5 here)
    assert gaps[0] > 1e-2 and gaps[1] < gaps[0] / 50 and gaps[2] < gaps[1] / 50, gaps


def test_minibatch_cka_averages_unbiased_hsics_over_whole_minibatches():
    x, y = reps(n=50, seed=3)  # 3 minibatches of 16; the last 2 rows are left out
    parts = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16)]

    def mean_hsic(a_of, b_of):
        return np.mean([np_unbiased_hsic(a_of(a, b), b_of(a, b)) for a, b in parts])

    lin = lambda a, b: a @ a.T  # noqa: E731
    lin_y = lambda a, b: b @ b.T  # noqa: E731
    want = mean_hsic(lin, lin_y) / np.sqrt(mean_hsic(lin, lin) * mean_hsic(lin_y, lin_y))
    np.testing.assert_allclose(sim.minibatch_cka(x, y, batch_size=16), want, rtol=1e-10)
    rbf, rbf_y = (lambda a, b: np_rbf(a)), (lambda a, b: np_rbf(b))
    want = mean_hsic(rbf, rbf_y) / np.sqrt(mean_hsic(rbf, rbf) * mean_hsic(rbf_y, rbf_y))
    np.testing.assert_allclose(sim.minibatch_cka(x, y, batch_size=16, kernel="rbf"), want, rtol=1e-9)  # fmt: skip
    # one minibatch of all rows is debiased CKA
    np.testing.assert_allclose(
        sim.minibatch_cka(x, y, batch_size=50), sim.linear_cka(x, y, debiased=True), rtol=1e-10
    )


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_matches_scipy(metric, compare):
    x, y = reps(n=15, seed=4)
    a, b = pdist(x, metric), pdist(y, metric)
    want = (stats.spearmanr if compare == "spearman" else stats.pearsonr)(a, b)[0]
    np.testing.assert_allclose(sim.rsa(x, y, metric=metric, compare=compare), want, rtol=1e-10)
    i, j = np.triu_indices(15, 1)
    np.testing.assert_allclose(np.asarray(sim.rdm(x, metric=metric))[i, j], a, rtol=1e-9, atol=1e-12)  # fmt: skip


def test_spearman_rsa_gives_ties_their_average_rank():
    grid = np.array([[i, j] for i in range(4) for j in range(3)], float)  # many equal distances
    other = grid + np.random.default_rng(0).normal(scale=0.3, size=grid.shape)
    want = stats.spearmanr(pdist(grid), pdist(other))[0]
    np.testing.assert_allclose(sim.rsa(grid, other, metric="euclidean"), want, rtol=1e-10)


def test_jit_vmap_and_image_shaped_features():
    x, y = reps(n=12, p=8)
    xs = np.stack([x, 2 * x + 1, x[:, ::-1]])
    fns = {
        "linear": lambda a, b: sim.linear_cka(a, b),
        "debiased": lambda a, b: sim.linear_cka(a, b, debiased=True),
        "rbf": lambda a, b: sim.rbf_cka(a, b, bandwidth=0.8),
        "rsa": lambda a, b: sim.rsa(a, b),
    }
    for name, fn in fns.items():
        batched = jax.jit(jax.vmap(fn, in_axes=(0, None)))(xs, y)
        np.testing.assert_allclose(batched, [fn(a, y) for a in xs], rtol=1e-10, err_msg=name)
    # [n, h, w, c] features are flattened per example
    images = x.reshape(12, 2, 2, 2)
    np.testing.assert_allclose(sim.linear_cka(images, y), sim.linear_cka(x, y), rtol=1e-12)


def test_low_precision_inputs_compute_in_float32():
    x, y = reps()
    got = sim.linear_cka(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
    assert got.dtype == jnp.float32
    rounded = [np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64) for a in (x, y)]
    np.testing.assert_allclose(got, np_cka(*(a @ a.T for a in rounded)), rtol=1e-5)


def test_a_constant_representation_has_undefined_cka():
    x, _ = reps()
    assert np.isnan(float(sim.linear_cka(x, np.ones((24, 3)))))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: sim.linear_cka(x, x[:5]), "same examples"),
        (lambda x: sim.linear_cka(x[:3], x[:3], debiased=True), "at least 4"),
        (lambda x: sim.rsa(x, x, metric="cosine"), "'correlation', 'euclidean'"),
        (lambda x: sim.rsa(x, x, compare="kendall"), "'spearman', 'pearson'"),
        (lambda x: sim.minibatch_cka(x, x, batch_size=3), "integer >= 4"),
        (lambda x: sim.minibatch_cka(x, x, batch_size=8, kernel="poly"), "'linear' or 'rbf'"),
        (lambda x: sim.rbf_cka(x, x, bandwidth=0.0), "bandwidth=0.0"),
        (lambda x: sim.linear_cka(x[0], x[0]), r"\[n, features"),
        (lambda x: sim.hsic(x, x), "square Gram matrix"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    x, _ = reps()
    with pytest.raises(ValueError, match=message):
        call(x)


def test_euclidean_rsa_has_finite_gradients():
    """The RDM's zero diagonal is a sqrt at 0: its gradient must be 0 there, not NaN."""
    x, y = reps(n=8)
    grad = jax.grad(lambda a: sim.rsa(a, y, metric="euclidean", compare="pearson"))(jnp.asarray(x))
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0
