"""Config checks shared by the experiments: each raises a ValueError naming the field."""

from __future__ import annotations

import json
from typing import Any


def allowed(field: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {sorted(choices)}")


def positive(field: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{field} must be > 0, got {value}")


def stage_config_json(config, keys, **fields) -> str:
    """A first stage's fingerprint: the top-level ``keys`` of ``config`` that decide it (config
    dicts as plain dicts) plus ``fields``, as sorted JSON. Runs that agree on these share the
    stage; the trainer refuses a stage workdir whose stored fingerprint differs."""
    out = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k] for k in keys}
    out.update(fields)
    return json.dumps(out, sort_keys=True, default=list)
