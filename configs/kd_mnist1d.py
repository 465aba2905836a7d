"""KD on MNIST-1D (generated offline by the ``mnist1d`` package: 4,000 train / 1,000 test sequences).

    python -m experiments.main --config=configs/kd_mnist1d.py --workdir=runs/kd_mnist1d

A 1-D CNN teacher (32-64 channels, ~91% test accuracy) distilled into a 1-D CNN student with one
8-channel layer and 32 hidden units (~74% alone). Methods and divergences as in
``configs/kd_digits.py``.
"""

from configs._kd_common import base_config, network, optimizer


def get_config():
    c = base_config()
    c.dataset = "mnist1d"
    c.teacher = network("cnn", cnn_channels=(32, 64), cnn_hidden=128)
    c.student = network("cnn", cnn_channels=(8,), cnn_hidden=32)
    c.optimizer = optimizer("adam", learning_rate=3e-3, schedule="cosine")
    c.teacher_optimizer = optimizer("adam", learning_rate=3e-3, schedule="cosine")
    c.teacher_steps = 2000
    c.train.total_steps = 2000
    c.train.batch_size = 128
    c.train.eval_batch_size = 200  # 1,000 test sequences in 5 batches
    c.train.log_every = 200
    c.train.checkpoint_every = 1000
    return c
