"""Sweeps: every combination of a grid of config overrides x seeds, one resumable run each, and
each group's setting selected on validation metrics only.

    python -m experiments.sweep --config=configs/kd_digits.py --workdir=runs/sweep_kd \\
        --grid="temperature=1,4" --seeds=0,1 --set="valid_fraction=0.1" \\
        --set="teacher_workdir={workdir}/teacher/seed{seed}" \\
        --select=valid/student/accuracy:max

``--grid`` is ``field=v1,v2;field2=w1,w2`` (dotted fields of the config, values parsed as Python
literals, else strings); ``--set field=value`` (repeatable) fixes a field for every run, with
``{seed}`` and ``{workdir}`` replaced (above: one teacher per seed, shared by the temperatures).
``--group=method`` (repeatable) selects one setting per value of those grid fields (e.g. the best
temperature of each method). ``--select=METRIC:max|min`` must name a ``valid/*`` metric: the test
split never decides a setting. Each run lives in ``<workdir>/<field=value,...>/seed<k>`` and is an
ordinary experiment run (it resumes from its checkpoints; a finished run is re-opened, not
retrained). ``<workdir>/sweep.json`` records the sweep; a different grid, seed list or fixed
overrides in the same workdir is refused. ``--workers=N`` runs N runs at a time in separate
processes.

Writes ``<workdir>/sweep.md``: the selected setting of each group with its validation metric and
the test counterparts (``eval/*``, and every ``--report`` metric) as mean ± sample std over seeds,
then every setting of the grid as an appendix; ``<workdir>/sweep.png`` plots the selection metric
of every setting.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import importlib
import importlib.util
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments._tables import mean_std, numbers

BUSY_WAIT_SECONDS = 2.0


class SweepError(ValueError):
    """A bad sweep (grid, selection rule, or a workdir holding another sweep)."""


# ---------------------------------------------------------------------------------------------
# Parsing.


def parse_value(text: str) -> Any:
    """A Python literal (``4``, ``0.5``, ``True``, ``(8, 16)``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_grid(text: str) -> dict[str, list[Any]]:
    """``"a=1,2;b=x"`` -> ``{"a": [1, 2], "b": ["x"]}``; order kept, empty / repeated refused."""
    grid: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        field, sep, values = part.partition("=")
        field = field.strip()
        if not sep or not field or not values.strip():
            raise SweepError(f"grid entry {part!r}: expected field=v1,v2,...")
        if field in grid:
            raise SweepError(f"grid field {field!r} given twice")
        grid[field] = [parse_value(v.strip()) for v in values.split(",")]
    if not grid:
        raise SweepError("the grid is empty: give --grid='field=v1,v2'")
    return grid


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise SweepError(f"--set {item!r}: expected field=value")
        out[field.strip()] = parse_value(value.strip())
    return out


def parse_select(text: str) -> tuple[str, str]:
    metric, sep, mode = text.rpartition(":")
    if not sep or mode not in ("max", "min") or not metric:
        raise SweepError(f"--select={text!r}: expected METRIC:max or METRIC:min")
    if not metric.startswith("valid/"):
        raise SweepError(
            f"--select={text!r}: a setting is chosen on validation metrics only (valid/*), "
            "never on the test split's eval/*"
        )
    return metric, mode


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    if spec is None or spec.loader is None:
        raise SweepError(f"cannot load a config from {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def set_field(config, field: str, value: Any) -> None:
    """Set the dotted ``field`` of a ConfigDict; an unknown field lists its siblings."""
    *parents, leaf = field.split(".")
    node, walked = config, ["config"]
    for part in parents:
        if part not in node:
            raise SweepError(f"{'.'.join(walked)}.{part} does not exist; {'.'.join(walked)} has {sorted(node.keys())}")  # fmt: skip
        node, walked = node[part], [*walked, part]
    if leaf not in node:
        raise SweepError(f"{'.'.join(walked)}.{leaf} does not exist; {'.'.join(walked)} has {sorted(node.keys())}")  # fmt: skip
    current = node[leaf]
    if isinstance(current, tuple | list) and isinstance(value, int | float | str):
        value = (value,)  # a one-element tuple field given a scalar
    node[leaf] = tuple(value) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------------
# The runs.


def settings(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, in the grid's order."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def setting_name(setting: Mapping[str, Any]) -> str:
    """``field=value,...``: the run directory of a setting (``/`` and spaces replaced)."""
    text = ",".join(f"{k}={v}" for k, v in setting.items())
    return text.replace("/", "_").replace(" ", "")


def _substitute(value: Any, **names: Any) -> Any:
    return value.format(**names) if isinstance(value, str) else value


def run_config(base_path: str, fixed: Mapping[str, Any], setting: Mapping[str, Any], seed: int, workdir: str):  # fmt: skip
    config = load_config(base_path)
    for field, value in {**fixed, **setting}.items():
        set_field(config, field, _substitute(value, seed=seed, workdir=workdir))
    config.train.seed = seed
    if "progress" in config.train:
        config.train.progress = False
    return config


def wait_for_workdir(fn, run_dir: str):
    """``fn()``, retried while another process holds ``run_dir``'s stage lock: with several
    workers, runs sharing a first stage (a teacher) meet at its lock; the waiting run re-opens the
    finished stage afterwards."""
    from fdiv.train import workdir as wd

    said = False
    while True:
        try:
            return fn()
        except wd.WorkdirBusyError as e:
            if not said:
                print(f"{run_dir}: waiting ({e})", flush=True)
                said = True
            time.sleep(BUSY_WAIT_SECONDS)


def finished_summary(config, directory: str) -> dict | None:
    """The summary of a run of ``config`` (a ConfigDict) finished in ``directory``, read without
    re-opening it (re-assembling a table must not re-evaluate every run); else ``None``."""
    from fdiv.train import workdir as wd

    record = json.loads(config.to_json_best_effort(sort_keys=True))
    return wd.finished_summary(directory, record, config.train.total_steps)


def run_one(base_path: str, fixed, setting, seed: int, workdir: str, run_dir: str) -> dict:
    """One run in this process (also the worker entry point): the experiment's summary."""
    from absl import logging

    from experiments import main

    logging.set_verbosity(logging.WARNING)
    config = run_config(base_path, fixed, setting, seed, workdir)
    experiment = main.experiment_module(config.experiment)
    return numbers(wait_for_workdir(lambda: experiment.run(config, run_dir), run_dir))


def _timed(fn, *job) -> tuple[Any, float]:
    """``fn(*job)`` and the seconds it took (timed where it runs, not from the pool's start)."""
    t0 = time.perf_counter()
    return fn(*job), time.perf_counter() - t0


def run_jobs(fn, jobs: Sequence[tuple], workers: int, on_done) -> None:
    """``fn(*job)`` for every job, here (``workers <= 1``) or in ``workers`` spawned processes
    (a fresh JAX each, never forked; ``fn`` must be a module-level function);
    ``on_done(i, job, result, seconds)`` as each finishes (``i`` counts from 1; ``seconds``: that
    job's own time, not counting its wait for a worker)."""
    if workers <= 1:
        for i, job in enumerate(jobs, 1):
            on_done(i, job, *_timed(fn, *job))
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_timed, fn, *job): job for job in jobs}
        for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
            on_done(i, futures[future], *future.result())


def check_workdir(workdir: str, record: Mapping[str, Any]) -> None:
    """Refuse a workdir that holds another sweep; record this one in a new workdir."""
    path = os.path.join(workdir, "sweep.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        if changed:
            lines = "\n".join(f"  {k}: {json.dumps(old.get(k))} -> {json.dumps(record.get(k))}" for k in changed)  # fmt: skip
            raise SweepError(
                f"{workdir} holds a different sweep:\n{lines}\nA sweep workdir holds one grid; "
                "start this one in a new --workdir (the selection rule may change freely)."
            )
        return
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Selection and the report.


def select(
    results: Mapping, grid_settings, seeds, metric: str, mode: str, group: Sequence[str],
    tiebreak: tuple[str, str] | None = None,
):  # fmt: skip
    """Per group (the values of the ``group`` fields): the setting whose mean of ``metric`` over
    seeds is best; equal means (to 1e-9) go to the better mean of ``tiebreak`` (``(metric, mode)``,
    also ``valid/*``), then to the first setting. Only these validation metrics are read.
    Returns ``{group key: (setting, mean)}`` in first-appearance order."""
    best: dict[tuple, tuple[dict, float, tuple]] = {}
    rules = [(metric, mode)] + ([tiebreak] if tiebreak else [])
    for setting in grid_settings:
        score, means = [], []
        for name, rule in rules:
            values = [results[(setting_name(setting), s)].get(name) for s in seeds]
            if any(v is None for v in values):
                raise SweepError(
                    f"metric {name!r} missing from the runs of {setting_name(setting)}; "
                    f"they report {sorted(results[(setting_name(setting), seeds[0])])}"
                )
            means.append(float(np.mean(values)))
            score.append((1.0 if rule == "max" else -1.0) * round(means[-1], 9))
        key = tuple(setting[g] for g in group)
        if key not in best or tuple(score) > best[key][2]:
            best[key] = (setting, means[0], tuple(score))
    return {key: (setting, mean) for key, (setting, mean, _) in best.items()}


def report(results, grid_settings, seeds, metric, mode, group, extra: Sequence[str]) -> str:
    tested = "eval/" + metric[len("valid/") :]
    columns = [metric, tested, *[m for m in extra if m not in (metric, tested)]]

    def cells(setting):
        runs = [results[(setting_name(setting), s)] for s in seeds]
        return [mean_std([r[c] for r in runs]) if all(c in r for r in runs) else "—" for c in columns]  # fmt: skip

    chosen = select(results, grid_settings, seeds, metric, mode, group)
    lines = [
        f"Selected on `{metric}` ({mode}, mean over seeds {', '.join(map(str, seeds))})"
        + (f", one setting per {', '.join(group)}" if group else "")
        + "; test metrics of the selected settings, mean ± sample std over seeds:",
        "",
        "| " + " | ".join([*group, "selected setting", *columns]) + " |",
        "|" + "---|" * (len(group) + 1 + len(columns)),
    ]
    for key, (setting, _) in chosen.items():
        free = {k: v for k, v in setting.items() if k not in group}
        lines.append("| " + " | ".join([*map(str, key), setting_name(free) or "—", *cells(setting)]) + " |")  # fmt: skip
    lines += [
        "",
        "Every setting of the sweep:",
        "",
        "| setting | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for setting in grid_settings:
        lines.append(f"| {setting_name(setting)} | " + " | ".join(cells(setting)) + " |")
    return "\n".join(lines)


def plot(results, grid_settings, seeds, metric, path: str) -> None:
    from fdiv import plots

    xs = list(range(len(grid_settings)))
    series = {
        f"seed {s}": (xs, [results[(setting_name(g), s)][metric] for g in grid_settings])
        for s in seeds
    }
    plots.line_plot(
        series, path, xlabel="setting (index in sweep.md's appendix)", ylabel=metric,
        title=f"{metric} over the sweep",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The command.


def sweep(args: argparse.Namespace) -> str:
    grid = parse_grid(args.grid)
    fixed = parse_assignments(args.set)
    metric, mode = parse_select(args.select)
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [g for g in args.group if g not in grid]
    if unknown:
        raise SweepError(f"--group {unknown}: not grid fields; the grid has {list(grid)}")
    overlap = sorted(set(grid) & set(fixed))
    if overlap:
        raise SweepError(f"fields both in --grid and --set: {overlap}")
    grid_settings = settings(grid)
    # every run's config is built (and validated) before any run starts
    from experiments import main

    for setting in grid_settings:
        for seed in seeds:
            config = run_config(args.config, fixed, setting, seed, args.workdir)
            experiment = main.experiment_module(config.experiment)
            experiment.validate(config)
    record = {
        "config": os.path.normpath(args.config),
        "grid": grid,
        "set": fixed,
        "seeds": seeds,
    }
    check_workdir(args.workdir, json.loads(json.dumps(record)))

    jobs = [
        (setting, seed, os.path.join(args.workdir, setting_name(setting), f"seed{seed}"))
        for setting in grid_settings
        for seed in seeds
    ]
    results: dict[tuple[str, int], dict] = {}
    start = time.perf_counter()

    def done(i, setting, seed, summary, seconds):
        results[(setting_name(setting), seed)] = summary
        value = summary.get(metric)
        shown = f"{value:.4f}" if isinstance(value, float) else "—"
        print(f"[{i}/{len(jobs)}] {setting_name(setting)} seed {seed}: {metric} = {shown} ({seconds:.0f} s)", flush=True)  # fmt: skip

    run_jobs(
        run_one,
        [
            (args.config, fixed, setting, seed, args.workdir, run_dir)
            for setting, seed, run_dir in jobs
        ],
        args.workers,
        lambda i, job, summary, seconds: done(i, job[2], job[3], summary, seconds),
    )

    text = report(results, grid_settings, seeds, metric, mode, args.group, args.report)
    header = (
        f"# Sweep of `{args.config}`\n\n"
        f"Grid `{args.grid}`, fixed `{' '.join(args.set) or '—'}`, seeds {args.seeds}; "
        f"{len(jobs)} runs, {(time.perf_counter() - start) / 60:.1f} min "
        "(runs already complete are re-opened, not retrained).\n\n"
    )
    with open(os.path.join(args.workdir, "sweep.md"), "w", encoding="utf-8") as f:
        f.write(header + text + "\n")
    plot(results, grid_settings, seeds, metric, os.path.join(args.workdir, "sweep.png"))
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a configs/<name>.py file")
    p.add_argument("--workdir", required=True, help="the sweep's directory (one sweep)")
    p.add_argument("--grid", required=True, help="field=v1,v2;field2=w1,w2")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--set", action="append", default=[], help="field=value for every run")
    p.add_argument("--select", required=True, help="valid/METRIC:max or valid/METRIC:min")
    p.add_argument("--group", action="append", default=[], help="grid field: select per value")
    p.add_argument("--report", action="append", default=[], help="more metrics to tabulate")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (processes)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        print(sweep(args))
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
