r"""Synthetic languages small enough to enumerate, for exactly measured alignment experiments.

All sequences have a fixed length ``L`` over ``V`` tokens, so a distribution over them is a vector of
``V^L`` probabilities (order of :func:`fdiv.models.sampling.all_sequences`) and every divergence
to a target is computed exactly, not estimated.

- :class:`MarkovLanguage`: a first-order Markov chain with forbidden transitions; sequences with a
  forbidden bigram have probability 0 (they are *invalid*).
- :class:`NgramLanguage` (:func:`ngram_language`): an order-``k`` Markov chain, each token drawn
  given the ``k`` before it; order 1 is a :class:`MarkovLanguage`.
- :func:`prefix_conditionals` / :func:`prefix_joint`: every prefix of a Markov language with its
  probability and its exact next-token conditional (and the joint of context, next token and the
  token after), the inputs of the exact measures of :mod:`fdiv.analysis.markov`.
- :func:`count_constraint`: the property ``b(y) = 1[count of token in y >= minimum]`` of a
  constraint target ``p(y) ∝ a(y) b(y)``.
- :func:`unigram_reward`: a hidden reward ``r(y) = sum_t w[y_t]`` and :func:`bradley_terry_labels`
  for preference pairs.
- :func:`sum_task_correct`: a verifiable-reward task, "answer with tokens summing to the
  prompt's target", several correct answers per prompt.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "MarkovLanguage",
    "NgramLanguage",
    "PrefixConditionals",
    "bradley_terry_labels",
    "count_constraint",
    "lagged_language",
    "markov_language",
    "ngram_language",
    "prefix_conditionals",
    "prefix_joint",
    "sum_task_correct",
    "unigram_reward",
]


class MarkovLanguage(NamedTuple):
    """``p(y) = initial[y_0] prod_t transition[y_{t-1}, y_t]``; zeros mark forbidden tokens."""

    initial: np.ndarray  # [V]
    transition: np.ndarray  # [V, V], rows sum to 1

    @property
    def vocab_size(self) -> int:
        return self.initial.shape[0]

    def log_prob(self, tokens) -> np.ndarray:
        """``log p(y)`` of ``[..., L]`` sequences, ``-inf`` for invalid ones; float64."""
        tokens = np.asarray(tokens)
        with np.errstate(divide="ignore"):
            log_init, log_trans = np.log(self.initial), np.log(self.transition)
        out = log_init[tokens[..., 0]]
        return out + log_trans[tokens[..., :-1], tokens[..., 1:]].sum(-1)

    def is_valid(self, tokens) -> np.ndarray:
        """Whether each ``[..., L]`` sequence has positive probability."""
        return np.isfinite(self.log_prob(tokens))

    def sample(self, rng: np.random.Generator, num: int, length: int) -> np.ndarray:
        """``num`` sequences of ``length``: ``[num, length]`` int32."""
        out = np.zeros((num, length), np.int32)
        cum_init, cum_trans = np.cumsum(self.initial), np.cumsum(self.transition, axis=-1)
        out[:, 0] = np.minimum(np.searchsorted(cum_init, rng.random(num)), self.vocab_size - 1)
        for t in range(1, length):
            u = rng.random(num)[:, None]
            out[:, t] = np.minimum((cum_trans[out[:, t - 1]] < u).sum(-1), self.vocab_size - 1)
        return out

    def forbidden_next(self, token: int) -> np.ndarray:
        """The tokens that may not follow ``token``."""
        return np.flatnonzero(self.transition[token] == 0)


def markov_language(
    vocab_size: int = 4, *, seed: int = 0, forbidden_per_token: int = 1, concentration: float = 1.0
) -> MarkovLanguage:
    """A random Markov language: Dirichlet(concentration) rows with ``forbidden_per_token`` zeros
    per row (never the whole row), a uniform initial distribution.

    The default (``V = 4``, one forbidden successor per token) makes about 1 - (3/4)^(L-1) of the
    uniform sequences invalid (68% at ``L = 5``), so an imperfect model visibly generates invalid
    sequences.
    """
    if not 0 <= forbidden_per_token < vocab_size:
        raise ValueError(
            f"forbidden_per_token must be in [0, {vocab_size}), got {forbidden_per_token}"
        )
    rng = np.random.default_rng(seed)
    transition = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
    for row in transition:
        row[rng.choice(vocab_size, forbidden_per_token, replace=False)] = 0.0
    transition /= transition.sum(-1, keepdims=True)
    return MarkovLanguage(np.full(vocab_size, 1.0 / vocab_size), transition)


class NgramLanguage(NamedTuple):
    """An order-``k`` Markov language: ``p(y) = initial[y_0, ..., y_{k-1}] prod_{t >= k}
    transition[y_{t-k}, ..., y_{t-1}, y_t]``; zeros mark forbidden tokens.

    ``k = initial.ndim``. The tokens before ``k`` come from the joint ``initial``, so
    ``log_prob`` of a sequence shorter than ``k`` is that of ``initial``'s marginal; for every
    length, ``log_prob`` is the probability of the sequence as the first tokens of a longer one
    (the transition rows sum to 1).
    """

    initial: np.ndarray  # [V] * k, sums to 1
    transition: np.ndarray  # [V] * k + [V], the last axis sums to 1

    @property
    def vocab_size(self) -> int:
        return self.transition.shape[-1]

    @property
    def order(self) -> int:
        return self.initial.ndim

    def log_prob(self, tokens) -> np.ndarray:
        """``log p(y)`` of ``[..., L]`` sequences (any ``L >= 0``), ``-inf`` for invalid ones; float64."""
        tokens = np.asarray(tokens)
        k, length = self.order, tokens.shape[-1]
        head = min(k, length)
        with np.errstate(divide="ignore"):
            log_init = np.log(self.initial.sum(axis=tuple(range(head, k))))  # first ``head`` tokens
            log_trans = np.log(self.transition)
        out = np.zeros(tokens.shape[:-1]) + log_init[tuple(tokens[..., i] for i in range(head))]
        for t in range(k, length):
            out = out + log_trans[tuple(tokens[..., t - k + i] for i in range(k + 1))]
        return out

    def is_valid(self, tokens) -> np.ndarray:
        """Whether each ``[..., L]`` sequence has positive probability."""
        return np.isfinite(self.log_prob(tokens))

    def sample(self, rng: np.random.Generator, num: int, length: int) -> np.ndarray:
        """``num`` sequences of ``length``: ``[num, length]`` int32."""
        k, v = self.order, self.vocab_size
        out = np.zeros((num, max(length, k)), np.int32)
        first = np.searchsorted(np.cumsum(self.initial.reshape(-1)), rng.random(num))
        out[:, :k] = np.stack(np.unravel_index(np.minimum(first, v**k - 1), (v,) * k), -1)
        cum_trans = np.cumsum(self.transition, axis=-1)
        for t in range(k, length):
            u = rng.random(num)[:, None]
            rows = cum_trans[tuple(out[:, t - k + i] for i in range(k))]
            out[:, t] = np.minimum((rows < u).sum(-1), v - 1)
        return out[:, :length]


def ngram_language(
    vocab_size: int = 4,
    *,
    order: int = 2,
    seed: int = 0,
    concentration: float = 1.0,
    forbidden_per_context: int = 0,
) -> NgramLanguage:
    """A random order-``order`` Markov language: one Dirichlet(concentration) row per context of
    ``order`` tokens with ``forbidden_per_context`` zeros (never the whole row), and a uniform
    distribution over the first ``order`` tokens.

    Rows are drawn as :func:`markov_language` draws them, so ``order=1`` gives the same chain as
    ``markov_language(vocab_size, seed=seed, forbidden_per_token=forbidden_per_context, ...)``.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an int >= 1, got {order!r}")
    if not 0 <= forbidden_per_context < vocab_size:
        raise ValueError(
            f"forbidden_per_context must be in [0, {vocab_size}), got {forbidden_per_context}"
        )
    rng = np.random.default_rng(seed)
    transition = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size**order)
    for row in transition:
        row[rng.choice(vocab_size, forbidden_per_context, replace=False)] = 0.0
    transition /= transition.sum(-1, keepdims=True)
    shape = (vocab_size,) * order
    return NgramLanguage(np.full(shape, vocab_size**-order, np.float64), transition.reshape(*shape, vocab_size))  # fmt: skip


def lagged_language(
    vocab_size: int = 4, *, lag: int = 2, seed: int = 0, concentration: float = 1.0
) -> NgramLanguage:
    """``x_t ~ R[x_{t-lag}]``: ``lag`` interleaved Markov chains (Dirichlet(concentration) rows
    ``R``, uniform first ``lag`` tokens), an order-``lag`` :class:`NgramLanguage` whose rows depend
    on the oldest token of the context only.

    Its next-token distribution names ``x_{t-lag}`` but nothing of the ``lag - 1`` tokens after
    it, on which the following tokens depend: the case where a hidden state knows more about the
    token after next than the next-token distribution does (an information surplus,
    :mod:`fdiv.analysis.markov`). ``lag=1`` is a first-order chain.
    """
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
        raise ValueError(f"lag must be an int >= 1, got {lag!r}")
    rows = np.random.default_rng(seed).dirichlet(
        np.full(vocab_size, concentration), size=vocab_size
    )
    shape = (vocab_size,) + (1,) * (lag - 1) + (vocab_size,)
    transition = np.broadcast_to(rows.reshape(shape), (vocab_size,) * (lag + 1)).copy()
    return NgramLanguage(np.full((vocab_size,) * lag, vocab_size**-lag, np.float64), transition)


class PrefixConditionals(NamedTuple):
    """All ``V^t`` prefixes of one length ``t``, lexicographic (:func:`prefix_conditionals`)."""

    prefixes: np.ndarray  # [V^t, t] int32
    probs: np.ndarray  # [V^t] float64, p(prefix), sums to 1
    conditionals: np.ndarray  # [V^t, V] float64, p(x_{t+1} | prefix), rows sum to 1


def _lexicographic(vocab_size: int, length: int) -> np.ndarray:
    """``[V^t, t]`` int32, row ``sum_s y_s V^(t-1-s)`` (:func:`fdiv.models.sampling.all_sequences`)."""
    index = np.arange(vocab_size**length)
    return np.stack(np.unravel_index(index, (vocab_size,) * length), -1).astype(np.int32)


def _next_token_probs(language: MarkovLanguage | NgramLanguage, prefixes: np.ndarray) -> np.ndarray:
    """``p(x_{t+1} | prefix)`` ``[n, V]`` of ``[n, t]`` prefixes (``t >= 1``); a prefix of
    probability 0 gets the row its last tokens select (inside the initial block: uniform)."""
    if isinstance(language, MarkovLanguage):
        return language.transition[prefixes[:, -1]]
    k, t, v = language.order, prefixes.shape[1], language.vocab_size
    if t >= k:
        return language.transition[tuple(prefixes[:, t - k + i] for i in range(k))]
    # inside the first k tokens: the conditional of initial's marginals
    joint = language.initial.sum(axis=tuple(range(t + 1, k)))[tuple(prefixes.T)]  # [n, V]
    total = joint.sum(-1, keepdims=True)
    return np.where(total > 0, joint / np.where(total > 0, total, 1.0), 1.0 / v)


def _check_language(language) -> None:
    if not isinstance(language, MarkovLanguage | NgramLanguage):
        raise TypeError(f"language must be a MarkovLanguage or NgramLanguage, got {type(language).__name__}")  # fmt: skip


def prefix_conditionals(
    language: MarkovLanguage | NgramLanguage, length: int
) -> dict[int, PrefixConditionals]:
    """Every prefix of the sequences of ``length`` tokens with its exact next-token conditional.

    For each ``t = 1, ..., length - 1`` a :class:`PrefixConditionals`: the ``V^t`` prefixes in
    lexicographic order (that of :func:`fdiv.models.sampling.all_sequences`, row ``sum_s y_s
    V^(t-1-s)``) ``[V^t, t]``, their probabilities ``p(y_1..y_t)`` ``[V^t]`` and the conditionals
    ``p(y_{t+1} | y_1..y_t)`` ``[V^t, V]``. The conditional of a prefix of probability 0 is not
    defined; its row is the transition row its last (``k``) tokens select anyway (a uniform row
    for an order-``k`` language's prefixes shorter than ``k`` whose ``initial`` marginal is 0),
    so every row is a distribution and weighting by ``probs`` removes it.

    Returns:
      ``{t: PrefixConditionals}`` for ``t`` in ``1 .. length - 1``.
    """
    _check_language(language)
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2 (a prefix and a next token), got {length!r}")  # fmt: skip
    out = {}
    for t in range(1, length):
        prefixes = _lexicographic(language.vocab_size, t)
        probs = np.exp(language.log_prob(prefixes))
        out[t] = PrefixConditionals(prefixes, probs, _next_token_probs(language, prefixes))
    return out


def prefix_joint(language: MarkovLanguage | NgramLanguage, t: int) -> np.ndarray:
    """``p(context, x_{t+1}, x_{t+2})`` ``[V^t, V, V]`` float64 for the contexts of ``t >= 1``
    tokens in lexicographic order (:func:`prefix_conditionals`): ``p(c) p(a | c) p(b | c, a)``,
    the input of :func:`fdiv.analysis.markov.exact_information_surplus`. Sums to 1."""
    _check_language(language)
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be an int >= 1 (the context length), got {t!r}")
    v = language.vocab_size
    contexts = _lexicographic(v, t)
    probs = np.exp(language.log_prob(contexts))
    next_given_c = _next_token_probs(language, contexts)
    # the prefixes of t + 1 tokens, lexicographic, are (c, a) in row-major order
    after_given_ca = _next_token_probs(language, _lexicographic(v, t + 1)).reshape(v**t, v, v)
    return probs[:, None, None] * next_given_c[:, :, None] * after_given_ca


def count_constraint(tokens, *, token: int, minimum: int) -> np.ndarray:
    """``b(y) = 1[#{t : y_t = token} >= minimum]`` for ``[..., L]`` sequences (bool)."""
    return (np.asarray(tokens) == token).sum(-1) >= minimum


def unigram_reward(tokens, weights) -> np.ndarray:
    """``r(y) = sum_t weights[y_t]``, ``[..., L] -> [...]`` float64."""
    return np.asarray(weights, np.float64)[np.asarray(tokens)].sum(-1)


def bradley_terry_labels(rng: np.random.Generator, reward_a, reward_b) -> np.ndarray:
    """``1[a preferred]`` with ``P(a > b) = sigmoid(r(a) - r(b))`` (Bradley–Terry)."""
    diff = np.asarray(reward_a, np.float64) - np.asarray(reward_b, np.float64)
    return rng.random(diff.shape) < 1.0 / (1.0 + np.exp(-diff))


def sum_task_correct(tokens, targets) -> np.ndarray:
    """Verifiable reward of the sum task: ``1[sum_t y_t == target]``; ``[..., L]``, ``[...]``."""
    return np.asarray(tokens).sum(-1) == np.asarray(targets)
