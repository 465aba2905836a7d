"""Tests for ``fdiv.fused``: chunked ``fused_divergence`` / ``fused_linear_divergence`` / top-k.

Expected values never come from the fused code. The references are:

- the unfused ``fdiv.divergence(g, p_logits / tau, q_logits / tau)`` (tested against numpy / scipy
  in ``test_divergences.py``) and ``jax`` autodiff through it, with the row mask, the projection
  ``hidden @ weight.T`` and the masked mean / sum written here in plain ``jnp``;
- for a :class:`TopKTeacher`, the ``k + 1``-bucket coarsening of teacher and student built here in
  ``jnp`` (student tail = ``logsumexp`` over the classes outside the top-k, teacher tail =
  ``log1p(-sum exp(log_probs))``), fed to ``fdiv.divergence``;
- exact facts: the data-processing inequality / equality, zero values and gradients of masked rows,
  compile-time memory sizes reported by XLA.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from fdiv import generators
from fdiv.fused import TopKTeacher, default_chunk_rows, fused_divergence, fused_linear_divergence

N, V, H, HT, K = 37, 50, 16, 12, 5
TAU = 1.7

# Every catalogued generator at its registry defaults, plus generalised JSD (beta=0.1) and alpha=2.
GEN_CASES = {name: (name, {}) for name in generators.names()}
GEN_CASES["skew_js-beta=0.1"] = ("skew_js", {"beta": 0.1})
GEN_CASES["alpha-alpha=2"] = ("alpha", {"alpha": 2.0})


def gen(case_id: str):
    name, params = GEN_CASES[case_id]
    return generators.get(name, **params)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@functools.cache
def dense_logits(seed: int = 0, scale: float = 2.0):
    """Teacher and student logits ``[N, V]`` float32 (fixed seeds)."""
    r = _rng(seed)
    p = (scale * r.standard_normal((N, V))).astype(np.float32)
    q = (scale * r.standard_normal((N, V))).astype(np.float32)
    return jnp.asarray(p), jnp.asarray(q)


ROW_WEIGHTS = jnp.arange(N, dtype=jnp.float32)  # a non-uniform per-row cotangent


def assert_close(got, want, rtol=1e-5, scale_atol=1e-5, err_msg=""):
    """``|got - want| <= rtol |want| + scale_atol * max|want|`` (infinities must match exactly)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    finite = np.isfinite(want)
    mag = float(np.max(np.abs(want[finite]))) if finite.any() else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=scale_atol * mag, err_msg=err_msg)


# LLVM optimisation level 0 for the many small test programs: the same HLO (same numerics), about
# half the CPU compile time, which dominates this file's runtime.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run_jit(fn, *args):
    """``jax.jit(fn)(*args)``, compiled with ``_FAST_COMPILE``."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)(*args)


def vjp_both(fn, p, q, w):
    """``(values, dp, dq)`` of ``fn(p, q)`` with row cotangent ``w``."""
    values, pullback = jax.vjp(fn, p, q)
    return (values, *pullback(w))


@functools.cache
def reference_dense(case_id: str):
    """Reference values and ``w``-weighted logit gradients: autodiff of ``fdiv.divergence``."""
    g = gen(case_id)
    p, q = dense_logits()
    fn = lambda p, q: fdiv.divergence(g, p / TAU, q / TAU)
    return run_jit(functools.partial(vjp_both, fn), p, q, ROW_WEIGHTS)


# ------------------------------------------------------------------------------------------------
# 1. Every generator: values and gradients equal the unfused divergence, any chunk size.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("case_id", list(GEN_CASES))
def test_matches_unfused_values_and_grads(case_id, chunk):
    """Reference: ``fdiv.divergence(g, p / tau, q / tau)`` and its autodiff gradients w.r.t. both
    logits under the cotangent ``arange(N)`` (chunk 7 does not divide N = 37; 64 > N)."""
    g = gen(case_id)
    p, q = dense_logits()
    fn = lambda p, q: fused_divergence(g, p, q, temperature=TAU, chunk_rows=chunk)
    got = run_jit(functools.partial(vjp_both, fn), p, q, ROW_WEIGHTS)
    want = reference_dense(case_id)
    assert got[0].dtype == jnp.float32 and got[0].shape == (N,)
    for label, a, b in zip(("value", "grad p", "grad q"), got, want, strict=True):
        assert np.all(np.isfinite(a)), label
        assert_close(a, b, err_msg=f"{case_id} chunk={chunk} {label}")


def test_default_chunk_rows_and_leading_dims():
    """Reference: ``default_chunk_rows(V) = max(1, 2**19 // V)`` (its documented formula), and
    ``fdiv.divergence`` on ``[2, 3, 7, V]`` logits with a ``[2, 3, 7]`` row mask applied by hand;
    the default ``chunk_rows`` is used; an empty batch gives an empty result."""
    assert default_chunk_rows(32000) == 16
    assert default_chunk_rows(1 << 21) == 1
    assert default_chunk_rows(1000, target_elements=4096) == 4
    r = _rng(3)
    p = jnp.asarray(r.standard_normal((2, 3, 7, V)), jnp.float32)
    q = jnp.asarray(r.standard_normal((2, 3, 7, V)), jnp.float32)
    mask = jnp.asarray(r.random((2, 3, 7)) < 0.7)
    got = fused_divergence("js", p, q, temperature=TAU, mask=mask)
    want = jnp.where(mask, fdiv.divergence("js", p / TAU, q / TAU), 0.0)
    assert got.shape == (2, 3, 7)
    assert_close(got, want)
    empty = fused_divergence("kl", jnp.zeros((0, V)), jnp.zeros((0, V)))
    assert empty.shape == (0,) and empty.dtype == jnp.float32


# ------------------------------------------------------------------------------------------------
# 2. Zero classes and the row mask.
# ------------------------------------------------------------------------------------------------


@functools.cache
def zero_class_logits():
    """Rows 0-9: classes absent from both; 10-19: ``p = 0 < q``; 20-29: ``q = 0 < p``; 30+: none."""
    p, q = (np.array(a) for a in dense_logits(seed=1))
    r = _rng(11)
    for row in range(30):
        cols = r.choice(V, size=6, replace=False)
        if row < 10:
            p[row, cols] = -np.inf
            q[row, cols] = -np.inf
        elif row < 20:
            p[row, cols] = -np.inf
        else:
            q[row, cols] = -np.inf
    mask = r.random(N) < 0.75
    mask[[0, 10, 20, 30]] = True
    mask[[1, 11, 21, 31]] = False
    return jnp.asarray(p), jnp.asarray(q), mask


# The closed-form rules (kl, reverse_kl, js), the power rule (neyman), the generic self-dual rule
# (squared_hellinger) and the generic rule with its dual (skew_js).
ZERO_CASES = ["kl", "reverse_kl", "js", "neyman", "squared_hellinger", "skew_js-beta=0.1"]


@pytest.mark.parametrize("case_id", ZERO_CASES)
def test_zero_classes_and_row_mask(case_id):
    """Reference: ``fdiv.divergence(g, p / tau, q / tau)`` (``+inf`` rows included) for the
    unmasked values; with ``where``: masked rows value 0 and gradient 0, the others the unfused
    value and autodiff gradient; gradients at ``-inf`` logits exactly 0 (finite-value rows)."""
    g = gen(case_id)
    p, q, mask = zero_class_logits()
    ref = lambda p, q: fdiv.divergence(g, p / TAU, q / TAU)
    ref_vals, ref_gp, ref_gq = run_jit(functools.partial(vjp_both, ref), p, q, ROW_WEIGHTS)
    ref_vals = np.asarray(ref_vals)
    where = mask & np.isfinite(ref_vals)  # keep only rows whose gradient is defined
    assert where[[0, 30]].all() and not where[[1, 11, 21, 31]].any()

    def run(p, q):
        plain = fused_divergence(g, p, q, temperature=TAU, chunk_rows=7)
        fn = lambda p, q: fused_divergence(g, p, q, temperature=TAU, mask=where, chunk_rows=7)
        return plain, *vjp_both(fn, p, q, ROW_WEIGHTS)

    plain, vals, gp, gq = run_jit(run, p, q)
    assert_close(plain, ref_vals, err_msg="unmasked values")
    assert_close(vals, np.where(where, ref_vals, 0.0), err_msg="masked values")
    rows = where[:, None]
    assert_close(gp, np.where(rows, ref_gp, 0.0), err_msg="grad p")
    assert_close(gq, np.where(rows, ref_gq, 0.0), err_msg="grad q")
    gp, gq = np.asarray(gp), np.asarray(gq)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq))
    assert np.all(gp[~where] == 0.0) and np.all(gq[~where] == 0.0)
    assert np.all(np.asarray(vals)[~where] == 0.0)
    assert np.all(gp[rows & np.isneginf(np.asarray(p))] == 0.0)
    assert np.all(gq[rows & np.isneginf(np.asarray(q))] == 0.0)


# ------------------------------------------------------------------------------------------------
# 3. bfloat16 inputs.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["js", "pearson"])
def test_bfloat16_inputs(case_id):
    """Reference: ``fdiv.divergence`` in float32 on the bf16-rounded logits / tau (values rtol
    1e-2, gradients within bf16 rounding); value float32, gradients bfloat16 and finite."""
    g = gen(case_id)
    p32, q32 = dense_logits()
    p, q = p32.astype(jnp.bfloat16), q32.astype(jnp.bfloat16)
    fn = lambda p, q: fused_divergence(g, p, q, temperature=TAU, chunk_rows=7)
    vals, gp, gq = run_jit(functools.partial(vjp_both, fn), p, q, ROW_WEIGHTS)
    ref = lambda p, q: fdiv.divergence(g, p / TAU, q / TAU)
    rv, rgp, rgq = run_jit(
        functools.partial(vjp_both, ref), p.astype(jnp.float32), q.astype(jnp.float32), ROW_WEIGHTS
    )
    assert vals.dtype == jnp.float32
    assert gp.dtype == jnp.bfloat16 and gq.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(gp, np.float32)))
    assert np.all(np.isfinite(np.asarray(gq, np.float32)))
    assert_close(vals, rv, rtol=1e-2, scale_atol=1e-3)
    assert_close(gp, rgp, rtol=1e-2, scale_atol=1e-2)
    assert_close(gq, rgq, rtol=1e-2, scale_atol=1e-2)


# ------------------------------------------------------------------------------------------------
# Top-k reference: the (k + 1)-bucket coarsening, written here.
# ------------------------------------------------------------------------------------------------


def topk_from_dense(teacher_logits, k=K, tau=TAU):
    """``TopKTeacher`` of ``softmax(teacher_logits / tau)`` from ``jax.lax.top_k``."""
    lp = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
    log_probs, idx = jax.lax.top_k(lp, k)
    return TopKTeacher(idx, log_probs)


def coarse_divergence(g, teacher: TopKTeacher, q_scaled):
    """``fdiv.divergence`` between the (k+1)-bucket coarsenings (differentiable in ``q_scaled``).

    Student buckets: ``log q_j`` of the top-k classes and ``logsumexp`` of ``log q`` over the other
    classes (computed from the complement, not as ``1 - sum``); teacher: the given log-probs and
    ``log1p(-sum exp(log_probs))``.
    """
    idx, lp_k = teacher
    lq = jax.nn.log_softmax(q_scaled, axis=-1)
    in_k = jnp.any(jax.nn.one_hot(idx, q_scaled.shape[-1], dtype=bool), axis=-2)
    lq_k = jnp.take_along_axis(lq, idx, axis=-1)
    lq_tail = jax.nn.logsumexp(jnp.where(in_k, -jnp.inf, lq), axis=-1)
    total_k = jnp.sum(jnp.exp(lp_k), axis=-1)
    lp_tail = jnp.log1p(-jnp.minimum(total_k, 1.0))
    lp_b = jnp.concatenate([lp_k, lp_tail[..., None]], axis=-1)
    lq_b = jnp.concatenate([lq_k, lq_tail[..., None]], axis=-1)
    return fdiv.divergence(g, lp_b, lq_b)


TOPK_CASES = ["kl", "reverse_kl", "js", "skew_js-beta=0.1", "pearson", "squared_hellinger"]


@pytest.mark.parametrize("case_id", TOPK_CASES)
def test_topk_teacher_matches_coarsened_reference(case_id):
    """Reference: ``coarse_divergence`` (the k+1-bucket coarsening built in jnp, then
    ``fdiv.divergence``) and its autodiff gradient w.r.t. the student logits; the teacher's
    log-probs are used as given, the temperature divides the student's logits; with a row mask."""
    g = gen(case_id)
    t, q = dense_logits(seed=2, scale=3.0)
    teacher = topk_from_dense(t)
    mask = _rng(5).random(N) < 0.8

    def run(teacher, q):
        fn = lambda q: fused_divergence(g, teacher, q, temperature=TAU, mask=mask, chunk_rows=7)
        vals, pullback = jax.vjp(fn, q)
        return vals, pullback(ROW_WEIGHTS)[0]

    def ref(teacher, q):
        fn = lambda q: jnp.where(mask, coarse_divergence(g, teacher, q / TAU), 0.0)
        vals, pullback = jax.vjp(fn, q)
        return vals, pullback(ROW_WEIGHTS)[0]

    vals, gq = run_jit(run, teacher, q)
    rv, rgq = run_jit(ref, teacher, q)
    tail = 1.0 - np.sum(np.exp(np.asarray(teacher.log_probs)), axis=-1)
    assert tail.min() > 1e-3  # the teacher really has a tail here
    assert_close(vals, rv, rtol=2e-5, err_msg="value")
    assert_close(gq, rgq, rtol=2e-5, err_msg="grad q")
    assert np.all(np.asarray(vals)[~mask] == 0.0) and np.all(np.asarray(gq)[~mask] == 0.0)


NO_TAIL_CASES = ["kl", "js", "pearson", "total_variation"]
# float32 log-probs of a tail-free teacher still imply a spurious tail delta = 1 - sum exp(lp) of a
# few 1e-8 (float64 value of the rounded log-probs; about 1e-7 as estimated in float32). That moves
# the tail term q_t f(delta / q_t) by ~|f'(0)| delta for the cases above (|f'(0)| finite, or
# delta log delta ~ 1e-6), but by ~2 sqrt(delta q_t) ~ 1e-3 for squared Hellinger (f'(0) = -inf):
# that case gets an absolute tolerance of 2 sqrt(2**-24 * 4 * (k + 1)) ~ 2.4e-3.
NO_TAIL_ATOL = {"squared_hellinger": 2.0 * math.sqrt(2.0**-24 * 4 * (K + 1))}


@pytest.mark.parametrize("case_id", [*NO_TAIL_CASES, "squared_hellinger"])
def test_topk_without_teacher_tail_equals_dense(case_id):
    """Reference: the dense ``fdiv.divergence(g, t / tau, q / tau)`` and its autodiff gradient.
    A teacher with no mass outside its top-k gives equality for every ``f`` with finite ``f(0)``:
    ``sum_{j not in K} q_j f(0) = q_tail f(0)`` (data-processing equality)."""
    g = gen(case_id)
    t, q = (np.array(a) for a in dense_logits(seed=4))
    r = _rng(6)
    for row in range(N):
        t[row, r.choice(V, size=V - K, replace=False)] = -np.inf
    t, q = jnp.asarray(t), jnp.asarray(q)
    teacher = topk_from_dense(t)
    assert np.all(np.isfinite(np.asarray(teacher.log_probs)))

    def run(teacher, t, q):
        fused = lambda q: fused_divergence(g, teacher, q, temperature=TAU, chunk_rows=7)
        dense = lambda q: fdiv.divergence(g, t / TAU, q / TAU)
        out = []
        for fn in (fused, dense):
            vals, pullback = jax.vjp(fn, q)
            out += [vals, pullback(ROW_WEIGHTS)[0]]
        return out

    vals, gq, rv, rgq = run_jit(run, teacher, t, q)
    if case_id in NO_TAIL_ATOL:
        atol = NO_TAIL_ATOL[case_id]
        np.testing.assert_allclose(vals, rv, rtol=0, atol=atol, err_msg="value")
        np.testing.assert_allclose(gq, rgq, rtol=0, atol=atol * N, err_msg="grad q")
        return
    assert_close(vals, rv, rtol=1e-5, err_msg="value")
    assert_close(gq, rgq, rtol=1e-5, err_msg="grad q")


@pytest.mark.parametrize("case_id", ["reverse_kl", "js", "squared_hellinger"])
def test_topk_data_processing_inequality(case_id):
    """Reference: the dense ``fdiv.divergence(g, t / tau, q / tau)``; coarsening can only lower an
    f-divergence, so the top-k value is <= the dense value per row (and below it in total)."""
    g = gen(case_id)
    t, q = dense_logits(seed=2, scale=3.0)
    teacher = topk_from_dense(t)
    coarse, full = run_jit(
        lambda teacher, t, q: (
            fused_divergence(g, teacher, q, temperature=TAU, chunk_rows=7),
            fdiv.divergence(g, t / TAU, q / TAU),
        ),
        teacher, t, q,
    )  # fmt: skip
    coarse, full = np.asarray(coarse), np.asarray(full)
    assert np.all(coarse <= full * (1 + 1e-6) + 1e-7)
    assert coarse.sum() < full.sum()


# ------------------------------------------------------------------------------------------------
# 4. fused_linear_divergence.
# ------------------------------------------------------------------------------------------------


@functools.cache
def linear_inputs():
    r = _rng(7)
    hidden = jnp.asarray(r.standard_normal((N, H)), jnp.float32)
    weight = jnp.asarray(0.6 * r.standard_normal((V, H)), jnp.float32)
    t_hidden = jnp.asarray(r.standard_normal((N, HT)), jnp.float32)
    t_weight = jnp.asarray(0.8 * r.standard_normal((V, HT)), jnp.float32)
    mask = r.random(N) < 0.7
    return hidden, weight, t_hidden, t_weight, mask


def reference_linear_loss(g, hidden, weight, teacher_kind, teacher, mask, reduction):
    """Masked mean / sum of the unfused divergence on ``hidden @ weight.T`` (plain jnp)."""
    q_scaled = (hidden @ weight.T) / TAU
    if teacher_kind == "topk":
        d = coarse_divergence(g, teacher, q_scaled)
    else:
        t_logits = teacher[0] @ teacher[1].T if teacher_kind == "pair" else teacher
        d = fdiv.divergence(g, t_logits / TAU, q_scaled)
    total = jnp.sum(jnp.where(mask, d, 0.0))
    if reduction == "sum":
        return total
    return total / jnp.maximum(jnp.sum(mask), 1)


def make_teacher(kind):
    _, _, t_hidden, t_weight, _ = linear_inputs()
    if kind == "pair":
        return (t_hidden, t_weight)
    t_logits = t_hidden @ t_weight.T
    return topk_from_dense(t_logits) if kind == "topk" else t_logits


LINEAR_GENS = ["kl", "reverse_kl", "skew_js-beta=0.1"]  # js: in the next test
TEACHER_KINDS = ["dense", "pair", "topk"]
# Each generator and each teacher kind meets both reductions (alternating over the grid).
LINEAR_CASES = [
    (case_id, kind, ("mean", "sum")[(i + j) % 2])
    for i, case_id in enumerate(LINEAR_GENS)
    for j, kind in enumerate(TEACHER_KINDS)
]


@pytest.mark.parametrize("case_id, teacher_kind, reduction", LINEAR_CASES)
def test_linear_matches_autodiff_composition(case_id, teacher_kind, reduction):
    """Reference: jax autodiff (w.r.t. hidden and weight) of the masked mean / sum of
    ``fdiv.divergence(g, teacher_logits / tau, (hidden @ weight.T) / tau)`` (top-k: of the
    coarsened reference); chunk sizes 5 and 8 (neither divides N = 37), with a row mask."""
    g = gen(case_id)
    hidden, weight, _, _, mask = linear_inputs()
    teacher = make_teacher(teacher_kind)
    chunk = 5 if teacher_kind == "pair" else 8

    def run(hidden, weight, teacher):
        fused = lambda h, w: fused_linear_divergence(
            g, h, w, teacher, temperature=TAU, mask=mask, reduction=reduction, chunk_rows=chunk
        )
        ref = lambda h, w: reference_linear_loss(g, h, w, teacher_kind, teacher, mask, reduction)
        return [jax.value_and_grad(fn, argnums=(0, 1))(hidden, weight) for fn in (fused, ref)]

    (val, (dh, dw)), (ref_val, (ref_dh, ref_dw)) = run_jit(run, hidden, weight, teacher)
    assert val.dtype == jnp.float32 and val.shape == ()
    assert_close(val, ref_val, err_msg="value")
    assert_close(dh, ref_dh, rtol=2e-5, scale_atol=2e-5, err_msg="d hidden")
    assert_close(dw, ref_dw, rtol=2e-5, scale_atol=2e-5, err_msg="d weight")
    assert np.all(np.asarray(dh)[~mask] == 0.0)


def test_linear_teacher_gets_no_gradient_and_partial_grads():
    """Reference: the teacher is data, so ``jax.grad`` w.r.t. dense teacher logits and w.r.t. a
    (teacher_hidden, teacher_weight) pair is exactly 0; the gradient w.r.t. ``hidden`` alone and
    ``weight`` alone equal autodiff of the unfused masked-mean composition; ``where`` all False
    gives 0 (``max(count, 1)``), and leading batch dims ``[3, 7, H]`` match the flat reference."""
    hidden, weight, t_hidden, t_weight, mask = linear_inputs()
    t_logits = t_hidden @ t_weight.T
    t_logits = t_hidden @ t_weight.T
    kw = dict(temperature=TAU, mask=mask, chunk_rows=6)
    js = generators.get("js")

    def run(hidden, weight, t_hidden, t_weight, t_logits):
        fused = lambda h, w, t: fused_linear_divergence(js, h, w, t, **kw)
        ref = lambda h, w: reference_linear_loss(js, h, w, "dense", t_logits, mask, "mean")
        pair = lambda th, tw: fused_linear_divergence("kl", hidden, weight, (th, tw), **kw)
        h3, t3 = hidden[:21].reshape(3, 7, H), t_logits[:21].reshape(3, 7, V)
        no_rows = np.zeros(N, bool)
        return {
            "d teacher": jax.grad(fused, 2)(hidden, weight, t_logits),
            "d pair": jax.grad(pair, (0, 1))(t_hidden, t_weight),
            "d hidden": (jax.grad(fused, 0)(hidden, weight, t_logits), jax.grad(ref, 0)(hidden, weight)),
            "d weight": (jax.grad(fused, 1)(hidden, weight, t_logits), jax.grad(ref, 1)(hidden, weight)),
            "no rows": fused_linear_divergence(js, hidden, weight, t_logits, mask=no_rows),
            "batch dims": (
                fused_linear_divergence(js, h3, weight, t3, temperature=TAU, chunk_rows=4),
                reference_linear_loss(
                    js, hidden[:21], weight, "dense", t_logits[:21], np.ones(21, bool), "mean"
                ),
            ),
        }  # fmt: skip

    out = run_jit(run, hidden, weight, t_hidden, t_weight, t_logits)
    assert out["d teacher"].shape == t_logits.shape
    assert np.all(np.asarray(out["d teacher"]) == 0.0)
    assert all(np.all(np.asarray(a) == 0.0) for a in out["d pair"])
    assert_close(*out["d hidden"], rtol=2e-5, scale_atol=2e-5, err_msg="d hidden")
    assert_close(*out["d weight"], rtol=2e-5, scale_atol=2e-5, err_msg="d weight")
    assert float(out["no rows"]) == 0.0
    assert_close(*out["batch dims"], err_msg="leading batch dims")


# ------------------------------------------------------------------------------------------------
# 6. jit, vmap, forward mode; top-k log-probs are not differentiable.
# ------------------------------------------------------------------------------------------------


def test_eager_and_jit_agree_with_reference():
    """Reference: ``fdiv.divergence(g, p / tau, q / tau)``; both eager and ``jax.jit`` calls."""
    p, q = dense_logits()
    want = fdiv.divergence("kl", p / TAU, q / TAU)
    eager = fused_divergence("kl", p, q, temperature=TAU, chunk_rows=9)
    jitted = jax.jit(lambda p, q: fused_divergence("kl", p, q, temperature=TAU, chunk_rows=9))
    assert_close(eager, want)
    assert_close(jitted(p, q), want)


def test_vmap_over_leading_axis():
    """Reference: ``fdiv.divergence`` on the stacked ``[3, N, V]`` logits with the row mask
    applied by hand, and its autodiff gradient w.r.t. the student; dense teacher (with a per-batch
    row mask) and top-k teacher (against the coarsened reference)."""
    r = _rng(8)
    p = jnp.asarray(2 * r.standard_normal((3, N, V)), jnp.float32)
    q = jnp.asarray(2 * r.standard_normal((3, N, V)), jnp.float32)
    mask = jnp.asarray(r.random((3, N)) < 0.8)
    teacher = topk_from_dense(p)
    kl = generators.get("kl")

    def run(p, q, mask, teacher):
        fused = lambda p, q, m: fused_divergence("js", p, q, temperature=TAU, mask=m, chunk_rows=7)
        loss = lambda p, q, m: jnp.sum(ROW_WEIGHTS * fused(p, q, m))
        ref = lambda q: jnp.where(mask, fdiv.divergence("js", p / TAU, q / TAU), 0.0)
        topk = lambda t, q: fused_divergence(kl, t, q, temperature=TAU, chunk_rows=7)
        return (
            (jax.vmap(fused)(p, q, mask), ref(q)),
            (jax.vmap(jax.grad(loss, 1))(p, q, mask), jax.grad(lambda q: jnp.sum(ROW_WEIGHTS * ref(q)))(q)),
            (jax.vmap(topk)(teacher, q), coarse_divergence(kl, teacher, q / TAU)),
        )  # fmt: skip

    outputs = run_jit(run, p, q, mask, teacher)
    for label, (got, want) in zip(("values", "grad q", "top-k"), outputs, strict=True):
        assert_close(got, want, err_msg=label)


def test_forward_mode_jvp():
    """Reference: ``jax.jvp`` of ``fdiv.divergence(g, p / tau, q / tau)`` (tangents in both logits
    and in the student only) and of the coarsened top-k reference."""
    p, q = dense_logits()
    r = _rng(9)
    tp = jnp.asarray(r.standard_normal((N, V)), jnp.float32)
    tq = jnp.asarray(r.standard_normal((N, V)), jnp.float32)
    teacher = topk_from_dense(p)
    hel = generators.get("squared_hellinger")

    def run(p, q, tp, tq, teacher):
        fused = lambda p, q: fused_divergence("reverse_kl", p, q, temperature=TAU, chunk_rows=7)
        ref = lambda p, q: fdiv.divergence("reverse_kl", p / TAU, q / TAU)
        topk = lambda q: fused_divergence(hel, teacher, q, temperature=TAU, chunk_rows=7)
        topk_ref = lambda q: coarse_divergence(hel, teacher, q / TAU)
        return {
            "both": (jax.jvp(fused, (p, q), (tp, tq)), jax.jvp(ref, (p, q), (tp, tq))),
            "q only": (
                jax.jvp(lambda q: fused(p, q), (q,), (tq,)),
                jax.jvp(lambda q: ref(p, q), (q,), (tq,)),
            ),
            "top-k": (jax.jvp(topk, (q,), (tq,)), jax.jvp(topk_ref, (q,), (tq,))),
        }

    for label, ((val, tan), (ref_val, ref_tan)) in run_jit(run, p, q, tp, tq, teacher).items():
        assert_close(val, ref_val, rtol=2e-5, err_msg=f"{label} value")
        assert_close(tan, ref_tan, rtol=2e-5, err_msg=f"{label} tangent")


def test_grad_wrt_topk_log_probs_raises():
    """Reference: the documented contract: TopKTeacher.log_probs are data -> ValueError."""
    p, q = dense_logits()
    teacher = topk_from_dense(p)
    fn = lambda lp: jnp.sum(fused_divergence("kl", TopKTeacher(teacher.indices, lp), q))
    with pytest.raises(ValueError, match="log_probs"):
        jax.grad(fn)(teacher.log_probs)


# ------------------------------------------------------------------------------------------------
# 7. Errors.
# ------------------------------------------------------------------------------------------------


def _error_inputs():
    p, q = dense_logits()
    hidden, weight, _, _, _ = linear_inputs()
    return p, q, hidden, weight


ERROR_CASES = {
    "temperature=0": lambda p, q, h, w: fused_divergence("kl", p, q, temperature=0.0),
    "temperature<0": lambda p, q, h, w: fused_divergence("kl", p, q, temperature=-1.0),
    "chunk_rows<0": lambda p, q, h, w: fused_divergence("kl", p, q, chunk_rows=-3),
    # fails: 0 is falsy, `chunk_rows or default_chunk_rows(V)` silently uses the default
    "chunk_rows=0": lambda p, q, h, w: fused_divergence("kl", p, q, chunk_rows=0),
    "vocab mismatch": lambda p, q, h, w: fused_divergence("kl", p[:, :-1], q),
    "rows mismatch": lambda p, q, h, w: fused_divergence("kl", p[:-1], q),
    "topk rows mismatch": lambda p, q, h, w: fused_divergence(
        "kl", TopKTeacher(jnp.zeros((N - 1, K), jnp.int32), jnp.zeros((N - 1, K))), q
    ),
    "unknown name": lambda p, q, h, w: fused_divergence("no_such_divergence", p, q),
    "linear weight H": lambda p, q, h, w: fused_linear_divergence("kl", h, w[:, :-1], p),
    "linear weight 1-D": lambda p, q, h, w: fused_linear_divergence("kl", h, w[0], p),
    "linear reduction": lambda p, q, h, w: fused_linear_divergence("kl", h, w, p, reduction="max"),
    "linear temperature": lambda p, q, h, w: fused_linear_divergence("kl", h, w, p, temperature=0),
    "linear chunk_rows<0": lambda p, q, h, w: fused_linear_divergence("kl", h, w, p, chunk_rows=-1),
    # fails like "chunk_rows=0" above
    "linear chunk_rows=0": lambda p, q, h, w: fused_linear_divergence("kl", h, w, p, chunk_rows=0),
    "linear teacher V": lambda p, q, h, w: fused_linear_divergence("kl", h, w, p[:, :-1]),
    "linear teacher pair V": lambda p, q, h, w: fused_linear_divergence(
        "kl", h, w, (h, jnp.zeros((V - 1, H)))
    ),
    "linear unknown name": lambda p, q, h, w: fused_linear_divergence("no_such", h, w, p),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors(case):
    """Reference: the documented argument contract (each violation raises ValueError)."""
    with pytest.raises(ValueError):
        ERROR_CASES[case](*_error_inputs())


# ------------------------------------------------------------------------------------------------
# 8. Memory: XLA's temporary buffer size (a compile-time quantity, not a timing).
# ------------------------------------------------------------------------------------------------


def _plain_js(p, q):
    """JS by plain autodiff composition: log_softmax, logaddexp mixture."""
    lp = jax.nn.log_softmax(p, axis=-1)
    lq = jax.nn.log_softmax(q, axis=-1)
    lm = jnp.logaddexp(lp, lq) - math.log(2.0)
    return 0.5 * jnp.sum(jnp.exp(lp) * (lp - lm) + jnp.exp(lq) * (lq - lm), axis=-1)


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_temp_buffers():
    """Reference: XLA's ``memory_analysis().temp_size_in_bytes`` (compile-time, not a timing) of the
    jitted value-and-grad w.r.t. q at V=4096 float32, JS, chunk_rows=16:

    - fused: no temporary grows with N (same temp at N=256 and N=1024: the only [N, V] array
      is the gradient, an output), the temp is a few [chunk, V] buffers (<= 11, i.e. 69% of one
      input at N=256; 10 since the log-ratio is refined from the logits, 7.5 before), and below
      10% of one input at chunk_rows=2;
    - the plain autodiff composition (log_softmax, logaddexp mixture; checked against
      ``fdiv.divergence``) needs more than one whole input of temporaries.
    """
    v, chunk = 4096, 16
    r = _rng(10)
    fused = lambda c: (
        lambda p, q: jax.value_and_grad(
            lambda q: jnp.sum(fused_divergence("js", p, q, chunk_rows=c))
        )(q)
    )
    plain = lambda p, q: jax.value_and_grad(lambda q: jnp.sum(_plain_js(p, q)))(q)
    temps = {}
    for n in (256, 1024):
        p = jnp.asarray(r.standard_normal((n, v)), jnp.float32)
        q = jnp.asarray(r.standard_normal((n, v)), jnp.float32)
        temps[n] = _temp_bytes(fused(chunk), p, q)
    one_input = 256 * v * 4
    chunk_buffer = chunk * v * 4
    assert abs(temps[1024] - temps[256]) <= 0.01 * temps[256], temps
    assert temps[256] <= 11 * chunk_buffer, (temps[256], chunk_buffer)
    p, q = p[:256], q[:256]
    small_chunk = _temp_bytes(fused(2), p, q)
    assert small_chunk < 0.10 * one_input, (small_chunk, one_input)
    plain_temp = _temp_bytes(plain, p, q)
    assert plain_temp > 1.00 * one_input, (plain_temp, one_input)
    assert_close(_plain_js(p[:4], q[:4]), fdiv.divergence("js", p[:4], q[:4]))
