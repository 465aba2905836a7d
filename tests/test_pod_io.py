"""Pod-ready I/O and launch: workdir files through ``etils.epath`` (a ``gs://`` workdir on a fake
bucket), TensorBoard event files beside ``metrics.jsonl``, ``--config.distributed.auto=True``, and
the next batch built on a background thread while the step runs."""

from __future__ import annotations

import dataclasses
import glob
import importlib
import json
import os
import struct
import subprocess
import sys
import threading

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem
from test_train import regression_task, small_config

from fdiv import plots
from fdiv.train import loop as train_loop
from fdiv.train import parallel, paths, train
from fdiv.train import workdir as wd
from fdiv.train.checkpoint import Checkpointer
from fdiv.train.writers import RunWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- a fake gs:// bucket --------------------------------------------------------------------


@pytest.fixture
def bucket(monkeypatch):
    """``gs://`` served from memory through etils.epath's own fsspec backend (what epath uses for
    ``gs://`` with gcsfs installed), with GCS's limits: objects only, no append, a rename is a
    copy and a delete. Yields the fake filesystem class (its ``store`` maps ``/bucket/key`` to
    the object)."""

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}  # this class's own objects, not MemoryFileSystem's shared ones
        pseudo_dirs = [""]

        def __init__(self, *args, finalize_on_close=False, **kwargs):  # gcsfs's option
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            path = os.fspath(path)
            for prefix in ("gs://", "gcs://"):
                path = path.removeprefix(prefix)
            return MemoryFileSystem._strip_protocol(path)

        def _open(self, path, mode="rb", **kwargs):
            if "a" in mode:
                raise NotImplementedError("GCS objects cannot be appended to")
            return super()._open(path, mode, **kwargs)

    registry = importlib.import_module("fsspec.registry")._registry
    monkeypatch.setitem(registry, "gcs", FakeGCS)
    monkeypatch.setitem(registry, "gs", FakeGCS)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath: fsspec, not tf.io
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    assert fsspec.filesystem("gcs") is not None
    yield FakeGCS
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def objects(fs, prefix="/bucket/run/"):
    return {
        k[len(prefix) :]: bytes(v.getvalue()) for k, v in fs.store.items() if k.startswith(prefix)
    }


def test_a_gs_path_is_a_uri_not_a_local_path(tmp_path, monkeypatch):
    """``os.path.abspath`` turned ``gs://bucket/run`` into ``<cwd>/gs:/bucket/run``."""
    monkeypatch.chdir(tmp_path)
    assert paths.absolute("gs://bucket/run/checkpoints") == "gs://bucket/run/checkpoints"
    assert paths.absolute("runs/a") == str(tmp_path / "runs" / "a")
    assert not paths.is_local("gs://bucket/run") and paths.is_local("runs/a")


def test_run_files_go_to_the_bucket_and_nothing_local(bucket, tmp_path, monkeypatch, capsys):
    """The trainer's writers and workdir checks on ``gs://bucket/run``: config.json, the config
    fingerprint, metrics.jsonl (appended without append), summary.json, extensions.jsonl, the
    log cut-back on resume, the open interval's metrics, the lock (skipped, saying so once)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wd, "_UNLOCKED", set())  # not told yet in this process
    run = "gs://bucket/run"
    lock = wd.WorkdirLock(run).acquire()
    wd.WorkdirLock(run).acquire().release()  # the experiment and the trainer both take it
    lock.release()
    assert capsys.readouterr().err.count("not a local path: the workdir lock is skipped") == 1

    config = {"method": "vanilla", "train": {"total_steps": 8, "seed": 0}}
    assert wd.check_config(run, config) is None  # a new workdir
    writer = RunWriter(run, enabled=True, total_steps=8, initial_step=0, progress=False)
    writer.write_json("config.json", config)
    records = [{"step": s, "loss": 1.0 / s, "steps_per_sec": 10.0 * s} for s in (2, 4, 6, 8)]
    for r in records:
        writer.log_metrics(r)
    writer.write_json("summary.json", {"step": 8, "eval/acc": float("nan")})
    writer.close()

    files = objects(bucket)
    assert json.loads(files["config.json"]) == config
    assert [json.loads(x) for x in files["metrics.jsonl"].splitlines()] == records
    assert wd.read_metrics(run) == records
    assert json.loads(files["summary.json"]) == {"step": 8, "eval/acc": "nan"}
    assert wd.read_json(f"{run}/summary.json")["step"] == 8
    assert wd.read_json(f"{run}/missing.json") == {}

    with pytest.raises(wd.ConfigMismatchError, match=r'method: "vanilla" -> "fkd"'):
        wd.check_config(run, {**config, "method": "fkd"})
    longer = {**config, "train": {"total_steps": 12, "seed": 0}}
    extension = wd.check_config(run, longer)
    assert extension == {"from": 8, "to": 12}
    wd.record_extension(run, extension, at_step=8)
    (line,) = objects(bucket)["extensions.jsonl"].splitlines()
    assert json.loads(line)["total_steps_to"] == 12

    # A resume at step 4: the lines after it go, as does a line cut by a kill.
    with epath.Path(f"{run}/metrics.jsonl").open("wb") as f:
        f.write(files["metrics.jsonl"] + b'{"step": 10, "lo')
    assert wd.truncate_metrics(run, 4) == 3
    assert wd.read_metrics(run) == records[:2]

    interval = [{"loss": np.float32(0.25)}, {"loss": np.float32(0.5)}]
    wd.save_interval(run, 4, interval, keep=2)
    loaded = wd.load_interval(run, 4)
    assert [m["loss"].dtype for m in loaded] == [np.float32] * 2
    assert [float(m["loss"]) for m in loaded] == [0.25, 0.5]

    assert os.listdir(tmp_path) == []  # no "gs:" folder, no lock file, nothing local


def test_experiment_outputs_go_to_the_bucket(bucket):
    from experiments import lm

    lm.finish("gs://bucket/run", {"step": 3, "eval/nll": 1.5})
    plots.scatter_2d(np.zeros((10, 2)), "gs://bucket/run/plots/samples.png")
    files = objects(bucket)
    assert json.loads(files["summary.json"]) == {"step": 3, "eval/nll": 1.5}
    assert files["plots/samples.png"].startswith(b"\x89PNG\r\n\x1a\n")


def test_checkpoint_checksums_and_stray_folders_on_a_bucket(bucket, tmp_path):
    """A run's checkpoints copied to the bucket verify against their ``<step>.sha256`` (the
    digest is the same locally and on the bucket), a corrupted object fails verification, and
    unfinished step folders (on gs://: no ``commit_success.txt``) are set aside.

    Orbax itself is not run against the fake: for ``gs://`` it talks to GCS directly
    (``google.cloud.storage`` for the bucket's layout, TensorStore's own GCS driver for the
    arrays), not through epath."""
    train(regression_task(), small_config(), str(tmp_path / "run"))
    local = tmp_path / "run" / "checkpoints"
    for path in glob.glob(f"{local}/**", recursive=True):
        if os.path.isfile(path):
            target = "gs://bucket/run/checkpoints/" + os.path.relpath(path, local)
            epath.Path(os.path.dirname(target)).mkdir(parents=True, exist_ok=True)
            epath.Path(target).write_bytes(open(path, "rb").read())

    remote = Checkpointer.__new__(Checkpointer)  # the file side only: no orbax manager
    remote.directory = "gs://bucket/run/checkpoints"
    assert remote._digest(12) == (local / "12.sha256").read_text()
    assert remote._verified(12) is True and remote._verified(10) is True
    (data,) = [k for k in objects(bucket, "/bucket/run/checkpoints/12/") if "default/d/" in k]
    epath.Path(f"gs://bucket/run/checkpoints/12/{data}").write_bytes(b"\0" * 64)
    assert remote._verified(12) is False and remote._verified(10) is True

    epath.Path("gs://bucket/run/checkpoints/14/default").mkdir(parents=True)  # a stray copy
    epath.Path("gs://bucket/run/checkpoints/14/default/x").write_text("x")
    epath.Path("gs://bucket/run/checkpoints/16/_CHECKPOINT_METADATA").write_text("{}")  # cut
    assert remote._set_aside_stray_steps() == ["14", "16"]
    names = {p.name for p in epath.Path("gs://bucket/run/checkpoints").iterdir()}
    assert {"10", "12", "14.stray", "16.stray"} <= names and not {"14", "16"} & names


# --- TensorBoard ------------------------------------------------------------------------------


def read_events(data):
    """``(step, {tag: value})`` of each scalar event of a TFRecord event file's bytes, checking
    the framing's masked CRC-32C as TensorBoard's reader does."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    out, i, versions = [], 0, []
    while i < len(data):
        header = data[i : i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc32c(header)
        payload = data[i + 12 : i + 12 + length]
        assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == masked_crc32c(
            payload
        )
        i += 16 + length
        event = event_pb2.Event.FromString(payload)
        if event.file_version:
            versions.append(event.file_version)
        elif event.summary.value:
            out.append((event.step, {v.tag: v.simple_value for v in event.summary.value}))
    assert versions == ["brain.Event:2"]
    return out


def as_float32(record):
    return {
        k: float(np.float32(v)) for k, v in record.items() if k != "step" and not isinstance(v, str)
    }


def test_event_files_hold_every_metrics_line_and_a_resume_adds_one(tmp_path):
    pytest.importorskip("tensorboardX")
    config = dict(checkpoint_every=3, log_every=4, eval_every=4)
    train(regression_task(), small_config(total_steps=7, **config), str(tmp_path))
    train(regression_task(), small_config(total_steps=12, **config), str(tmp_path))
    files = sorted(glob.glob(str(tmp_path / "events.out.tfevents.*")))
    assert len(files) == 2  # one per run start, beside metrics.jsonl
    events = [e for f in files for e in read_events(open(f, "rb").read())]
    metrics = wd.read_metrics(str(tmp_path))
    assert [r["step"] for r in metrics] == [4, 7, 7, 8, 12, 12]
    assert [(r["step"], as_float32(r)) for r in metrics] == events
    assert len(read_events(open(files[1], "rb").read())) == 3  # steps 8, 12, 12
    assert set(events[-2][1]) == {"loss", "reg/loss", "reg/mse", "reg/grad_norm", "steps_per_sec"}
    assert set(events[-1][1]) == {"eval/mse", "eval/count"}


def test_without_tensorboardx_no_event_file_is_written(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboardX" or m.startswith("tensorboardX.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    train(regression_task(), small_config(), str(tmp_path))
    assert not glob.glob(str(tmp_path / "events.*"))
    assert len(wd.read_metrics(str(tmp_path))) == 4


def test_event_file_on_a_bucket(bucket):
    pytest.importorskip("tensorboardX")
    writer = RunWriter(
        "gs://bucket/run", enabled=True, total_steps=4, initial_step=0, progress=False
    )
    writer.log_metrics({"step": 2, "loss": 0.5})
    writer.log_metrics({"step": 4, "loss": 0.25, "eval/acc": 1.0})
    (name,) = [k for k in objects(bucket) if k.startswith("events.out.tfevents.")]
    events = read_events(objects(bucket)[name])
    assert events == [(2, {"loss": 0.5}), (4, {"loss": 0.25, "eval/acc": 1.0})]


# --- --config.distributed.auto ------------------------------------------------------------------


@pytest.fixture
def initialize_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw)))
    return calls


def test_auto_calls_initialize_without_arguments(initialize_calls):
    parallel.initialize_distributed(
        num_processes=1, process_id=0, coordinator_address="", auto=True
    )
    assert initialize_calls == [((), {})]


def test_auto_with_explicit_settings_is_refused(initialize_calls):
    with pytest.raises(ValueError, match=r"cannot be combined with distributed\.num_processes=2"):
        parallel.initialize_distributed(
            num_processes=2, process_id=0, coordinator_address="", auto=True
        )
    with pytest.raises(ValueError, match=r"distributed\.coordinator_address='h:1'"):
        parallel.initialize_distributed(
            num_processes=1, process_id=0, coordinator_address="h:1", auto=True
        )
    parallel.initialize_distributed(num_processes=1, process_id=0, coordinator_address="")
    assert initialize_calls == []  # refused before, and one process without auto: no call


def test_every_config_has_distributed_auto_off():
    names = [
        os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "[a-z]*.py"))
    ]
    assert len(names) >= 10
    for name in names:
        config = importlib.import_module(f"configs.{name}").get_config()
        assert config.distributed.auto is False, name
    assert any(e == "distributed" for e in wd.EXEMPT)  # a launch setting: not in the fingerprint


def run_main(tmp_path, *overrides):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_", "PMI"))
    }
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", "--config=configs/kd_digits.py",
         f"--workdir={tmp_path}/w", "--config.train.total_steps=2", *overrides],
        cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_main_threads_auto_to_jax_distributed(tmp_path):
    """Here JAX detects no cluster: ``auto=True`` reaches ``jax.distributed.initialize()``,
    which says so, before any compute; with an explicit flag it is refused (exit 2)."""
    out = run_main(tmp_path, "--config.distributed.auto=True")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "distributed.auto=True: jax.distributed.initialize() found no cluster" in out.stderr
    out = run_main(tmp_path, "--config.distributed.auto=True", "--config.distributed.process_id=1")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot be combined with distributed.process_id=1" in out.stderr
    assert not os.path.exists(tmp_path / "w")


# --- the next batch on a background thread ------------------------------------------------------


def test_prefetcher_builds_the_next_step_ahead_on_another_thread():
    built, threads, ahead = [], set(), threading.Event()

    def build(step):
        built.append(step)
        threads.add(threading.get_ident())
        if step == 4:
            ahead.set()
        return {"x": np.full(3, step)}

    with train_loop.Prefetcher(build, range(3, 7)) as prefetch:
        assert prefetch.get(3)["x"].tolist() == [3, 3, 3]
        assert ahead.wait(10)  # step 4's batch is built before it is asked for
        assert [prefetch.get(s)["x"][0] for s in (4, 5, 6)] == [4, 5, 6]
        with pytest.raises(ValueError, match="asked for the batch of step 9"):
            prefetch.get(9)
    assert built == [3, 4, 5, 6]  # in order, each once, nothing past the last step
    assert threading.get_ident() not in threads
    assert not [t for t in threading.enumerate() if t.name.startswith("fdiv-batch")]


def test_prefetcher_raises_the_threads_error_at_its_step_and_stops():
    def build(step):
        if step == 2:
            raise KeyError("bad example")
        return step

    prefetch = train_loop.Prefetcher(build, range(0, 5))
    assert [prefetch.get(0), prefetch.get(1)] == [0, 1]
    with pytest.raises(KeyError, match="bad example"):
        prefetch.get(2)
    prefetch.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fdiv-batch")]


class Synchronous:
    """The loop as it was: each batch built when its step asks for it."""

    def __init__(self, build, steps):
        self.build = build

    def get(self, step):
        return self.build(step)

    def wait(self):
        pass

    def close(self):
        pass


def leaves(state):
    return [
        np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(state)
    ]


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def test_prefetched_run_is_bitwise_the_synchronous_run(tmp_path, monkeypatch):
    config = small_config(eval_every=4, checkpoint_every=3)
    prefetched = train(regression_task(), config, str(tmp_path / "prefetched"))
    monkeypatch.setattr(train_loop, "Prefetcher", Synchronous)
    synchronous = train(regression_task(), config, str(tmp_path / "synchronous"))
    for a, b in zip(leaves(prefetched.state), leaves(synchronous.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert without_timing(wd.read_metrics(str(tmp_path / "prefetched"))) == without_timing(
        wd.read_metrics(str(tmp_path / "synchronous"))
    )


def test_a_data_error_in_the_thread_stops_training_and_the_thread(tmp_path):
    task = regression_task()
    data = task.train_data
    calls = []

    class Failing:
        def __len__(self):
            return len(data)

        def get(self, indices):
            calls.append(len(calls))
            if len(calls) == 6:  # the batch of step 5
                raise OSError("record 17 unreadable")
            return data.get(indices)

    failing = dataclasses.replace(task, train_data=Failing())
    with pytest.raises(OSError, match="record 17 unreadable"):
        train(failing, small_config(checkpoint_every=4), str(tmp_path))
    assert len(calls) == 6  # nothing was built after the failing batch
    assert not [t for t in threading.enumerate() if t.name.startswith("fdiv-batch")]
    # the checkpoint at step 4 was written: a resume starts there
    resumed = train(task, small_config(checkpoint_every=4), str(tmp_path))
    assert resumed.summary["resumed_from"] == 4 and int(resumed.state.step) == 12
