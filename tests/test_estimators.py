"""Gaussian KL closed forms, sample-based estimators, and the Lambert W helpers.

References used here (never fdiv itself):

- Gaussian KL: the closed form 1/2 [tr(Sq^-1 Sp) + (mq - mp)^T Sq^-1 (mq - mp) - d + log|Sq|/|Sp|]
  written in numpy (``np.linalg``), and scipy.stats log-pdfs for Monte Carlo cross-checks.
- f-divergences between 1-D Gaussians without a closed form: ``scipy.integrate.quad`` of
  ``q f(p/q)`` with ``f`` written in numpy.
- Categoricals: exact enumeration ``sum_k q_k f(p_k / q_k)`` in numpy.
- Variational bound: textbook Fenchel conjugates (f-GAN table, rescaled to fdiv's forms of ``f``)
  in numpy, and quad of ``E_P[T]`` and ``E_Q[f*(T)]`` for the exact bound of a given critic.
- Lambert W: ``scipy.special.lambertw`` and ``scipy.optimize.brentq``.

Monte Carlo checks use fixed ``jax.random.key`` seeds and accept ``|estimate - truth| < 4 SE``,
with the standard error computed in numpy from the same samples (two-sided Gaussian tail
probability at 4 SE is ~6e-5 per check, so the suite is not flaky by chance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats
from _reference import f_of_u, reference

import fdiv
from fdiv import _numerics as nx

N_SAMPLES = 100_000
Z = 4.0  # accepted deviation in standard errors


# ------------------------------------------------------------------------------------------------
# Independent numpy references.
# ------------------------------------------------------------------------------------------------


def np_gaussian_kl(mean_p, cov_p, mean_q, cov_q):
    """Closed-form KL(N(mean_p, cov_p) || N(mean_q, cov_q)) for one pair, in float64 numpy."""
    mean_p, cov_p, mean_q, cov_q = (
        np.asarray(a, np.float64) for a in (mean_p, cov_p, mean_q, cov_q)
    )
    d = mean_p.shape[-1]
    cov_q_inv = np.linalg.inv(cov_q)
    diff = mean_q - mean_p
    _, logdet_q = np.linalg.slogdet(cov_q)
    _, logdet_p = np.linalg.slogdet(cov_p)
    return 0.5 * (np.trace(cov_q_inv @ cov_p) + diff @ cov_q_inv @ diff - d + logdet_q - logdet_p)


def np_gaussian_kl_1d(mu_p, sd_p, mu_q, sd_q):
    """KL(N(mu_p, sd_p^2) || N(mu_q, sd_q^2)) = log(sd_q/sd_p) + (sd_p^2 + dmu^2)/(2 sd_q^2) - 1/2."""
    return np.log(sd_q / sd_p) + (sd_p**2 + (mu_p - mu_q) ** 2) / (2.0 * sd_q**2) - 0.5


# f, f' and f* of the shared reference table (tests/_reference.py), as functions of u and t.
_NAMES = ("kl", "reverse_kl", "js", "squared_hellinger", "pearson", "neyman", "total_variation", "jeffreys", "triangular")  # fmt: skip
F_NP = {name: f_of_u(name)[0] for name in _NAMES}
_REFS = {name: reference(name) for name in ("kl", "reverse_kl", "js", "pearson")}
F_PRIME_NP = {name: (lambda u, r=r: r.fp(np.log(u))) for name, r in _REFS.items()}
CONJ_NP = {name: r.conj for name, r in _REFS.items()}
# f'(1) of those forms, by hand: (u log u)' = log u + 1 -> 1; (-log u)' = -1/u -> -1; others 0.
F_PRIME_AT_ONE = {"kl": 1.0, "reverse_kl": -1.0}


def normalized_f_np(name, u):
    """f(u) - f'(1) (u - 1): the control-variate summand of an unbiased estimator under E_Q[u]=1."""
    return F_NP[name](u) - F_PRIME_AT_ONE.get(name, 0.0) * (u - 1.0)


def quad_divergence_1d(name, mu_p, sd_p, mu_q, sd_q):
    """D_f(P || Q) = int q f(p/q) dx between 1-D Gaussians by adaptive quadrature."""
    f = F_NP[name]

    def integrand(x):
        lp = scipy.stats.norm.logpdf(x, mu_p, sd_p)
        lq = scipy.stats.norm.logpdf(x, mu_q, sd_q)
        return np.exp(lq) * f(np.exp(lp - lq))

    lo = min(mu_p - 15 * sd_p, mu_q - 15 * sd_q)
    hi = max(mu_p + 15 * sd_p, mu_q + 15 * sd_q)
    value, err = scipy.integrate.quad(integrand, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)
    assert err < 1e-9
    return value


def normal_samples(seed, shape, mu, sd):
    """float64 numpy samples of N(mu, sd^2) drawn with a typed jax key."""
    z = jax.random.normal(jax.random.key(seed), shape, dtype=jnp.float32)
    return mu + sd * np.asarray(z, np.float64)


def mvn_samples(seed, n, mean, cov):
    """float64 numpy samples of N(mean, cov) through a numpy Cholesky factor of cov."""
    z = np.asarray(jax.random.normal(jax.random.key(seed), (n, len(mean)), jnp.float32), np.float64)
    return mean + z @ np.linalg.cholesky(cov).T


def assert_within_se(estimate, truth, summands, *, z=Z):
    """|estimate - truth| < z * std(summands) / sqrt(n), the standard error of a sample mean."""
    summands = np.asarray(summands, np.float64)
    se = summands.std(ddof=1) / np.sqrt(summands.size)
    assert np.isfinite(se) and se > 0
    assert abs(float(estimate) - truth) < z * se, (float(estimate), truth, se)
    return se


def random_spd(key, batch, d):
    """Batch of well-conditioned SPD matrices A A^T / d + 0.3 I from a jax key (float64 numpy)."""
    a = np.asarray(jax.random.normal(key, (*batch, d, d), jnp.float32), np.float64)
    return a @ np.swapaxes(a, -1, -2) / d + 0.3 * np.eye(d)


# Fixed 1-D pairs. P narrower than Q keeps every moment of u = p/q under Q finite, so the sample
# standard errors are themselves reliable; equal variances make log(p/q) linear (all moments).
MU_P, SD_P, MU_Q, SD_Q = 0.5, 0.8, 0.0, 1.0


# ------------------------------------------------------------------------------------------------
# Gaussian KL closed forms.
# ------------------------------------------------------------------------------------------------


def _gaussian_batch(seed, batch, d):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    mean_p = np.asarray(jax.random.normal(k1, (*batch, d), jnp.float32), np.float64)
    mean_q = np.asarray(jax.random.normal(k2, (*batch, d), jnp.float32), np.float64)
    return mean_p, random_spd(k3, batch, d), mean_q, random_spd(k4, batch, d)


def test_gaussian_kl_matches_numpy_closed_form_float64():
    """Reference: np_gaussian_kl (np.linalg inverse and slogdet), batch [2, 3], d = 4."""
    mean_p, cov_p, mean_q, cov_q = _gaussian_batch(0, (2, 3), 4)
    expected = np.array(
        [
            [np_gaussian_kl(mean_p[i, j], cov_p[i, j], mean_q[i, j], cov_q[i, j]) for j in range(3)]
            for i in range(2)
        ]
    )
    with jax.enable_x64(True):
        got = fdiv.gaussian_kl(mean_p, cov_p, mean_q, cov_q)
        assert got.shape == (2, 3) and got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10)


def test_gaussian_kl_matches_numpy_closed_form_float32():
    """Reference: np_gaussian_kl in float64; float32 inputs, relative tolerance 1e-4."""
    mean_p, cov_p, mean_q, cov_q = _gaussian_batch(1, (5,), 3)
    expected = np.array(
        [np_gaussian_kl(mean_p[i], cov_p[i], mean_q[i], cov_q[i]) for i in range(5)]
    )
    args = [a.astype(np.float32) for a in (mean_p, cov_p, mean_q, cov_q)]
    got = fdiv.gaussian_kl(*args)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_gaussian_kl_broadcasts_unbatched_side():
    """One side batched [4], the other a single Gaussian, in either order. Reference: numpy loop."""
    mean_p, cov_p, mean_q, cov_q = _gaussian_batch(2, (4,), 3)
    with jax.enable_x64(True):
        got_q_shared = fdiv.gaussian_kl(mean_p, cov_p, mean_q[0], cov_q[0])
        got_p_shared = fdiv.gaussian_kl(mean_p[0], cov_p[0], mean_q, cov_q)
    exp_q_shared = [np_gaussian_kl(mean_p[i], cov_p[i], mean_q[0], cov_q[0]) for i in range(4)]
    exp_p_shared = [np_gaussian_kl(mean_p[0], cov_p[0], mean_q[i], cov_q[i]) for i in range(4)]
    np.testing.assert_allclose(np.asarray(got_q_shared), exp_q_shared, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(got_p_shared), exp_p_shared, rtol=1e-10)


def test_gaussian_kl_diag_matches_closed_form_and_full_version():
    """Reference: np_gaussian_kl with diag(exp(log_var)) covariances; also equals gaussian_kl."""
    keys = jax.random.split(jax.random.key(3), 4)
    mean_p, log_var_p, mean_q, log_var_q = (
        np.asarray(jax.random.normal(k, (6, 5), jnp.float32), np.float64) for k in keys
    )
    expected = np.array(
        [
            np_gaussian_kl(
                mean_p[i], np.diag(np.exp(log_var_p[i])), mean_q[i], np.diag(np.exp(log_var_q[i]))
            )
            for i in range(6)
        ]
    )
    with jax.enable_x64(True):
        diag = fdiv.gaussian_kl_diag(mean_p, log_var_p, mean_q, log_var_q)
        cov_p = jnp.exp(log_var_p)[..., None] * jnp.eye(5)
        cov_q = jnp.exp(log_var_q)[..., None] * jnp.eye(5)
        full = fdiv.gaussian_kl(mean_p, cov_p, mean_q, cov_q)
    assert diag.shape == (6,)
    np.testing.assert_allclose(np.asarray(diag), expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(diag), np.asarray(full), rtol=1e-10)
    # float32: same reference, float32 rounding.
    got32 = fdiv.gaussian_kl_diag(
        *(a.astype(np.float32) for a in (mean_p, log_var_p, mean_q, log_var_q))
    )
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got32), expected, rtol=1e-4)


def test_gaussian_kl_diag_broadcasts():
    """Means [3, 2, d] against a shared Q [d]. Reference: 1/2 sum(expm1(ds) - ds + dm^2 e^-sq)."""
    keys = jax.random.split(jax.random.key(4), 2)
    mean_p = np.asarray(jax.random.normal(keys[0], (3, 2, 4), jnp.float32), np.float64)
    log_var_p = np.asarray(jax.random.normal(keys[1], (3, 2, 4), jnp.float32), np.float64)
    mean_q, log_var_q = np.array([0.1, -0.2, 0.3, 0.0]), np.array([0.5, -0.5, 0.0, 0.2])
    ds = log_var_p - log_var_q
    expected = 0.5 * np.sum(np.exp(ds) - 1 - ds + (mean_p - mean_q) ** 2 * np.exp(-log_var_q), -1)
    with jax.enable_x64(True):
        got = fdiv.gaussian_kl_diag(mean_p, log_var_p, mean_q, log_var_q)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10)


def test_gaussian_kl_of_identical_gaussians_is_zero():
    """KL(P || P) = 0 (hand): exactly for the diagonal form, to rounding for the Cholesky form."""
    mean, cov, _, _ = _gaussian_batch(5, (4,), 3)
    log_var = np.log(np.diagonal(cov, axis1=-2, axis2=-1))
    with jax.enable_x64(True):
        np.testing.assert_array_equal(
            np.asarray(fdiv.gaussian_kl_diag(mean, log_var, mean, log_var)), 0.0
        )
        np.testing.assert_allclose(
            np.asarray(fdiv.gaussian_kl(mean, cov, mean, cov)), 0.0, atol=1e-12
        )
    got32 = fdiv.gaussian_kl(
        mean.astype(np.float32),
        cov.astype(np.float32),
        mean.astype(np.float32),
        cov.astype(np.float32),
    )
    np.testing.assert_allclose(np.asarray(got32), 0.0, atol=1e-5)
    m32, lv32 = mean.astype(np.float32), log_var.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(fdiv.gaussian_kl_diag(m32, lv32, m32, lv32)), 0.0)


def test_gaussian_kl_gradients_match_analytic_and_finite_differences():
    """Gradients in float64 vs hand-derived ones and central differences of np_gaussian_kl.

    Hand derivation: dKL/dmu_p = Sq^-1 (mu_p - mu_q), dKL/dmu_q = -dKL/dmu_p, and along a symmetric
    direction E: dKL/dSp[E] = 1/2 tr((Sq^-1 - Sp^-1) E),
    dKL/dSq[E] = 1/2 tr((Sq^-1 - Sq^-1 (Sp + dd^T) Sq^-1) E), d = mu_q - mu_p.
    """
    mean_p, cov_p, mean_q, cov_q = (a[0] for a in _gaussian_batch(6, (1,), 3))
    sq_inv, sp_inv = np.linalg.inv(cov_q), np.linalg.inv(cov_p)
    diff = mean_q - mean_p
    e_dir = np.array([[1.0, 0.3, -0.2], [0.3, -0.5, 0.4], [-0.2, 0.4, 0.7]])  # symmetric direction
    h = 1e-5
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in (mean_p, cov_p, mean_q, cov_q))
        g_mp, g_cp, g_mq, g_cq = jax.grad(fdiv.gaussian_kl, argnums=(0, 1, 2, 3))(*args)
        for g in (g_mp, g_cp, g_mq, g_cq):
            assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.asarray(g_mp), sq_inv @ (mean_p - mean_q), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(g_mq), sq_inv @ (mean_q - mean_p), rtol=1e-10)
        zeros_m, zeros_c = np.zeros(3), np.zeros((3, 3))
        _, dir_p = jax.jvp(fdiv.gaussian_kl, args, (zeros_m, jnp.asarray(e_dir), zeros_m, zeros_c))
        _, dir_q = jax.jvp(fdiv.gaussian_kl, args, (zeros_m, zeros_c, zeros_m, jnp.asarray(e_dir)))
    fd_p = (
        np_gaussian_kl(mean_p, cov_p + h * e_dir, mean_q, cov_q)
        - np_gaussian_kl(mean_p, cov_p - h * e_dir, mean_q, cov_q)
    ) / (2 * h)
    fd_q = (
        np_gaussian_kl(mean_p, cov_p, mean_q, cov_q + h * e_dir)
        - np_gaussian_kl(mean_p, cov_p, mean_q, cov_q - h * e_dir)
    ) / (2 * h)
    fd_mp = np.array(
        [
            (
                np_gaussian_kl(mean_p + h * np.eye(3)[i], cov_p, mean_q, cov_q)
                - np_gaussian_kl(mean_p - h * np.eye(3)[i], cov_p, mean_q, cov_q)
            )
            / (2 * h)
            for i in range(3)
        ]
    )
    analytic_p = 0.5 * np.trace((sq_inv - sp_inv) @ e_dir)
    analytic_q = 0.5 * np.trace((sq_inv - sq_inv @ (cov_p + np.outer(diff, diff)) @ sq_inv) @ e_dir)
    # Central differences: truncation O(h^2) ~ 1e-10, rounding ~ 1e-16 / h ~ 1e-11.
    np.testing.assert_allclose(float(dir_p), analytic_p, rtol=1e-10)
    np.testing.assert_allclose(float(dir_q), analytic_q, rtol=1e-10)
    np.testing.assert_allclose(float(dir_p), fd_p, rtol=1e-7)
    np.testing.assert_allclose(float(dir_q), fd_q, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(g_mp), fd_mp, rtol=1e-7)


def test_gaussian_kl_gradients_finite_float32_batched():
    """jax.grad of a batched float32 sum is finite for every argument (no NaN through Cholesky);
    the diagonal form's gradients also match hand derivatives."""
    args = [a.astype(np.float32) for a in _gaussian_batch(7, (8,), 4)]
    kl_sum = lambda *a: jnp.sum(fdiv.gaussian_kl(*a))
    grads = jax.grad(kl_sum, argnums=(0, 1, 2, 3))(*args)
    for g, a in zip(grads, args, strict=True):
        assert g.shape == a.shape and np.all(np.isfinite(np.asarray(g)))
    diag_sum = lambda *a: jnp.sum(fdiv.gaussian_kl_diag(*a))
    mean_p, cov_p, mean_q, cov_q = args
    log_vars = [jnp.log(jnp.diagonal(c, axis1=-2, axis2=-1)) for c in (cov_p, cov_q)]
    grads = jax.grad(diag_sum, argnums=(0, 1, 2, 3))(mean_p, log_vars[0], mean_q, log_vars[1])
    for g in grads:
        assert g.shape == mean_p.shape and np.all(np.isfinite(np.asarray(g)))
    # hand derivatives of 1/2 sum[expm1(sp - sq) - (sp - sq) + (mp - mq)^2 e^-sq], in float64
    mp, mq = np.asarray(mean_p, np.float64), np.asarray(mean_q, np.float64)
    sp, sq = (np.asarray(lv, np.float64) for lv in log_vars)
    dm2 = (mp - mq) ** 2 * np.exp(-sq)
    expected = [
        (mp - mq) * np.exp(-sq),
        0.5 * np.expm1(sp - sq),
        (mq - mp) * np.exp(-sq),
        -0.5 * np.expm1(sp - sq) - 0.5 * dm2,
    ]
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float64), e, rtol=1e-4, atol=1e-6)


def test_gaussian_kl_monte_carlo_cross_check():
    """Reference: mean of scipy multivariate_normal log p - log q over x ~ P, within 4 SE."""
    mean_p, cov_p = (
        np.array([0.3, -0.2, 0.5]),
        np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.6]]),
    )
    mean_q, cov_q = (
        np.array([0.0, 0.1, 0.0]),
        np.array([[1.3, -0.2, 0.1], [-0.2, 1.1, 0.0], [0.1, 0.0, 1.0]]),
    )
    x = mvn_samples(8, N_SAMPLES, mean_p, cov_p)
    log_p = scipy.stats.multivariate_normal(mean_p, cov_p).logpdf(x)
    log_q = scipy.stats.multivariate_normal(mean_q, cov_q).logpdf(x)
    log_ratio = log_p - log_q
    got = float(fdiv.gaussian_kl(*(a.astype(np.float32) for a in (mean_p, cov_p, mean_q, cov_q))))
    assert_within_se(log_ratio.mean(), got, log_ratio)
    np.testing.assert_allclose(got, np_gaussian_kl(mean_p, cov_p, mean_q, cov_q), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# monte_carlo_divergence.
# ------------------------------------------------------------------------------------------------


def _log_ratio_1d(x, mu_p=MU_P, sd_p=SD_P, mu_q=MU_Q, sd_q=SD_Q):
    return scipy.stats.norm.logpdf(x, mu_p, sd_p) - scipy.stats.norm.logpdf(x, mu_q, sd_q)


def _check_monte_carlo(name, log_ratio, control_variate, truth):
    """fdiv's MC estimate equals the numpy mean of its summand f(u) (- f'(1)(u - 1) with the
    control variate) and lies within 4 SE of the closed-form truth. Returns the estimate."""
    u = np.exp(log_ratio.astype(np.float64))
    summand = normalized_f_np(name, u) if control_variate else F_NP[name](u)
    got = fdiv.monte_carlo_divergence(name, log_ratio, control_variate=control_variate)
    np.testing.assert_allclose(float(got), summand.mean(), rtol=1e-4, atol=1e-6)
    assert_within_se(got, truth, summand)
    return got


@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("name", ["kl", "reverse_kl"])
def test_monte_carlo_kl_1d_gaussians(name, control_variate):
    """x ~ Q = N(0, 1), P = N(0.5, 0.8^2). Reference: closed-form KL(P||Q) for "kl" and KL(Q||P)
    for "reverse_kl"; the SE is of the numpy summand f(u) (- f'(1)(u - 1) with the control
    variate), whose mean fdiv must also reproduce to float32 rounding."""
    x = normal_samples(10, (N_SAMPLES,), MU_Q, SD_Q)
    log_ratio = _log_ratio_1d(x).astype(np.float32)
    truth = (
        np_gaussian_kl_1d(MU_P, SD_P, MU_Q, SD_Q)
        if name == "kl"
        else np_gaussian_kl_1d(MU_Q, SD_Q, MU_P, SD_P)
    )
    got = _check_monte_carlo(name, log_ratio, control_variate, truth)
    assert got.shape == () and got.dtype == jnp.float32


@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("name", ["kl", "reverse_kl"])
def test_monte_carlo_kl_multivariate_gaussians(name, control_variate):
    """d = 3, x ~ Q. Reference: np_gaussian_kl (KL(P||Q) or KL(Q||P)); log ratios from scipy
    multivariate_normal. Sigma_p is chosen with 2 Sp^-1 - Sq^-1 positive definite so that the "kl"
    summand u log u has finite variance under Q (asserted)."""
    mean_p, cov_p = (
        np.array([0.3, -0.2, 0.4]),
        np.array([[0.8, 0.2, 0.0], [0.2, 0.7, 0.1], [0.0, 0.1, 0.6]]),
    )
    mean_q, cov_q = np.zeros(3), np.array([[1.2, -0.2, 0.1], [-0.2, 1.0, 0.0], [0.1, 0.0, 0.9]])
    assert np.all(np.linalg.eigvalsh(2 * np.linalg.inv(cov_p) - np.linalg.inv(cov_q)) > 0)
    x = mvn_samples(11, N_SAMPLES, mean_q, cov_q)
    log_ratio = (
        scipy.stats.multivariate_normal(mean_p, cov_p).logpdf(x)
        - scipy.stats.multivariate_normal(mean_q, cov_q).logpdf(x)
    ).astype(np.float32)
    truth = (
        np_gaussian_kl(mean_p, cov_p, mean_q, cov_q)
        if name == "kl"
        else np_gaussian_kl(mean_q, cov_q, mean_p, cov_p)
    )
    _check_monte_carlo(name, log_ratio, control_variate, truth)


def test_monte_carlo_reverse_kl_control_variate_reduces_variance():
    """P = N(0.3, 1), Q = N(0, 1) (KL = 0.045): on the same samples, var of (u - 1) - log u is far
    below var of -log u (population values ~4e-3 vs 9e-2, by hand: -log u = -0.3 x + 0.045 and
    (u - 1) - log u ~ (log u)^2 / 2). Reference: closed form KL(Q||P) = 0.3^2 / 2."""
    x = normal_samples(12, (N_SAMPLES,), 0.0, 1.0)
    log_ratio = _log_ratio_1d(x, 0.3, 1.0, 0.0, 1.0).astype(np.float32)
    u = np.exp(log_ratio.astype(np.float64))
    plain, with_cv = -np.log(u), (u - 1.0) - np.log(u)
    assert with_cv.var() < 0.2 * plain.var()
    truth = 0.5 * 0.3**2
    se_plain = assert_within_se(
        fdiv.monte_carlo_divergence("reverse_kl", log_ratio, control_variate=False), truth, plain
    )
    se_cv = assert_within_se(fdiv.monte_carlo_divergence("reverse_kl", log_ratio), truth, with_cv)
    assert se_cv < se_plain


@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("name", ["js", "squared_hellinger"])
def test_monte_carlo_bounded_divergences_vs_quadrature(name, control_variate):
    """P = N(1, 0.7^2), Q = N(0, 1), x ~ Q. Reference: scipy.integrate.quad of q f(p/q)."""
    truth = quad_divergence_1d(name, 1.0, 0.7, 0.0, 1.0)
    x = normal_samples(13, (N_SAMPLES,), 0.0, 1.0)
    log_ratio = _log_ratio_1d(x, 1.0, 0.7, 0.0, 1.0).astype(np.float32)
    summand = F_NP[name](np.exp(log_ratio.astype(np.float64)))  # f'(1) = 0: no control variate
    got = fdiv.monte_carlo_divergence(name, log_ratio, control_variate=control_variate)
    np.testing.assert_allclose(float(got), summand.mean(), rtol=1e-4)
    assert_within_se(got, truth, summand)


def test_monte_carlo_axis_and_batch():
    """log ratios [n, 3] with axis=0 give per-column means of the numpy summand (3 KL problems)."""
    shifts = np.array([0.0, 0.5, 1.0])
    x = normal_samples(14, (20_000, 3), 0.0, 1.0)
    log_ratio = _log_ratio_1d(x, shifts, 1.0, 0.0, 1.0)
    with jax.enable_x64(True):
        got = fdiv.monte_carlo_divergence("kl", log_ratio, axis=0)
        got_t = fdiv.monte_carlo_divergence("kl", log_ratio.T)
    expected = normalized_f_np("kl", np.exp(log_ratio)).mean(axis=0)
    assert got.shape == (3,)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(np.asarray(got_t), expected, rtol=1e-10, atol=1e-15)
    # and each column agrees with its closed form KL = shift^2 / 2
    for j in range(3):
        summand = normalized_f_np("kl", np.exp(log_ratio[:, j]))
        if shifts[j] == 0:
            np.testing.assert_array_equal(summand, 0.0)
        else:
            assert_within_se(got[j], 0.5 * shifts[j] ** 2, summand)


# ------------------------------------------------------------------------------------------------
# importance_weighted_divergence.
# ------------------------------------------------------------------------------------------------

MU_PI, SD_PI = 0.2, 1.5  # proposal wider than both P and Q: every moment of the weights is finite


def _proposal_log_densities(seed, n=N_SAMPLES):
    x = normal_samples(seed, (n,), MU_PI, SD_PI)
    log_p = scipy.stats.norm.logpdf(x, MU_P, SD_P)
    log_q = scipy.stats.norm.logpdf(x, MU_Q, SD_Q)
    log_pi = scipy.stats.norm.logpdf(x, MU_PI, SD_PI)
    return log_p, log_q, log_pi


@pytest.mark.parametrize("name", ["kl", "reverse_kl"])
def test_importance_weighted_unbiased_vs_closed_form(name):
    """self_normalize=False with normalised densities, x ~ N(0.2, 1.5^2). Reference: closed-form
    KL; SE of the summand (q/pi) f_n(p/q) computed in numpy, f_n = f - f'(1)(u - 1) (same mean as
    (q/pi) f(p/q) since E_pi[p/pi - q/pi] = 0; fdiv sums the f_n form)."""
    log_p, log_q, log_pi = _proposal_log_densities(20)
    summand = np.exp(log_q - log_pi) * normalized_f_np(name, np.exp(log_p - log_q))
    truth = (
        np_gaussian_kl_1d(MU_P, SD_P, MU_Q, SD_Q)
        if name == "kl"
        else np_gaussian_kl_1d(MU_Q, SD_Q, MU_P, SD_P)
    )
    with jax.enable_x64(True):
        got = fdiv.importance_weighted_divergence(name, log_p, log_q, log_pi, self_normalize=False)
    np.testing.assert_allclose(float(got), summand.mean(), rtol=1e-10)
    assert_within_se(got, truth, summand)
    # float32 gives the same estimate to float32 rounding.
    got32 = fdiv.importance_weighted_divergence(
        name, *(a.astype(np.float32) for a in (log_p, log_q, log_pi)), self_normalize=False
    )
    np.testing.assert_allclose(float(got32), summand.mean(), rtol=1e-4)


def test_importance_weighted_self_normalized_kl_vs_closed_form():
    """self_normalize=True, "kl". Reference: closed-form KL(P||Q). The estimator is
    A/B - log B + log C with A = mean(r_p l), B = mean(r_p), C = mean(r_q) (r = density/pi,
    l = log p - log q); its standard error comes from the delta method (influence values
    psi_i = (r_p l - (A/B) r_p)/B - (r_p - B)/B + (r_q - C)/C). The O(1/n) bias is negligible."""
    log_p, log_q, log_pi = _proposal_log_densities(21)
    r_p, r_q, ell = np.exp(log_p - log_pi), np.exp(log_q - log_pi), log_p - log_q
    a, b, c = (r_p * ell).mean(), r_p.mean(), r_q.mean()
    psi = (r_p * ell - (a / b) * r_p) / b - (r_p - b) / b + (r_q - c) / c
    truth = np_gaussian_kl_1d(MU_P, SD_P, MU_Q, SD_Q)
    with jax.enable_x64(True):
        got = fdiv.importance_weighted_divergence("kl", log_p, log_q, log_pi)
    np.testing.assert_allclose(float(got), a / b - np.log(b) + np.log(c), rtol=1e-10)
    assert_within_se(got, truth, psi)
    got32 = fdiv.importance_weighted_divergence(
        "kl", *(a.astype(np.float32) for a in (log_p, log_q, log_pi))
    )
    np.testing.assert_allclose(float(got32), float(got), rtol=1e-4)


def test_importance_weighted_self_normalized_js_batches_vs_quadrature():
    """self_normalize=True, "js", 20 independent batches of 5000 (a [20, 5000] input, axis=-1).
    Reference: quad of q f(p/q); SE from the spread of the 20 batch estimates (t with 19 dof,
    P(|t| > 4) ~ 8e-4); the self-normalisation bias O(1/5000) is far below that SE."""
    log_p, log_q, log_pi = (a.reshape(20, 5000) for a in _proposal_log_densities(22))
    truth = quad_divergence_1d("js", MU_P, SD_P, MU_Q, SD_Q)
    got = fdiv.importance_weighted_divergence(
        "js", log_p.astype(np.float32), log_q.astype(np.float32), log_pi.astype(np.float32)
    )
    assert got.shape == (20,)
    batch = np.asarray(got, np.float64)
    assert_within_se(batch.mean(), truth, batch)


def test_importance_weighted_self_normalized_invariant_to_constants():
    """Unnormalised log densities: adding constants to log_p and log_q leaves the self-normalised
    estimate unchanged (the weights are softmaxes), up to float64 rounding."""
    log_p, log_q, log_pi = _proposal_log_densities(23, n=10_000)
    with jax.enable_x64(True):
        for name in ("kl", "reverse_kl", "js", "pearson"):
            base = float(fdiv.importance_weighted_divergence(name, log_p, log_q, log_pi))
            for c_p, c_q in ((37.5, -12.25), (-300.0, 250.0), (0.0, 1e3)):
                shifted = fdiv.importance_weighted_divergence(
                    name, log_p + c_p, log_q + c_q, log_pi
                )
                np.testing.assert_allclose(float(shifted), base, rtol=1e-9)


DISCRETE_NAMES = [
    "kl",
    "reverse_kl",
    "js",
    "squared_hellinger",
    "pearson",
    "neyman",
    "total_variation",
    "jeffreys",
    "triangular",
]


def _categoricals(seed, k=6):
    kp, kq, kpi = jax.random.split(jax.random.key(seed), 3)
    p = np.asarray(jax.random.dirichlet(kp, jnp.ones(k)), np.float64)
    q = np.asarray(jax.random.dirichlet(kq, jnp.ones(k)), np.float64)
    pi = np.asarray(jax.random.dirichlet(kpi, 3.0 * jnp.ones(k)), np.float64)
    return p / p.sum(), q / q.sum(), pi / pi.sum()


@pytest.mark.parametrize("name", DISCRETE_NAMES)
def test_importance_weighted_exact_on_categoricals(name):
    """The "samples" are the K categories of a categorical, each once. Reference: exact
    enumeration sum_k q_k f(p_k/q_k). With a uniform proposal both estimators are exact (the
    unbiased one is (1/K) sum_k K q_k f(p_k/q_k)); self-normalisation also ignores unnormalised
    constants. With a non-uniform proposal the self-normalised estimate is the categorical
    divergence between the weights p/pi and q/pi (enumerated in numpy)."""
    p, q, pi = _categoricals(30)
    exact = np.sum(q * F_NP[name](p / q))
    log_p, log_q, log_pi = np.log(p), np.log(q), np.log(pi)
    uniform = np.full_like(p, -np.log(p.size))
    with jax.enable_x64(True):
        sn = fdiv.importance_weighted_divergence(name, log_p + 3.0, log_q - 7.0, uniform)
        unbiased = fdiv.importance_weighted_divergence(
            name, log_p, log_q, uniform, self_normalize=False
        )
        sn_pi = fdiv.importance_weighted_divergence(name, log_p, log_q, log_pi)
        via_divergence = fdiv.divergence(name, log_p - log_pi, log_q - log_pi)
    np.testing.assert_allclose(float(sn), exact, rtol=1e-10)
    np.testing.assert_allclose(float(unbiased), exact, rtol=1e-10)
    wp, wq = p / pi / np.sum(p / pi), q / pi / np.sum(q / pi)
    np.testing.assert_allclose(float(sn_pi), np.sum(wq * F_NP[name](wp / wq)), rtol=1e-10)
    np.testing.assert_allclose(float(sn_pi), float(via_divergence), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# variational_lower_bound.
# ------------------------------------------------------------------------------------------------

# Equal variances: log(p/q) is linear in x, so every moment of T and f*(T) is finite.
VB_MU_P, VB_SD, VB_MU_Q = 0.5, 1.0, 0.0


def _vb_truth(name):
    """D_f(P || Q) for P = N(0.5, 1), Q = N(0, 1): hand closed forms KL = reverse KL = 0.5^2/2,
    Pearson chi^2 = exp(0.5^2) - 1; JS by quadrature (Pearson is also cross-checked by quad)."""
    closed = {"kl": 0.125, "reverse_kl": 0.125, "pearson": np.expm1(0.25)}
    value = quad_divergence_1d(name, VB_MU_P, VB_SD, VB_MU_Q, VB_SD)
    if name in closed:
        np.testing.assert_allclose(value, closed[name], rtol=1e-9)
    return value


def _vb_log_ratio(x):
    return scipy.stats.norm.logpdf(x, VB_MU_P, VB_SD) - scipy.stats.norm.logpdf(x, VB_MU_Q, VB_SD)


CRITICS = {
    "true": lambda lr: lr,
    "half": lambda lr: 0.5 * lr,
    "shifted": lambda lr: lr + 0.3,
}


def _vb_samples(seed, critic):
    kp, kq = jax.random.split(jax.random.key(seed))
    x_p = VB_MU_P + VB_SD * np.asarray(jax.random.normal(kp, (N_SAMPLES,)), np.float64)
    x_q = VB_MU_Q + VB_SD * np.asarray(jax.random.normal(kq, (N_SAMPLES,)), np.float64)
    return CRITICS[critic](_vb_log_ratio(x_p)), CRITICS[critic](_vb_log_ratio(x_q))


def _vb_numpy_terms(name, v_p, v_q):
    t_p = F_PRIME_NP[name](np.exp(v_p))
    conj_q = CONJ_NP[name](F_PRIME_NP[name](np.exp(v_q)))
    return t_p, conj_q


def _vb_se(t_p, conj_q):
    return np.sqrt(t_p.var(ddof=1) / t_p.size + conj_q.var(ddof=1) / conj_q.size)


def _vb_exact_bound(name, critic):
    """E_P[T(v(x))] - E_Q[f*(T(v(x)))] by quadrature, T = f'(e^v), f* the textbook conjugate."""
    fp, conj, crit = F_PRIME_NP[name], CONJ_NP[name], CRITICS[critic]

    def e_p(x):
        return scipy.stats.norm.pdf(x, VB_MU_P, VB_SD) * fp(np.exp(crit(_vb_log_ratio(x))))

    def e_q(x):
        return scipy.stats.norm.pdf(x, VB_MU_Q, VB_SD) * conj(fp(np.exp(crit(_vb_log_ratio(x)))))

    kw = dict(epsabs=1e-13, epsrel=1e-12, limit=200)
    return scipy.integrate.quad(e_p, -15, 15, **kw)[0] - scipy.integrate.quad(e_q, -15, 15, **kw)[0]


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "pearson"])
def test_variational_bound_tight_at_true_log_ratio(name):
    """Critic = exact log(p/q) at samples of P and Q. Reference: D_f (closed form / quad), within
    4 SE of the two independent sample means; fdiv also equals the numpy bound built from
    textbook conjugates on the same samples."""
    v_p, v_q = _vb_samples(40, "true")
    t_p, conj_q = _vb_numpy_terms(name, v_p, v_q)
    with jax.enable_x64(True):
        got = float(fdiv.variational_lower_bound(name, v_p, v_q))
    np.testing.assert_allclose(got, t_p.mean() - conj_q.mean(), rtol=1e-9)
    se = _vb_se(t_p, conj_q)
    truth = _vb_truth(name)
    assert abs(got - truth) < Z * se, (got, truth, se)
    # the exact bound of the exact critic is D_f itself
    np.testing.assert_allclose(_vb_exact_bound(name, "true"), truth, rtol=1e-9)
    got32 = fdiv.variational_lower_bound(name, v_p.astype(np.float32), v_q.astype(np.float32))
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(float(got32), got, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("critic", ["half", "shifted"])
@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "pearson"])
def test_variational_bound_strictly_lower_for_wrong_critic(name, critic):
    """Critic 0.5 log(p/q) or log(p/q) + 0.3. Reference: the exact bound of that critic by
    quadrature (textbook conjugates), which must sit below D_f by more than 8 SE; fdiv's MC bound
    is then within 4 SE of the exact bound and hence below D_f by more than 4 SE."""
    v_p, v_q = _vb_samples(41, critic)
    t_p, conj_q = _vb_numpy_terms(name, v_p, v_q)
    se = _vb_se(t_p, conj_q)
    exact_bound, truth = _vb_exact_bound(name, critic), _vb_truth(name)
    assert truth - exact_bound > 2 * Z * se, (truth, exact_bound, se)
    got = float(fdiv.variational_lower_bound(name, v_p.astype(np.float32), v_q.astype(np.float32)))
    assert abs(got - exact_bound) < Z * se, (got, exact_bound, se)
    assert got < truth - Z * se


def test_variational_bound_axis_and_batch():
    """Two critics stacked as [n, 2] with axis=0: each column equals its numpy bound."""
    v_p_true, v_q_true = _vb_samples(42, "true")
    v_p = np.stack([v_p_true, 0.5 * v_p_true], axis=1)[:10_000]
    v_q = np.stack([v_q_true, 0.5 * v_q_true], axis=1)[:20_000]  # m != n is allowed
    with jax.enable_x64(True):
        got = fdiv.variational_lower_bound("kl", v_p, v_q, axis=0)
    assert got.shape == (2,)
    for j in range(2):
        t_p, conj_q = _vb_numpy_terms("kl", v_p[:, j], v_q[:, j])
        np.testing.assert_allclose(float(got[j]), t_p.mean() - conj_q.mean(), rtol=1e-10)


# ------------------------------------------------------------------------------------------------
# Lambert W helpers (private, used by closed-form conjugates).
# ------------------------------------------------------------------------------------------------

BRANCH = -1.0 / np.e
LAMBERTW_X = np.concatenate(
    [
        BRANCH + np.array([1e-6, 1e-5, 1e-4, 1e-3, 1e-2]),
        np.linspace(BRANCH + 0.02, 1.0, 401),
        np.array([-1e-3, -1e-8, 1e-8, 1e-3]),
    ]
)


def test_lambertw0_float64_matches_scipy():
    """Reference: scipy.special.lambertw(x).real (principal branch), rel 1e-10 incl. near -1/e."""
    expected = scipy.special.lambertw(LAMBERTW_X).real
    with jax.enable_x64(True):
        got = nx.lambertw0(jnp.asarray(LAMBERTW_X))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-300)
        # W(0) = 0, W(e) = 1 (hand); W(-1/e) = -1 up to the sqrt conditioning of the branch point
        # (|dx| ~ 1e-17 rounding of -1/e moves W by ~sqrt(2 e |dx|) ~ 1e-8)
        special = np.asarray(nx.lambertw0(jnp.asarray([0.0, np.e, BRANCH])))
        np.testing.assert_allclose(special[:2], [0.0, 1.0], rtol=1e-14, atol=1e-300)
        np.testing.assert_allclose(special[2], -1.0, atol=1e-7)
        assert np.isnan(float(nx.lambertw0(jnp.asarray(-0.4))))


def test_lambertw0_float32_matches_scipy():
    """Reference: scipy lambertw of the float32-rounded inputs (in float64), rel 1e-5."""
    x32 = LAMBERTW_X.astype(np.float32)
    expected = scipy.special.lambertw(x32.astype(np.float64)).real
    got = nx.lambertw0(jnp.asarray(x32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-5, atol=1e-30)


def test_lambertw0_gradient_matches_closed_form():
    """Reference: dW/dx = W / (x (1 + W)) with W from scipy (x = 0 excluded: 0/0 there)."""
    x = LAMBERTW_X[LAMBERTW_X != 0]
    w = scipy.special.lambertw(x).real
    expected = w / (x * (1.0 + w))
    with jax.enable_x64(True):
        got = jax.vmap(jax.grad(nx.lambertw0))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9)
    got32 = jax.vmap(jax.grad(nx.lambertw0))(jnp.asarray(x, jnp.float32))
    far = x > BRANCH + 1e-3  # float32 conditioning near the branch point: dW/dx ~ 1/sqrt(x+1/e)
    np.testing.assert_allclose(np.asarray(got32)[far], expected[far], rtol=1e-4)


def _log_w_of_exp_brentq(c):
    """Root y of exp(y) + y = c by scipy brentq on a bracket that provably contains it:
    lo = min(c, 0) - 1 gives g(lo) < 0; hi = c + 1 (c <= 1) or log c + 1 (c > 1) gives g(hi) > 0."""
    lo = min(c, 0.0) - 1.0
    hi = c + 1.0 if c <= 1.0 else np.log(c) + 1.0
    return scipy.optimize.brentq(lambda y: np.exp(y) + y - c, lo, hi, xtol=1e-300, rtol=1e-15)


def test_lambertw0_of_exp_moderate_matches_scipy():
    """Reference: log(scipy.special.lambertw(exp(c))) for c in [-30, 30]; float64 rel 1e-10 and
    float32 rel 1e-5 (atol near the root y = 0 at c = 1)."""
    c = np.linspace(-30.0, 30.0, 241)
    expected = np.log(scipy.special.lambertw(np.exp(c)).real)
    with jax.enable_x64(True):
        got = nx.lambertw0_of_exp(jnp.asarray(c))
        assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-14)
    got32 = nx.lambertw0_of_exp(jnp.asarray(c, jnp.float32))
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got32, np.float64), expected, rtol=1e-5, atol=1e-6)


def test_lambertw0_of_exp_large_arguments():
    """c up to 1e4 (exp(c) overflows): y solves exp(y) + y = c to 1e-6 relative, and matches an
    independent brentq root."""
    c = np.array([50.0, 100.0, 700.0, 710.0, 1e3, 3e3, 1e4])
    expected = np.array([_log_w_of_exp_brentq(ci) for ci in c])
    with jax.enable_x64(True):
        y = np.asarray(nx.lambertw0_of_exp(jnp.asarray(c)))
    np.testing.assert_allclose(np.exp(y) + y, c, rtol=1e-6)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    y32 = np.asarray(nx.lambertw0_of_exp(jnp.asarray(c, jnp.float32)), np.float64)
    assert np.all(np.isfinite(y32))
    np.testing.assert_allclose(np.exp(y32) + y32, c, rtol=1e-5)


def test_lambertw0_of_exp_derivative():
    """Reference: dy/dc = 1 / (1 + exp(y)) (implicit differentiation of exp(y) + y = c) with y from
    brentq, for moderate and huge c."""
    c = np.array([-30.0, -5.0, -1.0, 0.0, 1.0, 2.5, 10.0, 100.0, 1e3, 1e4])
    y = np.array([_log_w_of_exp_brentq(ci) for ci in c])
    with jax.enable_x64(True):
        got = jax.vmap(jax.grad(nx.lambertw0_of_exp))(jnp.asarray(c))
    np.testing.assert_allclose(np.asarray(got), 1.0 / (1.0 + np.exp(y)), rtol=1e-10)
