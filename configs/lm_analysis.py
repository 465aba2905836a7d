"""The Markov-category measures (categorical entropy, information surplus, spectral alignment)
over NLL training of the tiny transformer on three exact languages (issue 16).

    python -m experiments.main --config=configs/lm_analysis.py --workdir=runs/lm_analysis

``--config.languages=lag2`` runs one language; ``--config.num_seeds=1`` one seed.
"""

from ml_collections import ConfigDict

from configs._common import distributed_config, train_config


def get_config():
    c = ConfigDict()
    c.experiment = "lm_analysis"
    c.languages = ("markov", "order2", "lag2")
    c.vocab_size = 4
    c.length = 6  # 4^5 = 1,024 prefixes of the longest context, each measure exact
    c.language = {"seed": 0, "concentration": 0.5}
    c.num_seeds = 3
    c.num_samples = 8192  # training sequences sampled once per (language, seed)
    c.model = {"dim": 32, "num_heads": 4, "num_layers": 2}
    c.learning_rate = 3e-3
    # held-out probe of I(features; X_t+2 | X_t+1): draws of (context, next, after next) per half
    c.probe = {"samples": 8192, "l2": 1e-3, "steps": 100}
    c.train = train_config(
        total_steps=1500, batch_size=128, eval_batch_size=256, log_every=150, eval_every=150,
        checkpoint_every=750, progress=False,
    )  # fmt: skip
    c.distributed = distributed_config()
    return c
