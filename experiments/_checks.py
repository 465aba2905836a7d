"""Config checks shared by the experiments: each raises a ValueError naming the field."""

from __future__ import annotations

from typing import Any


def allowed(field: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {sorted(choices)}")


def positive(field: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{field} must be > 0, got {value}")
