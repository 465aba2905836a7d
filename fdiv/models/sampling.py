r"""Sampling and exact enumeration for autoregressive policies over short sequences.

Every function takes a ``logits_fn(context [B], tokens [B, L]) -> logits [B, L + 1, A]`` (e.g.
``lambda c, t: module.apply(variables, c, t)`` for :class:`fdiv.models.CausalTransformer`), where
``logits[:, t]`` is the next-action distribution at the state ``tokens[:, :t]``; entries of
``tokens`` after the state are padding the causal model never looks at. Actions ``0 .. V - 1``
append a token; an optional backspace action (id ``backspace``, usually ``V``) deletes the last
token (masked at the empty state). One sampler serves every method: without a backspace each of
the ``L`` steps appends a token; with one, up to ``max_actions`` steps are taken and a sequence is
complete when it reaches length ``L``.

Exact distributions: :func:`enumerate_log_probs` scores all ``V^L`` sequences (lexicographic order
of :func:`all_sequences`, index ``sum_t y_t V^(L-1-t)``); :func:`final_distribution` propagates
probability mass over all prefixes for ``max_actions`` steps, which gives the exact distribution
of the complete sequence a backspace policy ends with (and the mass still incomplete).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FinalDistribution",
    "Rollout",
    "all_sequences",
    "enumerate_log_probs",
    "final_distribution",
    "prefix_action_probs",
    "sample",
    "sequence_index",
    "token_log_probs",
]

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def all_sequences(vocab_size: int, length: int) -> np.ndarray:
    """Every sequence over ``vocab_size`` tokens of ``length``, lexicographic: ``[V^L, L]`` int32."""
    if length == 0:
        return np.zeros((1, 0), np.int32)
    grids = np.meshgrid(*[np.arange(vocab_size)] * length, indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=-1).astype(np.int32)


def sequence_index(tokens, vocab_size: int):
    """Row of each sequence in :func:`all_sequences`: ``sum_t y_t V^(L-1-t)``; ``[..., L] -> [...]``."""
    tokens = jnp.asarray(tokens)
    powers = vocab_size ** jnp.arange(tokens.shape[-1] - 1, -1, -1)
    return jnp.sum(tokens * powers, axis=-1)


def token_log_probs(logits, tokens) -> jax.Array:
    """``log softmax(logits[:, t])[tokens[:, t]]`` for ``t < L``: ``[B, L + 1, A], [B, L] -> [B, L]``.

    Summed over ``t`` this is the sequence log-probability of teacher forcing. Float32 at least.
    """
    logits = jnp.asarray(logits)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    length = tokens.shape[-1]
    log_p = jax.nn.log_softmax(logits[:, :length], axis=-1)
    return jnp.take_along_axis(log_p, jnp.asarray(tokens)[..., None], axis=-1)[..., 0]


class Rollout(NamedTuple):
    """Samples from :func:`sample` (``S`` steps: ``L`` without a backspace, else ``max_actions``).

    Attributes:
      tokens: ``[B, L]`` the final sequences (zeros after ``length``).
      length: ``[B]`` their lengths (``L`` unless a backspace run was cut off by ``max_actions``).
      prefix: ``[B, S, L]`` the state before each step; ``prefix_length``: ``[B, S]`` its length.
      action: ``[B, S]`` the action taken; ``log_prob``: ``[B, S]`` its log-probability under the
        sampling distribution (``softmax(logits / temperature)``, backspace masked at length 0).
      active: ``[B, S]`` whether the step was taken (the sequence was not yet complete).
    """

    tokens: jax.Array
    length: jax.Array
    prefix: jax.Array
    prefix_length: jax.Array
    action: jax.Array
    log_prob: jax.Array
    active: jax.Array


def _step_logits(logits_fn, context, buffer, length, backspace):
    logits = logits_fn(context, buffer)
    logits = jnp.take_along_axis(logits, length[:, None, None], axis=1)[:, 0]
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if backspace is not None:  # no backspace from the empty state
        at_start = (length == 0)[:, None] & (jnp.arange(logits.shape[-1]) == backspace)
        logits = jnp.where(at_start, -jnp.inf, logits)
    return logits


def sample(
    logits_fn: LogitsFn,
    key: jax.Array,
    context: jax.Array,
    *,
    length: int,
    backspace: int | None = None,
    max_actions: int | None = None,
    temperature: float = 1.0,
    prefix: jax.Array | None = None,
    prefix_length: jax.Array | None = None,
) -> Rollout:
    """Sample one sequence per context, autoregressively (the model is re-run on the whole buffer
    at every step: the sequences are short, and this keeps one code path for every model).

    Args:
      logits_fn: ``(context [B], tokens [B, length]) -> [B, length + 1, A]``.
      key: a PRNG key.
      context: ``[B]`` int context ids.
      length: ``L``, the length of a complete sequence.
      backspace: the backspace action id, or ``None`` (then the model's actions are tokens only).
      max_actions: steps taken with a backspace (default ``2 L``); must be ``L`` without one.
      temperature: sample from ``softmax(logits / temperature)``.
      prefix, prefix_length: optional start states ``[B, L]`` / ``[B]`` (default empty), e.g. a
        prefix ending in a forced error, to measure recovery.
    Returns:
      :class:`Rollout`.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if max_actions is None:
        max_actions = length if backspace is None else 2 * length
    if backspace is None and max_actions != length:
        raise ValueError(f"without a backspace max_actions must be length={length}")
    context = jnp.asarray(context)
    batch = context.shape[0]
    buffer = jnp.zeros((batch, length), jnp.int32) if prefix is None else jnp.asarray(prefix)
    size = jnp.zeros((batch,), jnp.int32) if prefix_length is None else jnp.asarray(prefix_length)
    rows = jnp.arange(batch)

    def step(carry, step_key):
        buffer, size = carry
        active = size < length
        logits = _step_logits(logits_fn, context, buffer, jnp.minimum(size, length - 1), backspace)
        log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
        action = jax.random.categorical(step_key, log_p).astype(jnp.int32)
        erase = (action == backspace) if backspace is not None else jnp.zeros_like(active)
        write = active & ~erase
        new_buffer = buffer.at[rows, jnp.minimum(size, length - 1)].set(
            jnp.where(write, action, buffer[rows, jnp.minimum(size, length - 1)])
        )
        # a deleted position is zeroed so that equal states have equal buffers
        new_buffer = jnp.where(
            (active & erase)[:, None] & (jnp.arange(length) == size[:, None] - 1), 0, new_buffer
        )
        new_size = jnp.where(active, jnp.where(erase, size - 1, size + 1), size)
        action_log_p = jnp.take_along_axis(log_p, action[:, None], axis=-1)[:, 0]
        out = (buffer, size, action, jnp.where(active, action_log_p, 0.0), active)
        return (new_buffer, new_size), out

    keys = jax.random.split(key, max_actions)
    (buffer_end, size_end), (prefixes, sizes, actions, log_probs, actives) = jax.lax.scan(
        step, (buffer, size), keys
    )
    swap = lambda x: jnp.moveaxis(x, 0, 1)  # noqa: E731
    return Rollout(
        buffer_end, size_end, swap(prefixes), swap(sizes), swap(actions), swap(log_probs),
        swap(actives),
    )  # fmt: skip


def enumerate_log_probs(
    logits_fn: LogitsFn, contexts, *, vocab_size: int, length: int
) -> jax.Array:
    """Exact ``log pi(y | c)`` of every sequence ``y`` (rows of :func:`all_sequences`) for each
    context, for a policy whose actions are the ``vocab_size`` tokens (extra actions such as a
    backspace must be excluded by the caller: use :func:`final_distribution` for those).

    Returns:
      ``[C, V^L]`` sequence log-probabilities; each row's ``logsumexp`` is 0.
    """
    seqs = jnp.asarray(all_sequences(vocab_size, length))
    rows = []
    for c in np.asarray(contexts).reshape(-1):
        logits = logits_fn(jnp.full((seqs.shape[0],), c, jnp.int32), seqs)[..., :vocab_size]
        rows.append(jnp.sum(token_log_probs(logits, seqs), axis=-1))
    return jnp.stack(rows)


class FinalDistribution(NamedTuple):
    """Exact outcome of a (backspace) policy run for ``max_actions`` steps.

    Attributes:
      log_probs: ``[V^L]`` log-probability of ending with each complete sequence.
      incomplete: probability of not having a complete sequence after ``max_actions`` steps.
    """

    log_probs: np.ndarray
    incomplete: float


def prefix_action_probs(
    logits_fn: LogitsFn,
    context: int,
    *,
    vocab_size: int,
    length: int,
    backspace: int | None = None,
) -> list[np.ndarray]:
    """The policy's action probabilities at every prefix shorter than ``length``: entry ``k`` is
    ``[V^k, V (+ 1)]`` (prefixes in :func:`all_sequences` order; backspace last, masked at the
    empty prefix), float64. What :func:`final_distribution` propagates; compute it once to
    propagate from several start states."""
    if backspace is not None and backspace != vocab_size:
        raise ValueError(f"backspace must be the action after the tokens, {vocab_size}")
    keep = vocab_size + (0 if backspace is None else 1)
    probs = []
    for k in range(length):
        prefixes = all_sequences(vocab_size, k)
        buffer = np.zeros((prefixes.shape[0], length), np.int32)
        buffer[:, :k] = prefixes
        size = jnp.full((prefixes.shape[0],), k, jnp.int32)
        ctx = jnp.full((prefixes.shape[0],), context, jnp.int32)
        logits = _step_logits(logits_fn, ctx, jnp.asarray(buffer), size, backspace)
        probs.append(np.asarray(jax.nn.softmax(logits[:, :keep], axis=-1), np.float64))
    return probs


def final_distribution(
    logits_fn: LogitsFn,
    context: int,
    *,
    vocab_size: int,
    length: int,
    backspace: int | None = None,
    max_actions: int | None = None,
    start: np.ndarray | None = None,
    action_probs: list[np.ndarray] | None = None,
) -> FinalDistribution:
    """The exact distribution of the sequence :func:`sample` ends with, by dynamic programming.

    The policy is evaluated once at every prefix of length ``< L`` (``sum_k V^k`` states,
    :func:`prefix_action_probs`); then the mass over states is pushed forward ``max_actions``
    times (a token moves ``s -> s + a``, absorbing at length ``L``; a backspace
    ``s -> s[:-1]``), in float64 on the host.

    Args:
      logits_fn, context, vocab_size, length, backspace, max_actions: as in :func:`sample`.
      start: optional start state, a 1-d int array of length ``< L`` (default: the empty prefix).
      action_probs: :func:`prefix_action_probs` of the same policy, if already computed.
    Returns:
      :class:`FinalDistribution`.
    """
    if max_actions is None:
        max_actions = length if backspace is None else 2 * length
    probs = action_probs
    if probs is None:
        probs = prefix_action_probs(
            logits_fn, context, vocab_size=vocab_size, length=length, backspace=backspace
        )
    mass = [np.zeros(vocab_size**k) for k in range(length)]
    if start is None:
        mass[0][0] = 1.0
    else:
        start = np.asarray(start, np.int64).reshape(-1)
        if start.shape[0] >= length:
            raise ValueError(f"start must be shorter than length={length}, got {start.shape[0]}")
        mass[start.shape[0]][int(np.sum(start * vocab_size ** np.arange(start.shape[0])[::-1]))] = 1
    done = np.zeros(vocab_size**length)
    for _ in range(max_actions):
        new = [np.zeros_like(m) for m in mass]
        for k in range(length):
            grow = (mass[k][:, None] * probs[k][:, :vocab_size]).reshape(-1)
            if k + 1 == length:
                done += grow
            else:
                new[k + 1] += grow
            if backspace is not None and k > 0:
                new[k - 1] += (mass[k] * probs[k][:, vocab_size]).reshape(-1, vocab_size).sum(1)
        mass = new
    with np.errstate(divide="ignore"):
        log_probs = np.log(done)
    return FinalDistribution(log_probs, float(sum(m.sum() for m in mass)))
