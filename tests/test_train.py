"""The trainer on toy tasks whose trajectories are known in closed form.

Quadratic losses ``0.5 ||w - target||^2`` under plain SGD with rate ``lr`` contract the error by
``(1 - lr)`` per update, which pins down the order, count and target of every update rule.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fdiv import data as fdata
from fdiv.train import NonFiniteError, Task, TrainConfig, Update, init_state, make_train_step, train


def quadratic(network, target):
    def loss(params, model_state, batch, key):
        return 0.5 * jnp.sum((params[network] - target) ** 2), ({}, {})

    return loss


def sgd_state(params, lrs):
    optimizers = {name: optax.sgd(lr) for name, lr in lrs.items()}
    return init_state(jax.random.key(0), params, {}, optimizers), optimizers


def test_updates_apply_in_order_with_repeats_and_leave_frozen_networks_alone():
    params = {"gen": jnp.array([4.0]), "critic": jnp.array([-2.0]), "frozen": jnp.array([7.0])}
    state, optimizers = sgd_state(params, {"gen": 0.5, "critic": 0.25})
    updates = [
        Update("critic", quadratic("critic", 1.0), ("critic",), repeats=3),
        Update("gen", quadratic("gen", 0.0), ("gen",)),
    ]
    step = jax.jit(make_train_step(updates, optimizers))
    for _ in range(2):
        state, metrics = step(state, {})
    # critic: 6 updates of rate 1/4 toward 1; gen: 2 updates of rate 1/2 toward 0.
    np.testing.assert_allclose(state.params["critic"], 1.0 + (-2.0 - 1.0) * 0.75**6, rtol=1e-6)
    np.testing.assert_allclose(state.params["gen"], 4.0 * 0.5**2, rtol=1e-6)
    np.testing.assert_array_equal(state.params["frozen"], 7.0)
    assert int(state.step) == 2
    # The reported critic loss is that of its last application in step 2 (before its update).
    np.testing.assert_allclose(metrics["critic/loss"], 0.5 * (3.0 * 0.75**5) ** 2, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["loss"], metrics["critic/loss"] + metrics["gen/loss"], rtol=1e-6
    )
    np.testing.assert_allclose(metrics["gen/grad_norm"], 2.0, rtol=1e-6)  # |w - 0| with w = 2


def test_online_pair_in_one_update_gets_each_its_own_gradient():
    # Each network is pulled toward the other's (detached) value: with rate 1/2 both meet halfway.
    def loss(params, model_state, batch, key):
        a, b = params["a"], params["b"]
        return 0.5 * (
            (a - jax.lax.stop_gradient(b)) ** 2 + (b - jax.lax.stop_gradient(a)) ** 2
        ).sum(), ({}, {})

    state, optimizers = sgd_state(
        {"a": jnp.array([0.0]), "b": jnp.array([4.0])}, {"a": 0.5, "b": 0.5}
    )
    state, _ = make_train_step([Update("pair", loss, ("a", "b"))], optimizers)(state, {})
    np.testing.assert_allclose(state.params["a"], [2.0])
    np.testing.assert_allclose(state.params["b"], [2.0])


def test_step_keys_are_fold_in_of_the_step_and_differ_between_repeats():
    seen = []

    def loss(params, model_state, batch, key):
        return jnp.sum(params["w"]) * 0.0, ({}, {"draw": jax.random.uniform(key)})

    state, optimizers = sgd_state({"w": jnp.zeros(1)}, {"w": 0.1})
    step = make_train_step([Update("u", loss, ("w",), repeats=2)], optimizers)
    for _ in range(3):
        state, metrics = step(state, {})
        seen.append(float(metrics["u/draw"]))
    expected = [
        float(
            jax.random.uniform(
                jax.random.fold_in(
                    jax.random.fold_in(jax.random.fold_in(jax.random.key(0), s), 0), 1
                )
            )
        )
        for s in range(3)
    ]
    np.testing.assert_allclose(seen, expected)
    assert len(set(seen)) == 3


def test_model_state_updates_are_merged():
    def loss(params, model_state, batch, key):
        count = model_state["w"]["count"] + 1
        return jnp.sum(params["w"] ** 2), ({"w": {"count": count}}, {})

    optimizers = {"w": optax.sgd(0.1)}
    state = init_state(
        jax.random.key(0), {"w": jnp.ones(2)}, {"w": {"count": jnp.zeros(())}}, optimizers
    )
    step = make_train_step([Update("u", loss, ("w",))], optimizers)
    for _ in range(3):
        state, _ = step(state, {})
    assert float(state.model_state["w"]["count"]) == 3


@pytest.mark.parametrize(
    "updates, match",
    [
        ([], "at least one"),
        ([Update("u", None, ("nope",))], r"optimiser.*missing \['nope'\]"),
        ([Update("u", None, ("w",), repeats=0)], "repeats must be >= 1"),
        ([Update("u", None, ("w",)), Update("u", None, ("w",))], "distinct"),
    ],
)
def test_make_train_step_rejects_bad_rules(updates, match):
    with pytest.raises(ValueError, match=match):
        make_train_step(updates, {"w": optax.sgd(0.1)})


def test_train_config_rejects_bad_values_with_the_field_named():
    with pytest.raises(ValueError, match=r"unknown train config fields \['batchsize'\].*allowed"):
        TrainConfig.from_mapping({"total_steps": 1, "batchsize": 4})
    with pytest.raises(ValueError, match="train.total_steps must be a positive integer"):
        TrainConfig(total_steps=0, batch_size=4).validate()
    with pytest.raises(ValueError, match=r"batch_size=10 is not divisible by the 4 devices"):
        TrainConfig(total_steps=1, batch_size=10).validate(num_devices=4)
    with pytest.raises(ValueError, match=r"eval_batch_size=6 is not divisible by the 4 devices"):
        TrainConfig(total_steps=1, batch_size=8, eval_batch_size=6).validate(num_devices=4)


# --- the host loop on a linear-regression task ----------------------------------------------


def regression_task(nan_at_step=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) > 0).astype(np.int32)
    train_data = fdata.ArrayDataset("toy", "train", x, y, num_classes=2)

    def loss(params, model_state, batch, key):
        pred = batch["inputs"] @ params["w"]
        value = jnp.mean((pred - batch["labels"]) ** 2)
        if nan_at_step is not None:  # poison the loss from a given step on
            value = jnp.where(model_state["w"]["step"] + 1 >= nan_at_step, jnp.nan, value)
        return value, ({"w": {"step": model_state["w"]["step"] + 1}}, {"mse": value})

    def predict(params, model_state, batch):
        return {"pred": batch["inputs"] @ params["w"], "labels": batch["labels"]}

    def summarize(outputs):
        return {
            "mse": float(np.mean((outputs["pred"] - outputs["labels"]) ** 2)),
            "count": len(outputs["pred"]),
        }

    return Task(
        init=lambda key: (
            {"w": jax.random.normal(key, (3,))},
            {"w": {"step": jnp.zeros((), jnp.int32)}},
        ),
        updates=[Update("reg", loss, ("w",))],
        optimizers={"w": optax.adam(0.05)},
        train_data=train_data,
        eval_data=train_data,
        predict=predict,
        summarize=summarize,
    )


def small_config(**overrides):
    defaults = dict(
        total_steps=12,
        batch_size=8,
        eval_batch_size=16,
        log_every=4,
        checkpoint_every=5,
        progress=False,
    )
    return TrainConfig(**{**defaults, **overrides})


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_train_writes_run_files_and_evaluates_every_example_once(tmp_path):
    result = train(regression_task(), small_config(), str(tmp_path), config_json='{"name": "toy"}')
    assert int(result.state.step) == 12
    assert json.load(open(tmp_path / "config.json")) == {"name": "toy"}
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [4, 8, 12]
    assert all(r["steps_per_sec"] > 0 for r in records if "loss" in r)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["step"] == 12 and summary["resumed_from"] is None
    assert summary["eval/count"] == 40  # 40 examples in batches of 16: the padding is dropped
    w = np.asarray(result.state.params["w"])
    x, y = regression_task().train_data.get(np.arange(40))
    np.testing.assert_allclose(summary["eval/mse"], np.mean((x @ w - y) ** 2), rtol=1e-5)
    assert sorted(d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == ["10", "12"]


def test_resume_continues_bitwise_and_says_so(tmp_path, capsys):
    straight = train(regression_task(), small_config(), str(tmp_path / "straight"))
    train(regression_task(), small_config(total_steps=7), str(tmp_path / "split"))
    capsys.readouterr()
    resumed = train(regression_task(), small_config(), str(tmp_path / "split"))
    assert "Resuming from the checkpoint at step 7" in capsys.readouterr().err
    assert resumed.summary["resumed_from"] == 7
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_with_step_and_metric_and_keeps_only_finite_checkpoints(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite (reg/loss|loss|reg/mse) = nan at step 6"):
        train(
            regression_task(nan_at_step=6),
            small_config(checkpoint_every=2, log_every=1),
            str(tmp_path),
        )
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2, 4]
    assert not (tmp_path / "summary.json").exists()


def test_eval_data_without_predict_is_rejected(tmp_path):
    task = regression_task()
    bad = Task(
        init=task.init, updates=task.updates, optimizers=task.optimizers, eval_data=task.eval_data
    )
    with pytest.raises(ValueError, match="eval_data and Task.predict go together"):
        train(bad, small_config(), str(tmp_path))
