r"""Fused, chunked f-divergences for large vocabularies: every generator, no [N, V] intermediates.

Distilling or aligning language models needs ``D_f`` between teacher and student next-token
distributions over ``[N tokens, V classes]`` with ``V`` in the tens or hundreds of thousands. An
autodiffed composition keeps several ``[N, V]`` float32 intermediates alive for the backward pass
(softmaxes, the mixture, their cotangents). Here one loop over chunks of rows computes, per chunk,
the log-softmaxes, the value and the closed-form logit gradient (the same per-class rule as
:func:`fdiv.divergence`), and writes the gradient straight into its output buffer: the only
``[N, V]`` array beyond the inputs is the gradient itself.

- :func:`fused_divergence`: ``D_f(P || Q)`` per row from two logit arrays.
- :func:`fused_linear_divergence`: the student's logits ``hidden @ weight.T`` are formed chunk by
  chunk and never exist in full; returns the (masked) mean or sum over rows, with gradients for
  ``hidden`` and ``weight``.
- :class:`TopKTeacher`: a teacher given only as its top-k log-probabilities (what distillation
  pipelines store); the remaining mass is one tail bucket.

Both are ``custom_jvp`` functions with symbolic zeros: a gradient is computed only for the inputs
being differentiated (usually just the student), and forward mode works. Chunks are taken with
``dynamic_slice`` at clamped offsets (the last chunk overlaps the one before it) so ``N`` need not
be divisible by the chunk size and inputs are never padded or copied.

A row chunk is processed whole: XLA keeps each ``[chunk, V]`` intermediate in memory, so no row is
ever "too long to fit" and an online log-sum-exp over vocabulary blocks (which matters for a GPU
kernel's on-chip memory) buys nothing here.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import generators as gen
from fdiv._core import (
    _chunk_loop,
    _dense_chunk,
    _is_zero,
    _put_rows,
    _rows,
    default_chunk_rows,
    divergence_terms,
    fused_dense,
    hyperparameter_tangent,
    merge_config,
    split_config,
)

__all__ = [
    "TopKTeacher",
    "default_chunk_rows",
    "fused_divergence",
    "fused_linear_divergence",
    "linear_chunk_rows",
]


class TopKTeacher(NamedTuple):
    """A teacher distribution known only on its top-k classes.

    Attributes:
      indices: ``[..., k]`` integer class indices (distinct within a row).
      log_probs: ``[..., k]`` the teacher's *normalised* log-probabilities of those classes
        (``sum exp <= 1``); the rest, ``1 - sum exp(log_probs)``, is the tail.

    The divergence is then taken between the ``k + 1``-bucket coarsenings of teacher and student
    (top-k classes + one tail bucket holding ``1 - sum`` of each). By the data-processing inequality
    this is a lower bound on ``D_f`` for every ``f``; it equals ``D_f`` exactly when the teacher's
    tail is proportional to the student's (in particular when the teacher has no tail).

    ``temperature`` applies to the student's logits only: a top-k teacher is already a
    distribution, so build it from ``log_softmax(teacher_logits / tau)``.
    """

    indices: jax.Array
    log_probs: jax.Array


def _log_tail(log_mass_topk):
    """``log(1 - sum exp(l))`` over the last axis, ``-inf`` when the top-k hold all the mass."""
    lse = jax.nn.logsumexp(log_mass_topk, axis=-1)
    return jnp.log(-jnp.expm1(jnp.minimum(lse, 0.0)))


# ------------------------------------------------------------------------------------------------
# One chunk: values and logit gradients.
# ------------------------------------------------------------------------------------------------


def _topk_chunk(g, indices, log_probs, q_chunk, inv_tau, need_q):
    """Values and student-logit gradients against a top-k teacher (``k + 1`` buckets)."""
    lq, q = nx.log_softmax_and_softmax(q_chunk * inv_tau)
    lq_k = jnp.take_along_axis(lq, indices, axis=-1)
    lp_b = jnp.concatenate([log_probs, _log_tail(log_probs)[:, None]], axis=-1)
    lq_tail = _log_tail(lq_k)
    lq_b = jnp.concatenate([lq_k, lq_tail[:, None]], axis=-1)
    term, _, dq = divergence_terms(g, lp_b, lq_b)
    value = jnp.sum(jnp.maximum(term, 0.0), axis=-1)
    if not need_q:
        return value, None
    # d D / d x_j = q_j (a_b(j) - sum_b dq_b), a_b = dq_b / q_b; b(j) the bucket of class j.
    total = jnp.sum(dq, axis=-1, keepdims=True)
    tail_share = jnp.where(lq_tail[:, None] == -jnp.inf, 0.0, jnp.exp(lq - lq_tail[:, None]))
    grad = nx.mul0(tail_share, dq[:, -1:]) - q * total
    top = dq[:, :-1] - jnp.take_along_axis(q, indices, axis=-1) * total
    rows = jnp.arange(q.shape[0])[:, None]
    grad = grad.at[rows, indices].set(top)
    return value, grad * inv_tau


# ------------------------------------------------------------------------------------------------
# fused_divergence
# ------------------------------------------------------------------------------------------------


# jit with static configuration: eager callers hit a compile cache instead of re-tracing the
# loop and its conds on every call.
@functools.partial(jax.jit, static_argnums=(0, 1, 7))
def _topk_forward(static, chunk, indices, log_probs, q, row_mask, dynamic, need_q):
    g, inv_tau = merge_config(static, dynamic)
    n, _ = q.shape
    chunk = min(chunk, n)
    init = (jnp.zeros((n,), jnp.float32), jnp.zeros(q.shape, q.dtype) if need_q else None)

    def body(start, _, carry):
        values, grad_q = carry
        mask = _rows(row_mask, start, chunk)
        v, gq = _topk_chunk(
            g,
            _rows(indices, start, chunk),
            _rows(log_probs, start, chunk).astype(jnp.float32),
            _rows(q, start, chunk).astype(jnp.float32),
            inv_tau,
            need_q,
        )
        values = _put_rows(values, jnp.where(mask, v, 0.0), start)
        if need_q:
            grad_q = _put_rows(grad_q, jnp.where(mask[:, None], gq, 0.0), start)
        return values, grad_q

    return _chunk_loop(n, chunk, body, init)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _fused_topk(static, chunk, indices, log_probs, q, row_mask, dynamic):
    return _topk_forward(static, chunk, indices, log_probs, q, row_mask, dynamic, False)[0]


def _fused_topk_jvp(static, chunk, primals, tangents):
    indices, log_probs, q, row_mask, dynamic = primals
    _, t_log_probs, tq, _, t_dynamic = tangents
    if not _is_zero(t_log_probs):
        raise ValueError(
            "fused_divergence: a TopKTeacher's log_probs are data, not differentiable; "
            "wrap them in jax.lax.stop_gradient or pass dense teacher logits"
        )
    need_q = not _is_zero(tq)
    values, grad_q = _topk_forward(static, chunk, indices, log_probs, q, row_mask, dynamic, need_q)
    tangent = jnp.zeros_like(values)
    if need_q:
        tangent = jnp.sum(grad_q.astype(jnp.float32) * tq.astype(jnp.float32), axis=-1)
    t_hyper = hyperparameter_tangent(
        lambda d: _topk_forward(static, chunk, indices, log_probs, q, row_mask, d, False)[0],
        dynamic,
        t_dynamic,
    )
    return values, tangent if t_hyper is None else tangent + t_hyper


_fused_topk.defjvp(_fused_topk_jvp, symbolic_zeros=True)


def _check_temperature(temperature):
    """``1 / tau``; a Python ``tau`` is checked, a traced one (e.g. an annealing schedule) is not."""
    return 1.0 / nx.check_hyperparameter("temperature", temperature, lambda t: t > 0, "> 0")


def _row_mask(where, shape):
    """The boolean row mask ``mask=`` of the fused functions, broadcast to ``shape``."""
    if where is None:
        return jnp.ones(shape, bool)
    where = jnp.asarray(where, bool)
    try:
        return jnp.broadcast_to(where, shape)
    except ValueError as err:
        raise ValueError(f"mask must broadcast to the rows {shape}, got {where.shape}") from err


def fused_divergence(
    divergence: str | gen.Generator,
    p_logits: ArrayLike | TopKTeacher,
    q_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    mask: ArrayLike | None = None,
    chunk_rows: int | None = None,
) -> jax.Array:
    r"""``D_f(P || Q)`` per row, ``P = softmax(p / tau)``, ``Q = softmax(q / tau)``, chunked and fused.

    Equals ``fdiv.divergence(g, p / tau, q / tau)`` (same per-class rule: exact zero classes,
    every generator) while holding only ``O(chunk_rows * V)`` intermediates; under ``jax.grad`` the
    only ``[N, V]`` array it adds is the gradient of each differentiated input. bfloat16 / float16
    logits are computed in float32 and their gradients returned in the input dtype.

    Args:
      divergence: generator name (``"kl"``, ``"js"``, ``"skew_js"`` ...) or object; the
        generalised JSD of TRL / Liger is ``fdiv.generators.get("skew_js", beta=b)``.
      p_logits: teacher logits ``[..., V]``, or a :class:`TopKTeacher` (``[..., k]``).
      q_logits: student logits ``[..., V]``.
      temperature: ``tau > 0``; logits are divided by it (no ``tau^2`` factor: that is the caller's).
      mask: optional boolean ``[...]`` row mask (ignored tokens get value and gradient 0).
      chunk_rows: rows per chunk (default: :func:`default_chunk_rows`).

    Returns:
      ``[...]`` per-row divergences (float32 for low-precision inputs).
    """
    g = gen.resolve(divergence)
    inv_tau = _check_temperature(temperature)
    q = jnp.asarray(q_logits)
    if q.ndim < 1:
        raise ValueError("fused_divergence: q_logits need a class axis")
    nx.check_logits("fused_divergence", q)
    if not isinstance(p_logits, TopKTeacher):
        nx.check_logits("fused_divergence", jnp.asarray(p_logits))
    batch, vocab = q.shape[:-1], q.shape[-1]
    chunk = default_chunk_rows(vocab) if chunk_rows is None else int(chunk_rows)
    if chunk < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    mask = _row_mask(mask, batch).reshape(-1)
    q2 = q.reshape(-1, vocab)
    if q2.shape[0] == 0:
        return jnp.zeros(batch, jnp.float32)
    if isinstance(p_logits, TopKTeacher):
        idx = jnp.asarray(p_logits.indices)
        lp = jnp.asarray(p_logits.log_probs)
        if idx.shape != lp.shape or idx.shape[:-1] != batch:
            raise ValueError(
                f"TopKTeacher indices {idx.shape} and log_probs {lp.shape} must both be "
                f"[..., k] with the rows {batch} of q_logits"
            )
        k = idx.shape[-1]
        static, dynamic = split_config(g, inv_tau)
        values = _fused_topk(
            static,
            chunk,
            idx.reshape(-1, k).astype(jnp.int32),
            lp.reshape(-1, k),
            q2,
            mask,
            dynamic,
        )
    else:
        p = jnp.asarray(p_logits)
        if p.shape != q.shape:
            raise ValueError(f"p_logits {p.shape} and q_logits {q.shape} must have one shape")
        values = fused_dense(g, chunk, inv_tau, p.reshape(-1, vocab), q2, mask)
    return values.reshape(batch)


# ------------------------------------------------------------------------------------------------
# fused_linear_divergence
# ------------------------------------------------------------------------------------------------


def _teacher_chunk(teacher, start, chunk):
    """The teacher's rows ``[start, start + chunk)`` as float32 logits or a top-k pair."""
    if isinstance(teacher, TopKTeacher):
        return TopKTeacher(
            _rows(teacher.indices, start, chunk),
            _rows(teacher.log_probs, start, chunk).astype(jnp.float32),
        )
    if isinstance(teacher, tuple):  # (teacher_hidden [N, Ht], teacher_weight [V, Ht])
        hidden_t, weight_t = teacher
        return jnp.dot(
            _rows(hidden_t, start, chunk), weight_t.T, preferred_element_type=jnp.float32
        )
    return _rows(teacher, start, chunk).astype(jnp.float32)


# jit with static configuration: eager callers hit a compile cache instead of re-tracing the
# loop and its conds on every call.
@functools.partial(jax.jit, static_argnums=(0, 1, 7, 8))
def _linear_forward(static, chunk, hidden, weight, teacher, row_mask, dynamic, need_h, need_w):
    g, inv_tau = merge_config(static, dynamic)
    n, h_dim = hidden.shape
    chunk = min(chunk, n)
    init = (
        jnp.zeros((), jnp.float32),
        jnp.zeros(hidden.shape, hidden.dtype) if need_h else None,
        jnp.zeros(weight.shape, jnp.float32) if need_w else None,
    )
    need = need_h or need_w

    def body(start, is_new, carry):
        total, grad_h, grad_w = carry
        h = _rows(hidden, start, chunk)
        logits = jnp.dot(h, weight.T, preferred_element_type=jnp.float32)
        t = _teacher_chunk(teacher, start, chunk)
        if isinstance(t, TopKTeacher):
            v, gq = _topk_chunk(g, t.indices, t.log_probs, logits, inv_tau, need)
        else:
            v, _, gq = _dense_chunk(g, t, logits, inv_tau, False, need)
        mask = _rows(row_mask, start, chunk)
        total = total + jnp.sum(jnp.where(mask & is_new, v, 0.0))
        if need:
            gq = jnp.where(mask[:, None], gq, 0.0)
        if need_h:
            gh = jnp.dot(gq, weight.astype(jnp.float32), preferred_element_type=jnp.float32)
            grad_h = _put_rows(grad_h, gh, start)
        if need_w:
            fresh = jnp.where(is_new[:, None], gq, 0.0)  # overlapping rows were counted already
            grad_w = grad_w + jnp.dot(
                fresh.T, h.astype(jnp.float32), preferred_element_type=jnp.float32
            )
        return total, grad_h, grad_w

    return _chunk_loop(n, chunk, body, init)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _fused_linear(static, chunk, scale, hidden, weight, teacher, row_mask, dynamic):
    args = (hidden, weight, teacher, row_mask, dynamic, False, False)
    return _linear_forward(static, chunk, *args)[0] * scale(row_mask)


def _fused_linear_jvp(static, chunk, scale, primals, tangents):
    hidden, weight, teacher, row_mask, dynamic = primals
    th, tw, _, _, t_dynamic = tangents  # the teacher is data: its tangent is ignored (documented)
    need_h, need_w = not _is_zero(th), not _is_zero(tw)
    total, grad_h, grad_w = _linear_forward(
        static, chunk, hidden, weight, teacher, row_mask, dynamic, need_h, need_w
    )
    s = scale(row_mask)
    tangent = jnp.zeros((), jnp.float32)
    if need_h:
        tangent = tangent + jnp.vdot(grad_h.astype(jnp.float32), th.astype(jnp.float32))
    if need_w:
        tangent = tangent + jnp.vdot(grad_w, tw.astype(jnp.float32))
    t_hyper = hyperparameter_tangent(
        lambda d: _linear_forward(
            static, chunk, hidden, weight, teacher, row_mask, d, False, False
        )[0],
        dynamic,
        t_dynamic,
    )
    if t_hyper is not None:
        tangent = tangent + t_hyper
    return total * s, tangent * s


_fused_linear.defjvp(_fused_linear_jvp, symbolic_zeros=True)


def _mean_scale(row_mask):
    return 1.0 / jnp.maximum(jnp.sum(row_mask.astype(jnp.float32)), 1.0)


def _sum_scale(row_mask):
    return jnp.ones((), jnp.float32)


# Each chunk of fused_linear_divergence also adds its [V, H] weight-gradient contribution, a pass
# over V x H floats whatever the chunk's size: at default_chunk_rows' 2 MiB chunks (16 rows at
# V = 32k) those passes doubled the step's time. 128 rows amortise them: one KD step at N = 2048,
# H = 256, V = 32k took 2.29 s vs 2.22 s with materialised logits and 4.57 s at 16 rows, with 148
# MiB of XLA temporaries vs 1,282 MiB (benchmarks/lm_kd_step.py).
LINEAR_MIN_CHUNK_ROWS = 128


def linear_chunk_rows(vocab: int) -> int:
    """:func:`fused_linear_divergence`'s default rows per chunk: ``default_chunk_rows(vocab)``,
    at least ``LINEAR_MIN_CHUNK_ROWS`` (128)."""
    return max(default_chunk_rows(vocab), LINEAR_MIN_CHUNK_ROWS)


def fused_linear_divergence(
    divergence: str | gen.Generator,
    hidden: ArrayLike,
    weight: ArrayLike,
    teacher: ArrayLike | TopKTeacher | tuple[ArrayLike, ArrayLike],
    *,
    temperature: float = 1.0,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> jax.Array:
    r"""``D_f(P || Q)`` with the student's projection fused: ``Q = softmax(hidden @ weight.T / tau)``.

    The student logits ``[N, V]`` are formed one row chunk at a time (float32 accumulation) and
    never exist in full; under ``jax.grad`` the gradients for ``hidden`` and ``weight`` are
    accumulated in the same pass (``dL/dh = G W``, ``dL/dW = sum_chunks G^T h`` with ``G`` a chunk
    of logit gradients). The teacher is data: it receives no gradient (as in distillation).

    Args:
      divergence: generator name or object.
      hidden: ``[..., H]`` student hidden states.
      weight: ``[V, H]`` the student's output projection (``logits = hidden @ weight.T``).
      teacher: ``[..., V]`` teacher logits, a :class:`TopKTeacher`, or a pair
        ``(teacher_hidden [..., Ht], teacher_weight [V, Ht])`` whose logits are also formed per chunk.
      temperature: ``tau > 0`` dividing both logits.
      mask: optional boolean ``[...]`` row mask (e.g. padding / prompt tokens excluded).
      reduction: ``"mean"`` over unmasked rows, or ``"sum"``.
      chunk_rows: rows per chunk (default: :func:`linear_chunk_rows`, at least 128 rows: each chunk
        also passes over the whole weight gradient).

    Returns:
      A float32 scalar.
    """
    g = gen.resolve(divergence)
    inv_tau = _check_temperature(temperature)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    hidden = jnp.asarray(hidden)
    weight = jnp.asarray(weight)
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be [V, H] with H = hidden.shape[-1]; got {weight.shape}, hidden {hidden.shape}"
        )
    batch, vocab = hidden.shape[:-1], weight.shape[0]
    chunk = linear_chunk_rows(vocab) if chunk_rows is None else int(chunk_rows)
    if chunk < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    h2 = hidden.reshape(-1, hidden.shape[-1])
    if isinstance(teacher, TopKTeacher):
        k = teacher.indices.shape[-1]
        t2 = TopKTeacher(
            jnp.asarray(teacher.indices).reshape(-1, k).astype(jnp.int32),
            jax.lax.stop_gradient(jnp.asarray(teacher.log_probs)).reshape(-1, k),
        )
    elif isinstance(teacher, tuple):
        t_hidden, t_weight = (jax.lax.stop_gradient(jnp.asarray(a)) for a in teacher)
        if t_weight.shape[0] != vocab:
            raise ValueError(f"teacher_weight must have V = {vocab} rows, got {t_weight.shape}")
        t2 = (t_hidden.reshape(-1, t_hidden.shape[-1]), t_weight)
    else:
        t = jax.lax.stop_gradient(jnp.asarray(teacher))
        if t.shape != (*batch, vocab):
            raise ValueError(f"teacher logits must be {(*batch, vocab)}, got {t.shape}")
        t2 = t.reshape(-1, vocab)
    mask = _row_mask(mask, batch).reshape(-1)
    if h2.shape[0] == 0:
        return jnp.zeros((), jnp.float32)
    scale = _mean_scale if reduction == "mean" else _sum_scale
    static, dynamic = split_config(g, inv_tau)
    return _fused_linear(static, chunk, scale, h2, weight, t2, mask, dynamic)
