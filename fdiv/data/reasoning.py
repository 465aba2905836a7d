"""Synthetic multi-step arithmetic with step-by-step solutions in two styles (a reasoning testbed).

A problem is a start digit ``x_0`` and ``n`` operations ``(op_i, b_i)``, ``op`` in ``+ - *`` and
``b`` a digit, applied left to right modulo 10: ``x_i = (x_{i-1} op_i b_i) mod 10``. Its answer is
``x_n``. Modulo 10 keeps each step a lookup of one digit (learnable by a small model in minutes)
while the answer depends on every step, so correctness is checkable and chains get harder with
``n``. A row of text is::

    prompt    "Q:7*3+5-2" padded with spaces to the longest problem, then "|"
    solution  one sentence per step, then "A:<x_n>." and the end-of-text token

in one of two styles, whose step sentences differ in form but not in content:

    ``"equation"``  ``"7*3=1. 1+5=6. 6-2=4. A:4."``
    ``"words"``     ``"mul 3 is 1. add 5 is 6. sub 2 is 4. A:4."``

Tokens are characters (:data:`VOCAB`; id 0 pads, id 1 ends the text). A *sentence* (an action, in
the provenance paper's sense) is a run of characters ending in ``"."``, with the space after it;
the last one (the answer) includes the end-of-text token. :func:`sentence_ids` numbers them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PAD, EOS = 0, 1
_CHARS = " 0123456789+-*=.:|QAabdeilmsu"
VOCAB = ("<pad>", "<eos>", *_CHARS)
_ID = {c: i + 2 for i, c in enumerate(_CHARS)}
OPS = ("+", "-", "*")
STYLES = ("equation", "words")
_WORD = {"+": "add", "-": "sub", "*": "mul"}


class Problems(NamedTuple):
    """``n`` problems of at most ``S`` steps: ``start [n]``, ``ops [n, S]`` (indices into
    :data:`OPS`), ``operands [n, S]`` digits, ``steps [n]`` (entries past a row's steps are 0)."""

    start: np.ndarray
    ops: np.ndarray
    operands: np.ndarray
    steps: np.ndarray

    def values(self) -> np.ndarray:
        """``[n, S + 1]``: ``x_0 .. x_S`` (entries past a row's steps repeat its answer)."""
        x = [self.start % 10]
        for i in range(self.ops.shape[1]):
            prev, b = x[-1], self.operands[:, i]
            new = np.select([self.ops[:, i] == 0, self.ops[:, i] == 1], [prev + b, prev - b], prev * b) % 10  # fmt: skip
            x.append(np.where(i < self.steps, new, prev))
        return np.stack(x, axis=1)

    def answers(self) -> np.ndarray:
        return self.values()[:, -1]


def sample_problems(rng: np.random.Generator, n: int, steps: tuple[int, ...], max_steps: int) -> Problems:  # fmt: skip
    """``n`` problems, each with a step count drawn uniformly from ``steps`` (all <= ``max_steps``)."""
    if not steps or min(steps) < 1 or max(steps) > max_steps:
        raise ValueError(f"steps must be in [1, max_steps={max_steps}], got {steps}")
    count = rng.choice(np.asarray(steps), size=n)
    ops = rng.integers(0, len(OPS), size=(n, max_steps))
    operands = rng.integers(1, 10, size=(n, max_steps))
    live = np.arange(max_steps) < count[:, None]
    return Problems(rng.integers(0, 10, size=n), np.where(live, ops, 0), np.where(live, operands, 0), count)  # fmt: skip


def prompt_length(max_steps: int) -> int:
    """Characters of every prompt: ``"Q:"``, the start digit, two per step, ``"|"``."""
    return 3 + 2 * max_steps + 1


def prompt_text(p: Problems, i: int, max_steps: int) -> str:
    body = f"Q:{p.start[i]}" + "".join(f"{OPS[p.ops[i, k]]}{p.operands[i, k]}" for k in range(p.steps[i]))  # fmt: skip
    return body.ljust(prompt_length(max_steps) - 1) + "|"


def solution_text(p: Problems, i: int, style: str, values: np.ndarray | None = None) -> str:
    """Problem ``i``'s solution; ``values``: ``p.values()`` when already computed (a loop over
    many problems passes it, not to recompute every row's chain per row)."""
    if style not in STYLES:
        raise ValueError(f"style={style!r}: must be one of {STYLES}")
    x = (p.values() if values is None else values)[i]
    parts = []
    for k in range(p.steps[i]):
        op, b = OPS[p.ops[i, k]], p.operands[i, k]
        parts.append(f"{x[k]}{op}{b}={x[k + 1]}. " if style == "equation" else f"{_WORD[op]} {b} is {x[k + 1]}. ")  # fmt: skip
    return "".join(parts) + f"A:{x[p.steps[i]]}."


def encode(text: str) -> list[int]:
    try:
        return [_ID[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary {_CHARS!r}") from None


def decode(ids) -> str:
    """Characters up to the first end-of-text token (padding dropped)."""
    out = []
    for t in np.asarray(ids).tolist():
        if t == EOS:
            break
        if t >= 2:
            out.append(VOCAB[t])
    return "".join(out)


def sequence_length(max_steps: int) -> int:
    """Tokens of the longest row (``words`` style, the longer one) including end-of-text."""
    return prompt_length(max_steps) + max_steps * len("mul 9 is 9. ") + len("A:9.") + 1


def encode_rows(p: Problems, style: str, max_steps: int) -> np.ndarray:
    """int32 ``[n, sequence_length(max_steps)]``: prompt, solution in ``style``, end-of-text, padding."""
    length = sequence_length(max_steps)
    rows = np.full((len(p.start), length), PAD, np.int32)
    values = p.values()
    for i in range(len(p.start)):
        ids = encode(prompt_text(p, i, max_steps) + solution_text(p, i, style, values)) + [EOS]
        rows[i, : len(ids)] = ids
    return rows


def prompts(p: Problems, max_steps: int) -> np.ndarray:
    """int32 ``[n, prompt_length(max_steps)]``."""
    return np.asarray([encode(prompt_text(p, i, max_steps)) for i in range(len(p.start))], np.int32)  # fmt: skip


def parse_answers(rows: np.ndarray, start: int) -> np.ndarray:
    """The digit after the first ``"A:"`` at or after column ``start`` when ``"."`` follows it,
    else -1 (no answer): int ``[n]``. Text after the end-of-text token is ignored."""
    out = np.full(len(rows), -1, np.int64)
    for i, row in enumerate(np.asarray(rows)):
        text = decode(row[start:])
        at = text.find("A:")
        if at >= 0 and text[at + 2 : at + 3].isdigit() and text[at + 3 : at + 4] == ".":
            out[i] = int(text[at + 2])
    return out


def sentence_ids(rows, start: int, max_sentences: int):
    """The sentence of every token at or after column ``start`` (jnp or numpy, ``[n, L]`` ->
    ``[n, L]`` int32): 0 for the first, counting the ``"."`` tokens before it; a space right after a
    ``"."`` belongs to that sentence. -1 before ``start``, after the end-of-text token and for
    sentences past ``max_sentences - 1``. The end-of-text token belongs to the last sentence."""
    import jax.numpy as jnp

    rows = jnp.asarray(rows)
    cols = jnp.arange(rows.shape[1])
    prev = jnp.pad(rows[:, :-1], ((0, 0), (1, 0)), constant_values=PAD)
    prev2 = jnp.pad(rows[:, :-2], ((0, 0), (2, 0)), constant_values=PAD)
    # a token opens a new sentence when it follows "." or ". " and is neither a space nor the end
    opens = ((prev == _ID["."]) | (prev == _ID[" "]) & (prev2 == _ID["."])) & (rows != _ID[" "]) & (rows != EOS)  # fmt: skip
    ids = jnp.cumsum(opens & (cols >= start), axis=1)
    ended = jnp.cumsum(rows == EOS, axis=1) - (rows == EOS) > 0  # strictly after the first EOS
    keep = (cols >= start) & ~ended & (ids < max_sentences)
    return jnp.where(keep, ids, -1).astype(jnp.int32)
