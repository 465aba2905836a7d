"""``fdiv.testing``'s derivative and structure checks: they pass on correct code and fail, naming the
function and the derivative, on a wrong ``custom_jvp`` rule (first or second order), a wrong
generator derivative, a mode a rule does not support, NaN values and gradients, a wrong shape or
dtype, and an output that changes under ``jax.jit``.

Order-2 checks compile every derivative program of the divergence (~15-40 s of CPU per
generator), so the default run checks one generator per code path of the per-class rule not
already covered by ``test_divergences.py::test_check_grads_second_order_fwd_and_rev``; every
generator runs under ``-m slow``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from fdiv import generators as G
from fdiv.losses import kd, preference

RNG = np.random.default_rng(5)
P, Q = RNG.normal(size=(2, 5)), RNG.normal(size=(2, 5))  # check_generator's shape: shared programs


def quartic():
    return G.from_function(lambda u: (u - 1.0) ** 4 / 12.0, name="quartic")


def user_hellinger():
    return G.from_function(
        lambda u: (jnp.sqrt(u) - 1.0) ** 2, name="user_hellinger", slope_at_infinity=1.0
    )


# Every generator of the catalog at its defaults, the parametrised ones at special points, and
# two from_function generators.
EVERY_GENERATOR = [
    *((name, lambda n=name: G.get(n)) for name in G.names()),
    ("alpha-1", lambda: G.get("alpha", alpha=-1.0)),
    ("alpha0", lambda: G.get("alpha", alpha=0.0)),
    ("alpha1", lambda: G.get("alpha", alpha=1.0)),
    ("alpha2", lambda: G.get("alpha", alpha=2.0)),
    ("skew_js-beta0-normalized", lambda: G.get("skew_js", beta=0.0, normalize=True)),
    ("skew_js-beta0.3-normalized", lambda: G.get("skew_js", beta=0.3, normalize=True)),
    ("skew_js-beta1-normalized", lambda: G.get("skew_js", beta=1.0, normalize=True)),
    ("skew_kl-lam0", lambda: G.get("skew_kl", lam=0.0)),
    ("skew_kl-lam0.3", lambda: G.get("skew_kl", lam=0.3)),
    ("skew_reverse_kl-lam0", lambda: G.get("skew_reverse_kl", lam=0.0)),
    ("skew_reverse_kl-lam0.3", lambda: G.get("skew_reverse_kl", lam=0.3)),
    ("quartic", quartic),
    ("user_hellinger", user_hellinger),
]
# The generic rule for a self-dual f. Also at order 2 by default: kl, js, pearson, alpha(2),
# skew_kl (test_divergences.py::test_check_grads_second_order_fwd_and_rev) and a from_function f
# (the README's example, run by tests/test_readme.py).
DEFAULT_RUN = ("squared_hellinger",)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(make, id=cid, marks=() if cid in DEFAULT_RUN else pytest.mark.slow)
        for cid, make in EVERY_GENERATOR
    ],
)
def test_check_divergence_grads_order_two(make):
    """Forward and reverse mode, order 2 (the helper's default), in float64."""
    fdiv.testing.check_divergence_grads(make(), P, Q)


# ------------------------------------------------------------------------------------------------
# Failures are caught, and name what failed.
# ------------------------------------------------------------------------------------------------


class _OffDerivative(type(G.get("squared_hellinger"))):
    """The value is squared Hellinger's; ``u f'(u)``, from which the gradient rule is built, is
    10% too large: the divergence's custom_jvp rule disagrees with its own value."""

    def _u_f_prime(self, l):
        return 1.1 * super()._u_f_prime(l)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_check_divergence_grads_catches_a_wrong_rule(mode):
    with pytest.raises(AssertionError, match=r"divergence\(squared_hellinger\).*order 1") as err:
        fdiv.testing.check_divergence_grads(_OffDerivative(), P, Q, order=1, modes=(mode,))
    assert ("JVP tangent" if mode == "fwd" else "VJP cotangent projection") in str(err.value)


@jax.custom_jvp
def _square_off_by_factor(x):
    return x * x


@_square_off_by_factor.defjvp
def _square_off_by_factor_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x * x, 3.0 * x * t  # d(x^2) = 2 x t


@jax.custom_jvp
def _square_rule_not_differentiable(x):
    return x * x


@_square_rule_not_differentiable.defjvp
def _square_rule_not_differentiable_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x * x, 2.0 * jax.lax.stop_gradient(x) * t  # right tangent, Hessian 0 instead of 2


@jax.custom_vjp
def _square_reverse_only(x):
    return x * x


_square_reverse_only.defvjp(lambda x: (x * x, x), lambda x, ct: (2.0 * x * ct,))

X = np.array([0.3, -1.2, 2.0])


def _sum_of(fn):
    def loss(x):
        return jnp.sum(fn(x))

    loss.__qualname__ = f"sum_of_{fn.__name__}"
    return loss


def test_check_loss_grads_passes_on_correct_rules():
    fdiv.testing.check_loss_grads(lambda x: jnp.sum(jnp.sin(x) * x**2), X)
    fdiv.testing.check_loss_grads(_sum_of(_square_reverse_only), X, order=1, modes=("rev",))


def test_check_loss_grads_catches_a_wrong_jvp_in_forward_mode():
    with pytest.raises(AssertionError, match="sum_of__square_off_by_factor") as err:
        fdiv.testing.check_loss_grads(_sum_of(_square_off_by_factor), X, order=1, modes=("fwd",))
    assert "JVP tangent" in str(err.value)


def test_check_loss_grads_catches_a_rule_whose_derivative_is_wrong_at_order_two():
    loss = _sum_of(_square_rule_not_differentiable)
    fdiv.testing.check_loss_grads(loss, X, order=1)  # first derivatives are right
    with pytest.raises(AssertionError, match="JVP of JVP"):
        fdiv.testing.check_loss_grads(loss, X, modes=("fwd",))
    with pytest.raises(AssertionError, match="VJP of VJP"):
        fdiv.testing.check_loss_grads(loss, X, modes=("rev",))


def test_check_loss_grads_fails_on_a_mode_the_rule_does_not_support():
    with pytest.raises(AssertionError, match="raised TypeError.*custom_vjp"):
        fdiv.testing.check_loss_grads(_sum_of(_square_reverse_only), X, order=1)


def test_check_loss_grads_catches_nan_values_and_gradients():
    """check_grads alone takes NaN == NaN; the helper asserts finiteness first."""
    with pytest.raises(AssertionError, match="the value is not finite"):
        fdiv.testing.check_loss_grads(lambda x: jnp.sum(jnp.log(x)), X)  # log of -1.2
    with pytest.raises(AssertionError, match="reverse-mode gradient.*not finite"):
        fdiv.testing.check_loss_grads(lambda x: jnp.sum(jnp.sqrt(x**2 * (x > 0))), X, order=1)


def test_check_loss_grads_holds_integer_arguments_fixed():
    """Labels are not differentiated; pytrees are; a detached teacher is left out by argnums.

    The f-DPO loss at order 2, KD (through the divergence's custom_jvp) at order 1 to stay fast.
    """
    rng = np.random.default_rng(9)
    logps = [rng.normal(size=3) - 2.0 for _ in range(4)]

    def fdpo(pw, pl, rw, rl):
        return preference.fdpo_loss(
            policy_chosen=pw, policy_rejected=pl, reference_chosen=rw, reference_rejected=rl,
            beta=0.5, divergence="alpha", alpha=0.3,
        )  # fmt: skip

    fdiv.testing.check_loss_grads(fdpo, *logps)  # per-example [3] outputs
    student, teacher = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    labels = np.array([1, 4])
    loss = lambda s, t, y: jnp.mean(
        kd.kd_loss(student_logits=s, teacher_logits=t, labels=y, temperature=2.0, divergence="js")
    )
    fdiv.testing.check_loss_grads(loss, student, teacher, labels, argnums=0, order=1)
    with pytest.raises(AssertionError, match="cotangent projection"):  # teacher is detached
        fdiv.testing.check_loss_grads(loss, student, teacher, labels, order=1, modes=("rev",))
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    fdiv.testing.check_loss_grads(
        lambda prm, x: jnp.sum(jnp.tanh(x @ prm["w"] + prm["b"]) ** 2), params, rng.normal(size=3)
    )
    with pytest.raises(ValueError, match="no floating-point argument"):
        fdiv.testing.check_loss_grads(lambda y: jnp.sum(y), labels)
    with pytest.raises(ValueError, match="modes"):
        fdiv.testing.check_loss_grads(lambda x: jnp.sum(x), X, modes=("sideways",))


# ------------------------------------------------------------------------------------------------
# check_outputs: chex structure, finiteness, jit.
# ------------------------------------------------------------------------------------------------


def test_check_outputs_passes_and_returns_the_output():
    student, teacher = RNG.normal(size=(2, 4, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])

    def loss(s, t, y):
        return kd.kd_loss(student_logits=s, teacher_logits=t, labels=y, temperature=2.0)

    out = fdiv.testing.check_outputs(loss, student, teacher, labels, shape=(4,), dtype=jnp.float32)
    np.testing.assert_allclose(out, loss(student, teacher, labels), rtol=1e-6)
    tree = fdiv.testing.check_outputs(
        lambda a, b: {"ce": kd.cross_entropy(a, labels), "h": (kd.entropy(a), kd.entropy(b))},
        student,
        teacher,
        shape=(4,),
    )
    assert set(tree) == {"ce", "h"}


def test_check_outputs_failures():
    x = np.linspace(-1.0, 1.0, 6).astype(np.float32)
    with pytest.raises(AssertionError, match="the output is not finite"):
        fdiv.testing.check_outputs(lambda v: jnp.log(v), x)
    with pytest.raises(AssertionError, match="shape"):
        fdiv.testing.check_outputs(lambda v: v[:3], x, shape=(6,))
    with pytest.raises(AssertionError, match="dtype"):
        fdiv.testing.check_outputs(lambda v: v.astype(jnp.bfloat16), x, dtype=jnp.float32)
    with pytest.raises(AssertionError, match="gradient w.r.t. arguments \\[0\\] is not finite"):
        fdiv.testing.check_outputs(lambda v: jnp.sqrt(jnp.abs(v) * (v > 0)), x)
    calls = []

    def impure(v):  # a Python side effect: eager and traced calls see different constants
        calls.append(None)
        return v + len(calls)

    with pytest.raises(AssertionError, match="jax.jit changes the output"):
        fdiv.testing.check_outputs(impure, x, grads=False)


def test_js_reverse_mode_order_two_with_a_masked_class():
    """Regression: ``jax.grad(jax.grad(...))`` of JS with a class removed (``where``, or ``-inf``
    in both) was NaN for every logit of the row at 79285c4 (VJP of VJP and VJP of JVP; the rule
    took ``log(0.5 (p + q))`` at ``p = q = 0``, whose VJP is 0/0), while forward over reverse
    (``jax.hessian``) and every first derivative were finite. The rule now forms both logs from
    ``log(p/q)``."""
    mask = np.array([True, False, True, True, True])
    fdiv.testing.check_divergence_grads("js", P, Q, where=mask, modes=("rev",))
