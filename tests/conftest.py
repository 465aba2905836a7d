"""Shared fixtures."""

import functools

import pytest


@pytest.fixture
def tfds_mock(monkeypatch):
    """``tfds.testing.mock_data`` with its batched read fixed.

    tfds 4.9.10's mock assigns ``__getitems__`` to the mocked ArrayRecord source as a plain
    partial, so it is called without ``self`` and raises TypeError; real sources are unaffected.
    The wrapper supplies the missing (unused) ``self``, so ``load`` runs its real batched path.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing import mocking

    original = mocking._getitems

    @functools.wraps(original)
    def getitems(*args, **kwargs):
        return original(*((None, *args) if len(args) == 1 else args), **kwargs)

    monkeypatch.setattr(mocking, "_getitems", getitems)

    def mock(num_examples):
        return tfds.testing.mock_data(
            num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
        )

    return tfds, mock
