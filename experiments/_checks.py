"""Config checks shared by the experiments: one layer that every experiment's ``validate`` runs first.

``fields(config, extra_rules)`` walks every leaf of a config and checks it against a rule found by
its dotted path (``"sinkd.alpha"``) or, failing that, by its leaf name (``"learning_rate"``
anywhere): every number must be finite, and each named field must be in its range. Each error names
the dotted field path, the value and what is allowed, and is raised before anything is computed.
The experiments keep only what a table of ranges cannot say (names of methods and divergences,
relations between fields); their own rules are passed in as ``extra_rules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Rule",
    "RULES",
    "allowed",
    "fields",
    "leaves",
    "rule_for",
]


@dataclass(frozen=True)
class Rule:
    """``ok(value)`` for one finite number; ``text`` completes "must be ..."."""

    ok: Callable[[float], bool]
    text: str
    integer: bool = False  # counts: a Python int (not a bool, not a float)
    optional: bool = False  # None is allowed (and means "off")


def greater(low: float, **kw) -> Rule:
    return Rule(lambda v: v > low, f"> {low}", **kw)


def at_least(low: float, **kw) -> Rule:
    return Rule(lambda v: v >= low, f">= {low}", **kw)


def count(low: int = 1) -> Rule:
    return Rule(lambda v: v >= low, f"an integer >= {low}", integer=True)


def interval(lo: float, hi: float, closed: str = "[]") -> Rule:
    """``closed`` says which ends are included: ``"[]"``, ``"[)"``, ``"(]"`` or ``"()"``."""
    left = (lambda v: v >= lo) if closed[0] == "[" else (lambda v: v > lo)
    right = (lambda v: v <= hi) if closed[1] == "]" else (lambda v: v < hi)
    return Rule(lambda v: left(v) and right(v), f"in {closed[0]}{lo}, {hi}{closed[1]}")


ANY = Rule(lambda v: True, "finite")  # a finite number of either sign

# Leaf names (anywhere in a config) and dotted paths (exact); a path rule wins over a name rule.
# Every numeric field of every config has a rule here or in its experiment's extra rules
# (tests/test_config_checks.py enforces it), so a new field cannot skip validation.
RULES: dict[str, Rule] = {
    # optimisers
    "learning_rate": greater(0),
    "warmup_steps": count(0),
    "weight_decay": at_least(0),
    "clip_norm": at_least(0, optional=True),  # 0 or None: no clipping
    "b1": interval(0, 1, "[)"),
    "b2": interval(0, 1, "[)"),
    # the trainer (fdiv.train.TrainConfig)
    "valid_fraction": interval(0, 1, "[)"),  # share of the training split held out; 0: none
    "total_steps": count(1),
    "batch_size": count(1),
    "eval_batch_size": count(0),
    "log_every": count(1),
    "eval_every": count(0),
    "checkpoint_every": count(1),
    "keep_checkpoints": count(1),
    "seed": count(0),
    "num_processes": count(1),
    "process_id": count(0),
    # stage lengths and sizes
    "steps": count(1),
    "teacher_steps": count(1),
    "classifier_steps": count(1),
    "critic_steps": count(1),
    "num_iters": count(1),
    "num_samples": count(1),
    "num_eval_samples": count(1),
    "num_real_samples": count(1),
    "num_eval_pairs": count(1),
    "num_pairs": count(1),
    "num_train": count(1),
    "num_forced": count(0),
    "num_modes": count(1),
    "num_layers": count(1),
    "num_heads": count(1),
    "dim": count(1),
    "width": count(1),
    "hidden": count(1),  # each width of a tuple
    "channels": count(1),
    # losses
    "temperature": greater(0),
    "epsilon": greater(0),
    "kd_weight": at_least(0),
    "teacher_kd_weight": at_least(0),
    "gan_weight": at_least(0),
    "mle_weight": at_least(0),
    "label_smoothing": interval(0, 1, "[)"),
    "kappa": ANY,  # BD-KD: the sign picks which direction gets the weight
}


def fields(config: Mapping[str, Any], extra_rules: Mapping[str, Rule] | None = None) -> None:
    """Check every leaf of ``config`` against ``RULES`` updated by ``extra_rules``.

    Numbers (and numbers inside tuples) must be finite whether or not a rule names them; a rule
    adds a range, an integer type, or permission for ``None``. Raises ``ValueError`` naming the
    dotted path of the first bad field.
    """
    for path, value in leaves(config):
        _check(path, value, rule_for(path, extra_rules))


def rule_for(path: str, extra_rules: Mapping[str, Rule] | None = None) -> Rule | None:
    """The rule of a dotted path: by path, then by leaf name; ``extra_rules`` before ``RULES``."""
    rules = {**RULES, **(extra_rules or {})}
    return rules.get(path) or rules.get(path.rsplit(".", 1)[-1])


def leaves(config: Mapping[str, Any], prefix: str = ""):
    """``(dotted path, value)`` of every non-mapping leaf, depth first in key order."""
    for key, value in config.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from leaves(value, path + ".")
        else:
            yield path, value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(path: str, value: Any, rule: Rule | None) -> None:
    if value is None:
        if rule is not None and not rule.optional:
            raise ValueError(f"{path}=None: must be {rule.text}")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(f"{path}[{i}]", item, rule)
        return
    if not _is_number(value):
        if rule is not None and rule.integer:
            raise ValueError(f"{path}={value!r}: must be {rule.text}")
        return  # strings and flags: the experiment checks their choices
    if not math.isfinite(value):
        raise ValueError(f"{path}={value!r}: must be a finite number")
    if rule is None:
        return
    if rule.integer and not isinstance(value, int):
        raise ValueError(f"{path}={value!r}: must be {rule.text}")
    if not rule.ok(value):
        raise ValueError(f"{path}={value!r}: must be {rule.text}")


def allowed(field: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {sorted(choices)}")
