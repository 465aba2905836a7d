r"""SequenceMatch: imitation learning for autoregressive sequences with a backspace action.

Generation is a Markov decision process. A state ``s`` is a prefix of tokens of length
``0 .. T - 1`` (``T = terminal_length``; a state of length ``T`` is complete and ends the
episode). The actions are the ``V`` ordinary tokens ``0 .. V - 1`` and a *backspace* with id
``backspace`` (``= V`` by convention): an ordinary action ``a`` gives ``s' = s + a``, backspace
removes the last token of ``s`` (it is not allowed at the empty state, so the empty state's
normaliser leaves it out). The model's logits are soft Q-values ``l(a | s)``, with

- ``V(s) = logsumexp_{a allowed at s} l(a | s)`` (the policy is ``softmax`` over the same set),
- the implied reward ``r(s, a) = l(a | s) - gamma V(s')``, ``V(s') = 0`` when ``s'`` is complete,

and the loss is IQ-Learn's chi^2 objective on the inverse soft-Q (the chi^2 divergence between
the data occupancy and the mixture ``(data + policy) / 2``)::

    L = -E_data[r] + 1/(4 alpha) E_mix[r^2] + E_mix[V(s) - gamma V(s')],
    E_mix = 1/2 E_data + 1/2 E_policy,

each ``E`` a weight-normalised mean over a batch of transitions (:class:`Transitions`). The data
batch comes from the training sequences, optionally augmented with wrong-token / backspace pairs
(:func:`augment_with_backspace`); the policy batch from the model's own samples (the caller stops
gradients through the sampling; the policy logits, the current model on the sampled states, are
differentiated). :func:`transition_nll` is the behaviour-cloning (MLE) loss on the same
transitions.

Model convention: a causal model maps tokens ``[N, L]`` to logits ``[N, L + 1, V + 1]`` with
``logits[:, t]`` the Q-values at the state ``tokens[:, :t]``. For a transition ``(s, a)`` with
``len(s) = n`` the model is run on :func:`transition_inputs` (``a`` written at position ``n`` for
an ordinary action); then ``l(. | s) = logits[:, n]`` and ``V(s') = lse(logits[:, n + 1])`` for an
ordinary action, ``lse(logits[:, n - 1])`` for backspace. Logits of any float dtype; (b)float16 is
computed in float32.

This is a reconstruction of the method's objective in the IQ-Learn chi^2 form described above,
not the paper's code; the paper's masking, padding and sampling details may differ.

References:
  Cundy, Ermon (2023), SequenceMatch: Imitation Learning for Autoregressive Sequence Modelling
  with Backtracking.
  Garg, Chakraborty, Cundy, Song, Ermon (2021), IQ-Learn: Inverse soft-Q Learning for Imitation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx

__all__ = [
    "SequenceMatchMetrics",
    "SoftQTerms",
    "Transitions",
    "augment_with_backspace",
    "mle_transitions",
    "sequencematch_loss",
    "soft_q_terms",
    "transition_inputs",
    "transition_nll",
]


class Transitions(NamedTuple):
    """A batch of ``N`` transitions ``(s, a)`` of the backspace MDP.

    Attributes:
      prefix: ``[N, L]`` int32, the state's tokens; entries at index ``>= length`` are 0.
      length: ``[N]`` int32, ``len(s)``.
      action: ``[N]`` int32 in ``[0, V]``; ``backspace`` (``= V``) removes the last token.
      weight: ``[N]`` float32 (float64 kept); 1 for a transition to imitate (or a policy
        sample), 0 for one to ignore (padding, or the inserted wrong token of an augmentation).
    """

    prefix: jax.Array
    length: jax.Array
    action: jax.Array
    weight: jax.Array


class SoftQTerms(NamedTuple):
    """Per-transition soft-Q quantities, each ``[N]``.

    Attributes:
      q: ``l(a | s)``.
      value: ``V(s) = logsumexp`` of ``l(. | s)`` over the actions allowed at ``s``.
      next_value: ``V(s')``, 0 when ``s'`` is complete.
      reward: ``r(s, a) = q - gamma next_value``.
    """

    q: jax.Array
    value: jax.Array
    next_value: jax.Array
    reward: jax.Array


class SequenceMatchMetrics(NamedTuple):
    """The three terms of :func:`sequencematch_loss` (their sum is the loss) and mean rewards.

    Attributes:
      expert_term: ``-E_data[r]``.
      chi2_term: ``1/(4 alpha) E_mix[r^2]``.
      value_term: ``E_mix[V(s) - gamma V(s')]``.
      data_reward: ``E_data[r]``.
      policy_reward: ``E_policy[r]``.
    """

    expert_term: jax.Array
    chi2_term: jax.Array
    value_term: jax.Array
    data_reward: jax.Array
    policy_reward: jax.Array


# ------------------------------------------------------------------------------------------------
# Validation.
# ------------------------------------------------------------------------------------------------


def _check_backspace(backspace, num_actions: int | None = None) -> int:
    if isinstance(backspace, bool) or not isinstance(backspace, int) or backspace < 0:
        raise ValueError(f"backspace must be a Python int >= 0, got {backspace!r}")
    if num_actions is not None and backspace >= num_actions:
        raise ValueError(
            f"backspace must index an action of the logits' last axis (size {num_actions}), "
            f"got {backspace}"
        )
    return backspace


def _check_gamma(gamma: float) -> None:
    nx.check_hyperparameter("gamma", gamma, lambda g: 0.0 <= g <= 1.0, "in [0, 1]")


def _as_transitions(transitions: Transitions) -> Transitions:
    prefix = jnp.asarray(transitions.prefix, jnp.int32)
    if prefix.ndim != 2:
        raise ValueError(f"transitions.prefix must be [N, L], got shape {prefix.shape}")
    n = prefix.shape[0]
    weight = jnp.asarray(transitions.weight)
    fields = {
        "length": jnp.asarray(transitions.length, jnp.int32),
        "action": jnp.asarray(transitions.action, jnp.int32),
        "weight": weight.astype(nx.compute_dtype(weight)),
    }
    for name, value in fields.items():
        if value.shape != (n,):
            raise ValueError(f"transitions.{name} must be [{n}], got shape {value.shape}")
    return Transitions(prefix=prefix, **fields)


def _check_logits(logits: jax.Array, transitions: Transitions) -> None:
    n, width = transitions.prefix.shape
    if logits.ndim != 3 or logits.shape[:2] != (n, width + 1):
        raise ValueError(
            f"logits must be [N, L + 1, A] = [{n}, {width + 1}, A] for a prefix of shape "
            f"{transitions.prefix.shape}, got shape {logits.shape}"
        )


def _masked_logits(logits: ArrayLike, backspace: int | None) -> jax.Array:
    """Logits in the compute dtype, with backspace at the empty state (position 0) set to -inf."""
    logits = jnp.asarray(logits)
    logits = logits.astype(nx.compute_dtype(logits))
    if backspace is None:
        return logits
    position = jnp.arange(logits.shape[1])[:, None]
    action = jnp.arange(logits.shape[2])[None, :]
    return jnp.where((position == 0) & (action == backspace), -jnp.inf, logits)


def _at_position(x: jax.Array, position: jax.Array) -> jax.Array:
    """``x[n, position[n]]`` for ``x`` of shape ``[N, P, ...]``."""
    index = position.reshape((-1, 1) + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)[:, 0]


def _weighted_mean(weight: jax.Array, x: jax.Array) -> jax.Array:
    """``sum w x / max(sum w, tiny)``; 0 when every weight is 0 (``0 * inf = 0``)."""
    total = jnp.sum(weight)
    tiny = jnp.finfo(x.dtype).tiny
    return jnp.sum(nx.mul0(weight.astype(x.dtype), x)) / jnp.maximum(total.astype(x.dtype), tiny)


# ------------------------------------------------------------------------------------------------
# Transitions and soft-Q terms.
# ------------------------------------------------------------------------------------------------


def transition_inputs(transitions: Transitions, *, backspace: int) -> jax.Array:
    r"""The model's input tokens for each transition: the prefix with an ordinary action written.

    ``tokens[n] = prefix[n]`` with ``tokens[n, length[n]] = action[n]`` when ``action[n] !=
    backspace`` (unchanged for backspace). Running the causal model on these gives, at positions
    ``length - 1``, ``length`` and ``length + 1``, the Q-values at the states before, at and after
    the transition (:func:`soft_q_terms`).

    Args:
      transitions: ``prefix [N, L]``, ``length [N]``, ``action [N]``; an ordinary action needs
        ``length <= L - 1``.
      backspace: the backspace action's id.
    Returns:
      ``[N, L]`` int32.
    """
    backspace = _check_backspace(backspace)
    t = _as_transitions(transitions)
    position = jnp.arange(t.prefix.shape[1])[None, :]
    write = (position == t.length[:, None]) & (t.action != backspace)[:, None]
    return jnp.where(write, t.action[:, None], t.prefix)


def soft_q_terms(
    logits: ArrayLike,
    transitions: Transitions,
    *,
    backspace: int,
    terminal_length: int,
    gamma: float = 1.0,
) -> SoftQTerms:
    r"""Per transition: ``q = l(a|s)``, ``V(s)``, ``V(s')`` and the reward ``r = q - gamma V(s')``.

    With ``n = len(s)`` and ``lse`` over the actions allowed at a state (all of them, but backspace
    at the empty state)::

        q = logits[n, a],  V(s) = lse(logits[n]),
        V(s') = lse(logits[n + 1]) (ordinary a) or lse(logits[n - 1]) (backspace),
        V(s') = 0 if len(s') >= terminal_length.

    A backspace at the empty state is not an action: its ``q`` is ``-inf`` (give it weight 0).

    Args:
      logits: ``[N, L + 1, A]``, the model on :func:`transition_inputs` of ``transitions``.
      transitions: :class:`Transitions` with ``prefix [N, L]``.
      backspace: the backspace action's id, in ``[0, A)``.
      terminal_length: ``T`` in ``[1, L]``; a state of length ``T`` is complete.
      gamma: discount in ``[0, 1]``.
    Returns:
      :class:`SoftQTerms`, each ``[N]`` in float32 (or the logits' wider float dtype).
    """
    logits = jnp.asarray(logits)
    t = _as_transitions(transitions)
    _check_logits(logits, t)
    backspace = _check_backspace(backspace, logits.shape[-1])
    width = t.prefix.shape[1]
    terminal_length = nx.positive_int("terminal_length", terminal_length)
    if terminal_length > width:
        raise ValueError(f"terminal_length must be <= L = {width}, got {terminal_length}")
    _check_gamma(gamma)

    logits = _masked_logits(logits, backspace)
    values = jax.nn.logsumexp(logits, axis=-1)  # [N, L + 1]
    at_state = _at_position(logits, t.length)  # [N, A]
    q = jnp.take_along_axis(at_state, t.action[:, None], axis=-1)[:, 0]
    value = _at_position(values, t.length)
    is_backspace = t.action == backspace
    next_length = jnp.where(is_backspace, t.length - 1, t.length + 1)
    complete = next_length >= terminal_length
    next_value = _at_position(values, jnp.clip(next_length, 0, width))
    next_value = jnp.where(complete, 0.0, next_value)
    return SoftQTerms(q=q, value=value, next_value=next_value, reward=q - gamma * next_value)


def sequencematch_loss(
    data_logits: ArrayLike,
    data: Transitions,
    policy_logits: ArrayLike,
    policy: Transitions,
    *,
    backspace: int,
    terminal_length: int,
    alpha: float = 1.0,
    gamma: float = 1.0,
) -> tuple[jax.Array, SequenceMatchMetrics]:
    r"""SequenceMatch's chi^2 (IQ-Learn) loss on a data batch and a policy batch, a scalar.

    ::

        L = -E_data[r] + 1/(4 alpha) E_mix[r^2] + E_mix[V(s) - gamma V(s')],
        E_mix = 1/2 E_data + 1/2 E_policy,

    with ``r``, ``V`` from :func:`soft_q_terms` and ``E`` the weight-normalised mean
    ``sum w x / sum w`` of each batch (0 for a batch whose weights are all 0). Transitions of
    weight 0 contribute exactly 0 to the value and the gradient, whatever their logits.

    Args:
      data_logits: ``[N, L + 1, A]``, the model on ``transition_inputs(data)``.
      data: the expert :class:`Transitions` (``N`` of them).
      policy_logits: ``[M, L + 1, A]``, the model on ``transition_inputs(policy)``.
      policy: :class:`Transitions` sampled from the model (``M`` of them).
      backspace: the backspace action's id. terminal_length: see :func:`soft_q_terms`.
      alpha: ``> 0``, the chi^2 regulariser's ``1/(4 alpha)``; larger is weaker.
      gamma: discount in ``[0, 1]``.
    Returns:
      ``(loss, metrics)``: the scalar loss and :class:`SequenceMatchMetrics`.

    References:
      Cundy, Ermon (2023), SequenceMatch; Garg et al. (2021), IQ-Learn.
    """
    nx.check_hyperparameter("alpha", alpha, lambda a: a > 0, "> 0")
    kwargs = dict(backspace=backspace, terminal_length=terminal_length, gamma=gamma)
    data = _as_transitions(data)
    policy = _as_transitions(policy)
    d = soft_q_terms(data_logits, data, **kwargs)
    p = soft_q_terms(policy_logits, policy, **kwargs)

    def clean(terms: SoftQTerms, weight: jax.Array) -> SoftQTerms:
        # Zero the ignored transitions before any nonlinearity: no inf or nan reaches the value
        # or the gradient from a weight-0 row.
        return SoftQTerms(*(jnp.where(weight > 0, x, 0.0) for x in terms))

    d, p = clean(d, data.weight), clean(p, policy.weight)

    def mix(fn):
        return 0.5 * _weighted_mean(data.weight, fn(d)) + 0.5 * _weighted_mean(policy.weight, fn(p))

    data_reward = _weighted_mean(data.weight, d.reward)
    expert_term = -data_reward
    chi2_term = mix(lambda x: x.reward**2) / (4.0 * alpha)
    value_term = mix(lambda x: x.value - gamma * x.next_value)
    metrics = SequenceMatchMetrics(
        expert_term=expert_term,
        chi2_term=chi2_term,
        value_term=value_term,
        data_reward=data_reward,
        policy_reward=_weighted_mean(policy.weight, p.reward),
    )
    return expert_term + chi2_term + value_term, metrics


# ------------------------------------------------------------------------------------------------
# Behaviour cloning and data augmentation.
# ------------------------------------------------------------------------------------------------


def transition_nll(
    logits: ArrayLike, transitions: Transitions, *, backspace: int | None = None
) -> jax.Array:
    r"""Weighted negative log-likelihood of each transition's action: ``-w log pi(a | s)``.

    ``pi(. | s) = softmax(logits[n, length_n])``; with ``backspace`` given, the empty state's
    softmax leaves the backspace out (as the sampler does). Behaviour cloning / MLE on (augmented)
    transitions; the mean over :func:`mle_transitions` is the usual teacher-forced loss per token.

    Args:
      logits: ``[N, L + 1, A]``, the model on ``transition_inputs(transitions)`` (for ordinary
        and backspace actions alike only position ``length`` is read, so the plain prefix works).
      transitions: :class:`Transitions`.
      backspace: optional backspace id, masked at the empty state.
    Returns:
      ``[N]`` in float32 (or the logits' wider float dtype); exactly 0 where ``weight = 0``.
    """
    logits = jnp.asarray(logits)
    t = _as_transitions(transitions)
    _check_logits(logits, t)
    if backspace is not None:
        backspace = _check_backspace(backspace, logits.shape[-1])
    log_p = jax.nn.log_softmax(_masked_logits(logits, backspace), axis=-1)
    log_p = jnp.take_along_axis(_at_position(log_p, t.length), t.action[:, None], axis=-1)[:, 0]
    return -nx.mul0(t.weight.astype(log_p.dtype), log_p)


def _prefixes(tokens: jax.Array, length: jax.Array) -> jax.Array:
    """``tokens`` (``[..., L]``) with the entries at index ``>= length`` (``[...]``) zeroed."""
    position = jnp.arange(tokens.shape[-1])
    return jnp.where(position < length[..., None], tokens, 0)


def mle_transitions(tokens: ArrayLike) -> Transitions:
    r"""The teacher-forced transitions ``(y[:j], y_j)``, ``j = 0 .. L - 1``, of each sequence.

    Args:
      tokens: ``[B, L]`` ordinary token ids.
    Returns:
      :class:`Transitions` with ``N = B L``: sequence ``b``'s in order at ``b L .. b L + L - 1``,
      weight 1.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}")
    b, width = tokens.shape
    length = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (b, width))
    prefix = _prefixes(tokens[:, None, :], length)
    return Transitions(
        prefix=prefix.reshape(b * width, width),
        length=length.reshape(-1),
        action=tokens.reshape(-1),
        weight=jnp.ones((b * width,), jnp.float32),
    )


def augment_with_backspace(
    key: jax.Array,
    tokens: ArrayLike,
    *,
    vocab_size: int,
    backspace: int,
    rate: float,
) -> Transitions:
    r"""Teacher-forced transitions with, per sequence, a random wrong token and its backspace.

    With probability ``rate`` (per sequence) a position ``k ~ U{0 .. L - 2}`` and a wrong token
    ``w ~ U{tokens != y_k}`` are drawn, and the sequence's trajectory becomes::

        (y[:j], y_j) j < k,  (y[:k], w) [weight 0],  (y[:k] + w, backspace),  (y[:j], y_j) j >= k

    (``L + 2`` transitions; the wrong action itself is never imitated, the correction is).
    Otherwise the ``L`` regular transitions are followed by 2 padding transitions (weight 0,
    prefix 0, length 0, action 0). Replaying a trajectory's actions from the empty state visits
    each transition's state and ends at ``y``.

    ``k`` stops at ``L - 2``: ``y[:L-1] + w`` would have length ``L``, a complete state, which ends
    the episode, so no backspace can follow it (``L = 1`` sequences are never augmented).

    Args:
      key: PRNG key.
      tokens: ``[B, L]`` token ids in ``[0, vocab_size)``; ``L`` is the terminal length.
      vocab_size: ``V >= 2``, the number of ordinary tokens.
      backspace: the backspace action's id, not an ordinary token (``>= vocab_size``).
      rate: probability in ``[0, 1]`` that a sequence gets an insertion (a Python float).
    Returns:
      :class:`Transitions` with ``N = B (L + 2)``, sequence ``b``'s contiguous and in order at
      ``b (L + 2) .. b (L + 2) + L + 1``. Vectorised; jit-able with ``vocab_size``,
      ``backspace`` and ``rate`` static.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tokens.shape}")
    vocab_size = nx.positive_int("vocab_size", vocab_size)
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (a wrong token must exist), got {vocab_size}")
    backspace = _check_backspace(backspace)
    if backspace < vocab_size:
        raise ValueError(
            f"backspace must not be an ordinary token (>= vocab_size = {vocab_size}), "
            f"got {backspace}"
        )
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")

    b, width = tokens.shape
    key_insert, key_position, key_token = jax.random.split(key, 3)
    insert = jax.random.bernoulli(key_insert, rate, (b,)) & (width >= 2)
    k = jax.random.randint(key_position, (b,), 0, max(width - 1, 1))
    true_token = jnp.take_along_axis(tokens, k[:, None], axis=1)[:, 0]
    offset = jax.random.randint(key_token, (b,), 0, vocab_size - 1)
    wrong = (true_token + 1 + offset) % vocab_size  # uniform over the V - 1 others

    slot = jnp.arange(width + 2)[None, :]  # [1, L + 2]
    k_ = k[:, None]
    ins = insert[:, None]
    is_wrong = ins & (slot == k_)
    is_back = ins & (slot == k_ + 1)
    j = jnp.where(ins & (slot > k_ + 1), slot - 2, slot)  # regular transitions' index
    is_regular = ~is_wrong & ~is_back & (j < width)  # the rest: padding
    j = jnp.minimum(j, width - 1)

    y_j = jnp.take_along_axis(tokens, j, axis=1)
    length = jnp.where(is_regular, j, jnp.where(is_wrong, k_, jnp.where(is_back, k_ + 1, 0)))
    action = jnp.where(
        is_regular, y_j, jnp.where(is_wrong, wrong[:, None], jnp.where(is_back, backspace, 0))
    )
    weight = (is_regular | is_back).astype(jnp.float32)
    # The state's tokens: y, with w at index k for the backspace's state, cut at the length.
    position = jnp.arange(width)[None, None, :]
    base = jnp.where(
        is_back[..., None] & (position == k_[..., None]), wrong[:, None, None], tokens[:, None, :]
    )
    prefix = _prefixes(base, length)
    n = b * (width + 2)
    return Transitions(
        prefix=prefix.reshape(n, width).astype(jnp.int32),
        length=length.reshape(n).astype(jnp.int32),
        action=action.reshape(n).astype(jnp.int32),
        weight=weight.reshape(n),
    )
