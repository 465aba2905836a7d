"""Tests of ``fdiv.data`` against independent references.

Expected values come from the upstream sources read directly in this file (scikit-learn's
digits, ``mnist1d.data.make_dataset``, raw TFDS records), from the spec written out in numpy (the
training stream materialised as concatenated ``default_rng([seed, e]).permutation(n)``), or from a
brute-force search (every output of ``augment_images`` must be one of the 2 (2p + 1)^2 flipped
windows of the zero-padded input). TFDS datasets run under ``tfds.testing.mock_data``; nothing is
downloaded.
"""

from __future__ import annotations

import random
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdiv import data
from fdiv.data import _datasets

# ------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------


def stream_reference(seed: int, num_examples: int, num_epochs: int) -> np.ndarray:
    """The training stream of the spec, materialised: epoch permutations concatenated."""
    return np.concatenate(
        [np.random.default_rng([seed, e]).permutation(num_examples) for e in range(num_epochs)]
    )


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a socket fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------


def test_names():
    assert data.names() == ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "mnist1d"]


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as info:
        data.load("imagenet", "train")
    for name in data.names():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_unknown_split_lists_allowed_splits(name):
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, valid, test"):
        data.load(name, "validation")


# ------------------------------------------------------------------------------------------------
# Embedded datasets.
# ------------------------------------------------------------------------------------------------


def test_digits_matches_sklearn_with_fixed_split():
    from sklearn.datasets import load_digits

    raw = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    want_x = raw.images[order].reshape(1797, 8, 8, 1) / 16.0
    want_y = raw.target[order]
    train, test = data.load("digits", "train"), data.load("digits", "test", seed=123)
    assert (len(train), len(test)) == (1437, 360)
    for ds, part in ((train, slice(0, 1437)), (test, slice(1437, 1797))):
        assert ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
        x, y = ds.get(np.arange(len(ds)))
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_allclose(x, want_x[part], rtol=0, atol=1e-7)
        np.testing.assert_array_equal(y, want_y[part])
    assert x.min() == 0.0 and x.max() == 1.0


def test_get_any_order_with_repeats_and_empty():
    ds = data.load("digits", "train")
    x_all, y_all = ds.get(np.arange(len(ds)))
    idx = np.array([5, 0, 5, 1436, 2], dtype=np.int32)
    x, y = ds.get(idx)
    assert x.shape == (5, 8, 8, 1) and y.shape == (5,)
    np.testing.assert_array_equal(x, x_all[idx])
    np.testing.assert_array_equal(y, y_all[idx])
    x, y = ds.get(np.array([], dtype=np.int64))
    assert x.shape == (0, 8, 8, 1) and y.shape == (0,)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.array([0, 1437]), IndexError),
        (np.array([-1]), IndexError),
        (np.array([0.0, 1.0]), TypeError),
        (np.zeros((2, 2), np.int64), TypeError),
    ],
)
def test_get_rejects_bad_indices(bad, error):
    with pytest.raises(error):
        data.load("digits", "train").get(bad)


@pytest.fixture(scope="module")
def mnist1d_reference():
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # noqa: NPY002 (make_dataset reseeds the global generator)
    try:
        return make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)  # noqa: NPY002


def test_mnist1d_generated_offline_without_touching_global_rngs(no_network, mnist1d_reference):
    # Regenerate (not from cache) with sockets disabled, checking global RNG streams are intact.
    _datasets._mnist1d_arrays.cache_clear()
    np.random.seed(7)  # noqa: NPY002
    random.seed(7)
    np_want, py_want = np.random.random_sample(3), random.random()  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    random.seed(7)
    train = data.load("mnist1d", "train")
    # The draws after loading are the ones that would have come without it.
    np.testing.assert_array_equal(np.random.random_sample(3), np_want)  # noqa: NPY002
    assert random.random() == py_want

    test = data.load("mnist1d", "test")
    assert (len(train), len(test)) == (4000, 1000)
    for ds, key in ((train, "x"), (test, "x_test")):
        assert ds.num_classes == 10 and ds.input_shape == (40, 1)
        x, y = ds.get(np.arange(len(ds)))
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_allclose(x[..., 0], mnist1d_reference[key], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(y, mnist1d_reference["y" + key[1:]])


def test_mnist1d_values_are_left_standardised():
    # Documented: values are as mnist1d makes them, zero mean / unit std over train + test.
    x_train, _ = data.load("mnist1d", "train").get(np.arange(4000))
    x_test, _ = data.load("mnist1d", "test").get(np.arange(1000))
    pooled = np.concatenate([x_train, x_test]).astype(np.float64)
    assert abs(pooled.mean()) < 1e-5 and abs(pooled.std() - 1.0) < 1e-5


# ------------------------------------------------------------------------------------------------
# TFDS datasets (mocked; the tfds_mock fixture is in conftest.py).
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape, num_classes, mean, std",
    [
        ("mnist", (28, 28, 1), 10, [0.1307], [0.3081]),
        ("cifar100", (32, 32, 3), 100, [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    ],
)
def test_tfds_dataset_standardises_raw_records(
    tfds_mock, tmp_path, name, shape, num_classes, mean, std
):
    tfds, mock = tfds_mock
    idx = np.array([3, 0, 3, 11], dtype=np.int64)
    with mock(12):
        ds = data.load(name, "train", data_dir=tmp_path)
        assert len(ds) == 12 and ds.input_shape == shape and ds.num_classes == num_classes
        x, y = ds.get(idx)
        raw = tfds.data_source(name, split="train", data_dir=tmp_path, download=False)
        records = [raw[int(i)] for i in idx]
    want_x = (np.stack([r["image"] for r in records]) / 255.0 - np.array(mean)) / np.array(std)
    want_y = np.array([r["label"] for r in records])  # the fine label for cifar100
    assert x.shape == (4, *shape) and x.dtype == np.float32
    assert y.shape == (4,) and y.dtype == np.int32
    np.testing.assert_allclose(x, want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, want_y)
    assert y.min() >= 0 and y.max() < num_classes
    np.testing.assert_array_equal(x[0], x[2])


def test_tfds_source_without_batched_reads():
    # A source with only __getitem__ (here a list of records) is read one record at a time.
    images = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
    source = [{"image": images[0], "label": 4}, {"image": images[1], "label": 7}]
    ds = data.TFDSDataset(
        "toy",
        "train",
        source,
        num_classes=10,
        input_shape=(2, 2, 3),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    x, y = ds.get([1, 0])
    np.testing.assert_allclose(x, (images[[1, 0]] / 255.0 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, [7, 4])


def test_tfds_missing_data_raises_with_instructions(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as info:
        data.load("cifar100", "train", data_dir=tmp_path)
    message = str(info.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "tfds build cifar100" in message and "download=True" in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or written


# ------------------------------------------------------------------------------------------------
# Training indices.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_examples, batch_size", [(10, 4), (12, 4), (7, 7), (5, 12)])
def test_train_indices_match_materialised_stream(num_examples, batch_size):
    seed, steps = 3, 9
    stream = stream_reference(seed, num_examples, steps * batch_size // num_examples + 1)
    for step in range(steps):
        got = data.train_indices(step, num_examples=num_examples, batch_size=batch_size, seed=seed)
        assert got.dtype == np.int64 and got.shape == (batch_size,)
        np.testing.assert_array_equal(got, stream[step * batch_size : (step + 1) * batch_size])


def test_train_indices_each_example_once_per_epoch():
    n, b, seed = 10, 3, 0
    stream = np.concatenate(
        [data.train_indices(s, num_examples=n, batch_size=b, seed=seed) for s in range(20)]
    )  # 60 positions = 6 epochs, batches straddling epoch boundaries
    for epoch in range(6):
        np.testing.assert_array_equal(np.sort(stream[epoch * n : (epoch + 1) * n]), np.arange(n))
    # Epochs are reshuffled, not repeated.
    assert not np.array_equal(stream[:n], stream[n : 2 * n])


def test_train_indices_straddling_batch():
    # n = 10, B = 4: step 2 reads positions 8..11, the last 2 of epoch 0 and first 2 of epoch 1.
    got = data.train_indices(2, num_examples=10, batch_size=4, seed=5)
    epoch0 = np.random.default_rng([5, 0]).permutation(10)
    epoch1 = np.random.default_rng([5, 1]).permutation(10)
    np.testing.assert_array_equal(got, np.concatenate([epoch0[8:], epoch1[:2]]))


def test_train_indices_independent_of_call_history_and_global_state():
    kwargs = dict(num_examples=13, batch_size=5, seed=42)
    forward = [data.train_indices(s, **kwargs) for s in range(12)]
    np.random.seed(0)  # noqa: NPY002  (global state must not matter)
    backward = {s: data.train_indices(s, **kwargs) for s in reversed(range(12))}
    for s in range(12):
        np.testing.assert_array_equal(forward[s], backward[s])
    other_seed = data.train_indices(0, num_examples=13, batch_size=5, seed=43)
    assert not np.array_equal(other_seed, forward[0])


def test_train_indices_only_computes_touched_epochs(monkeypatch):
    seeds = []
    real_default_rng = np.random.default_rng

    def recording_default_rng(seed):
        seeds.append(list(seed))
        return real_default_rng(seed)

    monkeypatch.setattr(np.random, "default_rng", recording_default_rng)
    step = 10**12  # positions 4e12 .. 4e12 + 3 with n = 7: epochs 571428571428 and ...29
    got = data.train_indices(step, num_examples=7, batch_size=4, seed=1)
    start = step * 4
    assert seeds == [[1, start // 7], [1, start // 7 + 1]]
    monkeypatch.undo()
    want = np.concatenate(
        [
            np.random.default_rng([1, start // 7]).permutation(7)[start % 7 :],
            np.random.default_rng([1, start // 7 + 1]).permutation(7)[: 4 - (7 - start % 7)],
        ]
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(step=-1, num_examples=10, batch_size=2, seed=0),
        dict(step=0, num_examples=0, batch_size=2, seed=0),
        dict(step=0, num_examples=10, batch_size=0, seed=0),
        dict(step=0, num_examples=10, batch_size=2, seed=-1),
    ],
)
def test_train_indices_rejects_bad_arguments(kwargs):
    step = kwargs.pop("step")
    with pytest.raises(ValueError):
        data.train_indices(step, **kwargs)


# ------------------------------------------------------------------------------------------------
# Process slices and evaluation batches.
# ------------------------------------------------------------------------------------------------


def test_process_slice_contiguous_blocks():
    global_batch = np.array([9, 4, 7, 1, 0, 3, 8, 2])
    blocks = [data.process_slice(global_batch, process_index=p, process_count=4) for p in range(4)]
    assert [b.tolist() for b in blocks] == [[9, 4], [7, 1], [0, 3], [8, 2]]
    single = data.process_slice(global_batch, process_index=0, process_count=1)
    np.testing.assert_array_equal(single, global_batch)


def test_process_slice_errors():
    batch = np.arange(6)
    with pytest.raises(ValueError, match="not divisible"):
        data.process_slice(batch, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="out of range"):
        data.process_slice(batch, process_index=3, process_count=3)


@pytest.mark.parametrize("num_examples, batch_size", [(10, 4), (12, 4), (3, 8), (1, 1)])
def test_eval_batches_cover_every_example_once(num_examples, batch_size):
    batches = list(data.eval_batches(num_examples, batch_size))
    assert len(batches) == -(-num_examples // batch_size)
    for indices, mask in batches:
        assert indices.shape == mask.shape == (batch_size,) and mask.dtype == np.bool_
        assert np.issubdtype(indices.dtype, np.integer)
        assert indices.min() >= 0 and indices.max() < num_examples  # padding is a valid index
    indices = np.concatenate([i for i, _ in batches])
    mask = np.concatenate([m for _, m in batches])
    np.testing.assert_array_equal(indices[mask], np.arange(num_examples))
    # Only the tail is padding.
    assert mask.sum() == num_examples and not mask[num_examples:].any()


def test_eval_batches_edge_cases():
    assert list(data.eval_batches(0, 4)) == []
    with pytest.raises(ValueError):  # raised at the call, not at the first next()
        data.eval_batches(10, 0)


# ------------------------------------------------------------------------------------------------
# Augmentation.
# ------------------------------------------------------------------------------------------------


def window_matches(images: np.ndarray, out: np.ndarray, pad: int) -> np.ndarray:
    """``[B, 2p + 1, 2p + 1, 2]`` bool: does ``out[b]`` equal the window of the zero-padded
    ``images[b]`` at offset (dy, dx), unflipped (0) or mirrored left-right (1)?"""
    _, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    windows = np.moveaxis(windows, 3, -1)  # [B, 2p+1, 2p+1, h, w, C]
    out = out[:, None, None]
    plain = (windows == out).all(axis=(3, 4, 5))
    mirrored = (windows[..., ::-1, :] == out).all(axis=(3, 4, 5))
    return np.stack([plain, mirrored], axis=-1)


def test_augment_outputs_are_flipped_crops_of_padded_input():
    images = np.random.default_rng(0).normal(size=(2000, 6, 5, 2)).astype(np.float32)
    out = np.asarray(data.augment_images(jax.random.key(1), jnp.asarray(images)))
    assert out.shape == images.shape and out.dtype == np.float32
    matches = window_matches(images, out, pad=4)
    # Random normal pixels make the matching window unique.
    assert (matches.sum(axis=(1, 2, 3)) == 1).all()
    b, dy, dx, flip = np.nonzero(matches)
    assert set(zip(dy.tolist(), dx.tolist(), strict=True)) == {
        (i, j) for i in range(9) for j in range(9)
    }
    assert 0.45 < flip.mean() < 0.55


def test_augment_deterministic_jittable_and_key_dependent():
    images = jnp.asarray(np.random.default_rng(1).normal(size=(16, 8, 8, 3)), jnp.float32)
    key = jax.random.key(0)
    eager = data.augment_images(key, images)
    np.testing.assert_array_equal(eager, data.augment_images(key, images))
    np.testing.assert_array_equal(eager, jax.jit(data.augment_images)(key, images))
    assert not np.array_equal(eager, data.augment_images(jax.random.key(1), images))
    legacy = data.augment_images(jax.random.PRNGKey(0), images)
    assert legacy.shape == images.shape


def test_augment_keeps_dtype_and_pad_zero_only_flips():
    images = np.random.default_rng(2).normal(size=(64, 4, 4, 1)).astype(np.float32)
    out = data.augment_images(jax.random.key(3), jnp.asarray(images, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    out = np.asarray(data.augment_images(jax.random.key(3), jnp.asarray(images), pad=0))
    flipped = (out == images[:, :, ::-1]).all(axis=(1, 2, 3))
    same = (out == images).all(axis=(1, 2, 3))
    assert (flipped ^ same).all() and flipped.any() and same.any()


def test_augment_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        data.augment_images(jax.random.key(0), jnp.zeros((4, 8, 8)))
