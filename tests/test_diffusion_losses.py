"""Diffusion-distillation losses against independent computations.

The gradient identities are checked on Gaussian teachers and generators, where every score and
density ratio is exact: the *true* gradient of the divergence comes from a fine trapezoid rule
(spectrally accurate for these smooth, Gaussian-decaying integrands) and central finite
differences, the surrogate's from ``jax.grad`` of its expectation under Gauss-Hermite quadrature
over ``(z, eps)``; everything in float64 (``jax.enable_x64`` as a context, so other test files
keep float32).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import expit

from fdiv import diffusion as dif
from fdiv import generators as gen
from fdiv.losses import diffusion as dl

# -------------------------------------------------------------------------------------------------
# Shared 1-D Gaussian setting: teacher p = N(MU_P, S_P^2), generator x = a + b z, noise SIGMA.
# p_t = N(MU_P, S_P^2 + SIGMA^2) is narrower than q_t = N(A, B^2 + SIGMA^2), so every catalogued
# divergence (Pearson and Neyman included) is finite.
# -------------------------------------------------------------------------------------------------

MU_P, S_P, SIGMA = 0.3, 1.0, 0.5
A0, B0 = -0.2, 1.2
GRID = np.linspace(-25.0, 25.0, 20001)


def gauss_logpdf(x, mean, var):
    return -0.5 * np.log(2 * np.pi * var) - 0.5 * (x - mean) ** 2 / var


def trapezoid(values, grid):
    dx = grid[1] - grid[0]
    return dx * (np.sum(values) - 0.5 * (values[0] + values[-1]))


def central_gradient(fn, theta, step=1e-5):
    theta = np.asarray(theta, np.float64)
    grad = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e.flat[i] = step
        grad.flat[i] = (fn(theta + e) - fn(theta - e)) / (2 * step)
    return grad


def gh(n):
    """Probabilists' Gauss-Hermite nodes and weights normalised to a N(0, 1) expectation."""
    nodes, weights = hermegauss(n)
    return nodes, weights / weights.sum()


# Independent numpy generators f(u) from log u (for the four named in the brief).
def _np_f(name, log_u):
    u = np.exp(log_u)
    if name == "kl":
        return u * log_u
    if name == "reverse_kl":
        return -log_u
    if name == "js":
        return 0.5 * (u * log_u - (u + 1) * np.log((u + 1) / 2))
    if name == "squared_hellinger":
        return (np.sqrt(u) - 1) ** 2
    raise KeyError(name)


INDEPENDENT = ("kl", "reverse_kl", "js", "squared_hellinger")
SMOOTH = tuple(n for n in gen.names() if n != "total_variation")  # TV's f is not C^2 at 1


def true_divergence(name, theta, sigma=SIGMA):
    """``D_f(p_t || q_t) = int q_t f(p_t / q_t)`` by the trapezoid rule, float64."""
    a, b = theta
    log_p = gauss_logpdf(GRID, MU_P, S_P**2 + sigma**2)
    log_q = gauss_logpdf(GRID, a, b**2 + sigma**2)
    log_r = log_p - log_q
    if name in INDEPENDENT:
        f = _np_f(name, log_r)
    else:  # the catalogue's own f (only its weight h is under test here)
        with jax.enable_x64(True):
            f = np.asarray(gen.get(name).f(jnp.asarray(log_r, jnp.float64)))
    return trapezoid(np.exp(log_q) * f, GRID)


def surrogate_gradient_1d(name, theta, sigma=SIGMA, n=48):
    a, b = theta
    nodes, weights = gh(n)
    z, eps = (m.ravel() for m in np.meshgrid(nodes, nodes, indexing="ij"))
    w = np.outer(weights, weights).ravel()
    x_t = a + b * z + sigma * eps
    var_p, var_q = S_P**2 + sigma**2, b**2 + sigma**2
    s_p, s_q = -(x_t - MU_P) / var_p, -(x_t - a) / var_q
    log_r = gauss_logpdf(x_t, MU_P, var_p) - gauss_logpdf(x_t, a, var_q)
    with jax.enable_x64(True):
        h, _ = dl.fdistill_weight(
            jnp.asarray(log_r), name, logit_clamp=None, ratio_clip=None, normalize_batch=False
        )
        # x0-predictions by Tweedie; weight h / sigma^2 without the normaliser is the per-level
        # f-distill gradient h (s_q - s_p) (the score-space form).
        x_hat_p, x_hat_q = jnp.asarray(x_t + sigma**2 * s_p), jnp.asarray(x_t + sigma**2 * s_q)

        def expected_loss(th):
            x = th[0] + th[1] * jnp.asarray(z)
            loss = dl.fdistill_generator_loss(x, x_hat_q, x_hat_p, h / sigma**2, normalize=False)
            return jnp.sum(jnp.asarray(w) * loss)

        return np.asarray(jax.grad(expected_loss)(jnp.asarray(theta, jnp.float64)))


@pytest.mark.parametrize("name", SMOOTH)
def test_fdistill_gradient_equals_divergence_gradient_1d(name):
    theta = np.array([A0, B0])
    true = central_gradient(lambda t: true_divergence(name, t), theta)
    surrogate = surrogate_gradient_1d(name, theta)
    assert np.all(np.abs(true) > 1e-3)  # a non-trivial check
    np.testing.assert_allclose(surrogate, true, rtol=1e-6, atol=0)
    # The sign matters: the negated identity is far off.
    assert not np.allclose(-surrogate, true, rtol=1e-2)


def test_fdistill_gradient_at_a_second_point_and_sigma():
    theta, sigma = np.array([0.7, 0.9]), 1.3
    for name in INDEPENDENT:
        true = central_gradient(lambda t, name=name: true_divergence(name, t, sigma), theta)
        np.testing.assert_allclose(surrogate_gradient_1d(name, theta, sigma), true, rtol=1e-6)


# -------------------------------------------------------------------------------------------------
# 2-D: generator x = a + B z with a full 2x2 matrix B, closed-form Gaussian KLs.
# -------------------------------------------------------------------------------------------------

MU_P2 = np.array([0.4, -0.3])
COV_P2 = np.array([[1.0, 0.3], [0.3, 0.8]])
A2 = np.array([0.1, 0.2])
B2 = np.array([[1.1, 0.2], [-0.1, 1.3]])
SIGMA2 = 0.6


def gauss_kl(m0, c0, m1, c1):
    """KL(N(m0, c0) || N(m1, c1)), closed form."""
    inv1 = np.linalg.inv(c1)
    d = m1 - m0
    return 0.5 * (
        np.trace(inv1 @ c0) + d @ inv1 @ d - len(m0) + np.log(np.linalg.det(c1) / np.linalg.det(c0))
    )


def unpack2(theta):
    return theta[:2], theta[2:].reshape(2, 2)


def true_divergence_2d(name, theta):
    a, b = unpack2(theta)
    cov_p = COV_P2 + SIGMA2**2 * np.eye(2)
    cov_q = b @ b.T + SIGMA2**2 * np.eye(2)
    if name == "kl":  # D_f(p || q) with f = u log u is KL(p || q)
        return gauss_kl(MU_P2, cov_p, a, cov_q)
    return gauss_kl(a, cov_q, MU_P2, cov_p)  # reverse KL


def mvn_logpdf(x, mean, cov):
    inv = np.linalg.inv(cov)
    d = x - mean
    return -0.5 * np.einsum("ni,ij,nj->n", d, inv, d) - 0.5 * np.log(
        (2 * np.pi) ** 2 * np.linalg.det(cov)
    )


@pytest.mark.parametrize("name", ["kl", "reverse_kl"])
def test_fdistill_gradient_2d_full_matrix(name):
    theta = np.concatenate([A2, B2.ravel()])
    true = central_gradient(lambda t: true_divergence_2d(name, t), theta)

    nodes, weights = gh(14)
    grid = np.array(list(itertools.product(range(len(nodes)), repeat=4)))
    u = nodes[grid]  # [N, 4] = (z1, z2, eps1, eps2)
    w = np.prod(weights[grid], axis=1)
    z, eps = u[:, :2], u[:, 2:]
    a, b = unpack2(theta)
    x_t = a + z @ b.T + SIGMA2 * eps
    cov_p = COV_P2 + SIGMA2**2 * np.eye(2)
    cov_q = b @ b.T + SIGMA2**2 * np.eye(2)
    s_p = -(x_t - MU_P2) @ np.linalg.inv(cov_p)
    s_q = -(x_t - a) @ np.linalg.inv(cov_q)
    log_r = mvn_logpdf(x_t, MU_P2, cov_p) - mvn_logpdf(x_t, a, cov_q)
    with jax.enable_x64(True):
        h, _ = dl.fdistill_weight(
            jnp.asarray(log_r), name, logit_clamp=None, ratio_clip=None, normalize_batch=False
        )
        x_hat_p = jnp.asarray(x_t + SIGMA2**2 * s_p)
        x_hat_q = jnp.asarray(x_t + SIGMA2**2 * s_q)

        def expected_loss(th):
            aa, bb = th[:2], th[2:].reshape(2, 2)
            x = aa + jnp.asarray(z) @ bb.T
            loss = dl.fdistill_generator_loss(x, x_hat_q, x_hat_p, h / SIGMA2**2, normalize=False)
            return jnp.sum(jnp.asarray(w) * loss)

        surrogate = np.asarray(jax.grad(expected_loss)(jnp.asarray(theta)))
    np.testing.assert_allclose(surrogate, true, rtol=1e-5, atol=1e-8)


# -------------------------------------------------------------------------------------------------
# SIM.
# -------------------------------------------------------------------------------------------------


def np_distance(y, distance, c):
    return y**2 if distance == "l2" else np.sqrt(y**2 + c**2) - c


def sim_true_divergence(theta, distance, c, frozen_at=None):
    """``E_{x_t ~ pi}[d(s_p - s_q_theta)]``; ``pi = q_t(theta)``, or held at ``frozen_at``."""
    a, b = theta
    sa, sb = (a, b) if frozen_at is None else frozen_at
    var_p = S_P**2 + SIGMA**2
    y = -(GRID - MU_P) / var_p + (GRID - a) / (b**2 + SIGMA**2)
    density = np.exp(gauss_logpdf(GRID, sa, sb**2 + SIGMA**2))
    return trapezoid(density * np_distance(y, distance, c), GRID)


def as_denoiser(score_fn):
    """The x0-prediction ``x + sigma^2 s(x)`` of a score function (Tweedie)."""
    return lambda x_t, sigma: dif.denoised_from_score(score_fn(x_t, sigma), x_t, sigma)


def sim_surrogate_gradient(theta, distance, c, *, sid_alpha, detach=False, weight=None):
    a0, b0 = theta
    nodes, weights = gh(48)
    z, eps = (m.ravel() for m in np.meshgrid(nodes, nodes, indexing="ij"))
    w = np.outer(weights, weights).ravel()

    def teacher(x_t, sigma):
        return -(x_t - MU_P) / (S_P**2 + sigma**2)

    def fake(x_t, sigma):  # s_q with the generator's parameters held at (a0, b0)
        return -(x_t - a0) / (b0**2 + sigma**2)

    with jax.enable_x64(True):
        sigma = jnp.full((z.size,), SIGMA)

        def expected_loss(th):
            x0 = th[0] + th[1] * jnp.asarray(z)
            if detach:  # the wrong variant: d'(y) held constant
                x_t = x0 + sigma * jnp.asarray(eps)
                y = teacher(x_t, sigma) - fake(x_t, sigma)
                dp = 2 * y if distance == "l2" else y / jnp.sqrt(y**2 + c**2)
                loss = jax.lax.stop_gradient(dp) * (fake(x_t, sigma) + jnp.asarray(eps) / sigma)
            else:
                loss = dl.sim_generator_loss(
                    x0,
                    jnp.asarray(eps),
                    sigma,
                    as_denoiser(teacher),
                    as_denoiser(fake),
                    distance=distance,
                    c=c,
                    space="score",
                    normalize=False,
                    weight=weight,
                    sid_alpha=sid_alpha,
                )
            return jnp.sum(jnp.asarray(w) * loss)

        return np.asarray(jax.grad(expected_loss)(jnp.asarray(theta, jnp.float64)))


SIM_CASES = [("l2", 1.0), ("pseudo_huber", 0.5), ("pseudo_huber", 1.0)]


@pytest.mark.parametrize("distance,c", SIM_CASES)
def test_sim_gradient_with_sid_alpha_half_equals_full_divergence_gradient(distance, c):
    theta = np.array([A0, B0])
    true = central_gradient(lambda t: sim_true_divergence(t, distance, c), theta)
    surrogate = sim_surrogate_gradient(theta, distance, c, sid_alpha=0.5)
    np.testing.assert_allclose(surrogate, true, rtol=1e-6)


@pytest.mark.parametrize("distance,c", SIM_CASES)
def test_sim_paper_gradient_equals_divergence_gradient_with_sampling_held(distance, c):
    theta = np.array([A0, B0])
    frozen = central_gradient(
        lambda t: sim_true_divergence(t, distance, c, frozen_at=(A0, B0)), theta
    )
    full = central_gradient(lambda t: sim_true_divergence(t, distance, c), theta)
    surrogate = sim_surrogate_gradient(theta, distance, c, sid_alpha=1.0)
    np.testing.assert_allclose(surrogate, frozen, rtol=1e-6)
    # The two divergences' gradients really differ (the sampling term is not negligible) ...
    assert not np.allclose(frozen, full, rtol=0.05)
    # ... and detaching d'(y) gives neither.
    detached = sim_surrogate_gradient(theta, distance, c, sid_alpha=1.0, detach=True)
    assert not np.allclose(detached, frozen, rtol=0.05)
    assert not np.allclose(detached, full, rtol=0.05)


def test_sim_weight_scales_the_gradient():
    theta = np.array([A0, B0])
    base = sim_surrogate_gradient(theta, "pseudo_huber", 1.0, sid_alpha=0.5)
    scaled = sim_surrogate_gradient(theta, "pseudo_huber", 1.0, sid_alpha=0.5, weight=0.7)
    np.testing.assert_allclose(scaled, 0.7 * base, rtol=1e-12)


def test_sim_values_against_numpy():
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(3, 2, 2)).astype(np.float32)
    eps = rng.normal(size=(3, 2, 2)).astype(np.float32)
    sigma = np.array([0.5, 1.0, 2.0], np.float32)
    wt = np.array([1.0, 0.5, 2.0], np.float32)

    def teacher(x_t, s):
        return -x_t / (1.0 + s[:, None, None] ** 2)

    def fake(x_t, s):
        return -(x_t - 0.3) / (2.0 + s[:, None, None] ** 2)

    x_t = x0 + sigma[:, None, None] * eps
    sp, sq = np.asarray(teacher(x_t, sigma)), np.asarray(fake(x_t, sigma))
    y = sp - sq
    norm2 = np.sum(y**2, axis=(1, 2))
    target = sq + eps / sigma[:, None, None]
    for distance, c in SIM_CASES:
        if distance == "l2":
            d, dp = norm2, 2 * y
        else:
            root = np.sqrt(norm2 + c**2)
            d, dp = root - c, y / root[:, None, None]
        expected = wt * np.sum(dp * target, axis=(1, 2))
        kw = dict(distance=distance, c=c, weight=wt, space="score", normalize=False)
        got = dl.sim_generator_loss(x0, eps, sigma, as_denoiser(teacher), as_denoiser(fake), **kw)
        np.testing.assert_allclose(got, expected, rtol=1e-4)
        got = dl.sim_generator_loss(
            x0, eps, sigma, as_denoiser(teacher), as_denoiser(fake), sid_alpha=0.5, **kw
        )
        np.testing.assert_allclose(got, expected + wt * d, rtol=1e-4)
        value = dl.sim_divergence(sp, sq, distance=distance, c=c, weight=wt)
        np.testing.assert_allclose(value, wt * d, rtol=1e-5)


def _sid_denoisers(xp):
    """A linear (Gaussian-optimal) teacher and a nonlinear fake denoiser, in numpy or jnp."""

    def teacher(x_t, s):
        s2 = s[:, None] ** 2
        return (2.0 * x_t + s2 * 0.4) / (2.0 + s2)

    def fake(x_t, s):
        return x_t / (1.0 + s[:, None] ** 2) + 0.3 * xp.tanh(x_t)

    return teacher, fake


def sid_official_loss(x0, eps, sigma, alpha, held_at=None):
    """SiD's ``generator_loss`` (``mingyuanzhou/SiD``, ``training/sid_loss.py``) transcribed in
    numpy: ``Y (x_hat_p - x0 - alpha Y) / mean|x0 - x_hat_p|`` summed per example, ``Y = x_hat_p -
    x_hat_q`` at ``x_t = x0 + sigma eps``; the normaliser is held (computed without gradient; at
    ``held_at`` instead of ``x0`` if given, for finite differences), its floor FastGen's ``+ 1e-6`` (fdiv's, see ``dmd_normalizer``) instead of SiD's clip at 1e-5."""
    teacher, fake = _sid_denoisers(np)

    def denoised(x):
        x_t = x + sigma[:, None] * eps
        return teacher(x_t, sigma), fake(x_t, sigma)

    x_p, x_q = denoised(x0)
    y = x_p - x_q
    h, h_p = (x0, x_p) if held_at is None else (held_at, denoised(held_at)[0])
    normaliser = np.mean(np.abs(h - h_p), axis=1) + 1e-6
    return np.sum(y * (x_p - x0 - alpha * y), axis=1) / normaliser


@pytest.mark.parametrize("alpha", [1.2, 1.0, 0.5])
def test_sim_l2_is_twice_sids_official_loss_in_value_and_gradient(alpha):
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=(4, 3))
    eps = rng.normal(size=(4, 3))
    sigma = np.array([0.05, 0.7, 3.0, 20.0])  # across the range SiD samples
    teacher, fake = _sid_denoisers(jnp)
    with jax.enable_x64(True):

        def loss(x):
            return dl.sim_generator_loss(
                x, eps, sigma, teacher, fake, distance="l2", sid_alpha=alpha
            )  # fmt: skip

        value = np.asarray(loss(jnp.asarray(x0)))
        grad = np.asarray(jax.grad(lambda x: jnp.sum(loss(x)))(jnp.asarray(x0)))
    np.testing.assert_allclose(value, 2 * sid_official_loss(x0, eps, sigma, alpha), rtol=1e-9)
    total = lambda x: 2 * np.sum(sid_official_loss(x, eps, sigma, alpha, held_at=x0))  # noqa: E731
    np.testing.assert_allclose(grad, central_gradient(total, x0, step=1e-6), rtol=1e-6, atol=1e-8)


def test_sim_sid_alpha_may_be_traced_and_one_adds_nothing():
    rng = np.random.default_rng(3)
    x0, eps = rng.normal(size=(2, 2, 3)).astype(np.float32)
    sigma = np.array([0.5, 2.0], np.float32)
    teacher, fake = _sid_denoisers(jnp)
    for distance in ("l2", "pseudo_huber"):

        def loss(alpha, distance=distance):
            return dl.sim_generator_loss(
                x0, eps, sigma, teacher, fake, distance=distance, sid_alpha=alpha
            )  # fmt: skip

        traced = jax.jit(loss)
        np.testing.assert_allclose(traced(1.2), loss(1.2), rtol=1e-6)
        np.testing.assert_allclose(traced(1.0), loss(1), rtol=1e-6)
        # The added term is 2 (1 - alpha) d(Y), d = the divergence's integrand at x_t.
        x_t = x0 + sigma[:, None] * eps
        d = dl.sim_divergence(teacher(x_t, sigma), fake(x_t, sigma), distance=distance)
        norm = dl.dmd_normalizer(x0, teacher(x_t, sigma))
        np.testing.assert_allclose(loss(1.2) - loss(1), -0.4 * d * norm, rtol=1e-4, atol=1e-6)


def test_sim_bad_arguments():
    x = jnp.zeros((2, 3))
    fn = lambda x_t, s: x_t  # noqa: E731
    for c in (0.0, -1.0):
        with pytest.raises(ValueError, match="c must be > 0"):
            dl.sim_generator_loss(x, x, 1.0, fn, fn, distance="pseudo_huber", c=c)
        with pytest.raises(ValueError, match="c must be > 0"):
            dl.sim_divergence(x, x, distance="pseudo_huber", c=c)
    with pytest.raises(ValueError, match="distance must be one of l2, pseudo_huber"):
        dl.sim_generator_loss(x, x, 1.0, fn, fn, distance="huber")
    with pytest.raises(ValueError, match="distance"):
        dl.sim_divergence(x, x, distance="l1")
    with pytest.raises(ValueError, match="eps"):
        dl.sim_generator_loss(x, jnp.zeros((2, 4)), 1.0, fn, fn)
    with pytest.raises(ValueError, match="space must be one of x0, score"):
        dl.sim_generator_loss(x, x, 1.0, fn, fn, space="eps")


# -------------------------------------------------------------------------------------------------
# fdistill_weight, noise_bin, RatioStats.
# -------------------------------------------------------------------------------------------------

LOGITS = np.array([-50.0, -12.0, -3.0, -1.0, 0.0, 2.5, 3.5, 12.0, 50.0], np.float32)


def test_fdistill_weight_clamp_clip_normalise_by_hand():
    log_r = np.clip(np.clip(LOGITS, -10, 10), np.log(0.1), np.log(20.0))
    r = np.exp(log_r.astype(np.float64))
    cases = {
        "kl": r,
        "reverse_kl": np.ones_like(r),
        "js": r / (2 * (r + 1)),
        "squared_hellinger": np.sqrt(r) / 2,
        "pearson": 2 * r**2,
    }
    for name, h in cases.items():
        got, stats = dl.fdistill_weight(LOGITS, name)
        assert stats is None and got.dtype == jnp.float32 and got.shape == LOGITS.shape
        np.testing.assert_allclose(got, h / h.mean(), rtol=2e-6)
        got, _ = dl.fdistill_weight(LOGITS, name, normalize_batch=False)
        np.testing.assert_allclose(got, h, rtol=2e-6)
    # Each step switchable: clamp only, clip only, neither.
    got, _ = dl.fdistill_weight(LOGITS, "kl", ratio_clip=None, normalize_batch=False)
    np.testing.assert_allclose(got, np.exp(np.clip(LOGITS, -10, 10).astype(np.float64)), rtol=2e-6)
    got, _ = dl.fdistill_weight(
        LOGITS, "js", logit_clamp=None, ratio_clip=(0.5, 4.0), normalize_batch=False
    )
    rr = np.clip(np.exp(LOGITS.astype(np.float64)), 0.5, 4.0)
    np.testing.assert_allclose(got, rr / (2 * (rr + 1)), rtol=2e-6)
    got, _ = dl.fdistill_weight(LOGITS, "js", logit_clamp=None, ratio_clip=None)
    h = 0.5 * expit(LOGITS.astype(np.float64))
    np.testing.assert_allclose(got, h / h.mean(), rtol=2e-6)
    # A generator object works as well as its name.
    got_obj, _ = dl.fdistill_weight(LOGITS, gen.get("js"))
    got_name, _ = dl.fdistill_weight(LOGITS, "js")
    np.testing.assert_array_equal(got_obj, got_name)


def test_fdistill_weight_running_mean_per_bin_by_hand():
    stats = dl.init_ratio_stats(3)
    np.testing.assert_array_equal(stats.mean, np.ones(3, np.float32))
    np.testing.assert_array_equal(stats.count, np.zeros(3, np.float32))
    logits1 = np.array([0.5, -1.0, 2.0, 1.0, 3.0], np.float32)
    bins1 = np.array([0, 0, 2, 2, 2])
    logits2 = np.array([1.5, 0.0, -2.0, 4.0], np.float32)
    bins2 = np.array([1, 2, 2, 0])
    momentum = 0.9

    def by_hand(mean, count, logits, bins):
        r = np.clip(np.exp(np.clip(logits.astype(np.float64), -10, 10)), 0.1, 20.0)
        mean, count = mean.copy(), count.copy()
        for k in range(3):
            sel = bins == k
            if sel.any():
                m = r[sel].mean()
                mean[k] = m if count[k] == 0 else momentum * mean[k] + (1 - momentum) * m
                count[k] += sel.sum()
        r_norm = r / mean[bins]
        h = r_norm  # forward KL: h(r) = r
        return h / h.mean(), mean, count

    h1, m1, c1 = by_hand(np.ones(3), np.zeros(3), logits1, bins1)
    got1, stats1 = dl.fdistill_weight(logits1, "kl", stats=stats, bins=bins1, momentum=momentum)
    np.testing.assert_allclose(got1, h1, rtol=2e-6)
    np.testing.assert_allclose(stats1.mean, m1, rtol=2e-6)
    np.testing.assert_array_equal(stats1.count, c1)
    assert stats1.mean[1] == 1.0 and stats1.count[1] == 0  # an unseen bin is untouched

    h2, m2, c2 = by_hand(m1, c1, logits2, bins2)
    got2, stats2 = dl.fdistill_weight(logits2, "kl", stats=stats1, bins=bins2, momentum=momentum)
    np.testing.assert_allclose(got2, h2, rtol=2e-6)
    np.testing.assert_allclose(stats2.mean, m2, rtol=2e-6)
    np.testing.assert_array_equal(stats2.count, c2)
    assert stats2.mean.dtype == jnp.float32 and stats2.count.dtype == jnp.float32

    # Works under jit with the stats as part of a carried state.
    jitted = jax.jit(lambda lg, s, b: dl.fdistill_weight(lg, "kl", stats=s, bins=b))
    got_j, stats_j = jitted(logits1, stats, bins1)
    np.testing.assert_allclose(
        stats_j.mean, dl.fdistill_weight(logits1, "kl", stats=stats, bins=bins1)[1].mean
    )


def test_fdistill_weight_is_held_constant():
    def total(logits):
        h, _ = dl.fdistill_weight(
            logits, "kl", stats=dl.init_ratio_stats(2), bins=jnp.array([0, 1, 1])
        )
        return jnp.sum(h * logits)  # only the explicit factor should carry gradient

    logits = jnp.array([0.3, -0.2, 1.0])
    grad = jax.grad(lambda lg: jnp.sum(dl.fdistill_weight(lg, "js")[0]))(logits)
    np.testing.assert_array_equal(grad, np.zeros(3))
    h, _ = dl.fdistill_weight(logits, "kl", stats=dl.init_ratio_stats(2), bins=jnp.array([0, 1, 1]))
    np.testing.assert_allclose(jax.grad(total)(logits), h, rtol=1e-6)


@pytest.mark.parametrize("name", gen.names())
def test_fdistill_weight_finite_for_every_generator(name):
    logits = np.linspace(-50, 50, 101).astype(np.float32)
    for kwargs in ({}, {"ratio_clip": None}, {"normalize_batch": False}):
        h, _ = dl.fdistill_weight(logits, name, **kwargs)
        assert np.all(np.isfinite(h)) and np.all(np.asarray(h) >= 0), (name, kwargs)
    bins = dl.noise_bin(np.geomspace(0.01, 50, 101), sigma_min=0.002, sigma_max=80.0, num_bins=8)
    h, stats = dl.fdistill_weight(logits, name, stats=dl.init_ratio_stats(8), bins=bins)
    assert np.all(np.isfinite(h)) and np.all(np.isfinite(stats.mean))


def test_fdistill_weight_low_precision_and_reverse_kl():
    h, _ = dl.fdistill_weight(jnp.asarray(LOGITS, jnp.bfloat16), "kl")
    assert h.dtype == jnp.float32
    ref, _ = dl.fdistill_weight(jnp.asarray(LOGITS, jnp.bfloat16).astype(jnp.float32), "kl")
    np.testing.assert_allclose(h, ref, rtol=1e-6)
    np.testing.assert_array_equal(gen.get("reverse_kl").weight(jnp.asarray(LOGITS)), np.ones(9))
    h, _ = dl.fdistill_weight(LOGITS, "reverse_kl")
    np.testing.assert_array_equal(h, np.ones(9))
    # Total variation's h = 0 stays 0 under batch normalisation (no 0/0).
    h, _ = dl.fdistill_weight(LOGITS, "total_variation")
    np.testing.assert_array_equal(h, np.zeros(9))


def test_fdistill_weight_bad_arguments():
    for clip in ((20.0, 0.1), (1.0, 1.0), (0.0, 2.0), (-1.0, 2.0)):
        with pytest.raises(ValueError, match="ratio_clip"):
            dl.fdistill_weight(LOGITS, "kl", ratio_clip=clip)
    for momentum in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            dl.fdistill_weight(LOGITS, "kl", momentum=momentum)
    for clamp in (0.0, -3.0):
        with pytest.raises(ValueError, match="logit_clamp"):
            dl.fdistill_weight(LOGITS, "kl", logit_clamp=clamp)
    with pytest.raises(ValueError, match="bins"):
        dl.fdistill_weight(LOGITS, "kl", stats=dl.init_ratio_stats(3))
    with pytest.raises(ValueError, match="unknown f-divergence"):
        dl.fdistill_weight(LOGITS, "nope")
    with pytest.raises(ValueError, match="num_bins"):
        dl.init_ratio_stats(0)
    with pytest.raises(ValueError, match="sigma_min"):
        dl.noise_bin(np.ones(2), sigma_min=1.0, sigma_max=0.5, num_bins=4)
    with pytest.raises(ValueError, match="num_bins"):
        dl.noise_bin(np.ones(2), sigma_min=0.1, sigma_max=1.0, num_bins=2.5)


def test_noise_bin_log_uniform():
    lo, hi, k = 0.002, 80.0, 5
    edges = np.geomspace(lo, hi, k + 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    sigma = np.concatenate([centres, [1e-4, lo, hi, 1e3], edges[1:-1] * 1.0001])
    expected = np.concatenate([np.arange(k), [0, 0, k - 1, k - 1], np.arange(1, k)])
    got = dl.noise_bin(sigma, sigma_min=lo, sigma_max=hi, num_bins=k, spacing="log")
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, expected)


def test_noise_bin_linear_is_fastgen_binning():
    # FastGen: idx = floor((t - min_t) / ((max_t - min_t) / bin_num)), t in [0.002, 80], 10 bins.
    lo, hi, k = 0.002, 80.0, 10
    sigma = np.array([0.0021, 2.5, 7.9, 8.003, 40.0, 79.56, 80.0, 100.0])
    width = (hi - lo) / k
    expected = np.clip(np.floor((sigma - lo) / width), 0, k - 1).astype(int)
    np.testing.assert_array_equal(expected, [0, 0, 0, 1, 4, 9, 9, 9])  # by hand
    got = dl.noise_bin(sigma, sigma_min=lo, sigma_max=hi, num_bins=k)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="spacing must be one of linear, log"):
        dl.noise_bin(sigma, sigma_min=lo, sigma_max=hi, num_bins=k, spacing="cosine")


# -------------------------------------------------------------------------------------------------
# fdistill_generator_loss and dmd_normalizer.
# -------------------------------------------------------------------------------------------------


def fastgen_update_numpy(x, x_hat_fake, x_hat_teacher, h):
    """FastGen's ``variational_score_distillation_loss`` transcribed to numpy: the gradient of
    ``0.5 mse(x, x - g)`` (mean over every element) w.r.t. ``x``, with
    ``g = h (x_hat_fake - x_hat_teacher) / (mean|x - x_hat_teacher| + 1e-6)``."""
    axes = tuple(range(1, x.ndim))
    w = 1.0 / (np.mean(np.abs(x - x_hat_teacher), axis=axes, keepdims=True) + 1e-6)
    g = (x_hat_fake - x_hat_teacher) * w * h.reshape((-1,) + (1,) * (x.ndim - 1))
    return g / x.size  # d/dx of 0.5 mean((x - sg(x - g))^2)


def test_generator_loss_value_and_gradient_match_the_official_update():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 2)) * 10
    x_hat_p = x + rng.normal(size=x.shape)
    x_hat_q = x_hat_p + rng.normal(size=x.shape) * 1e-3
    weight = np.array([0.5, 1.0, 2.0, 0.0])
    official = fastgen_update_numpy(x, x_hat_q, x_hat_p, weight)
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (x_hat_q, x_hat_p, weight)]
        numel = x[0].size
        grad = jax.grad(lambda xx: jnp.mean(dl.fdistill_generator_loss(xx, *args)) / numel)(
            jnp.asarray(x)
        )
        np.testing.assert_allclose(grad, official, rtol=1e-10)
        # The value is ||g||^2 / 2 per example, g = the un-reduced update.
        g = official * x.size
        loss = dl.fdistill_generator_loss(jnp.asarray(x), *args)
        np.testing.assert_allclose(loss, 0.5 * np.sum(g**2, axis=(1, 2)), rtol=1e-5)
        # No gradient reaches the predictions or the weight.
        grads = jax.grad(
            lambda q, p, w: jnp.sum(dl.fdistill_generator_loss(jnp.asarray(x), q, p, w)),
            argnums=(0, 1, 2),
        )(*args)
        for gr in grads:
            np.testing.assert_array_equal(gr, np.zeros_like(gr))
        # normalize=False drops the per-sample divisor only.
        raw = jax.grad(lambda xx: jnp.sum(dl.fdistill_generator_loss(xx, *args, normalize=False)))(
            jnp.asarray(x)
        )
        np.testing.assert_allclose(raw, (x_hat_q - x_hat_p) * weight[:, None, None], rtol=1e-12)
    # float32 and |g| << |x|: the gradient is still exact.
    x32 = [np.asarray(a, np.float32) for a in (x, x_hat_q, x_hat_p, weight)]
    grad32 = jax.grad(lambda xx: jnp.sum(dl.fdistill_generator_loss(xx, *x32[1:])))(x32[0])
    official32 = fastgen_update_numpy(*(np.asarray(a, np.float64) for a in x32)) * x.size
    np.testing.assert_allclose(grad32, official32, rtol=1e-4, atol=1e-9)
    # weight=None is h = 1 (reverse KL, DMD).
    np.testing.assert_array_equal(
        dl.fdistill_generator_loss(*x32[:3]), dl.fdistill_generator_loss(*x32[:3], np.ones(4))
    )
    out = dl.fdistill_generator_loss(*(jnp.asarray(a, jnp.bfloat16) for a in x32[:3]))
    assert out.dtype == jnp.float32
    with pytest.raises(ValueError, match="must be shaped like x"):
        dl.fdistill_generator_loss(x32[0], x32[1][:, :2], x32[2])


# A 1-D Gaussian teacher and generator over a *distribution* of noise levels: the experiment's
# expected generator gradient against a numpy transcription of the official update on the same
# quadrature nodes, and how differently the score-space form weights the noise levels.
SIGMAS = np.array([0.05, 0.2, 1.0, 5.0, 20.0])  # noise levels, equally likely


def gaussian_nodes(theta, n=24):
    a, b = theta
    nodes, weights = gh(n)
    z, eps = (m.ravel() for m in np.meshgrid(nodes, nodes, indexing="ij"))
    w = np.outer(weights, weights).ravel()
    return a, b, z, eps, w


def official_expected_gradient(theta, name):
    """``E_{sigma, z, eps}[g . dx/dtheta]`` by numpy, g the official update (unreduced)."""
    a, b, z, eps, w = gaussian_nodes(theta)
    total = np.zeros(2)
    for sigma in SIGMAS:
        x = a + b * z
        x_t = x + sigma * eps
        var_p, var_q = S_P**2 + sigma**2, b**2 + sigma**2
        x_hat_p = x_t - sigma**2 * (x_t - MU_P) / var_p  # Tweedie with exact Gaussian scores
        x_hat_q = x_t - sigma**2 * (x_t - a) / var_q
        log_r = gauss_logpdf(x_t, MU_P, var_p) - gauss_logpdf(x_t, a, var_q)
        h = {"reverse_kl": np.ones_like(log_r), "kl": np.exp(log_r)}[name]
        g = fastgen_update_numpy(x[:, None], x_hat_q[:, None], x_hat_p[:, None], h)[:, 0] * x.size
        total += np.array([np.sum(w * g), np.sum(w * g * z)]) / len(SIGMAS)
    return total


def fdiv_expected_gradient(theta, name, space="x0"):
    a, b, z, eps, w = gaussian_nodes(theta)
    with jax.enable_x64(True):
        sigma = jnp.repeat(jnp.asarray(SIGMAS), z.size)
        zz, ee = jnp.tile(jnp.asarray(z), len(SIGMAS)), jnp.tile(jnp.asarray(eps), len(SIGMAS))
        ww = jnp.tile(jnp.asarray(w), len(SIGMAS)) / len(SIGMAS)

        def expected(th):
            x = th[0] + th[1] * zz
            x_t = jax.lax.stop_gradient(x + sigma * ee)
            var_p, var_q = S_P**2 + sigma**2, th[1] ** 2 + sigma**2
            x_hat_p = x_t - sigma**2 * (x_t - MU_P) / var_p
            x_hat_q = jax.lax.stop_gradient(x_t - sigma**2 * (x_t - th[0]) / var_q)
            log_r = jax.lax.stop_gradient(
                -0.5 * jnp.log(var_p / var_q)
                - 0.5 * (x_t - MU_P) ** 2 / var_p
                + 0.5 * (x_t - th[0]) ** 2 / var_q
            )
            h, _ = dl.fdistill_weight(
                log_r, name, logit_clamp=None, ratio_clip=None, normalize_batch=False
            )
            if space == "score":
                h = h / sigma**2
            loss = dl.fdistill_generator_loss(
                x[:, None], x_hat_q[:, None], x_hat_p[:, None], h, normalize=space == "x0"
            )
            return jnp.sum(ww * loss)

        return np.asarray(jax.grad(expected)(jnp.asarray(theta, jnp.float64)))


@pytest.mark.parametrize("name", ["reverse_kl", "kl"])
def test_expected_gradient_over_noise_levels_is_the_official_one(name):
    theta = np.array([A0, B0])
    official = official_expected_gradient(theta, name)
    ours = fdiv_expected_gradient(theta, name)
    assert np.all(np.abs(official) > 1e-3)
    np.testing.assert_allclose(ours, official, rtol=1e-9)
    # The score-space form (the old fdiv default) is a different update, not a rescaling:
    # its direction differs from the official one.
    score = fdiv_expected_gradient(theta, name, space="score")
    cosine = score @ official / (np.linalg.norm(score) * np.linalg.norm(official))
    assert cosine < 0.99


def test_dmd_normalizer_floor_and_gradient():
    x = jnp.ones((2, 3))
    norm = dl.dmd_normalizer(x, x)
    assert np.all(np.isfinite(norm)) and np.all(np.asarray(norm) > 0)
    np.testing.assert_allclose(norm, 1e6)  # 1 / (0 + FastGen's 1e-6)
    np.testing.assert_allclose(dl.dmd_normalizer(x, 3 * x), [1 / (2 + 1e-6)] * 2, rtol=1e-7)
    grad = jax.grad(lambda a: jnp.sum(dl.dmd_normalizer(a, 2 * jnp.ones((2, 3)))))(x)
    np.testing.assert_array_equal(grad, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="eps"):
        dl.dmd_normalizer(x, x, eps=0.0)


# -------------------------------------------------------------------------------------------------
# Critics.
# -------------------------------------------------------------------------------------------------


def test_discriminator_optimum_is_the_log_ratio():
    # Pointwise: d/dD [p softplus(-D) + q softplus(D)] = 0 at D = log p/q.
    xs = np.linspace(-4, 4, 17)
    log_p = gauss_logpdf(xs, 0.3, 1.25)
    log_q = gauss_logpdf(xs, -0.2, 1.69)
    p, q = np.exp(log_p), np.exp(log_q)
    with jax.enable_x64(True):

        def objective(d):
            real = dl.discriminator_loss(d, jnp.full_like(d, -jnp.inf))  # softplus(-d)
            fake = dl.discriminator_loss(jnp.full_like(d, jnp.inf), d)  # softplus(d)
            return jnp.sum(p * real + q * fake)

        d_star = jnp.asarray(log_p - log_q)
        np.testing.assert_allclose(jax.grad(objective)(d_star), 0.0, atol=1e-15)
        assert np.all(np.abs(np.asarray(jax.grad(objective)(d_star + 0.5))) > 1e-4)

        # Expected loss of a quadratic discriminator: stationary at the exact log-ratio coefficients.
        nodes, weights = gh(60)
        x_real = 0.3 + np.sqrt(1.25) * nodes
        x_fake = -0.2 + np.sqrt(1.69) * nodes

        def expected(coef):
            def disc(x):
                return coef[0] * x**2 + coef[1] * x + coef[2]

            return jnp.sum(weights * dl.discriminator_loss(disc(x_real), disc(x_fake)))

        # log N(x; 0.3, 1.25) - log N(x; -0.2, 1.69) as a quadratic in x.
        c2 = -0.5 / 1.25 + 0.5 / 1.69
        c1 = 0.3 / 1.25 - (-0.2) / 1.69
        c0 = -0.5 * 0.09 / 1.25 + 0.5 * 0.04 / 1.69 - 0.5 * np.log(1.25 / 1.69)
        grad = jax.grad(expected)(jnp.array([c2, c1, c0]))
        np.testing.assert_allclose(grad, 0.0, atol=1e-12)
        assert np.abs(np.asarray(jax.grad(expected)(jnp.array([c2, c1 + 0.1, c0])))).max() > 1e-3
    assert dl.discriminator_loss(jnp.zeros(3, jnp.bfloat16), jnp.zeros(3)).dtype == jnp.float32


def test_denoising_score_loss_value_and_minimiser():
    rng = np.random.default_rng(2)
    score = rng.normal(size=(3, 4)).astype(np.float32)
    x0 = rng.normal(size=(3, 4)).astype(np.float32)
    eps = rng.normal(size=(3, 4)).astype(np.float32)
    sigma = np.array([0.1, 1.0, 10.0], np.float32)
    expected = sigma**2 * np.sum((score + eps / sigma[:, None]) ** 2, axis=1)
    np.testing.assert_allclose(dl.denoising_score_loss(score, x0, eps, sigma), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        dl.denoising_score_loss(score, x0[:, :2], eps, sigma)

    # x0 ~ N(m, s^2): the expected DSM loss of a linear score alpha x_t + beta is stationary at the
    # noised score -(x_t - m) / (s^2 + sigma^2).
    m, s, sig = 0.7, 1.3, 0.8
    nodes, weights = gh(20)
    u, e = (g.ravel() for g in np.meshgrid(nodes, nodes, indexing="ij"))
    w = np.outer(weights, weights).ravel()
    with jax.enable_x64(True):
        x_0 = m + s * u
        x_t = x_0 + sig * e

        def expected_loss(coef):
            sc = coef[0] * x_t + coef[1]
            return jnp.sum(w * dl.denoising_score_loss(sc, x_0, e, jnp.full(u.shape, sig)))

        var = s**2 + sig**2
        np.testing.assert_allclose(
            jax.grad(expected_loss)(jnp.array([-1 / var, m / var])), 0.0, atol=1e-12
        )
        assert np.abs(np.asarray(jax.grad(expected_loss)(jnp.array([-1.0, 0.0])))).max() > 1e-2
