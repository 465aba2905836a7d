"""Deep kernel machine vs NNGP vs exact GP on the embedded 8x8 digits (no download).

    python -m experiments.main --config=configs/dkm_digits.py --workdir=runs/dkm_digits

Classification by regression on one-hot targets (Gaussian likelihood; accuracy is the argmax of
the predictive mean), 1,437 training / 360 test images, 3 seeds.
"""

from configs._dkm_common import base_config


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.num_inducing = 100
    c.train.batch_size = 256  # minibatches of 1,437 (the authors' scripts use 256)
    c.train.eval_batch_size = 360
    # The exact GP's step is a 1,437 x 1,437 Cholesky and its gradient (~1 s on 2 cores): fewer,
    # larger steps.
    c.gp_steps = 100
    c.gp_optimizer.learning_rate = 0.1
    return c
