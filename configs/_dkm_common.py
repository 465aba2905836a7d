"""Shared defaults of the deep-kernel-machine configs (not a runnable config: no get_config)."""

from ml_collections import ConfigDict

from configs._common import distributed_config, train_config


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "dkm"
    c.dataset = "diabetes"  # diabetes | digits
    c.methods = ("dkm", "nngp", "gp")  # each trained for num_seeds seeds
    c.num_seeds = 3  # seeds train.seed, train.seed + 1, ...
    c.test_fraction = 0.2  # diabetes: a fresh split per seed (digits has a fixed split)
    c.kernel = "sqexp"  # sqexp | relu (arc-cosine), at every layer
    c.num_layers = 2  # hidden Gram layers; the output kernel comes on top
    c.nu = 1.0  # nu_l = N_l / N, the same for every layer ...
    c.nu_per_layer = ()  # ... unless one value per layer is given here
    c.num_inducing = 100
    # DKM and NNGP inputs: none (the authors': G_0 = X X^T / N_0) | ard | scalar (learned scales)
    c.input_scale = "none"
    c.gp_ard = True  # the exact GP: one length scale per input (else one for all)
    c.output_init = "targets"  # targets (the authors': mu = inducing targets, random S) | prior
    c.learn_noise = True
    c.init_noise_var = 0.1  # of the standardised targets
    c.relu = ConfigDict({"weight_var": 1.0, "bias_var": 0.1, "learned": True})  # kernel=relu
    c.jitter = ConfigDict({"mul": 1e-4, "abs": 1e-4})  # K (1 + mul I) + abs I, the authors'
    c.precision = "float64"
    c.blas_threads = 1  # OpenBLAS threads during the run (more are slower on M x M solves)
    # DKM and NNGP: Adam, lr 1e-2 and betas (0.8, 0.9) as in the authors' scripts.
    c.optimizer = ConfigDict({"learning_rate": 1e-2, "b1": 0.8, "b2": 0.9, "schedule": "cosine"})
    c.gp_steps = 300
    c.gp_optimizer = ConfigDict(
        {"learning_rate": 5e-2, "b1": 0.9, "b2": 0.999, "schedule": "cosine"}
    )
    # batch_size above the training-set size means full batch (it is clamped to it).
    c.train = train_config(
        total_steps=1000, batch_size=4096, log_every=100, checkpoint_every=1000, progress=False
    )
    c.distributed = distributed_config()
    return c
