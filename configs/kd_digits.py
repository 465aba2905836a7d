"""KD on scikit-learn's 8x8 digits (embedded, no download): the default main job.

    python -m experiments.main --config=configs/kd_digits.py --workdir=runs/kd_digits

Any method: ``--config.method=student|vanilla|fkd|sinkd|dml|bdkd``; any-f KD picks the generator
with ``--config.divergence=js`` (any name of ``fdiv.generators.names()``).
"""

from configs._kd_common import base_config, network, optimizer


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.teacher = network("mlp", mlp_hidden=(256, 256))
    c.student = network("mlp", mlp_hidden=(16,))
    c.optimizer = optimizer("adam", learning_rate=3e-3, schedule="cosine")
    c.teacher_optimizer = optimizer("adam", learning_rate=3e-3, schedule="cosine")
    c.teacher_steps = 2000
    c.train.total_steps = 2000
    c.train.log_every = 200
    c.train.checkpoint_every = 1000
    c.train.batch_size = 64
    c.train.eval_batch_size = 120  # 360 test images in 3 batches
    return c
