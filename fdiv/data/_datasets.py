"""Datasets: a name -> loader registry behind one random-access interface.

Every dataset returns ``float32`` inputs of shape ``[n, *input_shape]`` (channels-last) and
``int32`` labels of shape ``[n]`` for any array of example indices. Index order, not the dataset,
decides what a step sees (see :mod:`fdiv.data._sampling`), so there is no iterator state to
checkpoint.

- ``digits`` and ``mnist1d`` are built in memory from installed packages (scikit-learn,
  mnist1d); they never touch the disk or the network.
- ``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100`` are read with ``tfds.data_source``
  from an already prepared TFDS directory (ArrayRecord format). fdiv never downloads them: when
  the files are missing :func:`load` raises ``FileNotFoundError`` saying how to prepare them.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import random
import types
from collections.abc import Callable

import numpy as np

__all__ = [
    "ArrayDataset",
    "Dataset",
    "Subset",
    "TFDSDataset",
    "load",
    "names",
    "validation_indices",
]

SPLITS = ("train", "valid", "test")
# The validation split's permutation is seeded by this constant, never by a run's seed: every run
# (and every member of a sweep) must select on the same held-out examples.
VALIDATION_SEED = 0


class Dataset(abc.ABC):
    """A split of a classification dataset with random access by example index.

    Attributes:
        name: registry name, e.g. ``"cifar10"``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        num_classes: labels lie in ``[0, num_classes)``.
        input_shape: shape of one input, channels-last, e.g. ``(32, 32, 3)``.
    """

    name: str
    split: str
    num_classes: int
    input_shape: tuple[int, ...]

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Examples at ``indices`` (any order, repeats allowed).

        Args:
            indices: integer ``[n]``, each in ``[0, len(self))``.

        Returns:
            ``(inputs, labels)``: float32 ``[n, *input_shape]`` and int32 ``[n]``.
        """
        indices = np.asarray(indices)
        if indices.size == 0:  # np.asarray([]) is float64; an empty request is still valid
            indices = indices.astype(np.int64)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(
                f"indices must be a 1-D integer array, got {indices.dtype} of shape {indices.shape}"
            )
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            bad = indices[(indices < 0) | (indices >= len(self))][0]
            raise IndexError(f"index {bad} out of range for {self!r} with {len(self)} examples")
        return self._get(indices)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, size={len(self)})"


class ArrayDataset(Dataset):
    """A dataset held in memory as arrays (``inputs`` float32 ``[N, *input_shape]``, labels
    int32 ``[N]``)."""

    def __init__(self, name, split, inputs, labels, *, num_classes):
        inputs = np.asarray(inputs, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int32)
        if inputs.shape[:1] != labels.shape or labels.ndim != 1:
            raise ValueError(f"inputs {inputs.shape} and labels {labels.shape} disagree")
        self.name, self.split, self.num_classes = name, split, num_classes
        self.input_shape = tuple(inputs.shape[1:])
        self._inputs, self._labels = inputs, labels

    def __len__(self) -> int:
        return self._labels.shape[0]

    def _get(self, indices):
        return self._inputs[indices], self._labels[indices]


class ArrayDict:
    """In-memory examples as a dict of equal-length arrays: a trainer dataset whose batches are
    ``{name: array[indices]}`` (token sequences, contexts, stored samples ...)."""

    def __init__(self, **arrays: np.ndarray):
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays of different lengths: {lengths}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}


class Subset(Dataset):
    """The examples ``indices`` of another dataset, in that order (a validation or reduced
    training split): random access maps through ``indices``, nothing is copied."""

    def __init__(self, base: Dataset, indices, split: str):
        self.base, self.indices = base, np.asarray(indices, np.int64)
        self.name, self.split = base.name, split
        self.num_classes, self.input_shape = base.num_classes, base.input_shape

    def __len__(self) -> int:
        return self.indices.shape[0]

    def _get(self, indices):
        return self.base._get(self.indices[indices])


def validation_indices(num_examples: int, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, valid)`` example indices of a training split of ``num_examples``: a permutation
    seeded by ``VALIDATION_SEED`` (0), its first ``round(valid_fraction * n)`` indices held out
    for validation (at least 1), the rest kept for training; both sorted. The same for every run
    and every seed, so that a sweep compares settings on the same held-out examples."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    order = np.random.default_rng(VALIDATION_SEED).permutation(num_examples)
    held = min(max(1, round(valid_fraction * num_examples)), num_examples - 1)
    return np.sort(order[held:]), np.sort(order[:held])


class TFDSDataset(Dataset):
    """A split read lazily, one batch of records at a time, from a ``tfds.data_source``.

    Images (uint8) become ``(x / 255 - mean) / std`` per channel, in float32.
    """

    def __init__(self, name, split, source, *, num_classes, input_shape, mean, std):
        self.name, self.split, self.num_classes = name, split, num_classes
        self.input_shape = tuple(input_shape)
        self._source = source
        # Folded into one multiply-add: x * scale + shift == (x / 255 - mean) / std.
        self._scale = np.float32(1.0) / (np.float32(255.0) * np.asarray(std, np.float32))
        self._shift = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)

    def __len__(self) -> int:
        return len(self._source)

    def _get(self, indices):
        keys = [int(i) for i in indices]
        # One batched read lets ArrayRecord fetch the records in parallel.
        getitems = getattr(self._source, "__getitems__", None)
        records = getitems(keys) if getitems is not None else [self._source[k] for k in keys]
        if not records:
            return np.zeros((0, *self.input_shape), np.float32), np.zeros((0,), np.int32)
        images = np.stack([np.asarray(r["image"]) for r in records])
        if images.shape[1:] != self.input_shape or images.dtype != np.uint8:
            raise ValueError(
                f"{self!r}: expected uint8 images of shape {self.input_shape}, "
                f"got {images.dtype} {images.shape[1:]}"
            )
        labels = np.array([r["label"] for r in records], dtype=np.int32)
        return images.astype(np.float32) * self._scale + self._shift, labels


# ------------------------------------------------------------------------------------------------
# Embedded datasets.
# ------------------------------------------------------------------------------------------------

DIGITS_TRAIN = 1437  # of 1,797; the remaining 360 are the test split


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits, in the fixed split order: float32 ``[1797, 8, 8, 1]`` in
    ``[0, 1]`` and int32 ``[1797]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Seeded by 0, not by load()'s seed: every run must share the same train/test split.
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = (digits.images[order] / 16.0).astype(np.float32)[..., None]
    return images, digits.target[order].astype(np.int32)


def _load_digits(split, *, data_dir, seed):
    images, labels = _digits_arrays()
    part = slice(None, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return ArrayDataset("digits", split, images[part], labels[part], num_classes=10)


@functools.cache
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D generated with the package's default arguments (4,000 train / 1,000 test).

    ``make_dataset`` builds the data from templates: no file, no network. The ``url`` field of
    the default arguments (used only by ``mnist1d.data.get_dataset``'s download path) is dropped
    so no code path here could fetch it. Cached because generation takes ~2 s.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=True)
    args.pop("url")
    # make_dataset reseeds the global `random` and `np.random` generators; restore them so that
    # loading data doesn't change the random stream of unrelated code.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (legacy global)
    try:
        data = make_dataset(types.SimpleNamespace(**args))
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return {
        "train_x": data["x"].astype(np.float32)[..., None],
        "train_y": data["y"].astype(np.int32),
        "test_x": data["x_test"].astype(np.float32)[..., None],
        "test_y": data["y_test"].astype(np.int32),
    }


def _load_mnist1d(split, *, data_dir, seed):
    # Values are left as mnist1d makes them: already centred and scaled to unit variance over
    # the whole generated set (make_dataset does (x - mean) / std), so no further normalisation.
    arrays = _mnist1d_arrays()
    return ArrayDataset(
        "mnist1d", split, arrays[f"{split}_x"], arrays[f"{split}_y"], num_classes=10
    )


# ------------------------------------------------------------------------------------------------
# TFDS datasets.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TFDSSpec:
    input_shape: tuple[int, int, int]
    num_classes: int
    # Per-channel mean / std of the training images scaled to [0, 1] (all pixels pooled), the
    # values usually published for each dataset.
    mean: tuple[float, ...]
    std: tuple[float, ...]


_TFDS_SPECS = {
    "mnist": _TFDSSpec((28, 28, 1), 10, (0.1307,), (0.3081,)),
    "fashion_mnist": _TFDSSpec((28, 28, 1), 10, (0.2860,), (0.3530,)),
    # CIFAR std: the true pixel std (0.247, 0.243, 0.261), not the often-copied (0.2023, 0.1994,
    # 0.2010), which underestimates it.
    "cifar10": _TFDSSpec((32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # 100 fine labels ("label"); the 20 coarse labels are not used.
    "cifar100": _TFDSSpec((32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# tfds.data_source needs a random-access format; ArrayRecord is the one TFDS prepares for it.
_FILE_FORMAT = "array_record"


def _not_prepared_message(name, data_dir) -> str:
    where = repr(str(data_dir)) if data_dir is not None else "the default TFDS directory"
    dir_arg = f", data_dir={str(data_dir)!r}" if data_dir is not None else ""
    dir_flag = f" --data_dir={data_dir}" if data_dir is not None else ""
    return (
        f"TFDS dataset {name!r} is not prepared in {where} (fdiv never downloads data). "
        "On a machine with internet access prepare it in ArrayRecord format, e.g.\n"
        f"    python -c \"import tensorflow_datasets as tfds; tfds.data_source('{name}'{dir_arg}, "
        f"download=True, builder_kwargs={{'file_format': '{_FILE_FORMAT}'}})\"\n"
        f"or\n    tfds build {name}{dir_flag} --file_format={_FILE_FORMAT}\n"
        "then copy the directory here and pass data_dir=... (or set TFDS_DATA_DIR)."
    )


def _load_tfds(name, split, *, data_dir, seed):
    import tensorflow_datasets as tfds

    spec = _TFDS_SPECS[name]
    try:
        source = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            builder_kwargs={"file_format": _FILE_FORMAT},
        )
    except Exception as err:
        # TFDS reports missing data obliquely (a KeyError on empty splits, or a complaint about
        # the file format); ask the builder directly so the message can say what to do.
        builder = tfds.builder(name, data_dir=data_dir, file_format=_FILE_FORMAT)
        if not builder.is_prepared():
            raise FileNotFoundError(_not_prepared_message(name, data_dir)) from err
        raise
    return TFDSDataset(
        name,
        split,
        source,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        mean=spec.mean,
        std=spec.std,
    )


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    **{name: functools.partial(_load_tfds, name) for name in _TFDS_SPECS},
}


def names() -> list[str]:
    """Names accepted by :func:`load`, sorted."""
    return sorted(_LOADERS)


def load(
    name: str, split: str, *, data_dir=None, seed: int = 0, valid_fraction: float = 0.0
) -> Dataset:
    """Load split ``split`` (``"train"``, ``"valid"`` or ``"test"``) of dataset ``name``.

    With ``valid_fraction > 0`` a validation split is carved from the training split by a fixed
    rule (:func:`validation_indices`: a permutation seeded by 0, the first
    ``round(valid_fraction * n)`` examples): ``"valid"`` is that part and ``"train"`` the rest.
    The test split is never touched by it. With ``valid_fraction = 0`` (the default) ``"train"``
    is the whole training split and ``"valid"`` is refused.

    Args:
        name: one of :func:`names`.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        data_dir: TFDS data directory for the TFDS datasets (default: ``TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``); ignored by the embedded ``digits`` and ``mnist1d``.
        seed: accepted for a uniform signature; no built-in dataset depends on it, because
            splits are fixed so that every run evaluates on the same examples.
        valid_fraction: the share of the training split held out for validation, in ``[0, 1)``.

    Raises:
        ValueError: unknown ``name`` or ``split``; ``"valid"`` without a ``valid_fraction``.
        FileNotFoundError: a TFDS dataset is not prepared in ``data_dir``.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}")
    if split not in SPLITS:
        raise ValueError(
            f"unknown split {split!r} for {name!r}; allowed splits: {', '.join(SPLITS)}"
        )
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    if split == "test" or (split == "train" and valid_fraction == 0.0):
        return _LOADERS[name](split, data_dir=data_dir, seed=seed)
    if valid_fraction == 0.0:
        raise ValueError(
            f"split 'valid' of {name!r} needs valid_fraction > 0 (the share of the training "
            "split to hold out)"
        )
    full = _LOADERS[name]("train", data_dir=data_dir, seed=seed)
    train, valid = validation_indices(len(full), valid_fraction)
    return Subset(full, train if split == "train" else valid, split)
