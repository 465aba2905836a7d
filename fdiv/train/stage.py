"""First stages of multi-stage runs: a teacher, a base policy, a feature classifier.

A stage is an ordinary trainer run in its own workdir (resumable, refused under another config),
whose config is its *fingerprint*: only the fields that decide its result, so that runs which
differ elsewhere (the student, the divergence, the seed of a later stage) share one stage. A
finished stage stores its network's final weights and model state next to its checkpoints
(:data:`FINAL`); later runs read them back without re-opening the run (no restore, no
re-evaluation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.serialization
import jax

from fdiv.train import parallel, paths
from fdiv.train import workdir as wd
from fdiv.train.loop import Task, TrainConfig, train

__all__ = ["FINAL", "StageResult", "fingerprint", "train_stage"]

FINAL = "stage_final.msgpack"  # {"params", "model_state"} of the stage's network, host arrays


class StageResult(NamedTuple):
    """A finished stage: its network's host params and model state (``{}`` if none), its summary."""

    params: Any
    model_state: Any
    summary: dict[str, Any]


def fingerprint(config: Mapping[str, Any], keys: Sequence[str], **extra: Any) -> str:
    """A stage's config as sorted JSON: the top-level ``keys`` of ``config`` (config dicts as
    plain dicts) plus ``extra``. Runs that agree on these share the stage; the trainer refuses a
    stage workdir whose stored fingerprint differs."""
    out = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k] for k in keys}
    out.update(extra)
    return json.dumps(out, sort_keys=True, default=list)


def train_stage(
    task: Task, config: TrainConfig, workdir: str, *, config_json: str, network: str
) -> StageResult:
    """Train ``task`` in ``workdir`` (see :func:`fdiv.train.train`) and return ``network``'s part.

    A stage finished in ``workdir`` at ``config.total_steps`` with exactly ``config_json`` is read
    from :data:`FINAL` instead; an unfinished one resumes from its checkpoint; a different one
    raises :class:`fdiv.train.workdir.ConfigMismatchError` before compute.
    """
    finished = _read_finished(workdir, config_json, config.total_steps)
    if finished is not None:
        return finished
    result = train(task, config, workdir, config_json=config_json)
    params = parallel.to_host(result.state.params[network])
    model_state = parallel.to_host(result.state.model_state.get(network, {}))
    if jax.process_index() == 0:
        blob = flax.serialization.msgpack_serialize({"params": params, "model_state": model_state})
        paths.write_bytes(os.path.join(workdir, FINAL), blob)
    return StageResult(params, model_state, result.summary)


def _read_finished(workdir: str, config_json: str, total_steps: int) -> StageResult | None:
    summary = wd.finished_summary(workdir, json.loads(config_json), total_steps)
    if summary is None:
        return None
    try:
        stored = flax.serialization.msgpack_restore(paths.read_bytes(os.path.join(workdir, FINAL)))
    except FileNotFoundError:  # finished before stages stored their weights: re-open it
        return None
    return StageResult(stored["params"], stored.get("model_state") or {}, summary)
