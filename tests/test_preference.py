"""f-DPO losses against an independent plain-Python transcription of the paper's formulas.

The reference below writes each ``f'`` *with* its constants (as the paper's table does) and the
loss with ``math``; the module drops the constants, so agreement also checks that they cancel.
Gradients are checked against central finite differences in float64 (``jax.enable_x64`` as a
context, so other test files keep float32).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fdiv import generators as gen
from fdiv.losses import preference as pf

# (policy_chosen, policy_rejected, reference_chosen, reference_rejected): log u between -7 and 4.
EXAMPLES = np.array(
    [
        [-12.3, -15.1, -13.0, -14.2],
        [-5.0, -4.0, -5.5, -3.0],
        [-30.0, -31.0, -30.0, -31.0],  # u_w = u_l = 1: z = 0, loss = log 2
        [-2.0, -9.0, -6.0, -3.0],
    ]
)


def paper_f_prime(name, log_u, a=None):
    """f'(u) of Wang et al. (2023), Table 1, constants included."""
    u = math.exp(log_u)
    if name == "reverse_kl":  # f = u log u
        return math.log(u) + 1.0
    if name == "forward_kl":  # f = -log u
        return -1.0 / u
    if name == "js":  # f = u log u - (u + 1) log((u + 1) / 2)
        return math.log(2.0 * u / (1.0 + u))
    if name == "alpha":  # f = (u^(1-a) - (1-a) u - a) / (a (a - 1))
        return (1.0 - u ** (-a)) / a
    if name == "squared_hellinger":  # f = (sqrt(u) - 1)^2
        return 1.0 - 1.0 / math.sqrt(u)
    raise AssertionError(name)


def log_sigmoid(z):
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def reference_loss(name, row, beta, a=None, eps=0.0):
    pw, pl, rw, rl = (float(v) for v in row)
    z = beta * (paper_f_prime(name, pw - rw, a) - paper_f_prime(name, pl - rl, a))
    return -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


CASES = [
    ("reverse_kl", "reverse_kl", {}),
    ("forward_kl", "forward_kl", {}),
    ("js", "js", {}),
    ("alpha", "alpha", {"alpha": 0.3}),
    ("squared_hellinger", gen.get("squared_hellinger"), {}),
]


ROLES = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")


def _args(rows, dtype=jnp.float32):
    """The four log-probability columns of ``rows`` by role (the losses take them keyword-only)."""
    return {role: jnp.asarray(rows[:, i], dtype) for i, role in enumerate(ROLES)}


def by_role(*arrays):
    """Positional arrays (for jax.grad's argnums, check_grads) named by role."""
    return dict(zip(ROLES, arrays, strict=True))


@pytest.mark.parametrize("name,divergence,kw", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_loss_matches_paper_formula(name, divergence, kw, beta):
    got = pf.fdpo_loss(**_args(EXAMPLES), beta=beta, divergence=divergence, **kw)
    want = [reference_loss(name, row, beta, kw.get("alpha")) for row in EXAMPLES]
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(got[2], math.log(2.0), rtol=1e-6)
    # The logit, the implied rewards and the preference probability agree with the same formula.
    z = pf.fdpo_logits(**_args(EXAMPLES), beta=beta, divergence=divergence, **kw)
    pw, pl, rw, rl = _args(EXAMPLES).values()
    reward_w = pf.implied_reward(
        policy_logp=pw, reference_logp=rw, beta=beta, divergence=divergence, **kw
    )
    reward_l = pf.implied_reward(
        policy_logp=pl, reference_logp=rl, beta=beta, divergence=divergence, **kw
    )
    np.testing.assert_allclose(z, reward_w - reward_l, rtol=1e-6, atol=1e-6)
    prob = pf.preference_probability(**_args(EXAMPLES), beta=beta, divergence=divergence, **kw)
    np.testing.assert_allclose(prob, [math.exp(-w) for w in want], rtol=2e-6)


@pytest.mark.parametrize("name,divergence,kw", CASES, ids=[c[0] for c in CASES])
def test_label_smoothing(name, divergence, kw):
    got = pf.fdpo_loss(
        **_args(EXAMPLES), beta=0.5, divergence=divergence, label_smoothing=0.1, **kw
    )
    want = [reference_loss(name, row, 0.5, kw.get("alpha"), eps=0.1) for row in EXAMPLES]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_reverse_kl_is_standard_dpo():
    rng = np.random.default_rng(0)
    rows = rng.normal(-40.0, 15.0, size=(64, 4))
    pw, pl, rw, rl = rows.T
    for beta in (0.05, 0.1, 0.5):
        z = beta * ((pw - rw) - (pl - rl))
        dpo = np.logaddexp(0.0, -z)  # -log sigmoid(z)
        got = pf.fdpo_loss(**_args(rows), beta=beta)  # the default divergence is DPO's
        np.testing.assert_allclose(got, dpo, rtol=1e-5, atol=1e-6)


def test_psi_closed_forms_and_alpha_convention():
    """psi(u) differs from the catalog's f'(u) by a constant; alpha here is 1 - catalog alpha."""
    with jax.enable_x64(True):
        log_u = jnp.linspace(-6.0, 6.0, 41, dtype=jnp.float64)
        pairs = [
            ("reverse_kl", {}, gen.get("kl"), 1.0),  # catalog kl: f' = log u + 1
            ("forward_kl", {}, gen.get("reverse_kl"), 1.0),  # catalog reverse_kl: -1/u
            ("js", {}, gen.get("js"), 2.0),  # catalog js is half the paper's
        ]
        for a_paper in (0.1, 0.3, 0.5, 0.9):
            pairs.append(("alpha", {"alpha": a_paper}, gen.get("alpha", alpha=1 - a_paper), 1.0))
        for name, kw, g, scale in pairs:
            diff = np.asarray(pf.psi(log_u, divergence=name, **kw) - scale * g.f_prime(log_u))
            np.testing.assert_allclose(diff, diff[0], rtol=0, atol=1e-12, err_msg=name)
            if name == "alpha":  # 1/a - u^(-a)/a - psi = 1/a exactly
                np.testing.assert_allclose(-diff[0], 1.0 / kw["alpha"], rtol=1e-12)
        # The paper's ends: alpha -> 0 is DPO (psi + 1/a -> log u), alpha -> 1 the forward KL.
        near_dpo = pf.psi(log_u, divergence="alpha", alpha=1e-6) + 1e6
        np.testing.assert_allclose(near_dpo, log_u, atol=1e-4)
        near_fkl = pf.psi(log_u, divergence="alpha", alpha=1 - 1e-9)
        np.testing.assert_allclose(near_fkl, -np.exp(-np.asarray(log_u)), rtol=1e-6)
        # Hand values at u = e: log u = 1, -1/e, log(2e/(1+e)), -e^(-0.3)/0.3.
        e = math.e
        for name, kw, want in [
            ("reverse_kl", {}, 1.0),
            ("forward_kl", {}, -1 / e),
            ("js", {}, math.log(2 * e / (1 + e))),
            ("alpha", {"alpha": 0.3}, -math.exp(-0.3) / 0.3),
        ]:
            got = float(pf.psi(jnp.float64(1.0), divergence=name, **kw))
            assert got == pytest.approx(want, rel=1e-14), name


@pytest.mark.parametrize("name,divergence,kw", CASES, ids=[c[0] for c in CASES])
def test_gradients_match_finite_differences(name, divergence, kw):
    with jax.enable_x64(True):
        args = tuple(_args(EXAMPLES, jnp.float64).values())
        for eps in (0.0, 0.2):

            @jax.jit
            def total(*a, eps=eps):
                return jnp.sum(
                    pf.fdpo_loss(
                        **by_role(*a), beta=0.7, divergence=divergence, label_smoothing=eps, **kw
                    )
                )

            check_grads(total, args, order=1, modes=("rev", "fwd"))


@pytest.mark.parametrize("name,divergence,kw", CASES, ids=[c[0] for c in CASES])
def test_jit_matches_eager(name, divergence, kw):
    def loss(*a):
        return pf.fdpo_loss(**by_role(*a), beta=0.3, divergence=divergence, **kw)

    args = tuple(_args(EXAMPLES).values())
    np.testing.assert_allclose(jax.jit(loss)(*args), loss(*args), rtol=1e-6)
    grad = jax.grad(lambda *a: jnp.sum(loss(*a)), argnums=(0, 1))
    for g_jit, g_eager in zip(jax.jit(grad)(*args), grad(*args), strict=True):
        np.testing.assert_allclose(g_jit, g_eager, rtol=1e-6)


@pytest.mark.parametrize("name,divergence,kw", CASES, ids=[c[0] for c in CASES])
def test_bfloat16_inputs_give_float32_results(name, divergence, kw):
    # Log-probs of realistic size: bfloat16 keeps ~3 significant digits, so the log-ratios of
    # the rounded inputs are what the float32 result must be accurate for.
    rows = EXAMPLES * 7.3
    bf16 = tuple(_args(rows, jnp.bfloat16).values())
    got = pf.fdpo_loss(**by_role(*bf16), beta=0.1, divergence=divergence, **kw)
    assert got.dtype == jnp.float32
    rounded = np.stack([np.asarray(a.astype(jnp.float32), np.float64) for a in bf16], axis=1)
    want = [reference_loss(name, row, 0.1, kw.get("alpha")) for row in rounded]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Subtracting in bfloat16 instead would have been visibly wrong for at least one row.
    in_bf16 = [(a - b).astype(jnp.float32) for a, b in ((bf16[0], bf16[2]), (bf16[1], bf16[3]))]
    exact = [rounded[:, 0] - rounded[:, 2], rounded[:, 1] - rounded[:, 3]]
    assert any(np.any(np.asarray(x) != y) for x, y in zip(in_bf16, exact, strict=True))


@pytest.mark.parametrize("name,divergence,kw", CASES, ids=[c[0] for c in CASES])
def test_hostile_inputs_stay_finite(name, divergence, kw):
    big = [1e4, -1e4, 1e30, -1e30, 3e37, -3e37]
    log_u = np.array([(a, b) for a in big + [0.0] for b in big + [0.0]], np.float32)
    zeros = jnp.zeros(len(log_u), jnp.float32)
    pw, pl = jnp.asarray(log_u[:, 0]), jnp.asarray(log_u[:, 1])

    def total(pw, pl, rw, rl):
        return jnp.sum(
            pf.fdpo_loss(
                policy_chosen=pw,
                policy_rejected=pl,
                reference_chosen=rw,
                reference_rejected=rl,
                beta=0.1,
                divergence=divergence,
                **kw,
            )
        )

    values = pf.fdpo_loss(
        policy_chosen=pw,
        policy_rejected=pl,
        reference_chosen=zeros,
        reference_rejected=zeros,
        beta=0.1,
        divergence=divergence,
        **kw,
    )
    assert np.all(np.isfinite(values)) and np.all(np.asarray(values) >= 0)
    grads = jax.grad(total, argnums=(0, 1, 2, 3))(pw, pl, zeros, zeros)
    for g in grads:
        assert np.all(np.isfinite(g))
    # Huge but opposite log-probs that cancel in log u are harmless too.
    huge = jnp.full(3, -1e30, jnp.float32)
    assert np.all(
        np.isfinite(
            pf.fdpo_loss(
                policy_chosen=huge,
                policy_rejected=huge,
                reference_chosen=huge,
                reference_rejected=huge,
                divergence=divergence,
                **kw,
            )
        )
    )
    # The exponent clamp: psi saturates at -exp(max_exponent) (times 1/alpha for alpha).
    if name in ("forward_kl", "alpha"):
        scale = 1.0 if name == "forward_kl" else 1 / kw["alpha"]
        floor = float(pf.psi(jnp.float32(-1e4), divergence=divergence, max_exponent=20.0, **kw))
        assert floor == pytest.approx(-scale * math.exp(20.0), rel=1e-6)


def test_generator_and_catalog_name_agree():
    args = _args(EXAMPLES)
    by_object = pf.fdpo_loss(**args, divergence=gen.get("squared_hellinger"))
    by_name = pf.fdpo_loss(**args, divergence="squared_hellinger")
    np.testing.assert_array_equal(by_object, by_name)
    # A parametrised generator object: catalog alpha 0.7 is the paper's alpha 0.3.
    np.testing.assert_allclose(
        pf.fdpo_loss(**args, divergence=gen.get("alpha", alpha=0.7)),
        pf.fdpo_loss(**args, divergence="alpha", alpha=0.3),
        rtol=1e-5,
    )


def test_preference_probability_is_antisymmetric():
    pw, pl, rw, rl = _args(EXAMPLES).values()
    for name, divergence, kw in CASES:
        forward = pf.preference_probability(
            policy_chosen=pw,
            policy_rejected=pl,
            reference_chosen=rw,
            reference_rejected=rl,
            divergence=divergence,
            **kw,
        )
        swapped = pf.preference_probability(
            policy_chosen=pl,
            policy_rejected=pw,
            reference_chosen=rl,
            reference_rejected=rw,
            divergence=divergence,
            **kw,
        )
        np.testing.assert_allclose(forward + swapped, 1.0, rtol=1e-6, err_msg=name)


def test_invalid_arguments_raise():
    args = _args(EXAMPLES)
    with pytest.raises(ValueError, match="beta"):
        pf.fdpo_loss(**args, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        pf.implied_reward(
            policy_logp=args["policy_chosen"], reference_logp=args["reference_chosen"], beta=-1.0
        )
    for a in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            pf.fdpo_loss(**args, divergence="alpha", alpha=a)
    pf.fdpo_loss(**args, divergence="js", alpha=1.5)  # alpha only matters for "alpha"
    for eps in (0.5, -0.1, 0.7):
        with pytest.raises(ValueError, match="label_smoothing"):
            pf.fdpo_loss(**args, label_smoothing=eps)
    with pytest.raises(ValueError, match="max_exponent"):
        pf.psi(1.0, divergence="forward_kl", max_exponent=0.0)
    with pytest.raises(ValueError) as info:
        pf.fdpo_loss(**args, divergence="not_a_divergence")
    for listed in ("reverse_kl", "forward_kl", "js", "alpha", "squared_hellinger", "pearson"):
        assert listed in str(info.value)
    with pytest.raises(ValueError, match="divergence"):
        pf.psi(1.0, divergence=3)
