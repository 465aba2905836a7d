"""Shared defaults of the KD configs (not a runnable config: no get_config)."""

from ml_collections import ConfigDict

from configs._common import distributed_config, train_config


def network(
    model: str,
    *,
    mlp_hidden=(256, 256),
    cnn_channels=(32, 64),
    cnn_hidden=128,
    batch_norm=False,
    width=1,
):
    """A network spec: ``model`` picks one of ``fdiv.models.names()``; the per-family options sit
    beside it, so switching ``--config.teacher.model=cnn`` needs no other override."""
    return ConfigDict(
        {
            "model": model,
            "mlp": {"hidden": tuple(mlp_hidden)},
            "cnn": {
                "channels": tuple(cnn_channels),
                "hidden": cnn_hidden,
                "batch_norm": batch_norm,
            },
            "resnet": {"width": width},
        }
    )


def optimizer(
    name="adam",
    learning_rate=1e-3,
    schedule="cosine",
    warmup_steps=0,
    weight_decay=0.0,
    clip_norm=0.0,
):
    return ConfigDict(
        {
            "name": name,
            "learning_rate": learning_rate,
            "schedule": schedule,
            "warmup_steps": warmup_steps,
            "weight_decay": weight_decay,
            "clip_norm": clip_norm,
        }
    )


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.experiment = "kd"
    c.method = "vanilla"  # student | vanilla | fkd | sinkd | dml | bdkd
    c.divergence = "kl"  # for method=fkd: any fdiv.generators.names()
    c.dataset = "digits"
    c.data_dir = ""  # TFDS data_dir ("" = TFDS default)
    c.augment = False  # random crop + flip (image data sets)
    # Held out of the training split for validation (fdiv.data.validation_indices; valid/* metrics
    # beside eval/*); 0 trains on the whole training split. Sweeps select on valid/* only.
    c.valid_fraction = 0.0
    c.temperature = 4.0
    c.kd_weight = 1.0  # lambda: weight of tau^2 D_f next to the cross-entropy
    c.teacher_steps = 1000  # offline methods: teacher pre-training steps
    c.teacher_workdir = ""  # "" = <workdir>/teacher; set to share one teacher between runs
    c.teacher = network("mlp")
    c.student = network("mlp", mlp_hidden=(32,))
    c.optimizer = optimizer()
    c.teacher_optimizer = optimizer()
    # BD-KD (METHODS.md §2, reconstruction): forward-KL weight sigmoid(kappa (H(p) - H(q))).
    c.bdkd = ConfigDict({"kappa": 1.0, "teacher_kd_weight": 0.1})
    # SinKD: alpha KL + (1 - alpha) CE + beta * scale * sum(plan * cost), the authors' settings.
    c.sinkd = ConfigDict(
        {
            "alpha": 0.9,
            "beta": 0.8,
            "scale": 1e-3,
            "temperature": 2.0,
            "epsilon": 0.1,
            "num_iters": 20,
            # the authors' KD term has no tau^2 (loss.py, DistillKL); True restores Hinton's tau^2
            "temperature_squared": False,
        }
    )
    c.train = train_config()
    c.distributed = distributed_config()
    return c
