"""The host loop every experiment shares: data, jitted steps, evaluation, logs, checkpoints.

An experiment describes itself as a :class:`Task` (init, update rules, optimisers, data, how to
evaluate); :func:`train` owns everything else. The batch of step ``s`` is a pure function of
``(seed, s)`` (:func:`fdiv.data.train_indices`) and so is the step's randomness, so a run killed at
any point and resumed from its latest checkpoint ends with bitwise the same state as one that was
never interrupted. The batch of the next step is built on a background thread while the current
step runs (:class:`Prefetcher`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fdiv import data as fdata
from fdiv.train import parallel
from fdiv.train import workdir as wd
from fdiv.train.checkpoint import Checkpointer
from fdiv.train.state import TrainState, Update, init_state, make_train_step
from fdiv.train.writers import RunWriter

__all__ = [
    "Dataset",
    "NonFiniteError",
    "Prefetcher",
    "Task",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "local_batch",
    "train",
]

PyTree = Any


class Dataset(Protocol):
    """Random-access examples: ``len(ds)`` and ``ds.get(indices) -> (inputs, labels)`` or a dict."""

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> Any: ...


class NonFiniteError(FloatingPointError):
    """A training metric (loss, gradient norm ...) became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Task:
    """What an experiment supplies to :func:`train`.

    Attributes:
      init: ``init(key) -> (params, model_state)``, dicts keyed by network name.
      updates: the update rules of one step, applied in order (:class:`fdiv.train.Update`).
      optimizers: one optax transformation per trained network.
      train_data: training examples; ``None`` for data-free tasks (the batch is then empty and
        the step's key is the only input that changes).
      eval_data: evaluation examples, or ``None``; their metrics are logged as ``eval/*``.
      valid_data: validation examples (held out from the training data), or ``None``; evaluated
        with the same ``predict`` / ``summarize`` at every evaluation and logged as ``valid/*``,
        so that settings can be chosen without looking at ``eval/*``. Needs ``eval_data``.
      predict: ``predict(params, model_state, batch) -> dict of per-example arrays [B, ...]``,
        everything ``summarize`` needs (e.g. each network's logits and the labels).
      summarize: ``summarize(outputs) -> dict of floats`` over the whole evaluation set.
      report: ``report(outputs, workdir)``, run once at the end on process 0 (plots).
      preprocess: on-device ``preprocess(batch, key) -> batch`` inside the step (augmentation).
    """

    init: Callable[[jax.Array], tuple[dict[str, PyTree], dict[str, PyTree]]]
    updates: Sequence[Update]
    optimizers: Mapping[str, optax.GradientTransformation]
    train_data: Dataset | None = None
    eval_data: Dataset | None = None
    valid_data: Dataset | None = None
    predict: Callable[..., dict[str, jax.Array]] | None = None
    summarize: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None
    report: Callable[[dict[str, np.ndarray], str], None] | None = None
    preprocess: Callable[..., Mapping[str, jax.Array]] | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The trainer's settings (a ``config.train`` ConfigDict maps onto this one to one).

    Attributes:
      total_steps: train until ``state.step == total_steps``.
      batch_size: the global batch, split over every device of every process.
      seed: seeds the parameters, the step keys and the data order.
      eval_batch_size: 0 means ``batch_size``.
      log_every: steps between ``metrics.jsonl`` lines (metrics are means over the interval).
      eval_every: steps between evaluations; 0 evaluates only at the end.
      checkpoint_every: steps between checkpoints; the final step is always saved.
      keep_checkpoints: how many recent checkpoints to keep.
      progress: show a progress bar.
    """

    total_steps: int
    batch_size: int
    seed: int = 0
    eval_batch_size: int = 0
    log_every: int = 100
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown train config fields {unknown}; allowed: {sorted(known)}")
        return cls(**dict(mapping))

    def validate(self, num_devices: int | None = None) -> None:
        """Raise ``ValueError`` naming the field and what is allowed; checks device divisibility."""
        positive = [
            "total_steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
        ]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"train.{name} must be a positive integer, got {getattr(self, name)}"
                )
        for name in ["eval_batch_size", "eval_every", "seed"]:
            if int(getattr(self, name)) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        num_devices = jax.device_count() if num_devices is None else num_devices
        for name in ["batch_size", "eval_batch_size"]:
            value = getattr(self, name) or self.batch_size
            if value % num_devices:
                raise ValueError(
                    f"train.{name}={value} is not divisible by the {num_devices} devices; "
                    f"use a multiple of {num_devices}"
                )

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


class TrainResult(NamedTuple):
    state: TrainState
    summary: dict[str, Any]


def _as_batch(examples: Any) -> dict[str, np.ndarray]:
    if isinstance(examples, Mapping):
        return {k: np.asarray(v) for k, v in examples.items()}
    inputs, labels = examples
    return {"inputs": np.asarray(inputs), "labels": np.asarray(labels)}


def local_batch(dataset: Dataset, global_indices: np.ndarray) -> dict[str, np.ndarray]:
    """This process's block of the global batch ``global_indices``, as a dict of numpy arrays."""
    local = fdata.process_slice(
        global_indices, process_index=jax.process_index(), process_count=jax.process_count()
    )
    return _as_batch(dataset.get(local))


class Prefetcher:
    """``build(step)`` for each step of ``steps``, made one step ahead on a background thread.

    :meth:`get` (called with the steps in order) returns ``build(step)`` and starts building the
    next step's, so the host makes batch ``s + 1`` while step ``s`` runs (a jitted step returns
    as soon as it is dispatched). Each batch is exactly what ``build`` gives for its step, so the
    run is bitwise the same as without prefetching. An exception raised by ``build`` is raised by
    the :meth:`get` of that step. :meth:`wait` lets the batch in progress finish; :meth:`close`
    stops the thread (the batch in progress finishes, none is started).
    """

    def __init__(self, build: Callable[[int], Any], steps: range):
        if steps.step != 1:
            raise ValueError(f"steps must be consecutive, got {steps}")
        self._build, self._stop = build, steps.stop
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fdiv-batch")
        self._next: tuple[int, concurrent.futures.Future] | None = None
        if len(steps):
            self._next = (steps.start, self._pool.submit(build, steps.start))

    def get(self, step: int) -> Any:
        if self._next is None or self._next[0] != step:
            building = None if self._next is None else self._next[0]
            raise ValueError(f"asked for the batch of step {step}; building step {building}'s")
        future = self._next[1]
        self._next = None
        batch = future.result()
        if step + 1 < self._stop:
            self._next = (step + 1, self._pool.submit(self._build, step + 1))
        return batch

    def wait(self) -> None:
        if self._next is not None:
            concurrent.futures.wait([self._next[1]])

    def close(self) -> None:
        self._next = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate(
    task: Task,
    state: TrainState,
    config: TrainConfig,
    mesh: jax.sharding.Mesh,
    predict_fn: Callable,
    data: Dataset | None = None,
) -> dict[str, np.ndarray]:
    """Run ``predict`` over the whole evaluation set (or ``data``, e.g. the validation set);
    outputs on the host, padding dropped."""
    data = task.eval_data if data is None else data
    outputs: dict[str, list[np.ndarray]] = {}
    for indices, mask in fdata.eval_batches(len(data), config.eval_batch):
        batch = parallel.global_batch(local_batch(data, indices), mesh)
        out = parallel.to_host(predict_fn(state.params, state.model_state, batch))
        for name, value in out.items():
            outputs.setdefault(name, []).append(value[mask])
    return {name: np.concatenate(values) for name, values in outputs.items()}


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteError(
                f"non-finite {name} = {value} at step {step}; stopping (the last checkpoint, "
                f"if any, predates this step and is intact)"
            )


def _check_eval(step: int, metrics: Mapping[str, float]) -> None:
    """An evaluation metric may be infinite (a divergence to a target the model cannot reach,
    an NLL at a zero probability) but never NaN: that is a broken state or a broken metric."""
    for name, value in metrics.items():
        if math.isnan(value):
            raise NonFiniteError(f"{name} is NaN at step {step}; stopping")


@jax.jit
def _finite_parts(state: TrainState) -> dict[str, jax.Array]:
    """Whether every floating leaf of the params / optimiser state / model state is finite."""

    def finite(tree):
        leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True

    return {
        "params": finite(state.params),
        "opt_state": finite(state.opt_state),
        "model_state": finite(state.model_state),
    }


def _check_state_finite(step: int, state: TrainState) -> None:
    """Never save a non-finite state (checked at checkpoint cadence only: one host sync)."""
    for part, ok in parallel.to_host(_finite_parts(state)).items():
        if not bool(ok):
            raise NonFiniteError(
                f"non-finite values in the {part} at step {step}; not saved, stopping (the last "
                "checkpoint predates this step and is intact)"
            )


def train(
    task: Task, config: TrainConfig, workdir: str, *, config_json: str | None = None
) -> TrainResult:
    """Train ``task`` to ``config.total_steps`` in ``workdir``, resuming from its latest checkpoint.

    Writes ``config.json`` (``config_json``, else the trainer's settings), ``metrics.jsonl``,
    ``summary.json`` and checkpoints under ``workdir/checkpoints``; only process 0 writes files
    other than checkpoints. The workdir holds one run (:mod:`fdiv.train.workdir`): a different
    config is refused before compute (extending ``train.total_steps`` is allowed and recorded in
    ``extensions.jsonl``), a second process is refused while this one runs, and on resume
    ``metrics.jsonl`` is cut back to the restored step so that it reads as one uninterrupted run.

    Raises:
      ValueError: a bad setting (before anything is computed); ConfigMismatchError (a
        ValueError) for a workdir that holds a different run.
      WorkdirBusyError: another process is training in ``workdir``.
      NonFiniteError: a train metric became NaN/inf; names the step and the metric.
    """
    config.validate()
    if (task.eval_data is None) != (task.predict is None):
        raise ValueError("Task.eval_data and Task.predict go together: give both or neither")
    if task.valid_data is not None and task.eval_data is None:
        raise ValueError("Task.valid_data needs eval_data and predict (it is evaluated with them)")
    if config_json is None:
        config_json = json.dumps({"train": dataclasses.asdict(config)})
    is_main = jax.process_index() == 0
    lock = wd.WorkdirLock(workdir).acquire() if is_main else None
    try:
        extension = wd.check_config(workdir, json.loads(config_json))
        return _train(task, config, workdir, config_json, extension)
    finally:
        if lock is not None:
            lock.release()


def _train(task, config, workdir, config_json, extension) -> TrainResult:
    mesh = parallel.make_data_mesh()
    replicated = parallel.replicated(mesh)
    is_main = jax.process_index() == 0

    def init(key):
        params, model_state = task.init(key)
        return init_state(key, params, model_state, task.optimizers)

    root_key = jax.random.key(config.seed)
    state = jax.jit(init, out_shardings=replicated)(root_key)
    checkpointer = Checkpointer(f"{workdir}/checkpoints", keep=config.keep_checkpoints)
    restored, latest, messages = checkpointer.restore_latest(state)
    start = 0
    if latest is not None:
        state = restored
        start = int(parallel.to_host(state.step))
        done = "; the run is complete, evaluating only" if start >= config.total_steps else ""
        messages.append(
            f"Resuming from the checkpoint at step {start} in {checkpointer.directory}{done}"
        )
    if is_main:
        dropped = wd.truncate_metrics(workdir, start)
        if dropped:
            messages.append(f"metrics.jsonl cut back to step {start} ({dropped} line(s) after it)")
        if extension is not None:
            wd.record_extension(workdir, extension, start)
            messages.append(
                f"train.total_steps extended from {extension['from']} to {extension['to']} at "
                f"step {start} (recorded in extensions.jsonl)"
            )

    writer = RunWriter(
        workdir, enabled=is_main, total_steps=config.total_steps, initial_step=min(start, config.total_steps),
        progress=config.progress,
    )  # fmt: skip
    writer.message(
        f"{workdir}: {jax.process_count()} process(es), {jax.device_count()} device(s) "
        f"({jax.local_device_count()} local, {jax.devices()[0].platform})"
    )
    for text in messages:
        writer.message(text)
    writer.write_json("config.json", json.loads(config_json))

    step_fn = jax.jit(
        make_train_step(task.updates, task.optimizers, preprocess=task.preprocess),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
    )
    predict_fn = None if task.predict is None else jax.jit(task.predict)

    def batch_for(step: int) -> dict[str, jax.Array]:
        indices = fdata.train_indices(
            step, num_examples=len(task.train_data), batch_size=config.batch_size, seed=config.seed
        )
        return parallel.global_batch(local_batch(task.train_data, indices), mesh)

    prefetch: Prefetcher | None = None  # the next step's batch, built while this step runs

    pending: list[tuple[int, dict[str, jax.Array]]] = []  # device metrics not yet fetched
    # fetched and finite, not yet logged (after a resume: the restored step's open interval)
    checked: list[dict[str, np.ndarray]] = wd.load_interval(workdir, start) if start else []
    last_train: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    interval_start, interval_step = time.perf_counter(), start
    wall_start = time.perf_counter()

    def check_pending() -> None:
        """Fetch pending step metrics and stop on a non-finite one (the host syncs here)."""
        for s, m in pending:
            m = parallel.to_host(m)
            _check_finite(s, {k: float(v) for k, v in m.items()})
            checked.append(m)
        pending.clear()

    def interval_means() -> dict[str, float]:
        check_pending()
        means = {k: float(np.mean([m[k] for m in checked])) for k in checked[0]} if checked else {}
        checked.clear()
        return means

    def run_eval() -> tuple[dict[str, float], dict[str, np.ndarray]]:
        if prefetch is not None:
            prefetch.wait()  # no two threads ever read the datasets at once
        outputs = evaluate(task, state, config, mesh, predict_fn)
        summary = {f"eval/{k}": float(v) for k, v in task.summarize(outputs).items()}
        if task.valid_data is not None:
            valid = evaluate(task, state, config, mesh, predict_fn, task.valid_data)
            summary.update({f"valid/{k}": float(v) for k, v in task.summarize(valid).items()})
        _check_eval(int(parallel.to_host(state.step)), summary)
        return summary, outputs

    try:
        if task.train_data is not None:
            prefetch = Prefetcher(batch_for, range(start, config.total_steps))
        for step in range(start, config.total_steps):
            batch = prefetch.get(step) if prefetch is not None else {}
            state, metrics = step_fn(state, batch)
            pending.append((step + 1, metrics))
            done = step + 1
            final = done == config.total_steps
            record: dict[str, Any] = {}
            if done % config.log_every == 0 or final:
                last_train = interval_means()
                now = time.perf_counter()
                record.update(last_train)
                record["steps_per_sec"] = (done - interval_step) / max(now - interval_start, 1e-9)
                interval_start, interval_step = now, done
            if (
                predict_fn is not None
                and config.eval_every
                and done % config.eval_every == 0
                and not final
            ):
                eval_metrics, _ = run_eval()
                record.update(eval_metrics)
            if record:
                writer.log_metrics({"step": done, **record})
                writer.advance(done, last_train.get("loss"))
            if done % config.checkpoint_every == 0 or final:
                check_pending()  # never checkpoint a state whose metrics are unchecked
                _check_state_finite(done, state)
                checkpointer.save(state, done)
                if is_main:  # the open log interval's metrics, so a resume logs whole intervals
                    wd.save_interval(workdir, done, checked, keep=config.keep_checkpoints + 1)
        outputs = None
        if predict_fn is not None:
            eval_metrics, outputs = run_eval()
            final_step = int(parallel.to_host(state.step))
            # A re-opened finished run adds no duplicate line, but restores one a kill lost.
            if start < config.total_steps or not any(
                r.get("step") == final_step and any(k.startswith("eval/") for k in r)
                for r in wd.read_metrics(workdir)
            ):
                writer.log_metrics({"step": final_step, **eval_metrics})
        checkpointer.wait()
    finally:
        if prefetch is not None:
            prefetch.close()
        writer.close()
        checkpointer.close()

    final_step = int(parallel.to_host(state.step))
    trained_steps = final_step - start
    wall = time.perf_counter() - wall_start
    summary = {
        "step": final_step,
        "resumed_from": start if latest is not None else None,
        "wall_seconds": wall,
        "steps_per_sec": trained_steps / wall if trained_steps else None,
        **{f"train/{k}": v for k, v in last_train.items()},
        **eval_metrics,
    }
    if not trained_steps:  # a finished run re-opened: keep what its training recorded
        previous = wd.read_json(f"{workdir}/summary.json")
        kept = ("wall_seconds", "steps_per_sec")
        summary.update({k: v for k, v in previous.items() if k.startswith("train/") or k in kept})
    writer.write_json("summary.json", summary)
    if is_main and task.report is not None and outputs is not None:
        task.report(outputs, workdir)
    return TrainResult(state, summary)
