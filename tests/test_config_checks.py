"""One validation layer for every experiment config (experiments._checks): every numeric field is
finite and in its range, checked before compute, with the dotted field path in the message."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest

from experiments import _checks, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(
    name[:-3]
    for name in os.listdir(os.path.join(ROOT, "configs"))
    if name.endswith(".py") and not name.startswith("_")
)


def load(name: str):
    config = importlib.import_module(f"configs.{name}").get_config()
    experiment = main.experiment_module(config.experiment)
    return config, experiment


def numeric_leaves(config):
    """(path, value) of every number and every tuple of numbers (bools are flags, not numbers)."""
    for path, value in _checks.leaves(config):
        items = value if isinstance(value, list | tuple) else [value]
        if items and all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            yield path, value


def with_value(config, path: str, value):
    """A copy of ``config`` with the field at dotted ``path`` set to ``value``."""
    out = config.copy_and_resolve_references()
    *parents, leaf = path.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


def test_every_numeric_field_of_every_config_has_a_rule():
    """A field without a range would only be checked for finiteness: each must be listed."""
    missing = []
    for name in CONFIG_NAMES:
        config, experiment = load(name)
        extra = getattr(experiment, "FIELD_RULES", None)
        missing += [
            f"{name}: {p}" for p, _ in numeric_leaves(config) if not _checks.rule_for(p, extra)
        ]
    assert not missing, missing


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_the_shipped_configs_pass(name):
    config, experiment = load(name)
    experiment.validate(config)


def _bad_values(value, rule):
    """Values of the field's type that its rule must reject: nan/inf for floats, -1 where the
    rule's range excludes it (in a tuple: the first element replaced)."""
    first = value[0] if isinstance(value, list | tuple) else value
    out = []
    if isinstance(first, float):
        out += [math.nan, math.inf, -math.inf]
    negative = -1.0 if isinstance(first, float) else -1
    if rule is not None and not rule.ok(negative):
        out.append(negative)
    if isinstance(value, list | tuple):
        return [type(value)([bad, *value[1:]]) for bad in out]
    return out


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_bad_numeric_value_is_rejected_naming_its_field(name):
    config, experiment = load(name)
    extra = getattr(experiment, "FIELD_RULES", None)
    checked = 0
    for path, value in numeric_leaves(config):
        for bad in _bad_values(value, _checks.rule_for(path, extra)):
            with pytest.raises(ValueError) as info:
                experiment.validate(with_value(config, path, bad))
            assert path in str(info.value), (path, bad, str(info.value))
            checked += 1
    assert checked >= 15  # every config has at least the trainer's and an optimiser's fields


# The values the run-integrity issue found accepted or caught only after a stage had trained.
ISSUE_CASES = [
    ("kd_digits", "optimizer.clip_norm", -1.0),
    ("kd_digits", "optimizer.warmup_steps", -5),
    ("kd_digits", "optimizer.weight_decay", -1.0),
    ("kd_digits", "temperature", math.inf),
    ("kd_digits", "optimizer.learning_rate", math.inf),
    ("kd_digits", "kd_weight", math.nan),
    ("kd_digits", "bdkd.kappa", math.nan),
    ("kd_digits", "teacher_steps", -1),
    ("fdistill_mog", "critic_optimizer.clip_norm", -1.0),
    ("fdistill_mog", "stabilizers.logit_clamp", math.nan),
    ("fdpo_toy", "beta", math.inf),
    ("dphrl_toy", "eta", math.nan),
]


@pytest.mark.parametrize(("name", "path", "bad"), ISSUE_CASES)
def test_the_issue_values_are_rejected(name, path, bad):
    config, experiment = load(name)
    with pytest.raises(ValueError, match=path.replace(".", r"\.")):
        experiment.validate(with_value(config, path, bad))


def test_an_unused_divergence_is_still_rejected():
    """divergence=foo with method=vanilla: the name is checked whatever the method."""
    config, experiment = load("kd_digits")
    assert config.method == "vanilla"
    with pytest.raises(ValueError, match="foo"):
        experiment.validate(with_value(config, "divergence", "foo"))
    config, experiment = load("sim_mog")
    with pytest.raises(ValueError, match="foo"):
        experiment.validate(with_value(config, "divergence", "foo"))


def test_a_count_must_be_an_integer():
    rule = _checks.RULES["total_steps"]
    with pytest.raises(ValueError, match=r"train\.total_steps=2\.5: must be an integer >= 1"):
        _checks.fields({"train": {"total_steps": 2.5}})
    assert rule.ok(1) and not rule.ok(0)


def test_none_only_where_the_rule_allows_it():
    _checks.fields({"optimizer": {"clip_norm": None}})  # None: no clipping
    with pytest.raises(ValueError, match="learning_rate=None"):
        _checks.fields({"optimizer": {"learning_rate": None}})


def test_main_rejects_before_compute(tmp_path):
    """Through the entry point: exit 2, the field named, nothing written in the workdir."""
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=configs/kd_digits.py",
            f"--workdir={workdir}",
            "--config.teacher_steps=-1",
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "teacher_steps=-1: must be an integer >= 1" in result.stderr
    assert "total_steps" not in result.stderr
    assert not workdir.exists()
