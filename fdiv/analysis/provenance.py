r"""Provenance tracing of reasoning distillation: which model each sentence of a student came from.

K. Liu, S. Yan, R. Miao, B. Wang, C. Shen, J. Zhang & J. Ye, "Where Did This Sentence Come From?
Tracing Provenance in LLM Reasoning Distillation" (arXiv 2512.20908, Dec 2025; ICLR 2026). A
trajectory sampled from the distilled model ``M_D`` is cut into *actions* (sentences); each action
is scored, in its own context, by the teacher ``M_T``, the original student ``M_S`` and ``M_D``,
and the three probabilities say where the action came from. The paper then moves the signal
before training: among candidate teacher responses, keep those with the most teacher actions.

Reconstruction. The paper's full text could not be read here (only its abstract); the rules below
follow a detailed third-party note of the paper and are stated as our reading, every choice
named. The paper's code is not public.

**Action probability.** The tokens ``k`` of action ``a`` with log-probabilities ``log p_k``
(teacher forcing on the distilled model's trajectory, each model under the same context)::

    p_a = exp(mean_{k in a} log p_k)      (normalize="mean": the paper's geometric mean)
    p_a = exp(sum_{k in a} log p_k)       (normalize="sum": the joint probability; ours, optional)

The geometric mean makes the three models comparable across tokenizers and sentence lengths.
A token of probability 0 (log-prob ``-inf``) makes ``p_a = 0`` exactly (no epsilon anywhere).

**Four-way rule** (test time, ``M_D`` known; :data:`CATEGORIES`). With ``D_TS = p_T - p_S``,
``D_TD = p_T - p_D``, ``D_SD = p_S - p_D`` and thresholds ``0 <= alpha, beta <= 1`` on the
probability scale, the first that holds::

    shared   |D_TS| <= alpha  and  |D_TD| <= alpha  and  |D_SD| <= alpha
    teacher  D_TS > beta                   (the teacher favours it: transferred by distillation)
    student  D_TS < -beta                  (the original student favours it)
    boosted  otherwise, i.e. |D_TS| <= beta (T and S about equal, D apart: amplified by training)

Choices: (i) the note writes boosted as ``|D_TS| < beta``, which gives ``|D_TS| = beta`` no class;
we make boosted the remainder, so every action has exactly one category. (ii) The note explains boosted
as ``p_D`` well above both, but its rule does not test the sign of ``p_D - max(p_T, p_S)``; we
keep the rule: an action distillation made *less* likely, on which teacher and student agree, is
boosted too (compare ``p_D`` yourself to split those off).
(iii) ``alpha = 0.05`` is our default (the paper's value was not recovered); ``beta = 0.1`` is the
value the note reports as the paper's best (0.05 and 0.15 close).

**Three-way rule** (before training, no ``M_D``; :data:`THREE_WAY_CATEGORIES`)::

    common   |D_TS| <= beta     teacher  D_TS > beta     student  D_TS < -beta

with the same integer codes: ``common`` is code 0 (that of ``shared``), teacher 1, student 2.

**Teacher-guided data selection.** The paper's criterion: score each candidate training response
by the *number* of its teacher actions under the three-way rule (the note reports the count
beating the proportion and the length) and keep, per problem, the best candidate:
``provenance_summary(...).counts[:, TEACHER]`` and :func:`select_per_group`. Ours, beside it, for
a shared vocabulary: :func:`selection_scores`, the token-level f-divergence
``D_f(P_T(. | x_<t) || P_S(. | x_<t))`` between the teacher's and the student's next-token
distributions along a response (any catalog generator: forward KL by default, the direction
``fdiv.divergence`` takes ``(target, model)``), per token or averaged per sequence; and
:func:`select_top` for a budget. These read "teacher-student divergence on the training data"
as a distribution divergence; the paper's own score is the sentence-level count above.

**Missing actions.** An action log-probability that is NaN (an action with no token in
:func:`action_log_probs`, or padding) gets category ``-1`` (:data:`MISSING`) from
:func:`classify_actions`, and :func:`provenance_summary` skips category ``-1`` and sequence id
``-1``.

:func:`token_log_probs`, :func:`action_log_probs`, :func:`classify_actions`,
:func:`provenance_summary` and :func:`selection_scores` are pure, jit-able jnp functions of their
arrays (counts and keyword options static); values are checked where concrete (traced ones pass
unchecked). :func:`select_top` and :func:`select_per_group` are host-side numpy (their output
length depends on the data). float64 inputs compute in float64 (with ``jax_enable_x64``),
(b)float16 in float32.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import generators as gen
from fdiv.divergences import divergence as _divergence

__all__ = [
    "BOOSTED",
    "CATEGORIES",
    "COMMON",
    "MISSING",
    "SHARED",
    "STUDENT",
    "TEACHER",
    "THREE_WAY_CATEGORIES",
    "Provenance",
    "action_log_probs",
    "classify_actions",
    "provenance_summary",
    "select_per_group",
    "select_top",
    "selection_scores",
    "token_log_probs",
]

CATEGORIES = ("shared", "teacher", "student", "boosted")  # the four-way rule's codes 0..3
THREE_WAY_CATEGORIES = ("common", "teacher", "student")  # the three-way rule's codes 0..2
SHARED, TEACHER, STUDENT, BOOSTED = 0, 1, 2, 3
COMMON = 0
MISSING = -1
_RULES = ("four_way", "three_way")
_NORMALIZE = ("mean", "sum")
_REDUCE = ("token", "sequence")


def _ints(x: ArrayLike, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {x.dtype}")
    return x


def _in_range(x: jax.Array, name: str, high: int) -> None:
    """Concrete ``x`` in ``[-1, high)`` (-1: padding / missing)."""
    if nx.is_concrete(x) and x.size:
        x_np = np.asarray(x)
        if x_np.min() < -1 or x_np.max() >= high:
            raise ValueError(f"{name} must lie in [-1, {high}) (-1 for padding), got values in [{x_np.min()}, {x_np.max()}]")  # fmt: skip


def _same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {a.shape} and {name_b} {b.shape} must have the same shape")


def _log_probs(x: ArrayLike, name: str, where: ArrayLike | None = None) -> jax.Array:
    """Real log-probabilities: concrete values must be ``<= 0`` (``-inf`` allowed; NaN only where
    ``where`` is False, or anywhere when ``where`` is None: NaN marks a missing value)."""
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x) or not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):  # fmt: skip
        raise ValueError(f"{name} must be real log-probabilities, got dtype {x.dtype}")
    if nx.is_concrete(x) and (where is None or nx.is_concrete(where)):
        x_np = np.asarray(x, np.float64)
        if where is not None:
            x_np = x_np[np.asarray(where)]
            if np.isnan(x_np).any():
                raise ValueError(f"{name} is NaN at a token that is not padding")
        if (x_np > 0).any():
            raise ValueError(f"{name} must be log-probabilities (<= 0; -inf for probability 0), got a maximum of {np.nanmax(x_np)}")  # fmt: skip
    return x


def _threshold(name: str, value):
    return nx.check_hyperparameter(name, value, lambda v: 0.0 <= v <= 1.0, "in [0, 1] (a probability difference)")  # fmt: skip


def token_log_probs(logits: ArrayLike, tokens: ArrayLike) -> jax.Array:
    """``log softmax(logits)[tokens]``: each realised token's log-probability under a model.

    ``logits`` ``[..., T, V]`` (the model's next-token logits at each position, teacher-forced on
    the trajectory), ``tokens`` ``[..., T]`` integers in ``[0, V)`` -> ``[..., T]``. A ``-inf``
    logit gives exactly ``-inf``; a row of all ``-inf`` logits gives NaN (as
    ``jax.nn.log_softmax``)."""
    logits, tokens = jnp.asarray(logits), _ints(tokens, "tokens")
    nx.check_logits("token_log_probs", logits)
    if logits.ndim < 1 or logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits must be [..., T, V] and tokens [..., T]; got {logits.shape} and {tokens.shape}")  # fmt: skip
    if nx.is_concrete(tokens) and tokens.size:
        t = np.asarray(tokens)
        if t.min() < 0 or t.max() >= logits.shape[-1]:
            raise ValueError(f"tokens must lie in [0, {logits.shape[-1]}), got values in [{t.min()}, {t.max()}]")  # fmt: skip
    return _token_log_probs(logits.astype(nx.compute_dtype(logits)), tokens)


@jax.jit
def _token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0]


def action_log_probs(
    token_log_probs: ArrayLike,
    segment_ids: ArrayLike,
    num_segments: int,
    *,
    normalize: str = "mean",
    mask: ArrayLike | None = None,
) -> jax.Array:
    """Per-action log-probability from per-token log-probabilities.

    Args:
      token_log_probs: ``[...]`` log-probabilities of the realised tokens (``<= 0``; ``-inf`` for
        probability 0), e.g. from :func:`token_log_probs`.
      segment_ids: integers of the same shape: the action (sentence) each token belongs to, in
        ``[0, num_segments)``, or ``-1`` for a token in no action (prompt, padding). Ids are global
        over the whole array: number the actions of a batch ``[B, T]`` consecutively.
      num_segments: the number of actions ``A`` (a Python int, static).
      normalize: ``"mean"`` (the paper's: ``log`` of the geometric mean of the token
        probabilities, ``mean_k log p_k``) or ``"sum"`` (the joint log-probability).
      mask: optional boolean of the same shape; ``False`` tokens are ignored like id ``-1``.

    Returns:
      ``[A]``: ``mean`` or ``sum`` of the log-probabilities of each action's tokens; ``-inf`` if
      one of them is ``-inf``; NaN for an action with no token (:func:`classify_actions` marks it
      :data:`MISSING`). Ignored tokens may hold anything (NaN included).
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize={normalize!r}: must be one of {_NORMALIZE}")
    num_segments = nx.positive_int("num_segments", num_segments)
    lp = jnp.asarray(token_log_probs)
    ids = _ints(segment_ids, "segment_ids")
    _same_shape("token_log_probs", lp, "segment_ids", ids)
    _in_range(ids, "segment_ids", num_segments)
    valid = ids >= 0
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
        _same_shape("token_log_probs", lp, "mask", mask)
        valid = valid & mask
    lp = _log_probs(lp, "token_log_probs", where=valid)
    lp = lp.astype(nx.compute_dtype(lp))
    return _action_log_probs(lp.ravel(), ids.ravel(), valid.ravel(), num_segments, normalize)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _action_log_probs(lp, ids, valid, num_segments: int, normalize: str) -> jax.Array:
    slot = jnp.where(valid, ids, num_segments)  # ignored tokens go to one extra, dropped segment
    total = jax.ops.segment_sum(jnp.where(valid, lp, 0.0), slot, num_segments + 1)[:-1]
    count = jax.ops.segment_sum(valid.astype(lp.dtype), slot, num_segments + 1)[:-1]
    if normalize == "mean":
        total = total / jnp.where(count > 0, count, 1.0)  # -inf / n = -inf
    return jnp.where(count > 0, total, jnp.nan)


def classify_actions(
    *,
    teacher_logp: ArrayLike,
    student_logp: ArrayLike,
    distilled_logp: ArrayLike | None = None,
    rule: str = "four_way",
    alpha: float = 0.05,
    beta: float = 0.1,
) -> jax.Array:
    """Provenance category of each action from its log-probability under each model.

    ``p = exp(logp)`` per model, then the module docstring's rule on the differences
    ``D_TS = p_T - p_S``, ``D_TD = p_T - p_D``, ``D_SD = p_S - p_D``:

    - ``rule="four_way"`` (needs ``distilled_logp``): :data:`SHARED` if ``|D_TS|, |D_TD|, |D_SD|
      <= alpha``, else :data:`TEACHER` if ``D_TS > beta``, else :data:`STUDENT` if ``D_TS <
      -beta``, else :data:`BOOSTED` (names: :data:`CATEGORIES`).
    - ``rule="three_way"`` (no ``distilled_logp``; data selection before training): TEACHER if
      ``D_TS > beta``, STUDENT if ``D_TS < -beta``, else :data:`COMMON` (= 0; names:
      :data:`THREE_WAY_CATEGORIES`). ``alpha`` is unused.

    Args:
      teacher_logp, student_logp, distilled_logp: ``[...]`` action log-probabilities of the same
        shape (e.g. from :func:`action_log_probs`), ``<= 0``; ``-inf`` is probability 0 exactly;
        NaN marks a missing action.
      rule: ``"four_way"`` or ``"three_way"``.
      alpha: the "all three agree" tolerance, in ``[0, 1]`` (inclusive comparison).
      beta: the teacher / student margin, in ``[0, 1]`` (strict comparison).

    Returns:
      ``[...]`` int32 codes; :data:`MISSING` (-1) where any model's log-probability is NaN.
    """
    if rule not in _RULES:
        raise ValueError(f"rule={rule!r}: must be one of {_RULES}")
    if (rule == "four_way") != (distilled_logp is not None):
        raise ValueError("rule='four_way' needs distilled_logp; rule='three_way' takes none (it is the rule before training)")  # fmt: skip
    alpha, beta = _threshold("alpha", alpha), _threshold("beta", beta)
    arrays = [_log_probs(teacher_logp, "teacher_logp"), _log_probs(student_logp, "student_logp")]
    if distilled_logp is not None:
        arrays.append(_log_probs(distilled_logp, "distilled_logp"))
    names = ("student_logp", "distilled_logp")[: len(arrays) - 1]
    for name, a in zip(names, arrays[1:], strict=True):
        _same_shape("teacher_logp", arrays[0], name, a)
    return _classify(*nx.in_compute_dtype(*arrays), alpha=alpha, beta=beta)


@jax.jit
def _classify(t, s, d=None, *, alpha, beta) -> jax.Array:
    p_t, p_s = jnp.exp(t), jnp.exp(s)  # exp(-inf) = 0 exactly
    d_ts = p_t - p_s
    missing = jnp.isnan(t) | jnp.isnan(s)
    rest = COMMON
    if d is not None:  # four-way: shared is tested first, boosted is the remainder
        p_d = jnp.exp(d)
        shared = (jnp.abs(d_ts) <= alpha) & (jnp.abs(p_t - p_d) <= alpha) & (jnp.abs(p_s - p_d) <= alpha)  # fmt: skip
        rest = BOOSTED
        missing = missing | jnp.isnan(d)
    codes = jnp.where(d_ts > beta, TEACHER, jnp.where(d_ts < -beta, STUDENT, rest))
    if d is not None:
        codes = jnp.where(shared, SHARED, codes)
    return jnp.where(missing, MISSING, codes).astype(jnp.int32)


class Provenance(NamedTuple):
    """Category counts and fractions per sequence and pooled (:func:`provenance_summary`)."""

    counts: jax.Array  # [S, K] int32: actions of each category in each sequence
    fractions: jax.Array  # [S, K]: counts / the sequence's actions (NaN for a sequence with none)
    total_counts: jax.Array  # [K] int32: over every sequence
    total_fractions: jax.Array  # [K]: total_counts / all actions (pooled, not a mean of fractions)


def provenance_summary(
    categories: ArrayLike,
    sequence_ids: ArrayLike,
    num_sequences: int,
    *,
    num_categories: int = len(CATEGORIES),
) -> Provenance:
    """Per-sequence and pooled category counts and fractions.

    Args:
      categories: ``[...]`` integer codes from :func:`classify_actions`, in ``[-1,
        num_categories)``; :data:`MISSING` (-1) is skipped.
      sequence_ids: integers of the same shape in ``[-1, num_sequences)``: the sequence (response)
        of each action, ``-1`` to skip it. Any grouping works, e.g. the action's position in its
        trajectory for the paper's per-position profile.
      num_sequences: ``S`` (a Python int, static).
      num_categories: ``K``: 4 for the four-way rule, 3 for the three-way rule.

    Returns:
      :class:`Provenance`. ``counts[:, TEACHER]`` is the paper's data-selection score (with the
      three-way rule on a candidate response's sentences).
    """
    num_sequences = nx.positive_int("num_sequences", num_sequences)
    num_categories = nx.positive_int("num_categories", num_categories)
    cats = _ints(categories, "categories")
    ids = _ints(sequence_ids, "sequence_ids")
    _same_shape("categories", cats, "sequence_ids", ids)
    _in_range(cats, "categories", num_categories)
    _in_range(ids, "sequence_ids", num_sequences)
    return _summary(cats.ravel(), ids.ravel(), num_sequences, num_categories)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _summary(cats, ids, num_sequences: int, num_categories: int) -> Provenance:
    one_hot = jax.nn.one_hot(cats, num_categories, dtype=jnp.int32)  # code -1: a row of zeros
    slot = jnp.where(ids >= 0, ids, num_sequences)  # id -1: one extra, dropped sequence
    counts = jax.ops.segment_sum(one_hot, slot, num_sequences + 1)[:-1]
    totals = jnp.sum(counts, axis=0)
    fractions = counts / jnp.sum(counts, axis=1, keepdims=True)  # 0 / 0 = NaN: no action
    return Provenance(counts, fractions, totals, totals / jnp.sum(totals))


def selection_scores(
    *,
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    divergence: str | gen.Generator = "kl",
    mask: ArrayLike | None = None,
    reduce: str = "sequence",
) -> jax.Array:
    """Teacher-student f-divergence along training responses, for data selection.

    ``d_t = D_f(softmax(teacher_logits_t) || softmax(student_logits_t))`` at each position ``t``
    (``fdiv.divergence``: exact at ``-inf`` logits; ``+inf`` where the teacher puts mass the
    student does not, for unbounded ``f``). Larger: the response carries more the student does
    not yet predict. Log-probabilities are valid logits.

    Args:
      teacher_logits, student_logits: ``[..., T, V]`` next-token logits of the same shape (one
        vocabulary), teacher-forced on the same responses.
      divergence: a catalog name (``fdiv.generators.names()``) or a :class:`fdiv.Generator`.
      mask: optional boolean ``[..., T]``: the response tokens to score (``False``: prompt,
        padding; their logits may hold anything).
      reduce: ``"token"`` -> ``[..., T]`` (NaN at masked positions) or ``"sequence"`` -> ``[...]``,
        the mean over the unmasked positions (NaN for a sequence with none).
    """
    if reduce not in _REDUCE:
        raise ValueError(f"reduce={reduce!r}: must be one of {_REDUCE}")
    g = gen.resolve(divergence)
    t, s = jnp.asarray(teacher_logits), jnp.asarray(student_logits)
    if t.ndim < 2 or t.shape != s.shape:
        raise ValueError(f"teacher_logits and student_logits must both be [..., T, V] of one shape; got {t.shape} and {s.shape}")  # fmt: skip
    if mask is None:
        mask = jnp.ones(t.shape[:-1], bool)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_ or mask.shape != t.shape[:-1]:
        raise ValueError(f"mask must be boolean of shape {t.shape[:-1]}, got {mask.dtype} {mask.shape}")  # fmt: skip
    # A generator with Python-number parameters is a static argument (its trace-time fast paths);
    # one with array parameters is traced with the logits.
    return (_scores if g.traced else _scores_jit)(t, s, mask, g, reduce)


def _scores(t, s, mask, g, reduce: str) -> jax.Array:
    d = _divergence(g, t, s)  # [..., T]
    if reduce == "token":
        return jnp.where(mask, d, jnp.nan)
    count = jnp.sum(mask, axis=-1)
    total = jnp.sum(jnp.where(mask, d, 0.0), axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


_scores_jit = jax.jit(_scores, static_argnums=(3, 4))


def _host_scores(scores: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as a float64 vector and the candidate mask; NaN refused among candidates."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be a vector [N], got shape {s.shape}")
    keep = np.ones(s.shape, bool) if mask is None else np.asarray(mask)
    if keep.dtype != np.bool_ or keep.shape != s.shape:
        raise ValueError(f"mask must be boolean of shape {s.shape}, got {keep.dtype} {keep.shape}")
    if np.isnan(s[keep]).any():
        raise ValueError("scores are NaN at a candidate; mask it out (mask=...) or score it")
    return s, keep


def select_top(scores: ArrayLike, budget: int | float, *, mask: ArrayLike | None = None) -> np.ndarray:  # fmt: skip
    """Indices of the ``k`` highest-scoring candidates, best first (host-side numpy).

    Args:
      scores: ``[N]`` (e.g. :func:`selection_scores` with ``reduce="sequence"``, or teacher-action
        counts); ``+-inf`` allowed; NaN only where ``mask`` is False.
      budget: an int ``k >= 1`` (at most the number of candidates ``n``), or a float fraction in
        ``(0, 1]``: ``k = max(1, floor(fraction * n))``, computed exactly on the fraction's decimal
        value (``0.29 * 100`` is 29, not 28).
      mask: optional boolean ``[N]``: only ``True`` entries are candidates (and counted in ``n``).

    Returns:
      int64 ``[k]``: indices into ``scores``, by decreasing score; equal scores keep their index
      order (the lower index first, and so selected first at the cut).
    """
    s, keep = _host_scores(scores, mask)
    n = int(keep.sum())
    if n == 0:
        raise ValueError("no candidates to select from")
    if isinstance(budget, (bool, np.bool_)):
        raise ValueError(f"budget={budget!r}: must be an int >= 1 or a float fraction in (0, 1]")
    if isinstance(budget, (int, np.integer)):
        if not 1 <= budget <= n:
            raise ValueError(f"budget={budget}: an int count must be in [1, {n}] (the candidates)")
        k = int(budget)
    elif isinstance(budget, (float, np.floating)):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget={budget}: a fraction must be in (0, 1]")
        k = max(1, math.floor(Fraction(repr(float(budget))) * n))
    else:
        raise ValueError(f"budget={budget!r}: must be an int >= 1 or a float fraction in (0, 1]")
    candidates = np.flatnonzero(keep)
    order = np.argsort(-s[candidates], kind="stable")  # stable: ties keep index order
    return candidates[order[:k]].astype(np.int64)


def select_per_group(scores: ArrayLike, group_ids: ArrayLike, *, mask: ArrayLike | None = None) -> np.ndarray:  # fmt: skip
    """Index of the best-scoring candidate of each group (host-side numpy): the paper's selection,
    one response per problem, with ``scores`` the teacher-action counts.

    ``scores`` ``[N]``, ``group_ids`` integer ``[N]`` (the problem of each candidate), ``mask``
    optional boolean ``[N]`` (False: not a candidate). Returns int64 indices, one per group that
    has a candidate, in increasing order of group id; ties go to the lower index.
    """
    s, keep = _host_scores(scores, mask)
    g = np.asarray(group_ids)
    if g.shape != s.shape or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"group_ids must be integers of shape {s.shape}, got {g.dtype} {g.shape}")
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return np.zeros(0, np.int64)
    order = idx[np.lexsort((idx, -s[idx], g[idx]))]  # by group, then best score, then index
    first = np.ones(order.size, bool)
    first[1:] = g[order[1:]] != g[order[:-1]]
    return order[first].astype(np.int64)
