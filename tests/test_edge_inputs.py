"""Inputs that are not distributions, or sit exactly on a clamp: clear errors or NaN, never a
plausible finite number."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from fdiv.losses import preference

NEG_INF = -np.inf
NAMES = ["kl", "reverse_kl", "js", "jeffreys", "squared_hellinger", "alpha"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("side", ["p", "q"])
def test_all_neg_inf_row_is_nan_with_zero_gradient(name, side):
    """A row with every logit -inf has no softmax (jax.nn.log_softmax gives NaN): the value is
    NaN, not e.g. KL = 1.0; its gradient is 0, so masking the row out leaves finite gradients."""
    empty = jnp.full((3,), NEG_INF)
    ok = jnp.array([0.0, 1.0, -1.0])
    p = jnp.stack([empty, ok]) if side == "p" else jnp.stack([ok, ok])
    q = jnp.stack([ok, ok]) if side == "p" else jnp.stack([empty, ok])
    values = fdiv.divergence(name, p, q)
    assert np.isnan(values[0]) and abs(float(values[1])) < 1e-6  # P = Q in the other row
    keep = jnp.array([False, True])

    def masked(a, b):
        return jnp.sum(jnp.where(keep, fdiv.divergence(name, a, b), 0.0))

    gp, gq = jax.grad(masked, argnums=(0, 1))(p, q)
    assert np.isfinite(gp).all() and np.isfinite(gq).all()
    fused = fdiv.fused.fused_divergence(name, p, q)
    assert np.isnan(fused[0]) and abs(float(fused[1])) < 1e-6


@pytest.mark.parametrize("fn", ["divergence", "fused"])
def test_empty_class_axis_is_a_clear_error(fn):
    x = jnp.zeros((2, 0))
    call = fdiv.divergence if fn == "divergence" else fdiv.fused.fused_divergence
    with pytest.raises(ValueError, match="class axis is empty"):
        call("kl", x, x)


@pytest.mark.parametrize("fn", ["divergence", "fused"])
def test_complex_logits_are_rejected(fn):
    """Casting complex logits to float silently drops the imaginary part."""
    x = jnp.array([[1.0 + 2.0j, 0.0]], jnp.complex64)
    real = jnp.zeros((1, 2))
    call = fdiv.divergence if fn == "divergence" else fdiv.fused.fused_divergence
    with pytest.raises(TypeError, match="must be real"):
        call("kl", x, real)
    with pytest.raises(TypeError, match="must be real"):
        call("kl", real, x)


def test_divergence_on_nonzero_class_axis_checks_that_axis():
    with pytest.raises(ValueError, match="class axis is empty"):
        fdiv.divergence("kl", jnp.zeros((0, 3)), jnp.zeros((0, 3)), axis=0)
    assert fdiv.divergence("kl", jnp.zeros((0, 3)), jnp.zeros((0, 3))).shape == (0,)


@pytest.mark.parametrize("kind", ["forward_kl", "alpha"])
def test_fdpo_psi_gradient_is_whole_at_the_clamp(kind):
    """At log u = -max_exponent (exactly on the clamp) psi's gradient is the unclamped one, not
    half of it (jnp.minimum splits ties). forward KL: psi = -1/u, psi' = 1/u = e^m; alpha (paper's
    a): psi = -u^-a / a, psi' = u^-a = e^m at a log u = -m."""
    m, a = 20.0, 0.5
    log_u = jnp.float32(-m) if kind == "forward_kl" else jnp.float32(-m / a)
    grad = jax.grad(lambda x: preference.psi(x, divergence=kind, alpha=a, max_exponent=m))(log_u)
    np.testing.assert_allclose(float(grad), np.exp(m), rtol=1e-5)
