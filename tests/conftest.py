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

# The suite's programs are tiny and run a few steps: XLA:CPU's LLVM optimisation is most of their
# compile time and buys them nothing (measured on the f-distill digits pipeline: 96 s -> 52 s, most
# of it the train step's and a conv network init's compiles). Numerics are the same IEEE operations
# either way (no fast math at any level); benchmarks and experiments run at XLA's default. The
# elemental emitters (fusion emitters off) halve the backend compile of the small divergence
# programs again (24 catalog value-and-grad programs: 2.1 s -> 0.8 s; whole suite 1054 s -> 888 s).
_TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false"
)


def pytest_configure(config):
    if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:  # the controller
        os.environ[_CACHE_ENV] = config._fdiv_cache = tempfile.mkdtemp(prefix="fdiv-xla-cache-")
    # Environment variables, not only jax.config: the workers and the experiment subprocesses that
    # tests start (tests/test_distributed.py, ...) inherit them, so they share the cache too.
    # XLA_FLAGS is read when the backend starts, after this hook.
    if _TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_TEST_XLA_FLAGS}".strip()
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_ENV]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
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
