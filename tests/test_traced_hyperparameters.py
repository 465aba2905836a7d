"""Hyperparameters as traced values: under ``jit``, batched by ``vmap``, differentiated by ``grad``.

Generators are pytrees of their parameters, and every loss takes its scalar hyperparameters as
Python numbers (checked, specialised at trace time) or as arrays (traced, unchecked). References:
the same call with Python numbers (``jit``, ``vmap``), a Python loop (``vmap``), and central finite
differences in float64 (``grad``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from fdiv import generators as gen
from fdiv.fused import TopKTeacher, fused_divergence, fused_linear_divergence
from fdiv.losses import diffusion, kd, policy, preference

KEY = jax.random.key(0)


def _dpo_roles(x):
    """The four rows of ``x`` as f-DPO's keyword-only log-probabilities."""
    roles = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")
    return dict(zip(roles, x, strict=True))


def _logits(shape, seed=0, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.fold_in(KEY, seed))
    return (
        2.0 * jax.random.normal(k1, shape, dtype),
        2.0 * jax.random.normal(k2, shape, dtype),
    )


def _close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# -- the repros: each raised under jit before generators and losses were traceable --------


def test_kd_loss_with_a_traced_temperature():
    s, t = _logits((6, 10))
    labels = jnp.arange(6) % 10
    loss = lambda tau: kd.kd_loss(
        student_logits=s, teacher_logits=t, labels=labels, temperature=tau
    )  # noqa: E731
    _close(jax.jit(loss)(2.5), loss(2.5))


def test_fdpo_loss_with_a_traced_beta():
    x = jax.random.normal(KEY, (4, 5))
    loss = lambda b: preference.fdpo_loss(**_dpo_roles(x), beta=b, divergence="js")  # noqa: E731
    _close(jax.jit(loss)(0.3), loss(0.3))


def test_fused_divergence_with_a_traced_temperature():
    p, q = _logits((5, 40))
    dense = lambda tau: fused_divergence("js", p, q, temperature=tau)  # noqa: E731
    _close(jax.jit(dense)(1.7), dense(1.7))
    _close(jax.jit(dense)(1.7), fdiv.divergence("js", p / 1.7, q / 1.7))
    log_probs, indices = jax.lax.top_k(jax.nn.log_softmax(p), 8)
    topk = lambda tau: fused_divergence("kl", TopKTeacher(indices, log_probs), q, temperature=tau)  # noqa: E731
    _close(jax.jit(topk)(1.7), topk(1.7))
    hidden, weight = jax.random.normal(KEY, (5, 6)), jax.random.normal(KEY, (40, 6))
    linear = lambda tau: fused_linear_divergence("js", hidden, weight, p, temperature=tau)  # noqa: E731
    _close(jax.jit(linear)(1.7), linear(1.7))


def test_generator_with_a_traced_parameter():
    p, q = _logits((3, 9))
    div = lambda a: fdiv.divergence(gen.get("alpha", alpha=a), p, q)  # noqa: E731
    _close(jax.jit(div)(0.3), div(0.3))


# -- generators are pytrees ------------------------------------------------------------------------


def test_generators_are_pytrees_of_their_numeric_parameters():
    g = gen.get("skew_js", beta=0.25, normalize=True)
    leaves, treedef = jax.tree.flatten(g)
    assert leaves == [0.25]
    rebuilt = jax.tree.unflatten(treedef, [0.25])
    assert rebuilt == g and hash(rebuilt) == hash(g)
    assert rebuilt.params == {"beta": 0.25, "normalize": True}
    assert jax.tree.leaves(gen.get("kl")) == [] and jax.tree.leaves(gen.get("js")) == []
    assert jax.tree.leaves(gen.get("alpha", alpha=0.3).dual) == [0.7]
    assert not g.traced
    assert jax.tree.map(jnp.asarray, g).traced  # arrays are traced leaves, Python numbers not
    # A generator goes through jit as an ordinary argument: its parameter is traced.
    p, q = _logits((2, 7))
    div = jax.jit(lambda g, p, q: fdiv.divergence(g, p, q))
    for a in (0.3, 0.6):
        _close(
            div(gen.get("alpha", alpha=a), p, q), fdiv.divergence(gen.get("alpha", alpha=a), p, q)
        )


PARAMETRISED = [
    ("alpha", "alpha", {}, [-1.0, 0.0, 0.03, 0.3, 0.5, 0.97, 1.0, 2.0, 3.5]),
    ("skew_js", "beta", {}, [0.1, 0.5, 0.9]),
    ("skew_js", "beta", {"normalize": True}, [0.1, 0.5, 0.9]),
    ("skew_kl", "lam", {}, [0.0, 0.1, 0.7]),
    ("skew_reverse_kl", "lam", {}, [0.0, 0.1, 0.7]),
]


@pytest.mark.parametrize("name, param, fixed, values", PARAMETRISED)
def test_vmap_sweep_equals_the_python_loop(name, param, fixed, values):
    """Batched parameters (one divergence per value, each with its own special cases chosen by
    jnp.where) against the same generator built from a Python number; float64, with a class
    absent from both distributions."""
    with jax.enable_x64(True):
        p, q = _logits((4, 12), seed=1, dtype=jnp.float64)
        p, q = p.at[:, 0].set(-jnp.inf), q.at[:, 0].set(-jnp.inf)

        def div(v):
            return fdiv.divergence(gen.get(name, **{param: v}, **fixed), p, q)

        swept = jax.vmap(div)(jnp.asarray(values, jnp.float64))
        looped = jnp.stack([div(v) for v in values])
        # Away from u = 1 the direct forms and the concrete path agree to rounding; the concrete
        # path's near-one series differs from the direct form by ~1e-13 in float64.
        _close(swept, looped, rtol=1e-9, atol=1e-12)

        def grad_q(v):
            return jax.grad(lambda q: jnp.sum(fdiv.divergence(gen.get(name, **{param: v}, **fixed), p, q)))(q)  # fmt: skip

        g_swept = jax.vmap(grad_q)(jnp.asarray(values, jnp.float64))
        _close(g_swept, jnp.stack([grad_q(v) for v in values]), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize(
    "name, param, value",
    [("alpha", "alpha", 0.3), ("alpha", "alpha", 1.8), ("skew_js", "beta", 0.3),
     ("skew_kl", "lam", 0.2), ("skew_reverse_kl", "lam", 0.2)],
)  # fmt: skip
def test_gradient_with_respect_to_a_generator_parameter(name, param, value):
    with jax.enable_x64(True):
        p, q = _logits((3, 10), seed=2, dtype=jnp.float64)

        def total(v):
            return jnp.sum(fdiv.divergence(gen.get(name, **{param: v}), p, q))

        h = 1e-5
        fd = (total(value + h) - total(value - h)) / (2 * h)
        _close(jax.grad(total)(value), fd, rtol=1e-7, atol=0)
        _close(jax.jit(jax.grad(total))(value), fd, rtol=1e-7, atol=0)
        fused = lambda v: jnp.sum(fused_divergence(gen.get(name, **{param: v}), p, q, chunk_rows=2))  # noqa: E731
        _close(jax.grad(fused)(value), fd, rtol=1e-7, atol=0)


def test_gradient_with_respect_to_the_temperature():
    with jax.enable_x64(True):
        p, q = _logits((4, 16), seed=3, dtype=jnp.float64)
        h = 1e-5

        def check(fn, tau, h=h, rtol=1e-7):
            fd = (fn(tau + h) - fn(tau - h)) / (2 * h)
            _close(jax.grad(fn)(tau), fd, rtol=rtol, atol=0)

        check(lambda t: jnp.sum(fused_divergence("js", p, q, temperature=t, chunk_rows=3)), 1.7)
        check(
            lambda t: jnp.sum(
                kd.kd_loss(
                    student_logits=q, teacher_logits=p, labels=jnp.zeros(4, int), temperature=t
                )
            ),
            3.0,
        )
        log_probs, indices = jax.lax.top_k(jax.nn.log_softmax(p), 5)
        teacher = TopKTeacher(indices, log_probs)
        # the top-k kernel computes in float32
        check(lambda t: jnp.sum(fused_divergence("kl", teacher, q, temperature=t)), 1.3, 1e-2, 1e-4)
        hidden = jax.random.normal(KEY, (4, 3), jnp.float64)
        weight = jax.random.normal(jax.random.fold_in(KEY, 9), (16, 3), jnp.float64)
        # the fused projection computes in float32 too
        check(
            lambda t: fused_linear_divergence("skew_js", hidden, weight, p, temperature=t),
            0.8, 1e-2, 1e-4,
        )  # fmt: skip
        # and both at once: the student logits and the temperature
        gq, gt = jax.grad(lambda q, t: jnp.sum(fused_divergence("kl", p, q, temperature=t)), (0, 1))(q, 2.0)  # fmt: skip
        _close(gq, jax.grad(lambda q: jnp.sum(fdiv.divergence("kl", p / 2.0, q / 2.0)))(q))
        fd = (jnp.sum(fused_divergence("kl", p, q, temperature=2.0 + h)) - jnp.sum(fused_divergence("kl", p, q, temperature=2.0 - h))) / (2 * h)  # fmt: skip
        _close(gt, fd, rtol=1e-7, atol=0)


def test_temperature_and_beta_sweeps_by_vmap():
    s, t = _logits((6, 10), seed=4)
    labels = jnp.arange(6) % 10
    taus = jnp.asarray([1.0, 2.0, 4.0])
    swept = jax.vmap(
        lambda tau: kd.kd_loss(student_logits=s, teacher_logits=t, labels=labels, temperature=tau)
    )(taus)
    _close(
        swept,
        jnp.stack(
            [
                kd.kd_loss(student_logits=s, teacher_logits=t, labels=labels, temperature=float(x))
                for x in taus
            ]
        ),
    )
    x = jax.random.normal(KEY, (4, 5))
    betas = jnp.asarray([0.05, 0.1, 0.5])
    swept = jax.vmap(lambda b: preference.fdpo_loss(**_dpo_roles(x), beta=b, divergence="alpha", alpha=0.4))(betas)  # fmt: skip
    looped = [
        preference.fdpo_loss(**_dpo_roles(x), beta=float(b), divergence="alpha", alpha=0.4)
        for b in betas
    ]
    _close(swept, jnp.stack(looped))


# -- every named hyperparameter of the losses traces -----------------------------------------------


def _jit_equals_eager(fn, *values):
    _close(jax.jit(fn)(*values), fn(*values), rtol=1e-5, atol=1e-6)


def test_kd_family_hyperparameters_trace():
    s, t = _logits((8, 10), seed=5)
    y = jnp.arange(8) % 10
    _jit_equals_eager(
        lambda w, c: kd.kd_loss(
            student_logits=s, teacher_logits=t, labels=y, kd_weight=w, ce_weight=c
        ),
        0.7,
        0.3,
    )
    _jit_equals_eager(
        lambda tau, w: kd.dml_loss(logits=s, peer_logits=t, labels=y, temperature=tau, kd_weight=w),
        2.0,
        0.5,
    )
    _jit_equals_eager(lambda k, tau: kd.bdkd_student_loss(student_logits=s, teacher_logits=t, labels=y, kappa=k, temperature=tau), 3.0, 4.0)  # fmt: skip
    _jit_equals_eager(
        lambda w: kd.bdkd_teacher_loss(
            teacher_logits=t, student_logits=s, labels=y, teacher_kd_weight=w
        ),
        0.1,
    )
    _jit_equals_eager(
        lambda a, b, eps, tau: kd.sinkd_loss(student_logits=s, teacher_logits=t, labels=y, alpha=a, beta=b, epsilon=eps, kd_temperature=tau),  # fmt: skip
        0.9, 0.8, 0.1, 4.0,
    )  # fmt: skip
    _jit_equals_eager(lambda tau: kd.distillation_term(student_logits=s, teacher_logits=t, divergence=gen.get("alpha", alpha=tau / 4), temperature=tau), 2.0)  # fmt: skip


def test_diffusion_hyperparameters_trace():
    log_r = jax.random.normal(KEY, (16,)) * 3
    stats = diffusion.init_ratio_stats(4)
    bins = jnp.arange(16) % 4
    _jit_equals_eager(
        lambda c, lo, hi, m, a: diffusion.fdistill_weight(
            log_r, gen.get("alpha", alpha=a), logit_clamp=c, ratio_clip=(lo, hi), stats=stats,
            bins=bins, momentum=m,
        )[0],
        5.0, 0.2, 10.0, 0.5, 0.5,
    )  # fmt: skip
    x, xt = jax.random.normal(KEY, (2, 4, 3))
    _jit_equals_eager(lambda e: diffusion.dmd_normalizer(x, xt, eps=e), 1e-3)
    _jit_equals_eager(lambda c: diffusion.sim_divergence(x, xt, distance="pseudo_huber", c=c), 0.5)


def test_alignment_hyperparameters_trace():
    a, b = jax.random.normal(KEY, (2, 3, 5)) - 2.0
    _jit_equals_eager(lambda lam: policy.dph_penalty(log_pi_tokens=a, log_pi0_tokens=b, divergence=gen.get("skew_kl", lam=lam)), 0.3)  # fmt: skip
    _jit_equals_eager(lambda al: policy.dph_penalty(log_pi_tokens=a, log_pi0_tokens=b, divergence=gen.get("alpha", alpha=al)), 0.4)  # fmt: skip
    log_pi, log_target = a[:, 0], b[:, 0]
    _jit_equals_eager(lambda al: policy.fdpg_loss(log_pi=log_pi, log_target=log_target, divergence=gen.get("alpha", alpha=al))[0], 0.4)  # fmt: skip
    _jit_equals_eager(lambda e: policy.grpo_loss(a, b, old_log_pi_tokens=b, clip_epsilon=e), 0.2)
    _jit_equals_eager(lambda e: policy.group_advantages(a, eps=e), 1e-3)
    _jit_equals_eager(lambda d: policy.moving_average(1.0, 2.0, decay=d), 0.9)
    x = jax.random.normal(KEY, (4, 5))
    _jit_equals_eager(lambda al, m: preference.fdpo_loss(**_dpo_roles(x), divergence="alpha", alpha=al, max_exponent=m), 0.4, 20.0)  # fmt: skip
    _jit_equals_eager(lambda eps: preference.fdpo_loss(**_dpo_roles(x), label_smoothing=eps), 0.1)


# -- Python numbers are still checked ---------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gen.get("alpha", alpha=float("nan")), "finite"),
        (lambda: gen.get("skew_kl", lam=1.0), "lam must be in"),
        (lambda: gen.get("skew_js", beta=jnp.float32(1.5)), "beta must be in"),
        (
            lambda: kd.kd_loss(
                student_logits=jnp.zeros((1, 3)),
                teacher_logits=jnp.zeros((1, 3)),
                labels=jnp.zeros(1, int),
                temperature=0.0,
            ),
            "temperature",
        ),  # fmt: skip
        (
            lambda: fused_divergence("kl", jnp.zeros((1, 3)), jnp.zeros((1, 3)), temperature=-1.0),
            "temperature",
        ),  # fmt: skip
        (lambda: preference.fdpo_loss(**_dpo_roles(jnp.zeros((4, 2))), beta=0.0), "beta"),
        (lambda: diffusion.fdistill_weight(jnp.zeros(2), "kl", momentum=1.0), "momentum"),
    ],
)
def test_python_numbers_are_still_checked(call, message):
    with pytest.raises(ValueError, match=message):
        call()
