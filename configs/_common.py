"""Config blocks every experiment shares: the trainer's settings and the multi-process launch."""

from ml_collections import ConfigDict


def train_config(**overrides) -> ConfigDict:
    """``config.train``: the fields of ``fdiv.train.TrainConfig``, with these defaults."""
    fields = {
        "total_steps": 1000,
        "batch_size": 64,
        "seed": 0,
        "eval_batch_size": 0,
        "log_every": 100,
        "eval_every": 0,
        "checkpoint_every": 500,
        "keep_checkpoints": 2,
        "progress": True,
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
