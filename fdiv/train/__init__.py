"""The one state-passing trainer shared by every experiment.

An experiment builds a :class:`Task` (init, :class:`Update` rules, optimisers, data, evaluation);
:func:`train` runs it: jitted steps with the state donated, data parallel over every device and
process (``jax.sharding``), orbax checkpoints with exact resume, ``metrics.jsonl``, a progress bar,
``summary.json``. See ``fdiv/train/state.py`` for how online distillation, alternating updates
and sampling inside the step are expressed.
"""

from fdiv.train import optim, parallel
from fdiv.train.checkpoint import Checkpointer, load_arrays
from fdiv.train.loop import Dataset, NonFiniteError, Task, TrainConfig, TrainResult, evaluate, train
from fdiv.train.stage import StageResult, fingerprint, train_stage
from fdiv.train.state import LossFn, TrainState, Update, init_state, make_train_step

__all__ = [
    "Checkpointer",
    "Dataset",
    "LossFn",
    "NonFiniteError",
    "StageResult",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Update",
    "evaluate",
    "fingerprint",
    "init_state",
    "load_arrays",
    "make_train_step",
    "optim",
    "parallel",
    "train",
    "train_stage",
]
