"""Exact resume after SIGKILL, and data parallelism over simulated devices and processes.

Each run is a real ``python -m experiments.main`` process: the device count of a JAX process is
fixed when it starts (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), and a kill must
hit a process, not a function.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fdiv.train import load_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Online BD-KD with a batch-norm CNN student: two optimisers, batch statistics over the global batch.
BASE = [
    "--config=configs/kd_digits.py",
    "--config.method=bdkd",
    "--config.student.model=cnn",
    "--config.student.cnn.channels=(8,)",
    "--config.student.cnn.hidden=16",
    "--config.student.cnn.batch_norm=True",
    "--config.train.progress=False",
]


def command(workdir, *overrides):
    return [sys.executable, "-m", "experiments.main", f"--workdir={workdir}", *BASE, *overrides]


def environment(devices):
    # Appended: the suite's own XLA flags (tests/conftest.py) stay in force.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "XLA_FLAGS": flags.strip()}


def run(workdir, *overrides, devices=1, timeout=300):
    out = subprocess.run(
        command(workdir, *overrides),
        cwd=ROOT,
        env=environment(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def assert_same_state(a, b, **tolerance):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if tolerance:
            np.testing.assert_allclose(x, y, **tolerance)
        else:
            np.testing.assert_array_equal(x, y)


def finished_checkpoints(workdir):
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def test_killed_and_resumed_run_equals_the_straight_run_bitwise(tmp_path):
    steps = [
        "--config.train.total_steps=150",
        "--config.train.checkpoint_every=10",
        "--config.train.log_every=50",
    ]
    run(tmp_path / "straight", *steps)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed, *steps), cwd=ROOT, env=environment(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        # Kill inside a log interval (lines every 50 steps, checkpoints every 10): after the
        # checkpoint at step 60, so the resumed run must re-log from there with whole means.
        while (
            max(finished_checkpoints(killed), default=0) < 60
            and time.monotonic() < deadline
            and proc.poll() is None
        ):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    reached = finished_checkpoints(killed)
    assert reached and max(reached) < 150, reached

    out = run(killed, *steps)
    assert f"Resuming from the checkpoint at step {max(reached)}" in out.stderr
    assert_same_state(
        load_arrays(tmp_path / "straight" / "checkpoints"), load_arrays(killed / "checkpoints")
    )
    straight_summary = json.load(open(tmp_path / "straight" / "summary.json"))
    resumed_summary = json.load(open(killed / "summary.json"))
    for key in ("eval/student/accuracy", "eval/student/nll", "eval/teacher/ece"):
        assert straight_summary[key] == resumed_summary[key]
    # The log reads as if the run had never stopped: equal line for line but for timing.
    assert without_timing(tmp_path / "straight") == without_timing(killed)


def without_timing(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_sec"} for line in f]


def test_one_device_and_four_devices_give_the_same_losses(tmp_path):
    steps = ["--config.train.total_steps=5", "--config.train.log_every=1"]
    run(tmp_path / "one", *steps, devices=1)
    out = run(tmp_path / "four", *steps, devices=4)
    assert "4 device(s)" in out.stderr
    one, four = train_losses(tmp_path / "one"), train_losses(tmp_path / "four")
    assert [s for s, _ in one] == [1, 2, 3, 4, 5] == [s for s, _ in four]
    np.testing.assert_allclose([v for _, v in four], [v for _, v in one], rtol=1e-5, atol=1e-5)
    assert_same_state(load_arrays(tmp_path / "one" / "checkpoints"), load_arrays(tmp_path / "four" / "checkpoints"), rtol=1e-4, atol=1e-5)  # fmt: skip


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("num_processes", [2])
def test_two_processes_match_two_devices_in_one_process(tmp_path, num_processes):
    steps = [
        "--config.train.total_steps=6",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=3",
    ]
    run(tmp_path / "single", *steps, devices=num_processes)

    port = free_port()
    multi = tmp_path / "multi"
    procs = [
        subprocess.Popen(
            command(
                multi,
                *steps,
                f"--config.distributed.num_processes={num_processes}",
                f"--config.distributed.process_id={i}",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            ),
            cwd=ROOT,
            env=environment(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(num_processes)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es), 2 device(s) (1 local" in outputs[0][1]
    assert (
        "| student |" in outputs[0][0] and "| student |" not in outputs[1][0]
    )  # process 0 reports
    single, multiple = train_losses(tmp_path / "single"), train_losses(multi)
    assert [s for s, _ in multiple] == list(range(1, 7))
    np.testing.assert_allclose([v for _, v in multiple], [v for _, v in single], rtol=1e-6)
    assert_same_state(load_arrays(tmp_path / "single" / "checkpoints"), load_arrays(multi / "checkpoints"), rtol=1e-6, atol=1e-7)  # fmt: skip
