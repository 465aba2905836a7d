"""Shared defaults of the language-model alignment configs (not a runnable config)."""

from ml_collections import ConfigDict

from configs._common import distributed_config, train_config


def base_config(experiment: str) -> ConfigDict:
    """Sequences of ``length`` over ``vocab_size`` tokens (4^5 = 1,024: every divergence exact),
    a 2-layer transformer, the base policy fitted to a Markov language first."""
    c = ConfigDict()
    c.experiment = experiment
    c.vocab_size = 4
    c.length = 5
    c.language = {"seed": 0, "forbidden_per_token": 1}
    c.model = {"dim": 64, "num_heads": 4, "num_layers": 2}
    c.base = {
        "steps": 600,
        "batch_size": 256,
        "learning_rate": 3e-3,
        "num_samples": 4096,
        "workdir": "",  # default <workdir>/base; set to share one base policy between runs
    }
    c.optimizer = {"learning_rate": 1e-3}
    c.train = train_config(
        total_steps=500, batch_size=64, log_every=50, checkpoint_every=250, progress=False
    )
    c.distributed = distributed_config()
    return c
