"""DPH-RL on the verifiable sum task (8 prompts, answers of 4 tokens summing to 3..10).

    python -m experiments.main --config=configs/dphrl_toy.py --workdir=runs/dphrl_toy

``--config.divergence=none|forward_kl|js|reverse_kl|alpha`` (``none`` is GRPO alone); the penalty
weight is ``--config.eta``. The JS penalty is the catalog's JS, half the DPH-RL paper's
``g(u) = u log u - (u + 1) log((u + 1) / 2)``: ``--config.eta=2`` is the paper's g at weight 1.
"""

from configs._lm_common import base_config


def get_config():
    c = base_config("dphrl")
    c.length = 4
    c.divergence = "forward_kl"
    c.eta = 1.0
    c.num_prompts = 8
    c.target_offset = 3
    c.group_size = 16
    c.num_stored = 256
    c.eval_samples = 128
    c.pass_k = (1, 8, 32)
    c.train.batch_size = 64
    c.train.total_steps = 400
    return c
