"""f-DPG, DPH-RL, GRPO and pass@k against exact enumeration, numpy / scipy and hand values.

The f-DPG acceptance test enumerates a 12-outcome task: ``pi_theta = softmax(theta)`` and an
energy-based target ``p = P / Z`` known exactly, so the exact ``grad D_f(pi_theta || p)`` comes
from ``fdiv.divergence`` (a separate, already tested code path) and the Monte Carlo mean of the
surrogate's per-sample gradients must match it within its own standard error.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.test_util import check_grads

import fdiv
from fdiv import generators as gen
from fdiv.losses import policy as po
from fdiv.metrics import pass_at_k

# Compiled once per static k: much cheaper than eager op-by-op dispatch of new shapes.
pass_at_k_jit = jax.jit(pass_at_k, static_argnums=2)


def value_and_grad_of_sum(fn):
    """``x -> (fn(x), grad sum(fn)(x))``, jitted."""
    return jax.jit(lambda x: (fn(x), jax.grad(lambda y: jnp.sum(fn(y)))(x)))


# ------------------------------------------------------------------------------------------------
# alignment_generator.
# ------------------------------------------------------------------------------------------------


def test_alignment_generator_mapping():
    assert po.alignment_generator("forward_kl") == gen.get("reverse_kl")
    assert po.alignment_generator("reverse_kl") == gen.get("kl")
    assert po.alignment_generator("js") == gen.get("js")
    assert po.alignment_generator("tv") == gen.get("total_variation")
    assert po.alignment_generator("alpha") == gen.get("alpha", alpha=0.5)
    assert po.alignment_generator("alpha", alpha=0.2) == gen.get("alpha", alpha=0.2)
    assert po.alignment_generator("squared_hellinger") == gen.get("squared_hellinger")
    assert po.alignment_generator("skew_kl", lam=0.3) == gen.get("skew_kl", lam=0.3)
    assert po.alignment_generator("hellinger") == gen.get("squared_hellinger")  # catalog alias
    g = gen.get("pearson")
    assert po.alignment_generator(g) is g
    assert po.ALIGNMENT_NAMES == ("forward_kl", "reverse_kl", "js", "tv", "alpha")
    # The meaning, checked on a pair of categoricals: "forward_kl" is KL(target || pi).
    pi, target = np.array([0.2, 0.3, 0.5]), np.array([0.6, 0.3, 0.1])
    fwd = fdiv.divergence(po.alignment_generator("forward_kl"), np.log(pi), np.log(target))
    rev = fdiv.divergence(po.alignment_generator("reverse_kl"), np.log(pi), np.log(target))
    np.testing.assert_allclose(fwd, scipy.stats.entropy(target, pi), rtol=1e-5)
    np.testing.assert_allclose(rev, scipy.stats.entropy(pi, target), rtol=1e-5)


def test_alignment_generator_errors():
    with pytest.raises(ValueError) as info:
        po.alignment_generator("mode_seeking")
    message = str(info.value)
    for name in po.ALIGNMENT_NAMES + ("kl", "squared_hellinger", "total_variation", "pearson"):
        assert name in message
    with pytest.raises(ValueError, match="bad parameters"):
        po.alignment_generator("js", beta=0.3)
    with pytest.raises(ValueError, match="alpha"):
        po.alignment_generator("alpha", alpha=float("nan"))
    with pytest.raises(ValueError, match="parameters"):
        po.alignment_generator(gen.get("js"), alpha=0.3)
    with pytest.raises(ValueError, match="divergence"):
        po.alignment_generator(None)


# ------------------------------------------------------------------------------------------------
# f-DPG.
# ------------------------------------------------------------------------------------------------


def test_pseudo_reward_hand_values():
    # pi(y) = 0.2, p(y) = 0.5: u = 0.4.
    log_pi, log_p = jnp.log(jnp.array([0.2, 0.2])), jnp.log(jnp.array([0.5, 0.0]))
    cases = {
        # catalog reverse_kl f' = -1/u: R = p/pi (DPG's weight); 0 where p = 0.
        "forward_kl": [2.5, 0.0],
        # catalog kl f' = log u + 1: R = log p - log pi - 1; -inf where p = 0.
        "reverse_kl": [math.log(2.5) - 1.0, -math.inf],
        # catalog js f' = log(2u/(u + 1))/2: R = log((1 + 1/u)/2)/2; -f'(inf) = -log(2)/2.
        "js": [0.5 * math.log(1.75), -0.5 * math.log(2.0)],
        # catalog tv f' = sign(u - 1)/2.
        "tv": [0.5, -0.5],
        # catalog alpha(1/2) f' = (u^(-1/2) - 1)/(-1/2); f'(inf) = 2.
        "alpha": [2.0 * (0.4**-0.5 - 1.0), -2.0],
    }
    for name, want in cases.items():
        got = po.fdpg_pseudo_reward(log_pi=log_pi, log_target=log_p, divergence=name)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)


N_OUTCOMES = 12
N_SAMPLES = 200_000


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=N_OUTCOMES)
    a = rng.normal(size=N_OUTCOMES)
    allowed = np.ones(N_OUTCOMES, bool)
    allowed[[1, 4, 7, 10]] = False  # P(y) = exp(a(y)) 1[y in constraint set]
    log_p_constrained = np.where(allowed, a, -np.inf)
    log_p_constrained -= np.logaddexp.reduce(a[allowed])
    log_p_full = a - np.logaddexp.reduce(a)
    log_q = 0.7 * rng.normal(size=N_OUTCOMES)
    log_q -= np.logaddexp.reduce(log_q)
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    return {
        "theta": as32(theta),
        "constrained": as32(log_p_constrained),
        "full": as32(log_p_full),
        "log_q": as32(log_q),
    }


def _fdpg_run(theta, log_p, log_q, baseline, key, *, name, use_proposal, weighted):
    """Exact grad D_f(pi || p), the batch surrogate's gradient, the samples and the terms."""
    g = po.alignment_generator(name)
    exact = jax.grad(lambda th: fdiv.divergence(g, th, log_p))(theta)
    y = jax.random.categorical(key, log_q if use_proposal else theta, shape=(N_SAMPLES,))
    proposal = log_q[y] if use_proposal and weighted else None

    def loss(th):
        log_pi = jax.nn.log_softmax(th)[y]
        return po.fdpg_loss(
            log_pi=log_pi,
            log_target=log_p[y],
            divergence=name,
            baseline=baseline,
            log_proposal=proposal,
        )

    batch, terms = jax.grad(loss, has_aux=True)(theta)
    return exact, batch, y, terms


def _fdpg_gradients(task, name, log_p, proposal, baseline, seed, weighted=True):
    """(exact gradient, mean and standard error of the per-sample surrogate gradients)."""
    exact, batch, y, terms = _fdpg_run(
        task["theta"], log_p, task["log_q"], jnp.float32(baseline), jax.random.key(seed),
        name=name, use_proposal=proposal is not None, weighted=weighted,
    )  # fmt: skip
    # Sample i's surrogate is -c_i log softmax(theta)[y_i], c_i = w_i (R_i - b), whose gradient
    # is -c_i (e_{y_i} - pi): per-sample gradients for the standard error, in float64.
    c = np.asarray(terms.importance_weight, np.float64) * np.asarray(terms.advantage, np.float64)
    theta = np.asarray(task["theta"], np.float64)
    pi = np.exp(theta - np.logaddexp.reduce(theta))
    per_sample = -c[:, None] * (np.eye(N_OUTCOMES)[np.asarray(y)] - pi)
    mean = per_sample.mean(axis=0)
    se = per_sample.std(axis=0, ddof=1) / math.sqrt(N_SAMPLES)
    # The batch loss's gradient is the mean of those, up to float32 sums of 2e5 terms: far
    # below the Monte Carlo error.
    np.testing.assert_array_less(np.abs(np.asarray(batch, np.float64) - mean), 0.2 * se)
    return np.asarray(exact, np.float64), mean, se


FDPG_CASES = [
    # reverse KL(pi || p) is infinite where p = 0 < pi: it gets the full-support target.
    (name, target, proposal, baseline)
    for name, target in [
        ("forward_kl", "constrained"),
        ("reverse_kl", "full"),
        ("js", "constrained"),
        ("tv", "constrained"),
    ]
    for proposal in (None, "q")
    for baseline in (0.0, 0.8)
]


@pytest.mark.parametrize("name,target,proposal,baseline", FDPG_CASES)
def test_fdpg_gradient_is_unbiased(task, name, target, proposal, baseline):
    """Mean surrogate gradient == exact grad D_f(pi || p), within Monte Carlo error.

    Each component of the mean of n = 2e5 i.i.d. per-sample gradients is within 5 of its standard
    errors (the CLT; 2-sided 5-sigma has probability 6e-7 per component, and the seeds are
    fixed). For the whole vector, E||mean - exact||^2 = ||se||^2, so ||mean - exact|| < 3 ||se||
    is a loose bound; ||se|| itself is under 6% of ||exact||, so the check resolves errors of a
    few percent of the gradient (see the power check below).
    """
    seed = FDPG_CASES.index((name, target, proposal, baseline))
    exact, mean, se = _fdpg_gradients(task, name, task[target], proposal, baseline, seed)
    assert np.all(np.abs(mean - exact) < 5 * se + 1e-6), (mean, exact, se)
    assert np.linalg.norm(mean - exact) < 3 * np.linalg.norm(se)
    assert np.linalg.norm(se) < 0.06 * np.linalg.norm(exact)


def test_fdpg_check_has_power(task):
    """Leaving out the importance weights of proposal samples is biased and is rejected."""
    exact, mean, se = _fdpg_gradients(task, "forward_kl", task["constrained"], "q", 0.0, 99, False)
    assert np.linalg.norm(mean - exact) > 10 * np.linalg.norm(se)


def test_fdpg_loss_terms_and_mask():
    log_pi = jnp.log(jnp.array([0.2, 0.1, 0.4, 0.3]))
    log_p = jnp.log(jnp.array([0.5, 0.0, 0.2, 0.3]))
    log_q = jnp.log(jnp.array([0.4, 0.2, 0.2, 0.2]))
    loss, terms = po.fdpg_loss(log_pi=log_pi, log_target=log_p, divergence="forward_kl", baseline=0.5,
                               log_proposal=log_q)  # fmt: skip
    reward = np.array([0.5 / 0.2, 0.0, 0.2 / 0.4, 1.0])  # p / pi
    weight = np.array([0.5, 0.5, 2.0, 1.5])  # pi / q
    np.testing.assert_allclose(terms.pseudo_reward, reward, rtol=1e-6)
    np.testing.assert_allclose(terms.advantage, reward - 0.5, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(terms.importance_weight, weight, rtol=1e-6)
    want = -np.mean(weight * (reward - 0.5) * np.log([0.2, 0.1, 0.4, 0.3]))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # d loss / d log_pi_i = -w_i (R_i - b) / B: the rewards and weights carry no gradient.
    grad = jax.grad(
        lambda lp: po.fdpg_loss(
            log_pi=lp, log_target=log_p, divergence="forward_kl", baseline=0.5, log_proposal=log_q
        )[0]  # fmt: skip
    )(log_pi)
    np.testing.assert_allclose(grad, -weight * (reward - 0.5) / 4, rtol=1e-6, atol=1e-7)
    # A mask: the mean is over the kept samples, and garbage in dropped ones is harmless.
    keep = jnp.array([True, False, True, False])
    bad = jnp.array([0.0, jnp.nan, 0.0, jnp.inf])
    masked, mterms = po.fdpg_loss(log_pi=log_pi + bad, log_target=log_p, divergence="forward_kl", baseline=0.5,
                                  log_proposal=log_q, mask=keep)  # fmt: skip
    subset, _ = po.fdpg_loss(log_pi=log_pi[::2], log_target=log_p[::2], divergence="forward_kl", baseline=0.5,
                             log_proposal=log_q[::2])  # fmt: skip
    np.testing.assert_allclose(masked, subset, rtol=1e-6)
    assert np.all(np.isfinite(mterms.pseudo_reward))
    g = jax.grad(
        lambda lp: po.fdpg_loss(log_pi=lp, log_target=log_p, divergence="js", mask=keep)[0]
    )(log_pi + bad)
    assert np.all(np.isfinite(g)) and g[1] == 0 and g[3] == 0
    empty, _ = po.fdpg_loss(
        log_pi=log_pi, log_target=log_p, divergence="js", mask=jnp.zeros(4, bool)
    )
    assert empty == 0
    # jit-able, with the divergence static.
    jitted = jax.jit(po.fdpg_loss, static_argnames="divergence")
    value, jterms = jitted(log_pi=log_pi + bad, log_target=log_p, divergence="forward_kl", baseline=0.5,
                           log_proposal=log_q, mask=keep)  # fmt: skip
    np.testing.assert_allclose(value, masked, rtol=1e-6)
    np.testing.assert_allclose(jterms.importance_weight, mterms.importance_weight, rtol=1e-6)
    # A proposal sample that pi cannot produce (pi(y) = 0) has weight 0 and adds nothing.
    lp0 = log_pi.at[1].set(-jnp.inf)
    for name in ("forward_kl", "reverse_kl", "js"):
        value, t = po.fdpg_loss(log_pi=lp0, log_target=log_p, divergence=name, log_proposal=log_q)
        grad = jax.grad(lambda lp, n=name: po.fdpg_loss(log_pi=lp, log_target=log_p, divergence=n,
                                                         log_proposal=log_q)[0])(lp0)  # fmt: skip
        assert np.isfinite(value) and t.importance_weight[1] == 0 and grad[1] == 0
        assert np.all(np.isfinite(grad))


def test_partition_estimate_converges_to_z():
    rng = np.random.default_rng(1)
    a = rng.normal(size=N_OUTCOMES)
    allowed = np.arange(N_OUTCOMES) % 3 != 0
    log_unnorm = np.where(allowed, a, -np.inf)
    z_exact = np.sum(np.exp(a[allowed]))
    log_q = rng.normal(size=N_OUTCOMES) * 0.5
    log_q -= np.logaddexp.reduce(log_q)
    est = po.partition_init()
    assert po.partition_log_z(est) == -np.inf
    update = jax.jit(po.partition_update)
    y = rng.choice(N_OUTCOMES, size=200_000, p=np.exp(log_q))
    for batch in np.split(y, 10):
        est = update(est, jnp.asarray(log_unnorm[batch], jnp.float32), jnp.asarray(log_q[batch]))
        assert np.isfinite(po.partition_log_z(est))  # finite from the first batch on
    assert float(est.count) == len(y)
    ratio = np.where(allowed[y], np.exp(np.where(allowed[y], a[y], 0.0) - log_q[y]), 0.0)
    np.testing.assert_allclose(np.exp(po.partition_log_z(est)), ratio.mean(), rtol=1e-4)
    se = ratio.std(ddof=1) / math.sqrt(len(y))
    assert abs(float(np.exp(po.partition_log_z(est))) - z_exact) < 5 * se
    assert se < 0.01 * z_exact


def test_partition_edge_cases():
    neg_inf = jnp.full(3, -jnp.inf)
    est = po.partition_update(po.partition_init(), neg_inf, jnp.log(jnp.full(3, 1 / 3)))
    assert est.log_sum == -jnp.inf and est.count == 3 and po.partition_log_z(est) == -jnp.inf
    est = po.partition_update(est, jnp.array([0.0, -jnp.inf]), jnp.log(jnp.array([0.5, 0.5])))
    # Z_hat = (0 + 0 + 0 + 1/0.5 + 0) / 5
    np.testing.assert_allclose(po.partition_log_z(est), math.log(2 / 5), rtol=1e-6)
    masked = po.partition_update(
        est, jnp.array([5.0, jnp.nan]), jnp.array([0.0, 0.0]), mask=jnp.array([False, False])
    )
    assert masked.count == 5 and masked.log_sum == est.log_sum


def test_moving_average():
    np.testing.assert_allclose(po.moving_average(1.0, 3.0, decay=0.9), 1.2, rtol=1e-6)
    np.testing.assert_allclose(po.moving_average(1.0, 3.0, decay=0.0), 3.0)
    for decay in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="decay"):
            po.moving_average(0.0, 1.0, decay=decay)


# ------------------------------------------------------------------------------------------------
# DPH-RL.
# ------------------------------------------------------------------------------------------------


def np_kl(p, q):
    return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p / q, 1.0)), 0.0)))


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "js", "tv", "alpha"])
def test_dph_penalty_expectation_is_the_divergence(name):
    """T = 1: sum_y pi_0(y) penalty(y) == D_f(pi || pi_0), by enumeration."""
    rng = np.random.default_rng(3)
    pi = rng.dirichlet(np.ones(9))
    pi0 = rng.dirichlet(np.ones(9))
    penalty = po.dph_penalty(
        log_pi_tokens=jnp.asarray(np.log(pi))[:, None],
        log_pi0_tokens=jnp.asarray(np.log(pi0))[:, None],
        divergence=name,
    )
    expectation = float(np.sum(pi0 * np.asarray(penalty, np.float64)))
    g = po.alignment_generator(name)
    np.testing.assert_allclose(expectation, fdiv.divergence(g, np.log(pi), np.log(pi0)), rtol=1e-5)
    m = 0.5 * (pi + pi0)
    a = 0.5  # catalog alpha: f(u) = (u^a - a u - (1 - a)) / (a (a - 1))
    u = pi / pi0
    independent = {
        "forward_kl": scipy.stats.entropy(pi0, pi),
        "reverse_kl": scipy.stats.entropy(pi, pi0),
        "js": 0.5 * np_kl(pi, m) + 0.5 * np_kl(pi0, m),
        "tv": 0.5 * np.abs(pi - pi0).sum(),
        "alpha": np.sum(pi0 * (u**a - a * u - (1 - a)) / (a * (a - 1))),
    }[name]
    np.testing.assert_allclose(expectation, independent, rtol=1e-5)


def test_dph_penalty_hand_values_and_mask():
    # forward KL: u - 1 - log u per token; log u = 1 and -2, and a padded token.
    log_pi0 = jnp.array([[-1.0, -1.0, -3.0]])
    log_pi = jnp.array([[0.0, -3.0, 7.0]])
    keep = jnp.array([[True, True, False]])
    want = ((math.e - 2.0) + (math.exp(-2.0) - 1.0 + 2.0)) / 2
    penalty = value_and_grad_of_sum(
        lambda x: po.dph_penalty(log_pi_tokens=x, log_pi0_tokens=log_pi0, mask=keep)
    )
    got, _ = penalty(log_pi)
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    # A padded token with garbage (NaN) changes neither the value nor the gradient.
    got, grad = penalty(log_pi.at[0, 2].set(jnp.nan))
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    # d/dlog u (u - 1 - log u) = u - 1, over 2 kept tokens.
    np.testing.assert_allclose(grad, [[(math.e - 1) / 2, (math.exp(-2.0) - 1) / 2, 0.0]], 1e-6)
    # A row with no kept token gives 0 (and no NaN).
    none = po.dph_penalty(
        log_pi_tokens=log_pi, log_pi0_tokens=log_pi0, mask=jnp.zeros((1, 3), bool)
    )
    assert none[0] == 0
    # JS: the catalog f, half the DPH-RL paper's u log u - (u + 1) log((u + 1)/2).
    u = math.e
    half_paper = 0.5 * (u * math.log(u) - (u + 1) * math.log((u + 1) / 2))
    got = po.dph_penalty(
        log_pi_tokens=log_pi, log_pi0_tokens=log_pi0, divergence="js", mask=keep.at[0, 1].set(False)
    )
    np.testing.assert_allclose(got, [half_paper], rtol=1e-6)


def test_dph_penalty_clips_like_verl_low_var_kl():
    """log u clipped to [-a, a], then each token's value to [-b, b]; no gradient beyond a clip."""
    log_pi0 = jnp.zeros((1, 3))
    log_pi = jnp.array([[-30.0, -5.0, 1.0]])  # u - 1 - log u: 29 (clipped), e^-5 + 4, e - 2
    fn = lambda x: po.dph_penalty(
        log_pi_tokens=x, log_pi0_tokens=log_pi0, log_ratio_clip=20.0, value_clip=10.0
    )
    got, grad = value_and_grad_of_sum(fn)(log_pi)
    values = [10.0, math.exp(-5.0) + 4.0, math.e - 2.0]
    np.testing.assert_allclose(got, [np.mean(values)], rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.0, (math.exp(-5.0) - 1) / 3, (math.e - 1) / 3]], rtol=1e-6)  # fmt: skip
    # log u = -25 is clipped to -20 (no gradient): value e^-20 + 19, no value clip given
    got = po.dph_penalty(
        log_pi_tokens=jnp.array([[-25.0]]), log_pi0_tokens=jnp.zeros((1, 1)), log_ratio_clip=20.0
    )
    np.testing.assert_allclose(got, [math.exp(-20.0) + 19.0], rtol=1e-6)
    with pytest.raises(ValueError, match="value_clip"):
        po.dph_penalty(log_pi_tokens=log_pi, log_pi0_tokens=log_pi0, value_clip=0.0)


@pytest.mark.parametrize("name", ["forward_kl", "js"])
def test_dph_penalty_gradients_match_finite_differences(name):
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        log_pi = jnp.asarray(rng.normal(-2.0, 1.5, size=(3, 5)))
        log_pi0 = jnp.asarray(rng.normal(-2.0, 1.5, size=(3, 5)))
        keep = jnp.asarray(rng.random((3, 5)) < 0.7).at[:, 0].set(True)
        check_grads(
            jax.jit(
                lambda x: po.dph_penalty(
                    log_pi_tokens=x, log_pi0_tokens=log_pi0, divergence=name, mask=keep
                )
            ),
            (log_pi,),
            order=1,
            modes=("rev",),
        )


def test_dph_penalty_is_nonnegative():
    """Pointwise >= 0 (convexity), for log-ratios far from 0 too; exactly 0 at pi = pi_0."""
    rng = np.random.default_rng(5)
    log_u = jnp.asarray(rng.uniform(-30.0, 30.0, size=(200, 1)), jnp.float32)
    for name in ("forward_kl", "reverse_kl", "js", "tv", "alpha"):
        values = jax.jit(po.dph_penalty, static_argnames="divergence")(
            log_pi_tokens=log_u, log_pi0_tokens=jnp.zeros_like(log_u), divergence=name
        )
        assert np.all(np.asarray(values) >= 0) and np.all(np.isfinite(values)), name
        assert (
            po.dph_penalty(
                log_pi_tokens=log_u[:1] * 0, log_pi0_tokens=log_u[:1] * 0, divergence=name
            )[0]
            == 0
        )


# ------------------------------------------------------------------------------------------------
# GRPO.
# ------------------------------------------------------------------------------------------------


def test_group_advantages_against_numpy():
    rng = np.random.default_rng(5)
    rewards = rng.integers(0, 2, size=(6, 8)).astype(np.float32)
    rewards[0] = 1.0  # a group of equal rewards: advantage 0, not NaN
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    # default: the sample std (torch.std, as verl / DPH-RL and TRL); ddof=0 the population std
    want = centred / (rewards.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(po.group_advantages(rewards), want, rtol=1e-5, atol=1e-6)
    population = centred / (rewards.std(axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(po.group_advantages(rewards, ddof=0), population, rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(po.group_advantages(rewards)[0], 0.0)
    np.testing.assert_array_equal(po.group_advantages(rewards[:, :1]), 0.0)  # one response
    with pytest.raises(ValueError, match="ddof"):
        po.group_advantages(rewards, ddof=2)
    np.testing.assert_allclose(po.group_advantages(rewards, normalize=False), centred, atol=1e-6)
    np.testing.assert_array_equal(po.group_advantages(rewards, eps=0.0)[0], 0.0)
    with pytest.raises(ValueError, match="eps"):
        po.group_advantages(rewards, eps=-1.0)


def test_grpo_on_policy_gradient():
    """rho = 1: loss = -A and grad = -A grad mean_t log pi (over the kept tokens)."""
    rng = np.random.default_rng(6)
    log_pi = jnp.asarray(rng.normal(-1.0, 0.5, size=(4, 5)), jnp.float32)
    adv = jnp.array([1.5, -0.5, 0.0, 2.0])
    keep = jnp.asarray(np.arange(5) < np.array([[5], [3], [1], [4]]))
    count = np.asarray(keep).sum(axis=1, keepdims=True)
    loss, grad = value_and_grad_of_sum(lambda x: po.grpo_loss(x, adv, mask=keep))(log_pi)
    np.testing.assert_allclose(loss, -adv, rtol=1e-6)
    np.testing.assert_allclose(grad, -np.asarray(adv)[:, None] * np.asarray(keep) / count, 1e-6)


def test_grpo_clipping_by_hand():
    # eps = 0.2; one token per row. (A, rho) -> (loss, d loss / d log pi):
    #   A = 2,  rho = 1.5: min(3, 2.4) = 2.4 (clipped)        -> -2.4, 0
    #   A = 2,  rho = 0.5: min(1, 1.6) = 1 (unclipped)        -> -1,   -rho A = -1
    #   A = -2, rho = 0.5: min(-1, -1.6) = -1.6 (clipped)     -> 1.6,  0
    #   A = -2, rho = 1.5: min(-3, -2.4) = -3 (unclipped)     -> 3,    -rho A = 3
    #   A = 2,  rho = 1.1: inside the range                   -> -2.2, -2.2
    adv = jnp.array([2.0, 2.0, -2.0, -2.0, 2.0])
    rho = np.array([1.5, 0.5, 0.5, 1.5, 1.1])
    old = jnp.full((5, 1), -1.0)
    log_pi = old + jnp.asarray(np.log(rho))[:, None]
    loss_fn = lambda x, o: po.grpo_loss(x, adv, old_log_pi_tokens=o, clip_epsilon=0.2)
    loss, (grad, g_old) = jax.jit(
        lambda x, o: (loss_fn(x, o), jax.grad(lambda *a: loss_fn(*a).sum(), (0, 1))(x, o))
    )(log_pi, old)
    np.testing.assert_allclose(loss, [-2.4, -1.0, 1.6, 3.0, -2.2], rtol=1e-5)
    np.testing.assert_allclose(grad[:, 0], [0.0, -1.0, 0.0, 3.0, -2.2], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(g_old, 0.0)  # the old log-probs carry no gradient


def test_grpo_clip_higher_and_dual_clip_by_hand():
    # e = 0.2, e_h = 0.28, c = 3; one token per row. (A, rho) -> (loss, d loss / d log pi):
    #   A = 2,  rho = 1.25: inside [0.8, 1.28]                -> -2.5, -2.5 (clipped at e = 0.2)
    #   A = 2,  rho = 1.5:  min(3, 2.56) = 2.56 (clipped)      -> -2.56, 0
    #   A = -2, rho = 2.5:  max(min(-5, -1.6), -6) = -5        -> 5,    -rho A = 5
    #   A = -2, rho = 4:    max(min(-8, -1.6), -6) = -6 (dual) -> 6,    0
    #   A = -2, rho = 0.5:  min(-1, -1.6) = -1.6 (clipped)     -> 1.6,  0
    adv = jnp.array([2.0, 2.0, -2.0, -2.0, -2.0])
    rho = np.array([1.25, 1.5, 2.5, 4.0, 0.5])
    old = jnp.full((5, 1), -1.0)
    log_pi = old + jnp.asarray(np.log(rho))[:, None]
    fn = lambda x: po.grpo_loss(x, adv, old_log_pi_tokens=old, clip_epsilon=0.2, clip_epsilon_high=0.28, dual_clip=3.0)  # fmt: skip
    loss, grad = value_and_grad_of_sum(fn)(log_pi)
    np.testing.assert_allclose(loss, [-2.5, -2.56, 5.0, 6.0, 1.6], rtol=1e-5)
    np.testing.assert_allclose(grad[:, 0], [-2.5, 0.0, 5.0, 0.0, 0.0], rtol=1e-5, atol=1e-7)
    symmetric = po.grpo_loss(log_pi, adv, old_log_pi_tokens=old, clip_epsilon=0.2)
    np.testing.assert_allclose(symmetric, [-2.4, -2.4, 5.0, 8.0, 1.6], rtol=1e-5)
    with pytest.raises(ValueError, match="dual_clip"):
        po.grpo_loss(log_pi, adv, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_epsilon_high"):
        po.grpo_loss(log_pi, adv, clip_epsilon_high=0.0)


def test_grpo_gradient_matches_finite_differences_and_hostile_ratios():
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        old = jnp.asarray(rng.normal(-1.0, 0.5, size=(3, 4)))
        # log-ratios kept away from the clip edges log(0.8), log(1.2), where the loss has kinks.
        shifts = np.array([[-0.6, -0.05, 0.1, 0.5], [0.4, -0.4, 0.0, 0.15], [-1.0, 1.0, 0.05, 0]])
        log_pi = old + jnp.asarray(shifts)
        adv = jnp.array([1.0, -0.7, 0.3])
        keep = jnp.array([[True] * 4, [True, True, False, True], [True] * 4])
        check_grads(
            jax.jit(lambda x: po.grpo_loss(x, adv, old_log_pi_tokens=old, mask=keep)),
            (log_pi,),
            order=1,
            modes=("rev",),
        )
    # Huge ratios on the clipped side: finite value, zero gradient.
    old = jnp.zeros((4, 1))
    log_pi = jnp.array([[1e4], [-1e4], [88.0], [-1e30]])
    adv = jnp.array([1.0, -1.0, 1.0, -1.0])
    loss, grad = value_and_grad_of_sum(lambda x: po.grpo_loss(x, adv, old_log_pi_tokens=old))(
        log_pi
    )
    np.testing.assert_allclose(loss, [-1.2, 0.8, -1.2, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(grad, 0.0)
    with pytest.raises(ValueError, match="clip_epsilon"):
        po.grpo_loss(log_pi, adv, clip_epsilon=0.0)


# ------------------------------------------------------------------------------------------------
# pass@k.
# ------------------------------------------------------------------------------------------------


def test_pass_at_k_against_math_comb():
    ns, cs, ks, want = [], [], [], []
    for n in (1, 2, 5, 10, 16, 50, 200, 1000, 20000):
        for c in sorted({0, 1, 2, n // 3, n // 2, n - 1, n}):
            for k in (1, 2, 10, 100):
                if 0 <= c <= n and k <= n:
                    ns.append(n), cs.append(c), ks.append(k)
                    want.append(1.0 - math.comb(n - c, k) / math.comb(n, k))
    ns, cs, ks, want = (np.array(v) for v in (ns, cs, ks, want))
    for k in np.unique(ks):  # a Python int k: the accurate product form, in float32
        sel = ks == k
        got = pass_at_k_jit(ns[sel], cs[sel], int(k))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want[sel], rtol=1e-5, atol=0)
    with jax.enable_x64(True):  # an array k: gammaln, in float64
        got = jax.jit(pass_at_k)(ns, cs, ks)
        assert got.dtype == jnp.float64
        # gammaln(n + 1) ~ 2e5 at n = 2e4: its float64 rounding leaves ~1e-11 absolute error.
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    # Exact ends: c = 0 gives 0, n - c < k gives 1.
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 8, 3) == 1.0
    assert pass_at_k(10, 8, jnp.array(3)) == 1.0 and pass_at_k(10, 0, jnp.array(3)) == 0.0
    np.testing.assert_allclose(pass_at_k(10, 3, 1), 0.3, rtol=1e-6)  # pass@1 = c/n


def test_pass_at_k_is_unbiased():
    """E_{c ~ Binomial(n, p)}[pass@k] = 1 - (1 - p)^k, summed exactly over c."""
    n = 20
    c = np.arange(n + 1)
    for k in (1, 3, 10, 20):
        values = np.asarray(pass_at_k_jit(np.full(n + 1, n), c, k), np.float64)
        for p in (0.03, 0.2, 0.5, 0.9):
            pmf = scipy.stats.binom.pmf(c, n, p)
            np.testing.assert_allclose(pmf @ values, 1.0 - (1.0 - p) ** k, rtol=1e-6, atol=1e-7)


def test_pass_at_k_jit_and_errors():
    n, c = jnp.array([10, 20, 7]), jnp.array([3, 0, 7])
    jitted = jax.jit(lambda n, c: pass_at_k(n, c, 5))(n, c)
    np.testing.assert_allclose(jitted, pass_at_k(n, c, 5), rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(pass_at_k)(n, c, jnp.array([5, 5, 5])), pass_at_k(n, c, 5), rtol=1e-5
    )
    for bad_k in (0, -1):
        with pytest.raises(ValueError, match="k must be >= 1"):
            pass_at_k(10, 3, bad_k)
    with pytest.raises(ValueError, match="k must be <= num_samples"):
        pass_at_k(jnp.array([10, 4]), jnp.array([1, 1]), 5)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(10, 11, 2)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(10, -1, 2)
    with pytest.raises(ValueError, match="integer"):
        pass_at_k(10, 3, True)
