"""Shared fixtures, and a compilation cache for the whole session."""

import functools
import os
import shutil
import tempfile

import jax
import pytest

# Most of the suite's time is XLA compiling the same programs again (each experiment run builds
# fresh closures, so jit's in-memory cache misses while the compiled HLO is identical). One
# compilation cache per test session, shared by its xdist workers and removed at the end, compiles
# each program once without carrying anything over to the next session.
_CACHE_ENV = "FDIV_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:  # the controller
        os.environ[_CACHE_ENV] = config._fdiv_cache = tempfile.mkdtemp(prefix="fdiv-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    owned = getattr(config, "_fdiv_cache", None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


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
