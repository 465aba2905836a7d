"""The one-step distillation experiment: every divergence trains finitely; bad configs are refused."""

import json

import numpy as np
import pytest

from experiments import fdistill
from fdiv import generators


def small(module="fdistill_mog", **overrides):
    import importlib

    c = importlib.import_module(f"configs.{module}").get_config()
    c.train.total_steps = 100
    c.train.log_every = 1  # every step's losses are checked for finiteness and logged
    c.train.batch_size = 64
    c.train.progress = False
    c.num_eval_samples = 200
    c.train.eval_batch_size = 100
    c.num_real_samples = 1000
    c.generator.hidden = c.fake_score.hidden = c.discriminator.hidden = (32, 32)
    c.update(overrides)
    return c


def losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("divergence", generators.names())
def test_fdistill_is_finite_for_its_first_100_steps_for_every_divergence(divergence, tmp_path):
    # The trainer raises NonFiniteError on any non-finite metric, so finishing is the check;
    # the logged records confirm all 100 steps were looked at.
    summary = fdistill.run(small(divergence=divergence), str(tmp_path))
    records = losses(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 101))
    assert all(np.isfinite(r["generator/loss"]) and np.isfinite(r["critic/loss"]) for r in records)
    assert 0 <= summary["eval/high_quality"] <= 1
    uses_discriminator = divergence != "reverse_kl"
    assert ("critic/discriminator" in records[0]) == uses_discriminator
    if uses_discriminator:
        assert all(np.isfinite(r["generator/weight_max"]) for r in records)


@pytest.mark.parametrize("distance", ["l2", "pseudo_huber"])
def test_sim_is_finite_for_its_first_100_steps(distance, tmp_path):
    summary = fdistill.run(small("sim_mog", distance=distance), str(tmp_path))
    assert len(losses(tmp_path)) == 100
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert np.isfinite(summary["eval/mmd"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"divergence": "kullback"}, "kullback.*known"),
        ({"method": "gan"}, r"method='gan' is not one of \['fdistill', 'sim'\]"),
        ({"distance": "l1"}, r"distance='l1' is not one of \['l2', 'pseudo_huber'\]"),
        ({"huber_c": 0.0}, "huber_c must be > 0"),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, "0 < sigma_min < sigma_max"),
        ({"critic_steps": 0}, "critic_steps must be >= 1"),
    ],
)
def test_bad_configs_are_rejected_before_compute(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        fdistill.run(small(**overrides), str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_reversed_ratio_clip_is_rejected(tmp_path):
    c = small()
    c.stabilizers.ratio_clip = (20.0, 0.1)
    with pytest.raises(ValueError, match=r"ratio_clip must be \(lo, hi\) with 0 < lo < hi"):
        fdistill.run(c, str(tmp_path))


def tiny_images(module, **overrides):
    c = small(module, **overrides)
    c.teacher.steps = 3
    c.teacher.channels = (8, 16)
    c.classifier_steps = 3
    c.train.total_steps = 3
    c.train.batch_size = 8
    c.num_eval_samples = 16
    c.train.eval_batch_size = 8
    return c


def test_digits_trains_a_teacher_a_feature_classifier_then_distils(tmp_path):
    summary = fdistill.run(tiny_images("fdistill_digits"), str(tmp_path))
    for stage in ("teacher", "classifier"):
        assert json.load(open(tmp_path / stage / "summary.json"))["step"] == 3
    assert summary["step"] == 3
    assert all(
        np.isfinite(summary[f"eval/{k}"]) for k in ("frechet", "teacher_frechet", "data_frechet")
    )
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert np.load(tmp_path / "samples.npy").shape == (16, 8, 8, 1)


def test_cifar10_config_runs_on_mock_data(tmp_path, tfds_mock):
    _, mock = tfds_mock
    with mock(16):
        summary = fdistill.run(tiny_images("fdistill_cifar10", method="sim"), str(tmp_path))
    assert summary["step"] == 3 and np.isfinite(summary["eval/frechet"])
    assert np.load(tmp_path / "samples.npy").shape == (16, 32, 32, 3)


def test_mixture_with_a_trained_teacher(tmp_path):
    c = small(mixture_teacher="trained")
    c.teacher.steps = 5
    summary = fdistill.run(c, str(tmp_path))
    assert json.load(open(tmp_path / "teacher" / "summary.json"))["step"] == 5
    assert summary["step"] == 100 and np.isfinite(summary["eval/mmd"])
