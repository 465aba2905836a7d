"""Config blocks every experiment shares: the trainer's settings and the multi-process launch."""

import dataclasses

from ml_collections import ConfigDict

from fdiv.train import TrainConfig

# The two fields TrainConfig requires; every other default is TrainConfig's own (one place).
REQUIRED_DEFAULTS = {"total_steps": 1000, "batch_size": 64}


def train_config(**overrides) -> ConfigDict:
    """``config.train``: the fields of ``fdiv.train.TrainConfig`` with its defaults (and
    :data:`REQUIRED_DEFAULTS` for the two it requires)."""
    fields = {
        f.name: REQUIRED_DEFAULTS.get(f.name, f.default) for f in dataclasses.fields(TrainConfig)
    }
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown train fields {unknown}; allowed: {sorted(fields)}")
    return ConfigDict({**fields, **overrides})


def distributed_config() -> ConfigDict:
    """``config.distributed``: one process unless ``num_processes`` > 1 (``jax.distributed``), or
    ``auto=True``: ``jax.distributed.initialize()`` finds the processes itself (Cloud TPU pods,
    SLURM ...), with the other three fields left at their defaults."""
    return ConfigDict(
        {"num_processes": 1, "process_id": 0, "coordinator_address": "", "auto": False}
    )
