"""Classifier knowledge distillation through the one trainer.

Methods (``config.method``):
  ``student``  the student alone, cross-entropy (the reference every method is compared with);
  ``vanilla``  offline KD from a pre-trained teacher, ``CE + lambda tau^2 KL`` (Hinton);
  ``fkd``      offline any-f KD, ``config.divergence`` picks the generator;
  ``sinkd``    offline SinKD: ``alpha KD + (1 - alpha) CE + beta c Sinkhorn`` (batch-wise);
  ``dml``      online deep mutual learning, teacher and student trained together;
  ``bdkd``     online BD-KD, entropy-balanced forward/reverse KL for the student.

Offline methods first train the teacher (cross-entropy) in ``<workdir>/teacher`` (or
``config.teacher_workdir``, so several runs can share it), then distil in ``<workdir>``. Both stages
are ordinary trainer runs: each resumes from its own checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _checks
from fdiv import analysis, generators, metrics, models, plots
from fdiv import data as fdata
from fdiv.losses import kd as kd_losses
from fdiv.train import Task, TrainConfig, Update, fingerprint, optim, parallel, train, train_stage

METHODS = ("student", "vanilla", "fkd", "sinkd", "dml", "bdkd")
OFFLINE = ("vanilla", "fkd", "sinkd")
ONLINE = ("dml", "bdkd")
OPTIMIZERS = ("adam", "adamw", "sgd")
# Ranges beyond experiments._checks.RULES (SinKD's loss weights).
FIELD_RULES = {
    "sinkd.alpha": _checks.interval(0, 1),
    "sinkd.beta": _checks.at_least(0),
    "sinkd.scale": _checks.at_least(0),
}
SCHEDULES = ("constant", "cosine")

# ---------------------------------------------------------------------------------------------
# Validation: every error is raised before any data is loaded or any step is computed.


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject a bad KD config with a message naming the field and what is allowed."""
    _checks.fields(config, FIELD_RULES)
    _checks.allowed("method", config.method, METHODS)
    _checks.allowed("dataset", config.dataset, fdata.names())
    for net in ("teacher", "student"):
        _checks.allowed(f"{net}.model", config[net].model, models.names())
        _model(config[net], num_classes=10)  # unknown model kwargs fail here
    # Checked for every method: a typo must not wait for the run that uses it.
    generators.get(config.divergence)  # raises, listing the known names
    for opt in ("optimizer", "teacher_optimizer"):
        _checks.allowed(f"{opt}.name", config[opt].name, OPTIMIZERS)
        _checks.allowed(f"{opt}.schedule", config[opt].schedule, SCHEDULES)
    train_config(config).validate()
    teacher_train_config(config).validate()


def train_config(config: ml_collections.ConfigDict) -> TrainConfig:
    return TrainConfig.from_mapping(config.train.to_dict())


def teacher_train_config(config: ml_collections.ConfigDict) -> TrainConfig:
    return TrainConfig.from_mapping({**config.train.to_dict(), "total_steps": config.teacher_steps})


# ---------------------------------------------------------------------------------------------
# Models, optimisers.


def _model(net_config: ml_collections.ConfigDict, *, num_classes: int):
    """The module of a network spec: ``model`` plus the options of its family (mlp, cnn, resnet)."""
    family = "resnet" if net_config.model.startswith("resnet") else net_config.model
    kwargs = {
        k: (tuple(v) if isinstance(v, list | tuple) else v) for k, v in net_config[family].items()
    }
    return models.get(net_config.model, num_classes=num_classes, **kwargs)


class Networks:
    """The named Flax modules of a run and a uniform ``apply`` (model state in, updates out)."""

    def __init__(self, modules: Mapping[str, Any], input_shape: tuple[int, ...]):
        self.modules = dict(modules)
        self.input_shape = tuple(input_shape)

    def init(self, key: jax.Array, names) -> tuple[dict, dict]:
        params, model_state = {}, {}
        dummy = jnp.zeros((1, *self.input_shape), jnp.float32)
        for i, name in enumerate(names):
            variables = self.modules[name].init(jax.random.fold_in(key, i), dummy, train=False)
            params[name] = variables["params"]
            model_state[name] = {k: v for k, v in variables.items() if k != "params"}
        return params, model_state

    def apply(self, name, params, model_state, inputs, *, train: bool):
        """``(logits, model_state updates)``; updates are empty unless ``train`` and batch norm."""
        variables = {"params": params[name], **model_state[name]}
        mutable = list(model_state[name]) if train else False
        if mutable:
            logits, updates = self.modules[name].apply(
                variables, inputs, train=True, mutable=mutable
            )
            return logits, {name: dict(updates)}
        return self.modules[name].apply(variables, inputs, train=train), {}


# ---------------------------------------------------------------------------------------------
# Evaluation: accuracy, NLL, ECE per network, teacher-student agreement, reliability diagrams.


def summarize(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    labels = outputs["labels"]
    out = {}
    nets = [k for k in outputs if k != "labels"]
    for name in nets:
        logits = outputs[name]
        out[f"{name}/accuracy"] = float(metrics.accuracy(logits, labels))
        out[f"{name}/nll"] = float(metrics.nll(logits, labels))
        out[f"{name}/ece"] = float(
            metrics.expected_calibration_error(logits, labels, num_bins=15)[0]
        )
    if "teacher" in nets and "student" in nets:
        out["agreement"] = float(metrics.agreement(outputs["student"], outputs["teacher"]))
    return out


def report(outputs: Mapping[str, np.ndarray], workdir: str) -> None:
    for name in (k for k in outputs if k != "labels"):
        ece, bins = metrics.expected_calibration_error(
            outputs[name], outputs["labels"], num_bins=15
        )
        plots.reliability_diagram(
            bins, os.path.join(workdir, f"reliability_{name}.png"), title=name, ece=float(ece)
        )


# ---------------------------------------------------------------------------------------------
# Tasks.


def _augment_fn(config, input_shape):
    if not config.get("augment", False):
        return None
    if len(input_shape) != 3:
        raise ValueError(
            f"augment=True needs image inputs [H, W, C]; dataset inputs are {input_shape}"
        )

    def preprocess(batch, key):
        return {**batch, "inputs": fdata.augment_images(key, batch["inputs"])}

    return preprocess


def _predict_fn(nets: Networks, names):
    def predict(params, model_state, batch):
        out = {"labels": batch["labels"]}
        for name in names:
            out[name] = nets.apply(name, params, model_state, batch["inputs"], train=False)[0]
        return out

    return predict


def _mean_metrics(**values) -> dict[str, jax.Array]:
    return {k: jnp.mean(v) for k, v in values.items()}


def teacher_config_json(config) -> str:
    """The teacher stage's config: only what decides the teacher, so that runs differing in the
    student's settings share one teacher (``teacher_workdir``) and a changed teacher is refused."""
    keys = ("dataset", "data_dir", "augment", "valid_fraction", "teacher", "teacher_steps", "teacher_optimizer")  # fmt: skip
    train_fields = {k: config.train[k] for k in ("seed", "batch_size", "eval_batch_size")}
    return fingerprint(config, keys, stage="teacher", train=train_fields)


def teacher_task(config, nets: Networks, train_data, eval_data, valid_data=None) -> Task:
    """Cross-entropy training of the teacher alone (offline KD's first stage)."""

    def loss(params, model_state, batch, key):
        logits, updates = nets.apply("teacher", params, model_state, batch["inputs"], train=True)
        ce = kd_losses.cross_entropy(logits, batch["labels"])
        return jnp.mean(ce), (updates, {})

    total = config.teacher_steps
    return Task(
        init=lambda key: nets.init(key, ["teacher"]),
        updates=[Update("teacher", loss, ("teacher",))],
        optimizers={"teacher": optim.from_config(config.teacher_optimizer, total)},
        train_data=train_data,
        eval_data=eval_data,
        valid_data=valid_data,
        predict=_predict_fn(nets, ["teacher"]),
        summarize=summarize,
        report=report,
        preprocess=_augment_fn(config, nets.input_shape),
    )


def student_loss_fn(config, nets: Networks):
    """The offline student loss of ``config.method`` (teacher frozen, evaluated in eval mode)."""
    method = config.method

    def loss(params, model_state, batch, key):
        logits, updates = nets.apply("student", params, model_state, batch["inputs"], train=True)
        labels = batch["labels"]
        if method == "student":
            ce = kd_losses.cross_entropy(logits, labels)
            return jnp.mean(ce), (updates, {"ce": jnp.mean(ce)})
        teacher_logits = nets.apply("teacher", params, model_state, batch["inputs"], train=False)[0]
        teacher_logits = jax.lax.stop_gradient(teacher_logits)
        if method == "sinkd":
            s = config.sinkd
            value = kd_losses.sinkd_loss(
                student_logits=logits, teacher_logits=teacher_logits, labels=labels, alpha=s.alpha, beta=s.beta, sinkhorn_scale=s.scale,
                kd_temperature=config.temperature, sinkhorn_temperature=s.temperature,
                epsilon=s.epsilon, num_iters=s.num_iters, kd_temperature_squared=s.temperature_squared,
            )  # fmt: skip
            return value, (updates, {"ce": jnp.mean(kd_losses.cross_entropy(logits, labels))})
        name = "kl" if method == "vanilla" else config.divergence
        ce = kd_losses.cross_entropy(logits, labels)
        kd = kd_losses.distillation_term(
            student_logits=logits,
            teacher_logits=teacher_logits,
            divergence=name,
            temperature=config.temperature,
        )
        return jnp.mean(ce + config.kd_weight * kd), (updates, _mean_metrics(ce=ce, kd=kd))

    return loss


def online_loss_fn(config, nets: Networks):
    """DML or BD-KD: both networks' losses summed, each with its peer under ``stop_gradient``."""
    method, tau = config.method, config.temperature

    def loss(params, model_state, batch, key):
        x, labels = batch["inputs"], batch["labels"]
        s_logits, s_updates = nets.apply("student", params, model_state, x, train=True)
        t_logits, t_updates = nets.apply("teacher", params, model_state, x, train=True)
        if method == "dml":
            s_loss = kd_losses.dml_loss(
                logits=s_logits,
                peer_logits=t_logits,
                labels=labels,
                temperature=tau,
                kd_weight=config.kd_weight,
            )
            t_loss = kd_losses.dml_loss(
                logits=t_logits,
                peer_logits=s_logits,
                labels=labels,
                temperature=tau,
                kd_weight=config.kd_weight,
            )
            extra = {}
        else:
            b = config.bdkd
            s_loss = kd_losses.bdkd_student_loss(
                student_logits=s_logits,
                teacher_logits=t_logits,
                labels=labels,
                temperature=tau,
                kappa=b.kappa,
                kd_weight=config.kd_weight,
            )
            t_loss = kd_losses.bdkd_teacher_loss(
                teacher_logits=t_logits,
                student_logits=s_logits,
                labels=labels,
                temperature=tau,
                teacher_kd_weight=b.teacher_kd_weight,
            )
            # BD-KD's mechanism is active only where the weight leaves 1/2: log its spread
            weight = kd_losses.bdkd_forward_weight(student_logits=s_logits, teacher_logits=t_logits, kappa=b.kappa, temperature=tau)  # fmt: skip
            low, high = jnp.quantile(jax.lax.stop_gradient(weight), jnp.array([0.05, 0.95]))
            extra = {
                "forward_weight": weight,
                "forward_weight_p05": low,
                "forward_weight_p95": high,
            }
        total = jnp.mean(s_loss) + jnp.mean(t_loss)
        return total, (
            {**s_updates, **t_updates},
            _mean_metrics(student_loss=s_loss, teacher_loss=t_loss, **extra),
        )

    return loss


# ---------------------------------------------------------------------------------------------
# The experiment.


def _load_data(config):
    """``(train, test, valid or None)``: with ``valid_fraction > 0`` the validation examples are
    held out of the training split (:func:`fdiv.data.load`)."""
    fraction = config.get("valid_fraction", 0.0)
    kwargs = {"data_dir": config.get("data_dir") or None, "valid_fraction": fraction}
    train_data = fdata.load(config.dataset, "train", **kwargs)
    eval_data = fdata.load(config.dataset, "test", **kwargs)
    valid_data = fdata.load(config.dataset, "valid", **kwargs) if fraction else None
    return train_data, eval_data, valid_data


class KDRun(NamedTuple):
    """A finished KD run: its summary, networks, trained variables and the evaluation split."""

    summary: dict[str, Any]
    nets: Networks
    params: dict  # network name -> params (the frozen teacher included for offline methods)
    model_state: dict  # network name -> non-param collections (batch_stats)
    eval_data: fdata.Dataset


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run ``config.method``; returns the distillation run's summary (also in ``workdir/summary.json``)."""
    return train_run(config, workdir).summary


def _rules(config, nets: Networks, total_steps: int, teacher_params=None, teacher_state=None):
    """``(names, update, optimizers, init)`` of ``config.method``: online methods train student
    and teacher together; offline ones the student beside the frozen teacher of the first stage."""
    method = config.method
    if method in ONLINE:
        names = ["student", "teacher"]
        update = Update("online", online_loss_fn(config, nets), ("student", "teacher"))
        optimizers = {
            "student": optim.from_config(config.optimizer, total_steps),
            "teacher": optim.from_config(config.teacher_optimizer, total_steps),
        }

        def init(key):
            return nets.init(key, names)
    else:
        names = ["student"] if method == "student" else ["student", "teacher"]
        update = Update("student", student_loss_fn(config, nets), ("student",))
        optimizers = {"student": optim.from_config(config.optimizer, total_steps)}

        def init(key):
            params, model_state = nets.init(key, ["student"])
            if teacher_params is not None:
                params["teacher"], model_state["teacher"] = teacher_params, teacher_state
            return params, model_state

    return names, update, optimizers, init


def train_run(config: ml_collections.ConfigDict, workdir: str) -> KDRun:
    """Run ``config.method`` (resuming, or re-opening a finished run) and keep what it trained."""
    validate(config)
    train_data, eval_data, valid_data = _load_data(config)
    nets = Networks(
        {
            "teacher": _model(config.teacher, num_classes=train_data.num_classes),
            "student": _model(config.student, num_classes=train_data.num_classes),
        },
        train_data.input_shape,
    )
    config_json = config.to_json_best_effort(sort_keys=True)
    method = config.method
    tcfg = train_config(config)
    teacher_params = teacher_state = None
    if method in OFFLINE:
        teacher_dir = config.get("teacher_workdir") or os.path.join(workdir, "teacher")
        # Host copies: they become constants of the student's init (fine in multi-process runs too).
        teacher_params, teacher_state, _ = train_stage(
            teacher_task(config, nets, train_data, eval_data, valid_data),
            teacher_train_config(config),
            teacher_dir,
            config_json=teacher_config_json(config),
            network="teacher",
        )

    names, update, optimizers, init = _rules(config, nets, tcfg.total_steps, teacher_params, teacher_state)  # fmt: skip

    task = Task(
        init=init,
        updates=[update],
        optimizers=optimizers,
        train_data=train_data,
        eval_data=eval_data,
        valid_data=valid_data,
        predict=_predict_fn(nets, names),
        summarize=summarize,
        report=report,
        preprocess=_augment_fn(config, nets.input_shape),
    )
    result = train(task, tcfg, workdir, config_json=config_json)
    params = parallel.to_host(result.state.params)
    return KDRun(
        result.summary, nets, params, parallel.to_host(result.state.model_state), eval_data
    )


# ---------------------------------------------------------------------------------------------
# Representational alignment (CKA / RSA between a teacher's and a student's layers).

# RBF CKA's bandwidth as a fraction of the median pairwise distance: the largest of the CKA
# paper's three (0.2, 0.4, 0.8; Kornblith et al. 2019, table 2), the least sensitive to noise.
RBF_BANDWIDTH = 0.8
ALIGNMENT_MEASURES = {
    "linear CKA": analysis.linear_cka,
    "RBF CKA": lambda x, y: analysis.rbf_cka(x, y, bandwidth=RBF_BANDWIDTH),
    "RSA": analysis.rsa,  # correlation-distance RDMs compared by Spearman correlation
}


def network_features(kd_run: KDRun, name: str, inputs: np.ndarray) -> list[np.ndarray]:
    """Network ``name``'s hidden layers and logits on ``inputs`` (:func:`fdiv.models.layer_features`),
    float64 host arrays ``[n, D_l]``."""
    variables = {"params": kd_run.params[name], **kd_run.model_state[name]}
    features = models.layer_features(kd_run.nets.modules[name], variables, jnp.asarray(inputs))
    return [np.asarray(f, np.float64) for f in features]


def alignment(teacher_features, student_features, measures=None) -> dict[str, np.ndarray]:
    """The named measures (default: all of ``ALIGNMENT_MEASURES``) between every teacher layer
    and every student layer: measure name -> ``[L_teacher, L_student]``. Features are centred by
    the measures themselves. Linear CKA costs ``O(n D_t D_s)``; RBF CKA and RSA use exact pairwise
    distances, ``O(n^2 D)``, about a second each at ``n = 1000`` on 2 CPU cores."""
    measures = list(ALIGNMENT_MEASURES) if measures is None else list(measures)
    return {
        name: np.array(
            [
                [float(ALIGNMENT_MEASURES[name](t, s)) for s in student_features]
                for t in teacher_features
            ]
        )
        for name in measures
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """A small markdown table of the evaluated networks (accuracy, NLL, ECE)."""
    nets = sorted(
        {k.split("/")[1] for k in summary if k.startswith("eval/") and k.endswith("/accuracy")}
    )
    lines = ["| network | accuracy | NLL | ECE |", "|---|---|---|---|"]
    for name in nets:
        acc, nll, ece = (summary[f"eval/{name}/{m}"] for m in ("accuracy", "nll", "ece"))
        lines.append(f"| {name} | {acc:.4f} | {nll:.4f} | {ece:.4f} |")
    if "eval/agreement" in summary:
        lines.append(f"\nteacher-student agreement: {summary['eval/agreement']:.4f}")
    return "\n".join(lines)
