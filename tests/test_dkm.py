"""Deep kernel machines (fdiv.losses.dkm) against independent references, and the experiment.

References: numpy/scipy for the KL and the Gaussian likelihood, Monte Carlo over ReLU features
for the arc-cosine kernel, pairwise distances for the squared-exponential kernel, the exact GP
posterior in numpy for the sparse predictions, and the optimiser itself for the two limits of nu.
Everything runs in float64.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.spatial.distance
import scipy.stats

from fdiv import testing
from fdiv.losses import dkm

KERNEL_PARAMS = {"relu": {"weight_var": 1.3, "bias_var": 0.2}, "sqexp": {"lengthscale": 0.9}}
NO_JITTER = (0.0, 0.0)
# The arc-cosine kernel's programs take the longest to compile: its variants of the structural
# tests run with -m slow; its values are checked by default against Monte Carlo.
BOTH_KERNELS = [pytest.param("relu", marks=pytest.mark.slow), "sqexp"]


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """jaxlib's CPU LAPACK calls run on OpenBLAS, whose threads make small triangular solves
    tens of times slower on a busy 2-core machine; the experiment limits them the same way."""
    import threadpoolctl

    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


def _jit(fn, **kwargs):
    """``fn`` with its keyword arguments bound, compiled once (eager op-by-op is slower here)."""
    return jax.jit(functools.partial(fn, **kwargs))


def _spd(rng, p, ridge=0.1):
    a = rng.normal(size=(p, p + 3))
    return a @ a.T / (p + 3) + ridge * np.eye(p)


def _np_kl(g, k):
    p = g.shape[0]
    return 0.5 * (
        np.trace(np.linalg.solve(k, g)) - p + np.linalg.slogdet(k)[1] - np.linalg.slogdet(g)[1]
    )


# ------------------------------------------------------------------------------------------------
# KL terms and the parametrisation.


def test_gram_kl_matches_numpy():
    rng = np.random.default_rng(0)
    gs = np.stack([_spd(rng, 6) for _ in range(3)])
    ks = np.stack([_spd(rng, 6) for _ in range(3)])
    got = np.asarray(dkm.gram_kl(gs, ks))
    want = [_np_kl(g, k) for g, k in zip(gs, ks, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert float(dkm.gram_kl(gs[0], gs[0])) == pytest.approx(0.0, abs=1e-12)


def test_output_kl_matches_numpy():
    rng = np.random.default_rng(1)
    mu, s, k = rng.normal(size=(5, 3)), _spd(rng, 5), _spd(rng, 5)
    want = sum(_np_kl(s, k) + 0.5 * mu[:, c] @ np.linalg.solve(k, mu[:, c]) for c in range(3))
    assert float(dkm.output_kl(mu, s, k)) == pytest.approx(want, rel=1e-10)


def test_gram_parametrisation_round_trips():
    rng = np.random.default_rng(2)
    g = _spd(rng, 7)
    v = dkm.cholesky_param(g)
    np.testing.assert_allclose(np.asarray(dkm.gram_from_param(v)), g, rtol=1e-10, atol=1e-12)
    # every parameter gives a positive definite Gram
    assert np.all(np.linalg.eigvalsh(np.asarray(dkm.gram_from_param(rng.normal(size=(7, 7))))) > 0)


# ------------------------------------------------------------------------------------------------
# Kernels from Gram matrices.


def test_relu_kernel_is_twice_the_covariance_of_relu_features():
    """``2 E[relu(u_i) relu(u_j)]``, ``u ~ N(0, G)``: 10^6 Monte Carlo samples (std error ~2e-3)."""
    rng = np.random.default_rng(3)
    g = _spd(rng, 4, ridge=0.05)
    u = np.maximum(rng.multivariate_normal(np.zeros(4), g, size=1_000_000), 0.0)
    want = 2.0 * u.T @ u / u.shape[0]
    got = np.asarray(dkm.kernel("relu", g, jitter=NO_JITTER))
    np.testing.assert_allclose(got, want, atol=1e-2)
    np.testing.assert_allclose(np.diag(got), np.diag(g), rtol=1e-12)  # He scaling keeps g_i
    w, b = 1.7, 0.3
    scaled = dkm.kernel("arccos", g, params={"weight_var": w, "bias_var": b}, jitter=NO_JITTER)
    np.testing.assert_allclose(np.asarray(scaled), w * got + b, rtol=1e-12)


def test_sqexp_kernel_from_the_gram_of_features():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(6, 9))
    g = dkm.feature_gram(feats)
    got = np.asarray(dkm.kernel("sqexp", g, params={"lengthscale": 1.4}, jitter=NO_JITTER))
    sq = scipy.spatial.distance.cdist(feats, feats, "sqeuclidean") / 9
    np.testing.assert_allclose(got, np.exp(-sq / (2 * 1.4**2)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", BOTH_KERNELS)
def test_jitter_is_on_the_diagonal_only(name):
    rng = np.random.default_rng(5)
    g = _spd(rng, 5)
    plain = np.asarray(dkm.kernel(name, g, jitter=NO_JITTER))
    jit = np.asarray(dkm.kernel(name, g, jitter=(1e-3, 1e-2)))
    off = ~np.eye(5, dtype=bool)
    if name == "sqexp":  # the arc-cosine kernel's off-diagonal sees jittered norms too
        np.testing.assert_allclose(jit[off], plain[off], rtol=1e-12)
        want = np.diag(plain) * 1.001 + 0.01
    else:  # jittered norms, then the stabiliser again (the authors' ReluKernel)
        want = (np.diag(plain) * 1.001 + 0.01) * 1.001 + 0.01
    np.testing.assert_allclose(np.diag(jit), want, rtol=1e-12)


@pytest.mark.parametrize("name", BOTH_KERNELS)
def test_kernel_blocks_are_the_blocks_of_the_joint_kernel(name):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(9, 4))
    joint = dkm.feature_gram(x)
    m = 4  # points 0..3 inducing, 4..8 data
    blocks = dkm.GramBlocks(joint[:m, :m], joint[m:, :m], jnp.diagonal(joint)[m:])
    params = KERNEL_PARAMS[name]
    full = np.asarray(dkm.kernel(name, joint, params=params))
    got = dkm.kernel_blocks(name, blocks, params=params)
    np.testing.assert_allclose(np.asarray(got.ii), full[:m, :m], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got.ti), full[m:, :m], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got.tt), np.diag(full)[m:], rtol=1e-12)


def test_conditional_gram_with_the_prior_gives_the_prior_back():
    rng = np.random.default_rng(7)
    joint = _spd(rng, 8)
    k = dkm.GramBlocks(joint[:3, :3], joint[3:, :3], np.diag(joint)[3:])
    g = dkm.conditional_gram(k, k.ii)
    for a, b in zip(g, k, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10)


# ------------------------------------------------------------------------------------------------
# The full objective and its limits in nu.


def _problem(seed=8, p=5, n0=3, c=2):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(p, n0)), rng.normal(size=(p, c))
    return rng, dkm.feature_gram(x), y


@pytest.mark.parametrize("name", BOTH_KERNELS)
def test_objective_is_log_likelihood_minus_weighted_kls(name):
    """At ``nu = 0`` the objective is exactly the Gaussian log-likelihood (scipy), whatever the
    hidden Grams; at the NNGP stack every KL is 0."""
    rng, g0, y = _problem()
    grams = [_spd(rng, 5), _spd(rng, 5)]
    params = KERNEL_PARAMS[name]
    objective = _jit(dkm.dkm_objective, noise_var=0.3, kernel_name=name, kernel_params=params)
    obj0, terms = objective(grams, g0, y, nu=0.0)
    k_out = dkm.kernel(name, grams[-1], params=params)
    cov = np.asarray(k_out) + 0.3 * np.eye(5)
    want = sum(scipy.stats.multivariate_normal(np.zeros(5), cov).logpdf(y[:, c]) for c in range(2))
    assert float(obj0) == pytest.approx(want, rel=1e-10)
    obj, terms = objective(grams, g0, y, nu=jnp.array([0.5, 2.0]))
    kls = [_np_kl(grams[0], np.asarray(dkm.kernel(name, g0, params=params)))]
    kls.append(_np_kl(grams[1], np.asarray(dkm.kernel(name, grams[0], params=params))))
    np.testing.assert_allclose(np.asarray(terms.kls), kls, rtol=1e-9)
    assert float(obj) == pytest.approx(want - 0.5 * kls[0] - 2.0 * kls[1], rel=1e-10)
    nngp = dkm.nngp_grams(g0, 2, kernel_name=name, kernel_params=params)
    _, at_nngp = objective(nngp, g0, y, nu=1.0)
    np.testing.assert_allclose(np.asarray(at_nngp.kls), 0.0, atol=1e-9)


def _maximise(g0, y, nu_values, *, name="sqexp", layers=2):
    """Maximise the DKM objective over Cholesky parameters with L-BFGS, once per ``nu`` (one
    compiled function, ``nu`` an argument). Returns the maximisers' Grams."""
    p = g0.shape[0]

    def neg(flat, nu):
        vs = flat.reshape(layers, p, p)
        grams = [dkm.gram_from_param(v) for v in vs]
        return -dkm.dkm_objective(grams, g0, y, nu=nu, noise_var=0.1, kernel_name=name)[0]

    value_and_grad = jax.jit(jax.value_and_grad(neg))
    start = np.concatenate(
        [
            np.asarray(dkm.cholesky_param(g)).ravel()
            for g in dkm.nngp_grams(g0, layers, kernel_name=name)
        ]  # fmt: skip
    )
    out = []
    for nu in nu_values:

        def fun(flat, nu=nu):
            v, g = value_and_grad(jnp.asarray(flat), jnp.asarray(nu))
            return float(v), np.asarray(g)

        res = scipy.optimize.minimize(fun, start, jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-10})  # fmt: skip
        out.append([np.asarray(dkm.gram_from_param(v)) for v in res.x.reshape(layers, p, p)])
    return out


def test_large_nu_recovers_the_nngp_and_small_nu_follows_the_likelihood():
    """The maximiser tends to the NNGP stack ``G_l = K(G_{l-1})`` as ``nu -> inf`` (distance
    shrinking like 1/nu), and as ``nu -> 0`` it trades the prior for a higher likelihood."""
    _, g0, y = _problem(seed=9, p=4, c=1)
    nngp = [np.asarray(g) for g in dkm.nngp_grams(g0, 2, kernel_name="sqexp")]
    big, bigger, small = _maximise(g0, y, [1e2, 1e3, 1e-2])

    def dist(grams):
        return max(np.abs(g - n).max() for g, n in zip(grams, nngp, strict=True))

    assert dist(bigger) < 2e-3
    assert dist(bigger) < 0.2 * dist(big)  # ~ 1/nu
    # nu -> 0: the likelihood of the maximiser beats the NNGP's by a margin
    like = [dkm.dkm_objective(g, g0, y, nu=0.0, noise_var=0.1, kernel_name="sqexp")[0] for g in (nngp, small)]  # fmt: skip
    assert float(like[1]) > float(like[0]) + 0.5
    assert dist(small) > 10 * dist(big)


# ------------------------------------------------------------------------------------------------
# The sparse DKM.


@pytest.mark.parametrize("name", BOTH_KERNELS)
def test_sparse_objective_equals_the_full_one_when_inducing_points_are_the_data(name):
    """With ``i = t`` and the optimal output ``q`` the bound is tight. Jitter off: with it, a data
    point's entry against itself-as-inducing-point (cross formula) differs from the jittered
    diagonal by the jitter, as in the authors' code."""
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    grams = [_spd(rng, 6), None]  # one learned layer, one held at the NNGP
    kw = {"kernel_name": name, "kernel_params": KERNEL_PARAMS[name], "jitter": NO_JITTER}
    full, full_terms = _jit(dkm.dkm_objective, nu=[0.7, 3.0], noise_var=0.3, **kw)(grams, dkm.feature_gram(x), y)  # fmt: skip

    @jax.jit
    def sparse_at_optimum(grams, x, y, shift):
        k_out, _, _ = dkm.sparse_dkm_forward(grams, dkm.feature_gram_blocks(x, x), **kw)
        mu, s = dkm.optimal_output(k_out, y, 0.3)
        return dkm.sparse_dkm_objective(grams, x, x, y, mu + shift, s, nu=[0.7, 3.0], noise_var=0.3, **kw)  # fmt: skip

    sparse, terms = sparse_at_optimum(grams, x, y, 0.0)
    # rel 1e-7: with no jitter the arc-cosine kernel of a point with itself loses ~1e-8 to
    # cancellation in sqrt(g_i g_j - G_ij^2), differently in the two forms
    assert float(sparse) == pytest.approx(float(full), rel=1e-7)
    np.testing.assert_allclose(np.asarray(terms.kls), np.asarray(full_terms.kls), rtol=1e-7)
    # any other q gives a lower bound
    worse, _ = sparse_at_optimum(grams, x, y, 0.1)
    assert float(worse) < float(sparse)


@pytest.mark.parametrize("name", BOTH_KERNELS)
def test_sparse_nngp_predictions_are_the_exact_gp_posterior(name):
    """NNGP layers, inducing points = training points, optimal q: the predictive mean and
    variance at new points are the exact GP posterior under the compositional kernel, computed
    here on the joint [train; test] Gram with dense numpy algebra."""
    rng = np.random.default_rng(11)
    x, y, xs = rng.normal(size=(7, 3)), rng.normal(size=(7, 2)), rng.normal(size=(4, 3))
    kw = {"kernel_name": name, "kernel_params": KERNEL_PARAMS[name], "jitter": NO_JITTER}

    @jax.jit
    def predict(x, y, xs):
        k_train, _, _ = dkm.sparse_dkm_forward([None, None], dkm.feature_gram_blocks(x, x), **kw)
        mu, s = dkm.optimal_output(k_train, y, 0.2)
        return dkm.sparse_dkm_predict([None, None], x, xs, mu, s, **kw)

    @jax.jit
    def joint_kernel(inputs):
        joint = dkm.feature_gram(inputs)
        for _ in range(3):  # two hidden layers and the output kernel
            joint = dkm.kernel(name, joint, params=KERNEL_PARAMS[name], jitter=NO_JITTER)
        return joint

    mean, var = predict(x, y, xs)
    k = np.asarray(joint_kernel(np.concatenate([x, xs])))
    kxx, ksx, kss = k[:7, :7], k[7:, :7], np.diag(k)[7:]
    inv = np.linalg.inv(kxx + 0.2 * np.eye(7))
    np.testing.assert_allclose(np.asarray(mean), ksx @ inv @ y, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.asarray(var), kss - np.sum(ksx @ inv * ksx, 1), rtol=1e-7, atol=1e-9)  # fmt: skip


def test_minibatch_rescales_the_likelihood_only():
    rng = np.random.default_rng(12)
    xi, x, y = rng.normal(size=(3, 2)), rng.normal(size=(5, 2)), rng.normal(size=(5, 1))
    mu, s = rng.normal(size=(3, 1)), _spd(rng, 3)
    grams = [_spd(rng, 3)]
    _, t = _jit(dkm.sparse_dkm_objective, nu=2.0, noise_var=0.5)(grams, xi, x, y, mu, s)
    obj, _ = _jit(dkm.sparse_dkm_objective, nu=2.0, noise_var=0.5, num_data=20)(grams, xi, x, y, mu, s)  # fmt: skip
    want = 4.0 * float(jnp.sum(t.expected_log_lik)) - 2.0 * float(t.kls[0]) - float(t.output_kl)
    assert float(obj) == pytest.approx(want, rel=1e-12)
    # the closed-form expected log-likelihood against Gauss-Hermite quadrature over q(f_t)
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    f = np.asarray(t.mean)[None] + np.sqrt(np.asarray(t.var))[None, :, None] * nodes[:, None, None]
    quad = np.einsum("q,qtc->t", weights / weights.sum(), scipy.stats.norm(f, np.sqrt(0.5)).logpdf(y[None]))  # fmt: skip
    np.testing.assert_allclose(np.asarray(t.expected_log_lik), quad, rtol=1e-10)


# ------------------------------------------------------------------------------------------------
# Gradients (float64, against finite differences).


def test_gradient_of_the_kl():
    rng = np.random.default_rng(13)
    testing.check_loss_grads(jax.jit(dkm.gram_kl), _spd(rng, 4), _spd(rng, 4), order=1)


@pytest.mark.slow
def test_gradients_of_the_kernels():
    rng = np.random.default_rng(13)
    for name in ("relu", "sqexp"):
        fn = jax.jit(lambda g, n=name: dkm.kernel(n, g, params=KERNEL_PARAMS[n]))
        testing.check_loss_grads(fn, _spd(rng, 4), order=1)


def _full_objective(y):
    def full(vs, g0):
        grams = [dkm.gram_from_param(v) for v in vs]
        return dkm.dkm_objective(grams, g0, y, nu=[0.5, 2.0], noise_var=0.2, kernel_name="relu")[0]

    return jax.jit(full)


def _sparse_objective(y):
    def sparse(v, xi, x, mu, vs):
        obj, _ = dkm.sparse_dkm_objective(
            [dkm.gram_from_param(v)], xi, x, y, mu, dkm.gram_from_param(vs), nu=1.5,
            noise_var=0.3, kernel_name="sqexp",
        )  # fmt: skip
        return obj

    return jax.jit(sparse)


def test_gradient_of_the_sparse_objective():
    """Reverse mode (what training uses), first order, every argument."""
    rng = np.random.default_rng(14)
    xi, x, y = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    v, mu, vs = (
        rng.normal(size=(3, 3)) * 0.3,
        rng.normal(size=(3, 2)),
        rng.normal(size=(3, 3)) * 0.3,
    )
    testing.check_loss_grads(_sparse_objective(y), v, xi, x, mu, vs, order=1, modes=("rev",))


@pytest.mark.slow
def test_gradients_of_the_objectives_to_second_order():
    """Forward and reverse modes to second order: the full objective and the sparse one."""
    rng = np.random.default_rng(14)
    _, g0, y = _problem(seed=14, p=4, c=1)
    testing.check_loss_grads(_full_objective(y), rng.normal(size=(2, 4, 4)) * 0.3, g0)
    testing.check_loss_grads(jax.jit(dkm.gram_kl), _spd(rng, 4), _spd(rng, 4))
    xi, x, ys = rng.normal(size=(3, 2)), rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    args = (rng.normal(size=(3, 3)) * 0.3, xi, x, rng.normal(size=(3, 2)), rng.normal(size=(3, 3)) * 0.3)  # fmt: skip
    testing.check_loss_grads(_sparse_objective(ys), *args)


def test_jit_and_no_jit_agree():
    rng = np.random.default_rng(15)
    g, k = _spd(rng, 4), _spd(rng, 4)
    for fn in (dkm.gram_kl, lambda g, k: dkm.kernel("relu", g) @ k):
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(g, k)), np.asarray(fn(g, k)), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# Errors.


def test_bad_arguments_are_named():
    g = np.eye(3)
    with pytest.raises(
        ValueError, match="unknown kernel 'rbf'; known kernels: relu, arccos, sqexp"
    ):
        dkm.kernel("rbf", g)
    with pytest.raises(
        ValueError, match="unknown parameters \\['lengthscale'\\] for kernel 'relu'"
    ):
        dkm.kernel("relu", g, params={"lengthscale": 1.0})
    with pytest.raises(ValueError, match="square"):
        dkm.kernel("sqexp", np.ones((2, 3)))
    with pytest.raises(ValueError, match="one value per layer"):
        dkm.dkm_objective([g, g], g, np.ones((3, 1)), nu=[1.0], noise_var=0.1)
    with pytest.raises(ValueError, match="nu must be >= 0"):
        dkm.dkm_objective([g], g, np.ones((3, 1)), nu=-1.0, noise_var=0.1)
    with pytest.raises(ValueError, match="one N"):
        dkm.feature_gram_blocks(np.ones((2, 3)), np.ones((4, 5)))


# ------------------------------------------------------------------------------------------------
# The experiment.


def _tiny_config(name="dkm_diabetes", num_seeds=1):
    import importlib

    c = importlib.import_module(f"configs.{name}").get_config()
    c.num_seeds = num_seeds
    c.num_layers = 1
    c.num_inducing = 6
    c.gp_steps = 2
    c.train.total_steps = 3
    return c


def test_experiment_smoke(tmp_path):
    """The DKM alone, one seed, on diabetes (3 steps): trains, evaluates, writes the table."""
    from experiments import dkm as experiment

    config = _tiny_config()
    config.methods = ("dkm",)
    summary = experiment.run(config, str(tmp_path))
    entry = summary["methods"]["dkm"]
    assert np.isfinite(entry["rmse"]["mean"]) and np.isfinite(entry["log_lik"]["mean"])
    assert "| DKM (finite nu) |" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == [0]
    assert (tmp_path / "dkm" / "seed0" / "summary.json").exists()


@pytest.mark.slow
def test_experiment_every_method_and_the_plot(tmp_path):
    """DKM, NNGP and GP for two seeds on diabetes: seed std, the table and the Gram plot."""
    from experiments import dkm as experiment

    summary = experiment.run(_tiny_config(num_seeds=2), str(tmp_path))
    assert set(summary["methods"]) == {"dkm", "nngp", "gp"}
    for entry in summary["methods"].values():
        assert np.isfinite(entry["rmse"]["std"]) and len(entry["rmse"]["per_seed"]) == 2
    assert (tmp_path / "grams.png").stat().st_size > 0
    assert (tmp_path / "gp" / "seed1" / "summary.json").exists()


@pytest.mark.slow
def test_experiment_digits_two_seeds(tmp_path):
    """Digits (one-hot regression, minibatches), two seeds: accuracy, seed std, one GP run."""
    from experiments import dkm as experiment

    config = _tiny_config("dkm_digits", num_seeds=2)
    summary = experiment.run(config, str(tmp_path))
    methods = summary["methods"]
    assert 0.0 <= methods["dkm"]["accuracy"]["mean"] <= 1.0
    assert len(methods["nngp"]["accuracy"]["per_seed"]) == 2
    assert len(methods["gp"]["accuracy"]["per_seed"]) == 1  # deterministic on the fixed split
    assert "one run: no randomness" in (tmp_path / "results.md").read_text()


def test_experiment_rejects_bad_names():
    from experiments import dkm as experiment

    config = _tiny_config()
    config.kernel = "rbf"
    with pytest.raises(ValueError, match="kernel='rbf' is not one of"):
        experiment.validate(config)
    config = _tiny_config()
    config.methods = ("dkm", "svgp")
    with pytest.raises(ValueError, match="methods='svgp' is not one of"):
        experiment.validate(config)
    config = _tiny_config()
    config.nu_per_layer = (1.0, 2.0)
    with pytest.raises(ValueError, match="one per layer"):
        experiment.validate(config)
