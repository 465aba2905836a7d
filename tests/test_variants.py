"""The divergences and the losses under ``chex.variants`` (with and without ``jax.jit``).

Every variant is compared with an independent float64 reference written here from the textbook
formulas (``scipy.special.rel_entr`` for KL, ``scipy.spatial.distance.jensenshannon`` for JS,
closed forms for the rest, a numpy log-domain Sinkhorn for SinKD) and with the plain eager call,
and its output is checked for shape, dtype and finiteness with chex assertions. Configuration
(generator, temperature, beta ...) is closed over, so the jitted variant traces only arrays.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.spatial.distance
import scipy.special
from absl.testing import parameterized

import fdiv
from fdiv.losses import diffusion, kd, policy, preference

B, V = 4, 6
_RNG = np.random.default_rng(2024)
P_LOGITS = (1.5 * _RNG.normal(size=(B, V))).astype(np.float32)
Q_LOGITS = (1.5 * _RNG.normal(size=(B, V))).astype(np.float32)
LABELS = np.array([0, 3, 5, 1], np.int32)


def softmax64(x) -> np.ndarray:
    return scipy.special.softmax(np.asarray(x, np.float64), axis=-1)


def _alpha(a):
    return lambda p, q: (np.sum(p**a * q ** (1 - a), -1) - 1.0) / (a * (a - 1.0))


# D_f(P || Q) from probabilities [B, V] -> [B], float64.
REFERENCES = {
    "kl": lambda p, q: scipy.special.rel_entr(p, q).sum(-1),
    "reverse_kl": lambda p, q: scipy.special.rel_entr(q, p).sum(-1),
    "js": lambda p, q: scipy.spatial.distance.jensenshannon(p, q, axis=-1) ** 2,
    "pearson": lambda p, q: np.sum((p - q) ** 2 / q, -1),
    "total_variation": lambda p, q: 0.5 * np.sum(np.abs(p - q), -1),
    "alpha-0.5": _alpha(0.5),
}
GENERATORS = {"alpha-0.5": fdiv.generators.get("alpha", alpha=0.5)}
DIVERGENCE_CASES = [(name, name) for name in REFERENCES]


def _kl64(p, q):
    return scipy.special.rel_entr(p, q).sum(-1)


def _log_sigmoid64(z):
    return -np.logaddexp(0.0, -z)


def _assert_close(got, want, *, rtol, atol):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


class DivergenceVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*DIVERGENCE_CASES)
    def test_divergence(self, name):
        g = GENERATORS.get(name, name)
        fn = lambda a, b: fdiv.divergence(g, a, b)
        got = self.variant(fn)(P_LOGITS, Q_LOGITS)
        chex.assert_shape(got, (B,))
        chex.assert_type(got, jnp.float32)
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, fn(P_LOGITS, Q_LOGITS), rtol=1e-6, atol=1e-7)
        want = REFERENCES[name](softmax64(P_LOGITS), softmax64(Q_LOGITS))
        _assert_close(got, want, rtol=2e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_divergence_where_and_float64(self):
        """A class mask removes the class from both distributions; float64 in, float64 out."""
        mask = np.array([True, True, False, True, True, False])
        with jax.enable_x64(True):
            p, q = jnp.asarray(P_LOGITS, jnp.float64), jnp.asarray(Q_LOGITS, jnp.float64)
            got = self.variant(lambda a, b: fdiv.divergence("js", a, b, where=mask))(p, q)
            chex.assert_type(got, jnp.float64)
        want = REFERENCES["js"](softmax64(P_LOGITS[:, mask]), softmax64(Q_LOGITS[:, mask]))
        _assert_close(got, want, rtol=1e-10, atol=1e-13)

    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_gradients(self):
        """Closed forms: d KL / d q_logits = q - p, d KL / d p_logits = p (log(p/q) - KL)."""
        total = lambda a, b: jnp.sum(fdiv.divergence("kl", a, b))
        gp, gq = self.variant(jax.grad(total, argnums=(0, 1)))(P_LOGITS, Q_LOGITS)
        chex.assert_trees_all_equal_shapes_and_dtypes((gp, gq), (P_LOGITS, Q_LOGITS))
        p, q = softmax64(P_LOGITS), softmax64(Q_LOGITS)
        kl = _kl64(p, q)[:, None]
        _assert_close(gq, q - p, rtol=1e-5, atol=1e-6)
        _assert_close(gp, p * (np.log(p / q) - kl), rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("kl", "kl"), ("js", "js"))
    def test_fused_divergence(self, name):
        """Temperature and a row mask: tau-softened reference on kept rows, 0 elsewhere."""
        rows = np.array([True, False, True, True])
        fn = lambda a, b: fdiv.fused.fused_divergence(name, a, b, temperature=2.0, mask=rows)
        got = self.variant(fn)(P_LOGITS, Q_LOGITS)
        chex.assert_shape(got, (B,))
        chex.assert_type(got, jnp.float32)
        chex.assert_trees_all_close(got, fn(P_LOGITS, Q_LOGITS), rtol=1e-6, atol=1e-7)
        want = REFERENCES[name](softmax64(P_LOGITS / 2.0), softmax64(Q_LOGITS / 2.0))
        _assert_close(got, np.where(rows, want, 0.0), rtol=2e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_fused_linear_divergence(self):
        """Student logits ``hidden @ weight.T`` formed inside; mean over rows of KL."""
        rng = np.random.default_rng(7)
        hidden = rng.normal(size=(B, 3)).astype(np.float32)
        weight = rng.normal(size=(V, 3)).astype(np.float32)
        fn = lambda h, w, t: fdiv.fused.fused_linear_divergence("kl", h, w, t)
        got = self.variant(fn)(hidden, weight, P_LOGITS)
        chex.assert_shape(got, ())
        chex.assert_tree_all_finite(got)
        want = np.mean(_kl64(softmax64(P_LOGITS), softmax64(hidden @ weight.T)))
        _assert_close(got, want, rtol=2e-5, atol=1e-6)


class LossVariantsTest(chex.TestCase):
    def _check(self, fn, args, want, *, shape, rtol=2e-5, atol=1e-5):
        got = self.variant(fn)(*args)
        chex.assert_shape(got, shape)
        chex.assert_type(got, jnp.float32)
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, fn(*args), rtol=1e-6, atol=1e-6)
        _assert_close(got, want, rtol=rtol, atol=atol)
        return got

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("kl", "kl"), ("js", "js"))
    def test_kd_loss(self, name):
        """``CE(y, q) + tau^2 D(p_tau || q_tau)`` (student Q, teacher P)."""
        tau = 4.0
        fn = lambda s, t, y: kd.kd_loss(
            student_logits=s, teacher_logits=t, labels=y, divergence=name, temperature=tau
        )
        ce = -np.log(softmax64(Q_LOGITS)[np.arange(B), LABELS])
        want = ce + tau**2 * REFERENCES[name](softmax64(P_LOGITS / tau), softmax64(Q_LOGITS / tau))
        self._check(fn, (Q_LOGITS, P_LOGITS, LABELS), want, shape=(B,))

    @chex.variants(with_jit=True, without_jit=True)
    def test_dml_loss(self):
        fn = lambda s, t, y: kd.dml_loss(logits=s, peer_logits=t, labels=y, kd_weight=0.5)
        ce = -np.log(softmax64(Q_LOGITS)[np.arange(B), LABELS])
        want = ce + 0.5 * _kl64(softmax64(P_LOGITS), softmax64(Q_LOGITS))
        self._check(fn, (Q_LOGITS, P_LOGITS, LABELS), want, shape=(B,))

    @chex.variants(with_jit=True, without_jit=True)
    def test_bdkd_student_loss(self):
        """``CE + tau^2 [w KL(p||q) + (1 - w) KL(q||p)]``, ``w = sigmoid(kappa (H(p) - H(q)))``."""
        tau, kappa = 2.0, 1.5
        fn = lambda s, t, y: kd.bdkd_student_loss(
            student_logits=s, teacher_logits=t, labels=y, temperature=tau, kappa=kappa
        )
        p, q = softmax64(P_LOGITS / tau), softmax64(Q_LOGITS / tau)
        entropy = lambda x: -np.sum(x * np.log(x), -1)
        w = scipy.special.expit(kappa * (entropy(p) - entropy(q)))
        ce = -np.log(softmax64(Q_LOGITS)[np.arange(B), LABELS])
        want = ce + tau**2 * (w * _kl64(p, q) + (1 - w) * _kl64(q, p))
        self._check(fn, (Q_LOGITS, P_LOGITS, LABELS), want, shape=(B,))

    @chex.variants(with_jit=True, without_jit=True)
    def test_sinkhorn_distillation(self):
        """Doubly stochastic log-domain Sinkhorn on the L1 cost between softened predictions."""
        tau, eps, iters = 2.0, 0.1, 20
        fn = lambda s, t: kd.sinkhorn_distillation(
            student_logits=s, teacher_logits=t, temperature=tau, epsilon=eps
        )
        q, p = softmax64(Q_LOGITS / tau), softmax64(P_LOGITS / tau)
        cost = np.abs(q[:, None, :] - p[None, :, :]).sum(-1)
        log_k = -cost / eps
        log_u, log_v = np.zeros(B), np.zeros(B)
        for _ in range(iters):
            log_u = -scipy.special.logsumexp(log_v[None, :] + log_k, axis=1)
            log_v = -scipy.special.logsumexp(log_u[:, None] + log_k, axis=0)
        want = np.sum(np.exp(log_u[:, None] + log_k + log_v[None, :]) * cost)
        self._check(fn, (Q_LOGITS, P_LOGITS), want, shape=(), rtol=1e-4, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("reverse_kl", "reverse_kl"), ("forward_kl", "forward_kl"), ("js", "js"), ("alpha", "alpha")
    )
    def test_fdpo_loss(self, name):
        """``-log sigmoid(beta [psi(u_w) - psi(u_l)])`` with the paper's ``psi`` (alpha = 0.5)."""
        rng = np.random.default_rng(11)
        pw, pl, rw, rl = (rng.normal(size=B).astype(np.float32) - 3.0 for _ in range(4))
        beta, a = 0.3, 0.5
        psi = {
            "reverse_kl": lambda lu: lu,
            "forward_kl": lambda lu: -np.exp(-lu),
            "js": lambda lu: math.log(2.0) + lu - np.logaddexp(0.0, lu),
            "alpha": lambda lu: -np.exp(-a * lu) / a,
        }[name]
        lw = pw.astype(np.float64) - rw
        ll = pl.astype(np.float64) - rl
        want = -_log_sigmoid64(beta * (psi(lw) - psi(ll)))
        roles = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")
        fn = lambda *x: preference.fdpo_loss(
            **dict(zip(roles, x, strict=True)), beta=beta, divergence=name, alpha=a
        )
        self._check(fn, (pw, pl, rw, rl), want, shape=(B,), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_grpo_loss(self):
        """``-mean_t min(rho A, clip(rho, 1 +- e) A)`` over kept tokens."""
        rng = np.random.default_rng(12)
        log_pi = (rng.normal(size=(B, 5)) * 0.3 - 1.0).astype(np.float32)
        old = (log_pi + rng.normal(size=(B, 5)) * 0.3).astype(np.float32)
        adv = rng.normal(size=B).astype(np.float32)
        keep = rng.random(size=(B, 5)) < 0.8
        keep[:, 0] = True
        fn = lambda x, o, a: policy.grpo_loss(x, a, old_log_pi_tokens=o, mask=keep)
        rho = np.exp(log_pi.astype(np.float64) - old)
        a64 = adv.astype(np.float64)[:, None]
        objective = np.minimum(rho * a64, np.clip(rho, 0.8, 1.2) * a64)
        want = -np.sum(np.where(keep, objective, 0.0), -1) / keep.sum(-1)
        self._check(fn, (log_pi, old, adv), want, shape=(B,), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gan_losses(self):
        """``softplus(-D(fake))`` and ``softplus(-D(real)) + softplus(D(fake))``."""
        rng = np.random.default_rng(13)
        real, fake = (rng.normal(size=B).astype(np.float32) * 2 for _ in range(2))
        softplus = lambda x: np.logaddexp(0.0, np.asarray(x, np.float64))
        self._check(diffusion.gan_generator_loss, (fake,), softplus(-fake), shape=(B,), atol=1e-6)
        self._check(
            diffusion.discriminator_loss,
            (real, fake),
            softplus(-real) + softplus(fake),
            shape=(B,),
            atol=1e-6,
        )
