r"""Synthetic languages small enough to enumerate, for exactly measured alignment experiments.

All sequences have a fixed length ``L`` over ``V`` tokens, so a distribution over them is a vector of
``V^L`` probabilities (order of :func:`fdiv.models.sampling.all_sequences`) and every divergence
to a target is computed exactly, not estimated.

- :class:`MarkovLanguage`: a first-order Markov chain with forbidden transitions; sequences with a
  forbidden bigram have probability 0 (they are *invalid*).
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
    "bradley_terry_labels",
    "count_constraint",
    "markov_language",
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
