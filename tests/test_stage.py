"""fdiv.train.train_stage: a first stage trained once, read back by later runs, refused if changed."""

import json
import os

import numpy as np
import pytest
from test_train import regression_task, small_config

from fdiv.train import stage as stage_lib
from fdiv.train import train
from fdiv.train.workdir import ConfigMismatchError

FINGERPRINT = json.dumps({"stage": "toy", "lr": 0.05})


def test_a_finished_stage_is_read_back_without_reopening_the_run(tmp_path, monkeypatch):
    first = stage_lib.train_stage(
        regression_task(), small_config(), str(tmp_path), config_json=FINGERPRINT, network="w"
    )
    assert os.path.exists(tmp_path / stage_lib.FINAL)
    # the stage's own trainer run gives the same weights and state
    direct = train(regression_task(), small_config(), str(tmp_path / "direct"))
    np.testing.assert_array_equal(first.params, np.asarray(direct.state.params["w"]))
    assert int(first.model_state["step"]) == 12

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage was re-opened")

    monkeypatch.setattr(stage_lib, "train", refuse)
    again = stage_lib.train_stage(
        regression_task(), small_config(), str(tmp_path), config_json=FINGERPRINT, network="w"
    )
    np.testing.assert_array_equal(again.params, first.params)
    np.testing.assert_array_equal(again.model_state["step"], first.model_state["step"])
    assert again.summary["step"] == 12 and again.summary["eval/mse"] == first.summary["eval/mse"]


def test_a_changed_stage_is_refused_and_a_longer_one_extends(tmp_path):
    stage_lib.train_stage(
        regression_task(), small_config(total_steps=6), str(tmp_path),
        config_json=FINGERPRINT, network="w",
    )  # fmt: skip
    with pytest.raises(ConfigMismatchError, match="lr"):
        stage_lib.train_stage(
            regression_task(), small_config(total_steps=6), str(tmp_path),
            config_json=json.dumps({"stage": "toy", "lr": 0.1}), network="w",
        )  # fmt: skip
    longer = stage_lib.train_stage(
        regression_task(), small_config(), str(tmp_path), config_json=FINGERPRINT, network="w"
    )
    assert longer.summary["step"] == 12 and longer.summary["resumed_from"] == 6


def test_a_stage_finished_without_its_weights_file_is_reopened(tmp_path):
    train(regression_task(), small_config(), str(tmp_path), config_json=FINGERPRINT)
    result = stage_lib.train_stage(
        regression_task(), small_config(), str(tmp_path), config_json=FINGERPRINT, network="w"
    )
    assert result.summary["step"] == 12 and os.path.exists(tmp_path / stage_lib.FINAL)


def test_fingerprint_keeps_only_the_named_fields_plus_extras():
    import ml_collections

    config = ml_collections.ConfigDict(
        {"teacher": {"width": 4}, "student": {"width": 2}, "seed": 1}
    )
    out = json.loads(stage_lib.fingerprint(config, ("teacher", "seed"), stage="teacher"))
    assert out == {"teacher": {"width": 4}, "seed": 1, "stage": "teacher"}
