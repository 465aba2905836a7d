"""f-DPO on the enumerable preference task (hidden unigram reward, Bradley–Terry pairs).

    python -m experiments.main --config=configs/fdpo_toy.py --workdir=runs/fdpo_toy

``--config.divergence=reverse_kl|forward_kl|js|alpha`` (reverse_kl is DPO; ``alpha`` uses
``--config.alpha``, the f-DPO paper's convention: 1 - the catalog generator's alpha).
"""

from configs._lm_common import base_config


def get_config():
    c = base_config("lm_fdpo")
    c.divergence = "reverse_kl"
    c.beta = 0.5
    c.alpha = 0.5
    c.label_smoothing = 0.0
    c.reward_weights = (0.5, 0.15, -0.15, -0.5)
    c.num_pairs = 2048
    c.num_eval_pairs = 4096
    c.train.total_steps = 400
    return c
