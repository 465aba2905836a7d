"""Token-level KD of a causal transformer on text (experiments.lm_kd), on a few stdlib files."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokenizers")

from configs.lm_kd_code import get_config  # noqa: E402
from experiments import lm_kd  # noqa: E402
from fdiv.data import text  # noqa: E402


def tiny(tmp_path, **overrides):
    config = get_config()
    files = [f for f in text.stdlib_files() if 3_000 < len(open(f, "rb").read()) < 20_000][:40]
    config.files = tuple(files)
    config.data_dir = str(tmp_path / "data")
    config.vocab_size = 300
    config.block_length, config.prefix_length = 12, 6
    config.teacher = {"dim": 16, "num_heads": 2, "num_layers": 1, "learning_rate": 3e-3}
    config.student = {"dim": 8, "num_heads": 2, "num_layers": 1}
    config.teacher_steps = 3
    config.num_samples = 1
    config.train.update(total_steps=3, batch_size=4, eval_batch_size=64, log_every=3, checkpoint_every=3)  # fmt: skip
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lm_kd")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"method": "student"}, marks=pytest.mark.slow),
        {"regime": "supervised", "divergence": "js", "teacher_top_k": 8},
        {"regime": "on_policy", "on_policy_fraction": 1.0, "divergence": "reverse_kl"},
        pytest.param({"regime": "sequence"}, marks=pytest.mark.slow),  # the on-policy sampler
    ],
)
def test_every_regime_trains_and_reports_perplexity(data_dir, tmp_path, overrides):
    config = tiny(data_dir, **overrides)
    config.teacher_workdir = str(data_dir / "teacher")  # shared: trained once for the module
    summary = lm_kd.run(config, str(tmp_path))
    assert summary["step"] == 3
    for split in ("eval", "valid"):
        assert np.isfinite(summary[f"{split}/student/perplexity"])
        assert summary[f"{split}/student/perplexity"] == pytest.approx(np.exp(summary[f"{split}/student/nll"]))  # fmt: skip
    if overrides["method" if "method" in overrides else "regime"] != "student":
        assert 0 <= summary["eval/agreement"] <= 1 and summary["eval/divergence"] >= 0


def test_fused_kd_term_matches_numpy_and_continuations_are_shifted_right(data_dir):
    """The fused D_f equals numpy's KL between softmaxed logits (hidden @ kernel) at the
    next-token positions; a sampled continuation's log-probability equals its teacher-forced one
    (the sampler reads the model one position ahead), and the data prefix is kept."""
    config = tiny(data_dir)
    teacher, student = lm_kd.model(config, "teacher"), lm_kd.model(config, "student")
    tokens = jnp.asarray(lm_kd.load(config, "train").get(np.arange(3))["tokens"])
    dummy = tokens[:, :-1]
    t_params = teacher.init(jax.random.key(1), lm_kd._context(dummy), dummy)["params"]
    s_params = student.init(jax.random.key(2), lm_kd._context(dummy), dummy)["params"]
    got = lm_kd.kd_term(config, student, s_params, teacher, t_params, tokens, None)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    def logits(module, params):
        return np.asarray(module.apply({"params": params}, lm_kd._context(dummy), dummy), np.float64)[:, 1:]  # fmt: skip

    log_p, log_q = log_softmax(logits(teacher, t_params)), log_softmax(logits(student, s_params))
    want = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))
    np.testing.assert_allclose(got, want, rtol=1e-4)

    rows, log_prob = lm_kd.continue_from_prefix(teacher, t_params, jax.random.key(3), tokens, 6)
    np.testing.assert_array_equal(rows[:, :7], tokens[:, :7])
    forced = -np.sum(np.asarray(lm_kd.token_nll(teacher, t_params, rows))[:, 6:], axis=1)
    np.testing.assert_allclose(log_prob, forced, rtol=1e-4)


def test_bad_configs_are_rejected_before_compute(data_dir):
    with pytest.raises(ValueError, match="regime='rl' is not one of"):
        lm_kd.validate(tiny(data_dir, regime="rl"))
    with pytest.raises(ValueError, match="prefix_length=12 must be < block_length=12"):
        lm_kd.validate(tiny(data_dir, prefix_length=12))
    with pytest.raises(ValueError, match="kl"):
        lm_kd.validate(tiny(data_dir, divergence="nope"))


def test_committed_config_is_valid():
    lm_kd.validate(get_config())


def test_results_table_pairs_each_kd_row_with_the_student_alone(tmp_path, monkeypatch):
    from experiments import lm_kd_table

    small = tiny(tmp_path)
    fields = {
        "files": tuple(small.files), "data_dir": small.data_dir, "vocab_size": 300,
        "block_length": 12, "prefix_length": 6, "teacher.dim": 16, "teacher.num_heads": 2,
        "student.dim": 8, "teacher_steps": 3, "num_samples": 0, "train.total_steps": 3,
        "train.batch_size": 4, "train.log_every": 3, "train.checkpoint_every": 3,
    }  # fmt: skip
    out = tmp_path / "table.md"
    argv = ["lm_kd_table", f"--workdir={tmp_path / 'runs'}", f"--out={out}", "--seeds=0", "--extra_seeds=", "--set"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv + [f"{k}={v!r}" for k, v in fields.items()])
    lm_kd_table.main()
    text = out.read_text()
    ppl = {}
    for label in (lm_kd_table.ALONE[0], lm_kd_table.DEFAULT_KD[0]):
        for seed in (0,):
            directory = lm_kd_table.run_dir(str(tmp_path / "runs"), seed, label)
            with open(f"{directory}/summary.json") as f:
                ppl[label, seed] = json.load(f)["eval/student/perplexity"]
    diff = ppl[lm_kd_table.DEFAULT_KD[0], 0] - ppl[lm_kd_table.ALONE[0], 0]
    row = next(line for line in text.splitlines() if line.startswith(f"| {lm_kd_table.DEFAULT_KD[0]} | 1 | ") and "of 1" in line)  # fmt: skip
    assert f"| {diff:.4f} ± 0.0000 | {int(diff < 0)} of 1 |" in row
    assert "| *teacher* | 1 |" in text
    # a second call reads the finished runs back instead of training them again
    lm_kd_table.main()
    assert out.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]


def test_top_k_teacher_is_computed_once_over_the_training_blocks(data_dir, tmp_path):
    """The supervised regime stores the teacher's top-k in the teacher's workdir once: numpy's
    top-k of the teacher's log-softmax at the temperature, read back by a later run; a cached
    batch gives the student the same loss as running the teacher."""
    config = tiny(data_dir, teacher_top_k=5, temperature=2.0)
    blocks = lm_kd.load(config, "train")
    teacher, student = lm_kd.model(config, "teacher"), lm_kd.model(config, "student")
    dummy = jnp.zeros((1, config.block_length), jnp.int32)
    t_params = teacher.init(jax.random.key(1), lm_kd._context(dummy), dummy)["params"]
    s_params = student.init(jax.random.key(2), lm_kd._context(dummy), dummy)["params"]
    cache = lm_kd.cache_teacher_top_k(config, teacher, t_params, blocks, str(tmp_path), step=7)
    assert cache.indices.shape == (len(blocks), config.block_length, 5)
    rows = np.array([0, 3, len(blocks) - 1])
    batch = cache.get(rows)
    inputs = batch["tokens"][:, :-1]
    logits = np.asarray(teacher.apply({"params": t_params}, lm_kd._context(inputs), inputs), np.float64)[:, 1:] / 2.0  # fmt: skip
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    want = -np.sort(-log_p, axis=-1)[..., :5]
    np.testing.assert_allclose(batch["top_k_log_probs"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(log_p, batch["top_k_indices"], -1), want, rtol=1e-5, atol=1e-5)  # fmt: skip
    # the student's loss: cached batch == the teacher run on the same tokens
    loss = lm_kd.student_loss_fn(config, student, teacher)
    params = {"student": s_params, "teacher": t_params}
    cached_loss = loss(params, {}, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(0))[0]  # fmt: skip
    live_loss = loss(params, {}, {"tokens": jnp.asarray(batch["tokens"])}, jax.random.key(0))[0]
    np.testing.assert_allclose(cached_loss, live_loss, rtol=1e-5)
    # a run stores the file beside its teacher and a second run reads it back
    config.teacher_workdir = str(tmp_path / "teacher")
    lm_kd.run(config, str(tmp_path / "a"))
    (path,) = (tmp_path / "teacher").glob("top_k5_temperature2_step3.npz")
    mtime = path.stat().st_mtime_ns
    lm_kd.run(config, str(tmp_path / "b"))
    assert path.stat().st_mtime_ns == mtime
