"""One workdir is one run: a changed config is refused, one process at a time, logs exact on
resume, a re-opened finished run loses nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from test_train import regression_task, small_config

from fdiv.train import train
from fdiv.train import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def test_a_different_config_is_refused_with_each_field(tmp_path):
    cfg = {"method": "vanilla", "lr": 0.1, "train": {"total_steps": 12, "seed": 0}}
    train(regression_task(), small_config(), str(tmp_path), config_json=json.dumps(cfg))
    other = {**cfg, "method": "fkd", "lr": 0.2}
    with pytest.raises(wd.ConfigMismatchError) as err:
        train(regression_task(), small_config(), str(tmp_path), config_json=json.dumps(other))
    message = str(err.value)
    assert "lr: 0.1 -> 0.2" in message and 'method: "vanilla" -> "fkd"' in message
    assert "new --workdir" in message and "train.total_steps" in message
    assert json.load(open(tmp_path / "config.json")) == cfg  # nothing was rewritten


def test_a_changed_trainer_setting_is_refused_mid_run(tmp_path):
    """Without an experiment config the trainer's own settings are the fingerprint."""
    train(regression_task(), small_config(total_steps=12, checkpoint_every=4), str(tmp_path))
    os.remove(tmp_path / "summary.json")
    with pytest.raises(wd.ConfigMismatchError, match=r"train\.seed: 0 -> 1"):
        train(regression_task(), small_config(seed=1), str(tmp_path))


def test_exempt_fields_may_change_and_total_steps_may_grow(tmp_path):
    train(regression_task(), small_config(total_steps=8, checkpoint_every=4), str(tmp_path))
    # progress / log cadence are exempt; total_steps is an extension, recorded
    result = train(
        regression_task(),
        small_config(total_steps=12, checkpoint_every=4, log_every=2, progress=False),
        str(tmp_path),
    )
    assert int(result.state.step) == 12
    (record,) = [json.loads(x) for x in open(tmp_path / "extensions.jsonl")]
    assert (record["total_steps_from"], record["total_steps_to"], record["at_step"]) == (8, 12, 8)


def test_an_extended_run_is_the_straight_run_of_its_new_length(tmp_path):
    """Growing total_steps continues the same trajectory (data order, keys, optimiser state): the
    extended run's weights and training log equal a straight run's. The diffusion table's long
    part relies on it to continue shorter runs."""
    config = dict(checkpoint_every=4, log_every=2)
    straight = train(regression_task(), small_config(total_steps=12, **config), str(tmp_path / "s"))
    train(regression_task(), small_config(total_steps=6, **config), str(tmp_path / "e"))
    extended = train(regression_task(), small_config(total_steps=12, **config), str(tmp_path / "e"))
    assert extended.summary["resumed_from"] == 6
    np.testing.assert_array_equal(extended.state.params["w"], straight.state.params["w"])

    def training(workdir):
        return without_timing([r for r in lines(workdir) if "loss" in r])

    assert training(tmp_path / "e") == training(tmp_path / "s")
    assert len(training(tmp_path / "s")) == 6


def test_resume_cuts_the_log_back_and_logs_whole_intervals(tmp_path):
    """A kill after the checkpoint at step 6 (log lines every 4, checkpoints every 3): lines after
    step 6, and a line cut mid-way, are dropped; the resumed run's log equals a straight run's."""
    straight = tmp_path / "straight"
    train(
        regression_task(),
        small_config(checkpoint_every=3, log_every=4, keep_checkpoints=5),
        str(straight),
    )
    killed = tmp_path / "killed"
    train(
        regression_task(),
        small_config(checkpoint_every=3, log_every=4, keep_checkpoints=5),
        str(killed),
    )
    # Roll the finished run back to the state a kill at step 7 leaves: checkpoints up to 6,
    # lines up to 8 (written after the checkpoint at 6), half of a line, no summary.
    import shutil

    for step in os.listdir(killed / "checkpoints"):
        if step.isdigit() and int(step) > 6:
            shutil.rmtree(killed / "checkpoints" / step)
    keep = [json.dumps(r) for r in lines(killed) if r["step"] <= 8]
    (killed / "metrics.jsonl").write_text("\n".join(keep) + '\n{"step": 1')
    os.remove(killed / "summary.json")
    result = train(
        regression_task(),
        small_config(checkpoint_every=3, log_every=4, keep_checkpoints=5),
        str(killed),
    )
    assert result.summary["resumed_from"] == 6
    assert without_timing(lines(killed)) == without_timing(lines(straight))


def test_reopening_a_finished_run_keeps_its_summary_and_final_eval_line(tmp_path):
    first = train(regression_task(), small_config(), str(tmp_path)).summary
    assert "train/loss" in first and first["wall_seconds"] > 0
    # a kill after the final checkpoint, before the final eval line was written
    records = lines(tmp_path)
    final_eval = records[-1]
    assert any(k.startswith("eval/") for k in final_eval)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))
    again = train(regression_task(), small_config(), str(tmp_path)).summary
    assert again["train/loss"] == first["train/loss"]
    assert again["wall_seconds"] == first["wall_seconds"]
    assert without_timing(lines(tmp_path)) == without_timing(records)
    train(regression_task(), small_config(), str(tmp_path))  # once more: no duplicate line
    assert len(lines(tmp_path)) == len(records)


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fdiv.train import workdir as wd; "
            "wd.WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(wd.WorkdirBusyError, match=f"pid {holder.pid} on"):
            train(regression_task(), small_config(), str(tmp_path))
        assert not (tmp_path / "checkpoints").exists()  # refused before anything was computed
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    train(regression_task(), small_config(), str(tmp_path))  # the OS released the dead one's lock


def test_experiment_main_refuses_a_changed_config_before_any_stage(tmp_path):
    """The issue's repro: kd_digits vanilla, then --config.method=fkd in the same workdir."""
    base = [
        sys.executable, "-m", "experiments.main", "--config=configs/kd_digits.py",
        f"--workdir={tmp_path}", "--config.train.total_steps=2", "--config.teacher_steps=2",
        "--config.train.progress=False",
    ]  # fmt: skip
    first = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    teacher_mtime = os.path.getmtime(tmp_path / "teacher" / "summary.json")
    second = subprocess.run(
        [*base, "--config.method=fkd", "--config.divergence=js"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 3
    assert 'method: "vanilla" -> "fkd"' in second.stderr
    assert 'divergence: "kl" -> "js"' in second.stderr
    assert os.path.getmtime(tmp_path / "teacher" / "summary.json") == teacher_mtime


def test_a_shared_first_stage_refuses_a_different_teacher(tmp_path):
    """KD's teacher stage is fingerprinted by the teacher's fields only: a student-side change
    shares it, a teacher-side change is refused there."""
    from configs import kd_digits
    from experiments import kd

    def config(**overrides):
        c = kd_digits.get_config()
        c.train.total_steps, c.teacher_steps, c.train.progress = 2, 2, False
        c.teacher_workdir = str(tmp_path / "teacher")
        for k, v in overrides.items():
            c[k] = v
        return c

    kd.run(config(), str(tmp_path / "a"))
    kd.run(config(temperature=2.0), str(tmp_path / "b"))  # student-side: the teacher is shared
    with pytest.raises(wd.ConfigMismatchError, match=r"teacher_steps: 2 -> 3"):
        kd.run(config(teacher_steps=3), str(tmp_path / "c"))


def test_a_non_finite_state_is_never_saved(tmp_path):
    """The loss stays finite but a batch-statistics-like model state turns NaN at step 5: the
    checkpoint at step 6 is refused naming the part; the ones before stay."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fdiv import data as fdata
    from fdiv.train import NonFiniteError, Task, Update

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    data = fdata.ArrayDataset("toy", "train", x, np.zeros(40, np.int32), num_classes=2)

    def loss(params, model_state, batch, key):
        step = model_state["w"]["step"] + 1
        stat = jnp.where(step >= 5, jnp.nan, 0.0)  # not part of the loss
        return jnp.mean((batch["inputs"] @ params["w"]) ** 2), (
            {"w": {"step": step, "stat": stat}},
            {},
        )

    task = Task(
        init=lambda key: ({"w": jnp.ones(3)}, {"w": {"step": jnp.zeros((), jnp.int32), "stat": jnp.zeros(())}}),
        updates=[Update("reg", loss, ("w",))],
        optimizers={"w": optax.sgd(0.01)},
        train_data=data,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match="non-finite values in the model_state at step 6"):
        train(
            task, small_config(checkpoint_every=2, log_every=2, keep_checkpoints=5), str(tmp_path)
        )
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2, 4]


def test_a_nan_eval_metric_stops_the_run_but_an_infinite_one_is_a_result(tmp_path):
    """Eval metrics are checked like train metrics, except that +-inf is a legitimate
    measurement (an infinite divergence); NaN at the step-4 evaluation stops before step 4 is
    saved."""
    from fdiv.train import NonFiniteError

    def with_eval_value(value):
        task = regression_task()
        summarize = task.summarize
        return dataclasses.replace(task, summarize=lambda out: {**summarize(out), "div": value})

    config = small_config(eval_every=4, checkpoint_every=2, log_every=2, keep_checkpoints=5)
    with pytest.raises(NonFiniteError, match="eval/div is NaN at step 4"):
        train(with_eval_value(float("nan")), config, str(tmp_path / "nan"))
    assert sorted(int(s) for s in os.listdir(tmp_path / "nan" / "checkpoints") if s.isdigit()) == [
        2
    ]
    result = train(with_eval_value(float("inf")), config, str(tmp_path / "inf"))
    assert result.summary["eval/div"] == float("inf")


def _largest_file(folder):
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return max(files, key=os.path.getsize)


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    """64 bytes overwritten in the final checkpoint: it fails its checksum, the run resumes from
    the one before (naming both) and ends where a straight run ends."""
    cfg = small_config(checkpoint_every=4, log_every=4, keep_checkpoints=3)
    straight = train(regression_task(), cfg, str(tmp_path / "straight"))
    work = tmp_path / "run"
    train(regression_task(), cfg, str(work))
    assert sorted(f for f in os.listdir(work / "checkpoints") if f.endswith(".sha256")) == [
        "12.sha256", "4.sha256", "8.sha256"
    ]  # fmt: skip
    target = _largest_file(work / "checkpoints" / "12")
    with open(target, "r+b") as f:
        f.seek(max(0, os.path.getsize(target) // 2 - 32))
        f.write(bytes(range(64)))
    os.remove(work / "summary.json")
    capsys.readouterr()
    resumed = train(regression_task(), cfg, str(work))
    err = capsys.readouterr().err
    assert (
        "checkpoint step 12 is corrupt" in err and "falling back to the checkpoint at step 8" in err
    )
    assert resumed.summary["resumed_from"] == 8
    assert resumed.summary["eval/mse"] == straight.summary["eval/mse"]


def test_a_stray_step_folder_is_ignored(tmp_path, capsys):
    cfg = small_config(total_steps=8, checkpoint_every=4, log_every=4)
    train(regression_task(), cfg, str(tmp_path))
    os.makedirs(tmp_path / "checkpoints" / "99")  # e.g. left by a copy or a crashed tool
    capsys.readouterr()
    result = train(regression_task(), small_config(checkpoint_every=4, log_every=4), str(tmp_path))
    assert "checkpoint step 99" in capsys.readouterr().err
    assert result.summary["resumed_from"] == 8 and int(result.state.step) == 12


def _changed_config_is_refused(
    experiment, config, main_change, first_change, first_stage, tmp_path
):
    """Run ``config`` to the end; then a change of a main-stage field is refused at the main stage
    (finished, and mid-run: no summary yet), and a change of a first-stage field at that stage,
    each naming the field, with the first stage not recomputed."""
    workdir = tmp_path / "run"
    experiment.run(config(), str(workdir))
    stage_log = workdir / first_stage / "metrics.jsonl"
    logged = stage_log.read_text()
    (field, value), (first_field, first_value) = main_change, first_change
    with pytest.raises(wd.ConfigMismatchError, match=re.escape(field.rsplit(".", 1)[-1])):
        experiment.run(config(**{field: value}), str(workdir))
    os.remove(workdir / "summary.json")  # as if killed before the end
    with pytest.raises(wd.ConfigMismatchError, match=re.escape(field.rsplit(".", 1)[-1])):
        experiment.run(config(**{field: value}), str(workdir))
    with pytest.raises(wd.ConfigMismatchError, match=re.escape(first_field.rsplit(".", 1)[-1])):
        experiment.run(config(**{first_field: first_value}), str(workdir))
    assert stage_log.read_text() == logged  # re-opened (finished), never trained again


def test_the_lm_experiments_refuse_a_changed_main_or_base_stage(tmp_path):
    from test_lm_experiments import tiny

    from experiments import lm_fdpo

    def config(**overrides):
        return tiny("fdpo", **overrides)

    _changed_config_is_refused(
        lm_fdpo, config, ("beta", 0.25), ("base.steps", 31), "base", tmp_path
    )


def test_the_diffusion_experiment_refuses_a_changed_main_or_teacher_stage(tmp_path):
    from test_fdistill import small

    from experiments import fdistill

    def config(**overrides):
        c = small(**{"train": {"total_steps": 2, "log_every": 1}})
        c.teacher.steps = 2
        c.update_from_flattened_dict(overrides)
        return c

    _changed_config_is_refused(
        fdistill, config, ("gan_weight", 0.0), ("teacher.steps", 3), "teacher", tmp_path
    )
