"""fdiv.train.optim: the one optimiser builder reproduces, update for update, the optax chains the
experiments built by hand before it (written out here independently), and rejects unknown names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from fdiv.train import optim

STEPS = 40


def _trajectory(tx, steps=STEPS):
    """Parameters after ``steps`` updates on a fixed quadratic with noisy gradients."""
    params = {"w": jnp.linspace(-2.0, 3.0, 7), "b": jnp.array(0.5)}
    state = tx.init(params)
    keys = jax.random.split(jax.random.key(0), steps)
    for key in keys:
        noise = jax.random.normal(key, (7,))
        grads = {"w": 2.0 * params["w"] + 3.0 * noise, "b": 2.0 * params["b"]}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


# (builder arguments, the chain an experiment wrote by hand)
CASES = {
    "kd adam cosine": (
        dict(name="adam", learning_rate=1e-2, schedule="cosine"),
        optax.adam(optax.warmup_cosine_decay_schedule(1e-2, 1e-2, 0, STEPS)),
    ),
    "kd adam warm-up constant, weight decay, clip": (
        dict(name="adam", learning_rate=1e-2, warmup_steps=5, weight_decay=1e-3, clip_norm=1.0),
        optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.chain(
                optax.add_decayed_weights(1e-3),
                optax.adam(
                    optax.join_schedules(
                        [optax.linear_schedule(0.0, 1e-2, 5), optax.constant_schedule(1e-2)], [5]
                    )
                ),
            ),
        ),
    ),
    "kd sgd warm-up cosine": (
        dict(name="sgd", learning_rate=0.1, schedule="cosine", warmup_steps=4, weight_decay=5e-4),
        optax.chain(
            optax.add_decayed_weights(5e-4),
            optax.sgd(
                optax.warmup_cosine_decay_schedule(0.0, 0.1, 4, STEPS), momentum=0.9, nesterov=True
            ),  # fmt: skip
        ),
    ),
    "kd adamw": (
        dict(name="adamw", learning_rate=1e-2, weight_decay=0.05),
        optax.adamw(1e-2, weight_decay=0.05),
    ),
    "fdistill adamw (FastGen)": (
        dict(name="adamw", learning_rate=1e-3, b1=0.0, b2=0.99, weight_decay=0.01, clip_norm=10.0),
        optax.chain(
            optax.clip_by_global_norm(10.0), optax.adamw(1e-3, b1=0.0, b2=0.99, weight_decay=0.01)
        ),  # fmt: skip
    ),
    "fdistill cosine": (
        dict(name="adamw", learning_rate=1e-3, schedule="cosine", weight_decay=0.01),
        optax.adamw(optax.cosine_decay_schedule(1e-3, STEPS), weight_decay=0.01),
    ),
    "dkm adam cosine to 1%": (
        dict(
            name="adam", learning_rate=1e-2, b1=0.8, b2=0.9, schedule="cosine", final_fraction=0.01
        ),  # fmt: skip
        optax.adam(optax.cosine_decay_schedule(1e-2, STEPS, alpha=0.01), b1=0.8, b2=0.9),
    ),
    "lm clipped adam": (
        dict(name="adam", learning_rate=1e-3, clip_norm=1.0),
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
    ),
    "lm_reasoning warm-up cosine adamw": (
        dict(
            name="adamw",
            learning_rate=3e-3,
            schedule="cosine",
            warmup_steps=4,
            weight_decay=0.0,
            clip_norm=1.0,
        ),  # fmt: skip
        optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 4, STEPS), weight_decay=0.0),
        ),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_builder_reproduces_the_hand_written_chain(case):
    arguments, by_hand = CASES[case]
    built = optim.make_optimizer(arguments.pop("name"), total_steps=STEPS, **arguments)
    got, want = _trajectory(built), _trajectory(by_hand)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=case)
    assert jax.tree.structure(built.init(want)) == jax.tree.structure(by_hand.init(want))


def test_from_config_reads_a_block_with_defaults():
    block = ConfigDict({"learning_rate": 1e-3, "schedule": "cosine", "b1": 0.0, "weight_decay": 0.01})  # fmt: skip
    built = optim.from_config(block, STEPS, name="adamw")
    by_hand = optax.adamw(optax.cosine_decay_schedule(1e-3, STEPS), b1=0.0, weight_decay=0.01)
    np.testing.assert_array_equal(_trajectory(built)["w"], _trajectory(by_hand)["w"])


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"'lion' is not one of \['adam', 'adamw', 'sgd'\]"):
        optim.make_optimizer("lion", learning_rate=1.0)
    with pytest.raises(ValueError, match=r"'linear' is not one of \['constant', 'cosine'\]"):
        optim.make_optimizer("adam", learning_rate=1.0, schedule="linear")
