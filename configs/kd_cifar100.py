"""KD on CIFAR-100, ResNet-56 teacher -> ResNet-20 student: the paper-scale setting, for accelerators.

    python -m experiments.main --config=configs/kd_cifar100.py --workdir=runs/kd_cifar100 \
        --config.data_dir=/path/to/tensorflow_datasets

Needs CIFAR-100 prepared for TFDS in ArrayRecord format (``tfds build cifar100
--file_format=array_record`` on a machine with internet); the run stops with instructions if it
is not. The schedule is the usual CIFAR one: SGD with Nesterov momentum 0.9, learning rate 0.1
(batch 128) on a cosine schedule, weight decay 5e-4, 240 epochs (93,750 steps), random crop + flip.
Data parallel over every local device (and host, with ``--config.distributed.*``).
"""

from configs._kd_common import base_config, network, optimizer

STEPS = 240 * 50_000 // 128


def get_config():
    c = base_config()
    c.dataset = "cifar100"
    c.augment = True
    c.teacher = network("resnet56")
    c.student = network("resnet20")
    c.optimizer = optimizer(
        "sgd", learning_rate=0.1, schedule="cosine", warmup_steps=0, weight_decay=5e-4
    )
    c.teacher_optimizer = optimizer(
        "sgd", learning_rate=0.1, schedule="cosine", warmup_steps=0, weight_decay=5e-4
    )
    c.temperature = 4.0
    c.teacher_steps = STEPS
    c.train.total_steps = STEPS
    c.train.batch_size = 128
    c.train.eval_batch_size = 500
    c.train.log_every = 200
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    return c
