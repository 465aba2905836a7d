"""Tests of the diffusion teachers: exact Gaussian mixtures (``fdiv.data.mixture``), the EDM
utilities and samplers (``fdiv.diffusion``) and the EDM-preconditioned denoisers
(``fdiv.models.score``).

The sampler is checked independently of any training, with the exact mixture denoiser as
``denoise_fn``; the models are checked by a short training on the ring mixture (a few seconds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

__import__("flax")

from fdiv import diffusion as dif  # noqa: E402
from fdiv import models  # noqa: E402
from fdiv.data import (  # noqa: E402
    GaussianMixture,
    mixture_denoiser,
    mixture_log_prob,
    mixture_sample,
    mixture_score,
    ring_mixture,
)

# Flax inits with "rbg" keys compile several times faster on CPU than with threefry (see
# tests/test_models.py); all model tests use them.
KEY = jax.random.key(0, impl="rbg")

RING = ring_mixture()
# A mixture with per-component stds, in 3-D, to exercise the [K] std path.
HETERO = GaussianMixture(
    means=jnp.asarray([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5], [-1.5, 1.0, 2.0]], jnp.float32),
    weights=jnp.asarray([0.5, 0.3, 0.2], jnp.float32),
    std=jnp.asarray([0.3, 0.6, 1.0], jnp.float32),
)


def _points(n, d, scale=3.0, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, (n, d)), jnp.float32)


def _nearest(mix, x):
    return jnp.argmin(jnp.linalg.norm(x[:, None, :] - mix.means[None], axis=-1), axis=1)


# --------------------------------------------------------------------------------------------
# mixture


def test_ring_mixture_defaults():
    expected = np.geomspace(0.3, 0.03, 8)
    expected /= expected.sum()
    np.testing.assert_allclose(RING.weights, expected, rtol=1e-6)
    np.testing.assert_allclose(
        RING.weights, [0.3021, 0.2174, 0.1564, 0.1126, 0.0810, 0.0583, 0.0420, 0.0302], atol=1e-4
    )
    assert RING.weights[0] / RING.weights[-1] == pytest.approx(10.0, rel=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(RING.means, axis=-1), 4.0, rtol=1e-6)
    np.testing.assert_allclose(RING.means[0], [4.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(RING.means[2], [0.0, 4.0], atol=1e-6)
    assert RING.std == 0.25
    eq = ring_mixture(4, radius=2.0, std=0.1, weights=[1, 1, 1, 1])
    np.testing.assert_allclose(eq.weights, 0.25)
    with pytest.raises(ValueError, match="weights"):
        ring_mixture(4, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="num_modes"):
        ring_mixture(0)


@pytest.mark.parametrize("mix", [RING, HETERO], ids=["ring", "hetero"])
@pytest.mark.parametrize("sigma", [0.0, 0.7, "per_sample"])
def test_score_is_grad_of_log_prob(mix, sigma):
    d = mix.means.shape[-1]
    x = _points(64, d)
    if sigma == "per_sample":
        sigma = jnp.geomspace(0.01, 20.0, 64).astype(jnp.float32)
    grad = jax.jit(
        jax.vmap(lambda xi, si: jax.grad(lambda z: mixture_log_prob(mix, z[None], sigma=si)[0])(xi))
    )(x, jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (64,)))
    score = mixture_score(mix, x, sigma=sigma)
    assert score.shape == (64, d)
    np.testing.assert_allclose(score, grad, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_log_prob_matches_scipy(sigma):
    x = _points(50, 3, scale=2.0)
    ref = np.zeros(50)
    for k in range(3):
        var = float(HETERO.std[k]) ** 2 + sigma**2
        ref += float(HETERO.weights[k]) * stats.multivariate_normal(
            np.asarray(HETERO.means[k], np.float64), var * np.eye(3)
        ).pdf(np.asarray(x, np.float64))
    np.testing.assert_allclose(mixture_log_prob(HETERO, x, sigma=sigma), np.log(ref), rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_log_prob_integrates_to_one(sigma):
    h = 0.02
    grid = np.arange(-6.0, 6.0, h) + h / 2
    xx, yy = np.meshgrid(grid, grid)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    total = float(jnp.sum(jnp.exp(mixture_log_prob(RING, pts, sigma=sigma)))) * h * h
    assert total == pytest.approx(1.0, abs=1e-3)


def test_sample_frequencies_and_moments():
    n = 20000
    x, comp = mixture_sample(RING, jax.random.key(0), n)
    assert x.shape == (n, 2) and comp.shape == (n,) and comp.dtype == jnp.int32
    counts = np.bincount(np.asarray(comp), minlength=8)
    expected = n * np.asarray(RING.weights, np.float64)
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < stats.chi2.ppf(0.999, df=7), (counts, expected)
    resid = np.asarray(x - RING.means[comp])
    np.testing.assert_allclose(resid.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(resid.std(0), 0.25, rtol=0.03)
    # per-component std [K]
    xh, ch = mixture_sample(HETERO, jax.random.key(1), n)
    for k in range(3):
        r = np.asarray(xh - HETERO.means[ch])[np.asarray(ch) == k]
        assert r.std() == pytest.approx(float(HETERO.std[k]), rel=0.05)
    # reproducible
    np.testing.assert_array_equal(mixture_sample(RING, jax.random.key(0), n)[0], x)


@pytest.mark.parametrize("mix", [RING, HETERO], ids=["ring", "hetero"])
def test_denoiser_is_posterior_mean(mix):
    """Tweedie's ``x + sigma^2 score`` equals the posterior mean computed from the component
    posteriors: ``sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))``."""
    d = mix.means.shape[-1]
    x = _points(40, d)
    sigma = jnp.geomspace(0.05, 10.0, 40).astype(jnp.float32)
    s2 = np.broadcast_to(np.asarray(mix.std, np.float64) ** 2, mix.weights.shape)
    xn, mu, w = (
        np.asarray(x, np.float64),
        np.asarray(mix.means, np.float64),
        np.asarray(mix.weights),
    )
    expected = np.zeros_like(xn)
    for i in range(40):
        var = s2 + float(sigma[i]) ** 2
        logp = np.log(w) - 0.5 * ((xn[i] - mu) ** 2).sum(-1) / var - 0.5 * d * np.log(var)
        r = np.exp(logp - logp.max())
        r /= r.sum()
        expected[i] = (r[:, None] * (mu + (s2 / var)[:, None] * (xn[i] - mu))).sum(0)
    np.testing.assert_allclose(mixture_denoiser(mix, x, sigma), expected, rtol=1e-4, atol=1e-4)
    # scalar sigma equals a constant per-sample sigma; sigma = 0 is the identity
    np.testing.assert_allclose(
        mixture_denoiser(mix, x, 0.8),
        mixture_denoiser(mix, x, jnp.full(40, 0.8)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(mixture_denoiser(mix, x, 0.0), x)


def test_denoiser_monte_carlo():
    """E[x0 | x_t] by the denoiser is the regression target: E[(x0 - D(x_t)) g(x_t)] = 0."""
    n, sigma = 200000, 1.0
    k1, k2 = jax.random.split(jax.random.key(3))
    x0, _ = mixture_sample(RING, k1, n)
    xt = x0 + sigma * jax.random.normal(k2, x0.shape)
    resid = x0 - mixture_denoiser(RING, xt, sigma)
    for g in (jnp.ones((n, 1)), xt, jnp.tanh(xt[:, ::-1])):
        assert float(jnp.max(jnp.abs(jnp.mean(resid * g, axis=0)))) < 0.02


def test_mixture_shape_errors():
    with pytest.raises(ValueError, match="x must be"):
        mixture_log_prob(RING, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="sigma"):
        mixture_score(RING, jnp.zeros((4, 2)), sigma=jnp.ones(3))


# --------------------------------------------------------------------------------------------
# EDM utilities


def test_karras_sigmas():
    s = np.asarray(dif.karras_sigmas(18))
    assert s.shape == (19,)
    assert s[0] == pytest.approx(80.0, rel=1e-5)
    assert s[-2] == pytest.approx(0.002, rel=1e-4)
    assert s[-1] == 0.0
    assert np.all(np.diff(s) < 0)
    i = 5
    ref = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert s[i] == pytest.approx(ref, rel=1e-5)
    s1 = np.asarray(dif.karras_sigmas(1, sigma_max=5.0))
    np.testing.assert_allclose(s1, [5.0, 0.0], rtol=1e-6)
    with pytest.raises(ValueError):
        dif.karras_sigmas(0)
    with pytest.raises(ValueError):
        dif.karras_sigmas(4, sigma_min=1.0, sigma_max=0.5)


def test_edm_loss_hand_value():
    sigma = jnp.asarray([0.5, 2.0])
    # weight = (s^2 + 0.25) / (0.25 s^2): s = 0.5 -> 0.5 / 0.0625 = 8; s = 2 -> 4.25 / 1 = 4.25
    np.testing.assert_allclose(dif.edm_loss_weight(sigma), [8.0, 4.25], rtol=1e-6)
    np.testing.assert_allclose(dif.edm_loss_weight(1.0, sigma_data=1.0), 2.0, rtol=1e-6)
    denoised = jnp.asarray([[[1.0, 2.0]], [[0.0, 0.0]]])  # [2, 1, 2]
    x0 = jnp.asarray([[[0.0, 0.0]], [[1.0, -1.0]]])
    # squared errors 5 and 2
    np.testing.assert_allclose(
        dif.edm_denoising_loss(denoised, x0, sigma), [8.0 * 5.0, 4.25 * 2.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        dif.edm_denoising_loss(denoised, x0, 0.5), [8.0 * 5.0, 8.0 * 2.0], rtol=1e-6
    )


def test_edm_sigma_sample():
    s = dif.edm_sigma_sample(jax.random.key(0), 50000)
    assert s.shape == (50000,) and bool(jnp.all(s > 0))
    assert float(jnp.mean(jnp.log(s))) == pytest.approx(-1.2, abs=0.03)
    assert float(jnp.std(jnp.log(s))) == pytest.approx(1.2, abs=0.03)
    s2 = dif.edm_sigma_sample(jax.random.key(0), 1000, p_mean=0.0, p_std=0.5)
    assert float(jnp.std(jnp.log(s2))) == pytest.approx(0.5, abs=0.05)


def _exact(mix):
    return lambda x, s: mixture_denoiser(mix, x, s)


@pytest.fixture(scope="module")
def heun_ring_samples():
    sigmas = dif.karras_sigmas(40)
    x_T = sigmas[0] * jax.random.normal(jax.random.key(0), (5000, 2))
    return jax.jit(lambda x: dif.heun_sample(_exact(RING), x, sigmas))(x_T)


def test_heun_exact_teacher_recovers_mixture(heun_ring_samples):
    x = heun_ring_samples
    assign = _nearest(RING, x)
    freq = np.bincount(np.asarray(assign), minlength=8) / x.shape[0]
    np.testing.assert_allclose(freq, RING.weights, atol=0.02)
    resid = np.asarray(x - RING.means[assign])
    for k in range(8):
        assert resid[np.asarray(assign) == k].std() == pytest.approx(0.25, abs=0.025)
    assert float(np.mean(np.linalg.norm(resid, axis=-1) < 0.75)) > 0.98


def test_samplers_on_gaussian_match_closed_form():
    """For one Gaussian N(m, s^2 I) the probability-flow ODE is linear:
    x(0) = m + s / sqrt(s^2 + sigma_max^2) (x_T - m). Heun is second order, Euler first."""
    m, s, smax = jnp.asarray([1.0, -2.0]), 0.7, 10.0
    gauss = GaussianMixture(means=m[None], weights=jnp.ones(1), std=s)
    x_T = smax * jax.random.normal(jax.random.key(1), (256, 2))
    exact = m + s / np.sqrt(s**2 + smax**2) * (x_T - m)

    def err(sampler, n):
        sigmas = dif.karras_sigmas(n, sigma_max=smax)
        return float(jnp.max(jnp.abs(sampler(_exact(gauss), x_T, sigmas) - exact)))

    e_heun = [err(dif.heun_sample, n) for n in (16, 32, 64)]
    e_euler = [err(dif.euler_sample, n) for n in (16, 32)]
    # measured: Heun 0.058, 0.013, 0.0030; Euler 0.236, 0.118
    assert e_heun[2] < 5e-3
    assert e_heun[0] < e_euler[0] / 3 and e_heun[1] < e_euler[1] / 3
    assert e_heun[0] / e_heun[1] > 3.0 and e_heun[1] / e_heun[2] > 3.0  # ~4: second order
    assert 1.7 < e_euler[0] / e_euler[1] < 2.5  # ~2: first order


def test_sampler_calls_and_jit():
    calls = []

    def fn(x, s):
        calls.append(jnp.shape(s))
        return jnp.zeros_like(x)

    x_T = jnp.ones((3, 2), jnp.bfloat16)
    sigmas = dif.karras_sigmas(5)
    # D = 0 gives dx/dsigma = x/sigma: every step scales x by sigma'/sigma, the last one to 0
    out = dif.heun_sample(fn, x_T, sigmas)
    assert out.dtype == jnp.bfloat16 and out.shape == (3, 2)
    np.testing.assert_allclose(np.asarray(out, np.float32), 0.0, atol=1e-6)
    assert calls and all(shape == () for shape in calls)  # one scalar sigma per call
    n_calls = []
    jax.jit(lambda x: dif.euler_sample(lambda y, t: (n_calls.append(1), y)[1], x, sigmas))(x_T)
    assert len(n_calls) == 1  # traced once inside fori_loop
    # traced sigmas
    f = jax.jit(lambda x, s: dif.euler_sample(lambda y, t: 0.5 * y, x, s))
    x = f(jnp.ones((2, 2)), jnp.asarray([2.0, 1.0, 0.0]))
    # Euler: x <- x + (s' - s)(x - x/2)/s: 1 -> 1 - 0.25 -> 0.75 - 0.375
    np.testing.assert_allclose(x, 0.375, rtol=1e-6)
    with pytest.raises(ValueError, match="sigmas"):
        dif.heun_sample(fn, x_T, jnp.ones(1))


# --------------------------------------------------------------------------------------------
# denoiser models


def test_denoiser_registry():
    assert models.denoiser_names() == ["score_cnn", "score_mlp"]
    assert "score_mlp" not in models.names()
    m = models.get_denoiser("score_mlp", hidden=[16, 16], sigma_data=2.0, name="teacher")
    assert isinstance(m, models.ScoreMLP)
    assert (m.hidden, m.sigma_data, m.name) == ((16, 16), 2.0, "teacher")
    assert isinstance(models.get_denoiser("score_cnn", channels=[8]), models.ScoreCNN)
    with pytest.raises(ValueError, match="get_denoiser"):
        models.get("score_mlp", num_classes=10)
    with pytest.raises(ValueError, match="unknown denoiser 'unet'"):
        models.get_denoiser("unet")
    with pytest.raises(TypeError, match="num_classes"):
        models.get_denoiser("score_mlp", num_classes=3)
    with pytest.raises(ValueError, match="sigma_data"):
        models.get_denoiser("score_cnn", sigma_data=0.0)
    with pytest.raises(ValueError, match="hidden"):
        models.get_denoiser("score_mlp", hidden=())


@pytest.mark.parametrize(
    "name, shape, kwargs",
    [
        ("score_mlp", (2,), {"hidden": (32, 32)}),
        ("score_cnn", (8, 8, 1), {"channels": (8, 16)}),
        ("score_cnn", (16, 2), {"channels": (4, 8, 8)}),  # 1-D, three levels
    ],
)
def test_denoiser_shapes_and_preconditioning(name, shape, kwargs):
    module = models.get_denoiser(name, sigma_data=0.5, **kwargs)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, *shape)), jnp.float32)
    sigma = jnp.asarray([0.01, 0.3, 2.0, 50.0], jnp.float32)
    variables = jax.jit(lambda k: module.init(k, x, sigma, train=False))(KEY)
    assert "batch_stats" not in variables and not models.has_batch_norm(module)
    apply = jax.jit(lambda v, x, s: module.apply(v, x, s, train=False))
    out = apply(variables, x, sigma)
    assert out.shape == x.shape and out.dtype == x.dtype
    # zero-initialised output layer: D = c_skip x at init
    c_skip = 0.25 / (sigma**2 + 0.25)
    np.testing.assert_allclose(out, dif.per_sample(c_skip, x) * x, rtol=1e-6, atol=1e-7)
    # perturb the parameters: scalar sigma equals a constant [B] sigma; finite everywhere
    leaves, tree = jax.tree_util.tree_flatten(variables)
    rngs = np.random.default_rng(1)
    noisy = jax.tree_util.tree_unflatten(
        tree, [v + 0.1 * rngs.standard_normal(v.shape).astype(np.float32) for v in leaves]
    )
    a = apply(noisy, x, 0.7)
    b = apply(noisy, x, jnp.full(4, 0.7))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(apply(noisy, x, sigma))))
    # the output depends on sigma (the noise embedding reaches the network)
    assert not np.allclose(a, apply(noisy, x, 0.71))


def test_denoiser_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(
            lambda: models.ScoreCNN(channels=(4, 4, 4, 4)).init(
                KEY, jnp.zeros((1, 6, 6, 1)), 1.0, train=False
            )
        )
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        jax.eval_shape(lambda: models.ScoreMLP().init(KEY, jnp.zeros((1, 2, 2)), 1.0, train=False))


def test_add_noise_scales_each_sample_by_its_own_level():
    x0 = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    eps = np.ones_like(x0)
    sigma = np.array([0.5, 1.0, 2.0], np.float32)
    expected = x0 + sigma[:, None, None] * eps  # by hand: row b moves by sigma_b
    np.testing.assert_array_equal(dif.add_noise(x0, sigma, eps), expected)
    np.testing.assert_array_equal(dif.add_noise(x0, 3.0, eps), x0 + 3.0)
    with pytest.raises(ValueError, match="sigma must be a scalar or"):
        dif.add_noise(x0, np.ones(2, np.float32), eps)


def test_score_from_denoiser():
    x = _points(16, 2)
    sigma = jnp.geomspace(0.1, 5.0, 16).astype(jnp.float32)
    np.testing.assert_allclose(
        models.score_from_denoiser(mixture_denoiser(RING, x, sigma), x, sigma),
        mixture_score(RING, x, sigma=sigma),
        rtol=2e-3,
        atol=1e-4,
    )
    assert models.score_from_denoiser(jnp.ones((2, 3)), jnp.zeros((2, 3)), 2.0).shape == (2, 3)
    # Tweedie both ways: the score's x0-prediction is the exact denoiser.
    np.testing.assert_allclose(
        dif.denoised_from_score(mixture_score(RING, x, sigma=sigma), x, sigma),
        mixture_denoiser(RING, x, sigma),
        rtol=1e-5,
        atol=1e-5,
    )


def test_karras_sigma_sample_draws_schedule_levels_uniformly():
    n_levels, rho = 1000, 7.0
    a, b = 0.002 ** (1 / rho), 80.0 ** (1 / rho)
    levels = (a + np.arange(n_levels) / (n_levels - 1) * (b - a)) ** rho  # ascending, numpy
    sigma = np.asarray(dif.karras_sigma_sample(jax.random.key(0), 200_000), np.float64)
    index = np.searchsorted(levels, sigma * (1 - 1e-6))
    np.testing.assert_allclose(sigma, levels[index], rtol=1e-5)  # every draw is a level
    assert index.min() == 2 and index.max() == 998  # FastGen: int(0.002 N) .. int(0.998 N)
    counts = np.bincount(index, minlength=n_levels)[2:999]
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the 997 indices
    assert 2.2 < np.median(sigma) < 2.9  # the median level is about 2.5
    # SiD's t_max = 800: sigma up to (0.8 b + 0.2 a)^rho = 24.4 (here level 800 of 1000: 24.5).
    sid = dif.karras_sigma_sample(jax.random.key(1), 10_000, index_range=(0.0, 0.8))
    assert float(sid.max()) <= levels[800] * (1 + 1e-6) and abs(levels[800] - 24.4) < 0.2
    with pytest.raises(ValueError, match="index_range"):
        dif.karras_sigma_sample(jax.random.key(0), 4, index_range=(0.9, 0.1))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        dif.karras_sigma_sample(jax.random.key(0), 4, sigma_min=1.0, sigma_max=0.5)


@pytest.mark.parametrize(
    "module, shape, feature_shape",
    [
        (models.ScoreMLP(hidden=(16, 8)), (2,), (8,)),
        (models.ScoreCNN(channels=(8, 16)), (8, 8, 1), (4, 4, 16)),
    ],
)
def test_denoiser_features_and_the_discriminator_head_on_them(module, shape, feature_shape):
    from fdiv.models.critic import FeatureDiscriminator

    x = jax.random.normal(KEY, (3, *shape))
    params = module.init(KEY, x, jnp.ones(3), train=False)
    denoised, features = module.apply(params, x, jnp.ones(3), train=False, return_features=True)
    assert features.shape == (3, *feature_shape)
    np.testing.assert_array_equal(denoised, module.apply(params, x, jnp.ones(3), train=False))
    head = FeatureDiscriminator(hidden=(8,))
    logits = head.apply(head.init(KEY, features, train=False), features, train=False)
    assert logits.shape == (3,) and np.all(np.isfinite(logits))


RING_SIGMA_DATA = float(np.sqrt(4.0**2 / 2 + 0.25**2))  # per-coordinate std of the ring


def _train(module, sample_x0, steps, batch, lr, sigma_data, key):
    """Plain EDM training: returns (params, per-step losses)."""
    init_key, run_key = jax.random.split(key)
    x_init = sample_x0(init_key, 1)
    params = jax.jit(lambda k: module.init(k, x_init, jnp.ones(1), train=False))(init_key)
    opt = optax.adam(lr)

    def loss_fn(p, k):
        k1, k2, k3 = jax.random.split(k, 3)
        x0 = sample_x0(k1, batch)
        sigma = dif.edm_sigma_sample(k2, batch)
        xt = dif.add_noise(x0, sigma, jax.random.normal(k3, x0.shape))
        denoised = module.apply(p, xt, sigma, train=True)
        return jnp.mean(dif.edm_denoising_loss(denoised, x0, sigma, sigma_data=sigma_data))

    @jax.jit
    def step(p, st, k):
        loss, g = jax.value_and_grad(loss_fn)(p, k)
        updates, st = opt.update(g, st, p)
        return optax.apply_updates(p, updates), st, loss

    # A Python loop over a jitted step: XLA:CPU compiles a scan over conv gradients slowly.
    state, losses = opt.init(params), []
    for k in jax.random.split(run_key, steps):
        params, state, loss = step(params, state, k)
        losses.append(loss)
    return params, np.asarray(jnp.stack(losses))


def _ring_x0(key, n):
    return mixture_sample(RING, key, n)[0]


def _train_and_sample_ring(steps, batch, n_samples):
    module = models.get_denoiser("score_mlp", sigma_data=RING_SIGMA_DATA)
    params, losses = _train(module, _ring_x0, steps, batch, 1e-3, RING_SIGMA_DATA, KEY)
    sigmas = dif.karras_sigmas(40)
    x_T = sigmas[0] * jax.random.normal(jax.random.key(2), (n_samples, 2))
    denoise = lambda x, s: module.apply(params, x, s, train=False)
    x = jax.jit(lambda z: dif.heun_sample(denoise, z, sigmas))(x_T)
    return np.asarray(losses), x


def test_score_mlp_trains_on_ring():
    """1000 Adam steps (batch 256, ~5 s on CPU): the loss drops and Heun samples land on modes."""
    losses, x = _train_and_sample_ring(1000, 256, 2000)
    assert np.all(np.isfinite(losses))
    assert losses[-100:].mean() < 0.8 * losses[:50].mean()
    dist = np.min(np.linalg.norm(np.asarray(x)[:, None] - np.asarray(RING.means)[None], axis=-1), 1)
    assert np.mean(dist < 3 * 0.25) > 0.8
    # every mode is visited
    assert np.all(np.bincount(np.asarray(_nearest(RING, x)), minlength=8) > 0)


@pytest.mark.slow
def test_score_mlp_trains_on_ring_long():
    """5000 steps, batch 512 (~20 s): mode weights within 0.04 of the truth."""
    _, x = _train_and_sample_ring(5000, 512, 5000)
    dist = np.min(np.linalg.norm(np.asarray(x)[:, None] - np.asarray(RING.means)[None], axis=-1), 1)
    assert np.mean(dist < 3 * 0.25) > 0.93
    freq = np.bincount(np.asarray(_nearest(RING, x)), minlength=8) / x.shape[0]
    np.testing.assert_allclose(freq, RING.weights, atol=0.04)


def test_score_cnn_training_smoke():
    """A few steps on 8x8x1 images (two fixed patterns plus noise): finite, loss decreases."""
    patterns = jnp.stack([jnp.eye(8), jnp.flipud(jnp.eye(8))])[..., None] - 0.125

    def x0(key, n):
        k1, k2 = jax.random.split(key)
        idx = jax.random.randint(k1, (n,), 0, 2)
        return patterns[idx] + 0.05 * jax.random.normal(k2, (n, 8, 8, 1))

    module = models.get_denoiser("score_cnn", channels=(8, 16), embed_dim=16)
    params, losses = _train(module, x0, 60, 32, 3e-3, 0.5, KEY)
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert losses[-15:].mean() < losses[:15].mean()
    sigmas = dif.karras_sigmas(6)
    out = dif.heun_sample(
        lambda x, s: module.apply(params, x, s, train=False),
        sigmas[0] * jax.random.normal(jax.random.key(1), (4, 8, 8, 1)),
        sigmas,
    )
    assert out.shape == (4, 8, 8, 1) and bool(jnp.all(jnp.isfinite(out)))
