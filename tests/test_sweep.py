"""Validation splits (fdiv.data), valid/* metrics from the trainer, and the sweep runner
(experiments.sweep): selection on validation metrics only, resumable runs, a workdir that holds
one sweep."""

from __future__ import annotations

import json
import textwrap
import time

import numpy as np
import pytest

from experiments import main as experiments_main
from experiments import sweep
from fdiv import data as fdata

# ------------------------------------------------------------------------------------------------
# Validation splits.


def test_validation_split_is_fixed_disjoint_and_held_out_of_train():
    train, valid = fdata.validation_indices(1437, 0.1)
    assert len(valid) == 144 and len(train) == 1437 - 144
    assert set(train).isdisjoint(valid) and set(train) | set(valid) == set(range(1437))
    again = fdata.validation_indices(1437, 0.1)
    np.testing.assert_array_equal(again[1], valid)  # the same for every call, run and seed

    full = fdata.load("digits", "train")
    held = fdata.load("digits", "valid", valid_fraction=0.1, seed=7)
    kept = fdata.load("digits", "train", valid_fraction=0.1)
    assert (len(held), len(kept), held.split, kept.split) == (144, 1293, "valid", "train")
    x_full, y_full = full.get(np.arange(len(full)))
    x_held, y_held = held.get(np.arange(len(held)))
    np.testing.assert_array_equal(x_held, x_full[valid])
    np.testing.assert_array_equal(y_held, y_full[valid])
    np.testing.assert_array_equal(kept.get(np.arange(3))[0], x_full[train[:3]])
    assert len(fdata.load("digits", "test", valid_fraction=0.1)) == 360  # never touched

    with pytest.raises(ValueError, match="needs valid_fraction > 0"):
        fdata.load("digits", "valid")
    with pytest.raises(ValueError, match=r"valid_fraction must be in \[0, 1\)"):
        fdata.load("digits", "train", valid_fraction=1.0)
    with pytest.raises(ValueError, match="allowed splits: train, valid, test"):
        fdata.load("digits", "validation")


# ------------------------------------------------------------------------------------------------
# Selection on a toy experiment whose validation and test metrics disagree.

TOY_EXPERIMENT = """
import json, os

def validate(config):
    if config.x < 0:
        raise ValueError("x must be >= 0")

def run(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "calls.txt"), "a") as f:
        f.write("run\\n")
    bonus = 0.5 if config.kind == "b" else 0.0
    return {
        "valid/score": -(config.x - 1.0) ** 2 + bonus + 0.01 * config.train.seed,
        "eval/score": -(config.x - 3.0) ** 2 + bonus,
        "eval/other": 10.0 * config.x,
    }

def format_summary(summary):
    return str(summary)
"""

TOY_CONFIG = """
from ml_collections import ConfigDict

def get_config():
    return ConfigDict({"experiment": "toy_pkg.toy_experiment", "x": 0.0, "kind": "a", "train": {"seed": 0}})
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    # an experiment of one's own: a module outside the package, named by its dotted path
    (tmp_path / "toy_pkg").mkdir()
    (tmp_path / "toy_pkg" / "__init__.py").write_text("")
    (tmp_path / "toy_pkg" / "toy_experiment.py").write_text(textwrap.dedent(TOY_EXPERIMENT))
    (tmp_path / "toy_config.py").write_text(textwrap.dedent(TOY_CONFIG))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _args(toy, *extra):
    return sweep.parser().parse_args(
        [f"--config={toy / 'toy_config.py'}", f"--workdir={toy / 'sweep'}", *extra]
    )


def test_selection_reads_validation_metrics_only(toy):
    """valid/score peaks at x = 1, eval/score at x = 3: the sweep selects x = 1 for each kind,
    and a selection rule on eval/* is refused."""
    args = _args(toy, "--grid=kind=a,b;x=0.0,1.0,2.0,3.0", "--seeds=0,1",
                 "--select=valid/score:max", "--group=kind", "--report=eval/other")  # fmt: skip
    text = sweep.sweep(args)
    selected = [line for line in text.splitlines() if line.startswith(("| a |", "| b |"))]
    assert [row.split(" | ")[1] for row in selected] == ["x=1.0", "x=1.0"]
    # the selected rows report the test metric of x = 1 (-4 for kind a), not the best test value
    assert "-4.0000 ± 0.0000" in selected[0] and "10.0000 ± 0.0000" in selected[0]
    appendix = text.split("Every setting of the sweep:")[1]
    assert appendix.count("| kind=") == 8
    assert (toy / "sweep" / "sweep.md").exists() and (toy / "sweep" / "sweep.png").exists()

    results = {
        (sweep.setting_name({"x": x}), s): {
            "valid/score": -((x - 1) ** 2),
            "eval/score": -((x - 3) ** 2),
        }  # fmt: skip
        for x in (0, 1, 3)
        for s in (0,)
    }
    chosen = sweep.select(results, [{"x": x} for x in (0, 1, 3)], [0], "valid/score", "max", [])
    assert chosen[()][0] == {"x": 1}
    with pytest.raises(sweep.SweepError, match="validation metrics only"):
        sweep.parse_select("eval/score:max")
    with pytest.raises(sweep.SweepError, match="does not exist"):
        sweep.sweep(_args(toy, "--grid=y=1,2", "--select=valid/score:max"))
    with pytest.raises(ValueError, match="x must be >= 0"):  # validated before any run
        sweep.sweep(_args(toy, "--grid=x=-1.0,1.0", "--select=valid/score:max"))


def test_sweep_resumes_finished_runs_and_refuses_a_changed_grid(tmp_path):
    """The KD digits config, 2 temperatures, 2-step runs with a 20% validation split and one
    teacher shared by the temperatures: the runs report valid/* beside eval/*; running the sweep
    again re-opens every finished run (no step trained); a changed grid in the workdir is
    refused before anything runs."""
    workdir = tmp_path / "sweep"
    common = [
        "--config=configs/kd_digits.py", f"--workdir={workdir}", "--seeds=0",
        "--set=valid_fraction=0.2", "--set=teacher_steps=2", "--set=train.total_steps=2",
        "--set=teacher_workdir={workdir}/teacher/seed{seed}",
        "--select=valid/student/accuracy:max", "--report=eval/student/ece",
    ]  # fmt: skip
    sweep.sweep(sweep.parser().parse_args([*common, "--grid=temperature=1.0,4.0"]))
    run_dir = workdir / "temperature=1.0" / "seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"valid/student/accuracy", "eval/student/accuracy"} <= set(summary)
    assert summary["resumed_from"] is None
    assert (workdir / "teacher" / "seed0" / "summary.json").exists()  # shared by both runs
    assert not (run_dir / "teacher").exists()

    sweep.sweep(sweep.parser().parse_args([*common, "--grid=temperature=1.0,4.0"]))
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["resumed_from"] == 2 and again["eval/student/accuracy"] == summary["eval/student/accuracy"]  # fmt: skip

    with pytest.raises(sweep.SweepError, match="holds a different sweep"):
        sweep.sweep(sweep.parser().parse_args([*common, "--grid=temperature=1.0,2.0"]))
    assert not (workdir / "temperature=2.0").exists()


def test_an_experiment_is_found_by_its_module_alone(toy):
    """config.experiment names a module: experiments.<name>, or a dotted path of one's own; an
    unknown name lists the experiments the package has."""
    assert experiments_main.experiment_module("kd").__name__ == "experiments.kd"
    assert experiments_main.experiment_module("toy_pkg.toy_experiment").run
    available = experiments_main.available()
    assert {"kd", "fdistill", "lm_fdpo", "lm_kd", "lm_reasoning", "dkm"} <= set(available)
    assert "sweep" not in available and "main" not in available  # modules, not experiments
    with pytest.raises(ValueError, match="the experiments are .*fdistill.*kd"):
        experiments_main.experiment_module("fdpo")
    with pytest.raises(ValueError, match="does not define validate, run, format_summary"):
        experiments_main.experiment_module("experiments._tables")


@pytest.mark.parametrize("workers", [1, 2])
def test_run_jobs_reports_each_jobs_own_time(workers):
    # Three 0.3 s jobs on two workers: the third waits 0.3 s for a worker (and every job for the
    # workers to spawn); the reported seconds are the job's own, not counted from the pool's start.
    done = []
    sweep.run_jobs(time.sleep, [(0.3,)] * 3, workers, lambda i, job, result, s: done.append((i, s)))
    assert [i for i, _ in done] == [1, 2, 3]
    for _, seconds in done:
        assert 0.3 <= seconds < 0.55
