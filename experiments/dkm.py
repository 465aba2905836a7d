"""Deep kernel machines against the NNGP and an exact GP, through the one trainer.

Methods (``config.methods``, each trained for ``config.num_seeds`` seeds):
  ``dkm``   the sparse DKM (``fdiv.losses.dkm.sparse_dkm_objective``): a Gram matrix over ``M``
            inducing points per hidden layer, held to its prior by ``nu * KL``, plus a Gaussian
            output layer; initialised at the NNGP;
  ``nngp``  the same kernel stack with ``nu -> inf`` (every ``G_l = K(G_{l-1})``, no
            representation learning): a sparse GP with the compositional kernel;
  ``gp``    an exact GP with a squared-exponential (ARD) kernel, hyperparameters by maximising
            the marginal likelihood.

Every method learns its likelihood noise by the objective it trains. The DKM and the NNGP also
learn the inducing inputs, the output layer's ``q`` and, for the ReLU kernel, each kernel's
weight and bias variances (as the authors' code does); their inputs enter as ``G_0 = X X^T / N_0``
with no length scale (``input_scale="none"``, the authors'; ``"ard"`` / ``"scalar"`` add learned
input scales). The GP learns its length scales (ARD), signal and noise variances. All are Adam on
a per-point loss (the objective divided by the number of training points) in float64; the GP
full batch, the DKM and the NNGP on ``train.batch_size`` (clamped to the training-set size).

Data (no download): scikit-learn's ``diabetes`` regression set (442 points, 10 features; a fresh
80/20 split per seed, as in the UCI protocol) and the 8x8 ``digits`` (the fixed 1,437/360 split of
``fdiv.data``), classified by regression on one-hot targets with the Gaussian likelihood (the
authors' library offers this likelihood for one-hot targets; it keeps the exact GP exact).
Inputs are standardised with the training split's statistics; regression targets too, and RMSE
and test log-likelihood are reported in the original units.

Each run trains in ``<workdir>/<method>/seed<k>``; ``<workdir>/results.md`` holds the table
(mean ± sample std over seeds), ``<workdir>/grams.png`` the learned Gram matrices of the first seed
beside the NNGP's, ``<workdir>/summary.json`` the numbers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _checks
from fdiv import data as fdata
from fdiv import plots
from fdiv.losses import dkm as dkm_losses
from fdiv.train import Task, TrainConfig, Update, optim, parallel, paths, train

METHODS = ("dkm", "nngp", "gp")
DATASETS = ("diabetes", "digits")
INPUT_SCALES = ("ard", "scalar", "none")
OUTPUT_INITS = ("targets", "prior")
PRECISIONS = ("float64", "float32")
SCHEDULES = ("constant", "cosine")
FIELD_RULES = {
    "nu": _checks.at_least(0),
    "nu_per_layer": _checks.at_least(0),
    "num_inducing": _checks.count(1),
    "num_seeds": _checks.count(1),
    "test_fraction": _checks.interval(0, 1, "()"),
    "init_noise_var": _checks.greater(0),
    "jitter.mul": _checks.at_least(0),
    "jitter.abs": _checks.at_least(0),
    "relu.weight_var": _checks.greater(0),
    "relu.bias_var": _checks.greater(0),
    "gp_steps": _checks.count(1),
    "blas_threads": _checks.count(1),
}

# ---------------------------------------------------------------------------------------------
# Validation.


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject a bad DKM config with a message naming the field and what is allowed."""
    _checks.fields(config, FIELD_RULES)
    _checks.allowed("dataset", config.dataset, DATASETS)
    methods = tuple(config.methods)
    if not methods:
        raise ValueError(f"methods is empty; pick from {list(METHODS)}")
    for method in methods:
        _checks.allowed("methods", method, METHODS)
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods={methods!r} names a method twice")
    _checks.allowed("kernel", config.kernel, dkm_losses.KERNELS)
    _checks.allowed("input_scale", config.input_scale, INPUT_SCALES)
    _checks.allowed("output_init", config.output_init, OUTPUT_INITS)
    _checks.allowed("precision", config.precision, PRECISIONS)
    for opt in ("optimizer", "gp_optimizer"):
        _checks.allowed(f"{opt}.schedule", config[opt].schedule, SCHEDULES)
    per_layer = tuple(config.nu_per_layer)
    if per_layer and len(per_layer) != config.num_layers:
        raise ValueError(
            f"nu_per_layer={per_layer} has {len(per_layer)} values; give one per layer "
            f"(num_layers={config.num_layers}), or none to use nu for every layer"
        )
    if num_train(config) < 2:
        raise ValueError(
            f"test_fraction={config.test_fraction} leaves fewer than 2 training points"
        )
    for method in methods:  # batch sizes against the device count, before any data is loaded
        run_train_config(config, method, seed=0, n_train=num_train(config)).validate()


DIABETES_SIZE = 442
DIGITS_TRAIN = 1437  # fdiv.data's fixed digits split (checked when loading)


def num_train(config) -> int:
    """The training-set size, known before loading: diabetes ``442 - round(442 f)``, digits 1,437."""
    if config.dataset == "diabetes":
        return DIABETES_SIZE - max(1, round(config.test_fraction * DIABETES_SIZE))
    return DIGITS_TRAIN


def run_train_config(config, method: str, *, seed: int, n_train: int) -> TrainConfig:
    """The trainer settings of one run: full batch for the GP (its marginal likelihood does not
    split over minibatches), ``min(train.batch_size, n_train)`` for the DKM and the NNGP."""
    fields = config.train.to_dict()
    fields["seed"] = seed
    if method == "gp":
        fields["total_steps"] = config.gp_steps
        fields["batch_size"] = n_train
    else:
        fields["batch_size"] = min(fields["batch_size"], n_train)
    fields["eval_batch_size"] = fields["eval_batch_size"] or fields["batch_size"]
    fields["checkpoint_every"] = min(fields["checkpoint_every"], fields["total_steps"])
    return TrainConfig.from_mapping(fields)


# ---------------------------------------------------------------------------------------------
# Data.


class ArraySplit:
    """Random access to ``inputs [n, D]``, ``targets [n, C]`` (the trainer's Dataset protocol)."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"inputs": self.inputs[indices], "targets": self.targets[indices]}


class Data:
    """A standardised split: ``train`` / ``test`` splits, the target scale, the task kind."""

    def __init__(self, train_x, train_y, test_x, test_y, *, classification: bool):
        mean, std = train_x.mean(0), train_x.std(0)
        std = np.where(std > 0, std, 1.0)  # constant pixels of digits
        self.y_mean = np.zeros(train_y.shape[1]) if classification else train_y.mean(0)
        self.y_std = np.ones(train_y.shape[1]) if classification else train_y.std(0)
        self.classification = classification
        self.train = ArraySplit((train_x - mean) / std, (train_y - self.y_mean) / self.y_std)
        self.test = ArraySplit((test_x - mean) / std, (test_y - self.y_mean) / self.y_std)


def load_data(config, seed: int) -> Data:
    """``diabetes``: a fresh 80/20 split per seed; ``digits``: ``fdiv.data``'s fixed split."""
    if config.dataset == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        order = np.random.default_rng([seed, 17]).permutation(len(y))
        n_test = len(y) - num_train(config)
        test, train_ = order[:n_test], order[n_test:]
        y = y[:, None].astype(np.float64)
        return Data(x[train_], y[train_], x[test], y[test], classification=False)
    splits = []
    for split in ("train", "test"):
        ds = fdata.load("digits", split)
        images, labels = ds.get(np.arange(len(ds)))
        x = images.reshape(len(ds), -1).astype(np.float64)
        splits += [x, np.eye(ds.num_classes)[labels]]
    if len(splits[0]) != DIGITS_TRAIN:
        raise ValueError(f"digits: expected {DIGITS_TRAIN} training images, got {len(splits[0])}")
    return Data(*splits, classification=True)


# ---------------------------------------------------------------------------------------------
# Parameters and losses.


def _dtype(config):
    return jnp.float64 if config.precision == "float64" else jnp.float32


def _input_scale(config, p, inputs):
    """ARD / scalar input scales multiply the inputs before ``G_0 = X X^T / N_0``."""
    if config.input_scale == "none":
        return inputs
    return inputs * jnp.exp(p["log_input_scale"])


def _kernel_params(config, p):
    if config.kernel == "sqexp":
        return None
    if "log_weight_var" in p:
        return [
            {"weight_var": jnp.exp(w), "bias_var": jnp.exp(b)}
            for w, b in zip(p["log_weight_var"], p["log_bias_var"], strict=True)
        ]
    return {"weight_var": config.relu.weight_var, "bias_var": config.relu.bias_var}


def _jitter(config):
    return (config.jitter.mul, config.jitter.abs)


def _noise_var(config, p):
    return jnp.exp(p["log_noise_var"]) if config.learn_noise else config.init_noise_var


def _grams(config, p):
    if "gram_params" not in p:
        return [None] * config.num_layers
    return [dkm_losses.gram_from_param(v) for v in p["gram_params"]]


def _forward_kwargs(config, p):
    return {
        "kernel_name": config.kernel,
        "kernel_params": _kernel_params(config, p),
        "jitter": _jitter(config),
    }


def dkm_init_fn(config, data: Data, method: str, seed: int):
    """``init(key)``: inducing inputs a random subset of the training inputs (the authors' toy
    scripts take data points), every hidden Gram at its NNGP value, the output layer's mean at the
    subset's targets (the authors') or 0, its covariance random (the authors') or the prior."""
    dtype = _dtype(config)
    n_train = len(data.train)
    m = min(config.num_inducing, n_train)
    rng = np.random.default_rng([seed, 23])
    subset = np.sort(rng.choice(n_train, size=m, replace=False))
    xi = data.train.inputs[subset]
    yi = data.train.targets[subset]
    dim, num_layers = xi.shape[1], config.num_layers
    wishart = rng.normal(size=(m, m))

    def init(key):
        p = {
            "inducing": jnp.asarray(xi, dtype),
            "log_noise_var": jnp.asarray(math.log(config.init_noise_var), dtype),
        }
        if config.input_scale != "none":
            p["log_input_scale"] = jnp.zeros((dim if config.input_scale == "ard" else 1,), dtype)
        if config.kernel != "sqexp" and config.relu.learned:
            p["log_weight_var"] = jnp.full((num_layers + 1,), math.log(config.relu.weight_var), dtype)  # fmt: skip
            p["log_bias_var"] = jnp.full((num_layers + 1,), math.log(config.relu.bias_var), dtype)
        g0 = dkm_losses.feature_gram_blocks(
            _input_scale(config, p, p["inducing"]), _input_scale(config, p, p["inducing"])
        )
        k_out, _, nngp = dkm_losses.sparse_dkm_forward(
            [None] * num_layers, g0, **_forward_kwargs(config, p)
        )
        if method == "dkm":
            p["gram_params"] = [dkm_losses.cholesky_param(g.ii) for g in nngp]
        if config.output_init == "targets":
            p["output_mean"] = jnp.asarray(yi, dtype)
            w = jnp.asarray(wishart, dtype)
            cov = w @ w.T / m + 1e-4 * jnp.eye(m, dtype=dtype)
        else:
            p["output_mean"] = jnp.zeros(yi.shape, dtype)
            cov = k_out.ii
        p["output_cov"] = dkm_losses.cholesky_param(cov)
        return {"model": p}, {}

    return init, subset


def dkm_loss_fn(config, n_train: int):
    """``-objective / N``: the sparse DKM bound per training point (NNGP: no hidden Grams)."""
    dtype = _dtype(config)

    def loss(params, model_state, batch, key):
        p = params["model"]
        x = jnp.asarray(batch["inputs"], dtype)
        y = jnp.asarray(batch["targets"], dtype)
        objective, terms = dkm_losses.sparse_dkm_objective(
            _grams(config, p),
            _input_scale(config, p, p["inducing"]),
            _input_scale(config, p, x),
            y,
            p["output_mean"],
            dkm_losses.gram_from_param(p["output_cov"]),
            nu=_nu(config),
            noise_var=_noise_var(config, p),
            num_data=n_train,
            **_forward_kwargs(config, p),
        )
        metrics = {
            "elbo_per_point": objective / n_train,
            "expected_log_lik": jnp.mean(terms.expected_log_lik),
            "layer_kl": jnp.sum(terms.kls),
            "output_kl": terms.output_kl,
            "noise_var": jnp.asarray(_noise_var(config, p), dtype),
        }
        return -objective / n_train, ({}, metrics)

    return loss


def _nu(config):
    return tuple(config.nu_per_layer) or config.nu


def dkm_predict_fn(config):
    dtype = _dtype(config)

    def predict(params, model_state, batch):
        p = params["model"]
        x = jnp.asarray(batch["inputs"], dtype)
        mean, var = dkm_losses.sparse_dkm_predict(
            _grams(config, p),
            _input_scale(config, p, p["inducing"]),
            _input_scale(config, p, x),
            p["output_mean"],
            dkm_losses.gram_from_param(p["output_cov"]),
            **_forward_kwargs(config, p),
        )
        noise = jnp.broadcast_to(jnp.asarray(_noise_var(config, p), dtype), var.shape)
        return {"mean": mean, "var": var + noise, "targets": batch["targets"]}

    return predict


# The exact GP: k(x, x') = s^2 exp(-|(x - x') / l|^2 / 2), l per input (ARD), noise sigma^2.


def _se(a, b, p):
    a, b = a / jnp.exp(p["log_lengthscale"]), b / jnp.exp(p["log_lengthscale"])
    sq = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
    return jnp.exp(p["log_signal_var"]) * jnp.exp(-0.5 * jnp.maximum(sq, 0.0))


def gp_init_fn(config, data: Data):
    dtype = _dtype(config)
    dim = data.train.inputs.shape[1]
    width = dim if config.gp_ard else 1

    def init(key):
        # l = sqrt(D): the same starting length scale as G_0 = X X^T / D in the DKM.
        return {
            "model": {
                "log_lengthscale": jnp.full((width,), 0.5 * math.log(dim), dtype),
                "log_signal_var": jnp.zeros((), dtype),
                "log_noise_var": jnp.asarray(math.log(config.init_noise_var), dtype),
            }
        }, {}

    return init


def gp_loss_fn(config, n_train: int):
    """``-log p(Y | X) / N``, the exact marginal likelihood on the full batch."""
    dtype = _dtype(config)

    def loss(params, model_state, batch, key):
        p = params["model"]
        x = jnp.asarray(batch["inputs"], dtype)
        y = jnp.asarray(batch["targets"], dtype)
        noise = _noise_var(config, p)
        k = _se(x, x, p) + config.jitter.abs * jnp.eye(x.shape[0], dtype=dtype)
        log_marginal = dkm_losses.gaussian_log_marginal(k, y, noise)
        metrics = {"log_marginal_per_point": log_marginal / n_train, "noise_var": jnp.asarray(noise, dtype)}  # fmt: skip
        return -log_marginal / n_train, ({}, metrics)

    return loss


def gp_predict_fn(config, data: Data):
    dtype = _dtype(config)
    xt = jnp.asarray(data.train.inputs, dtype)
    yt = jnp.asarray(data.train.targets, dtype)

    def predict(params, model_state, batch):
        p = params["model"]
        x = jnp.asarray(batch["inputs"], dtype)
        noise = _noise_var(config, p)
        k = _se(xt, xt, p) + (noise + config.jitter.abs) * jnp.eye(xt.shape[0], dtype=dtype)
        chol = jnp.linalg.cholesky(k)
        k_star = _se(x, xt, p)
        white = jax.scipy.linalg.solve_triangular(chol, k_star.T, lower=True)
        alpha = jax.scipy.linalg.cho_solve((chol, True), yt)
        var = jnp.exp(p["log_signal_var"]) - jnp.sum(white * white, 0) + noise
        return {"mean": k_star @ alpha, "var": var, "targets": batch["targets"]}

    return predict


# ---------------------------------------------------------------------------------------------
# Evaluation.


def summarize_fn(data: Data):
    """Test RMSE and log-likelihood per point in the original units; accuracy for digits."""

    def summarize(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        mean, var, y = (np.asarray(outputs[k], np.float64) for k in ("mean", "var", "targets"))
        mean_o, y_o = mean * data.y_std + data.y_mean, y * data.y_std + data.y_mean
        var_o = var[:, None] * np.square(data.y_std)
        log_lik = -0.5 * (np.log(2 * np.pi * var_o) + np.square(y_o - mean_o) / var_o)
        out = {
            "rmse": float(np.sqrt(np.mean(np.square(mean_o - y_o)))),
            "log_lik": float(np.mean(np.sum(log_lik, axis=-1))),
        }
        if data.classification:
            out["accuracy"] = float(np.mean(np.argmax(mean, -1) == np.argmax(y, -1)))
        return out

    return summarize


def metric_names(dataset: str) -> tuple[str, ...]:
    return ("accuracy", "log_lik", "rmse") if dataset == "digits" else ("rmse", "log_lik")


# ---------------------------------------------------------------------------------------------
# One run, the whole experiment.


def run_one(config, method: str, seed: int, workdir: str) -> dict[str, Any]:
    """Train ``method`` for one seed in ``workdir``: its summary, final params, data, and
    inducing subset (indices into the training split; ``None`` for the GP)."""
    data = load_data(config, seed)
    n_train = len(data.train)
    tcfg = run_train_config(config, method, seed=seed, n_train=n_train)
    if method == "gp":
        init, subset = gp_init_fn(config, data), None
        loss, predict = gp_loss_fn(config, n_train), gp_predict_fn(config, data)
        opt = config.gp_optimizer
    else:
        init, subset = dkm_init_fn(config, data, method, seed)
        loss, predict = dkm_loss_fn(config, n_train), dkm_predict_fn(config)
        opt = config.optimizer
    task = Task(
        init=init,
        updates=[Update("model", loss, ("model",))],
        optimizers={"model": optim.from_config(opt, tcfg.total_steps, final_fraction=0.01)},
        train_data=data.train,
        eval_data=data.test,
        predict=predict,
        summarize=summarize_fn(data),
    )
    run_json = json.loads(config.to_json_best_effort(sort_keys=True))
    run_json.update(run={"method": method, "seed": seed})
    result = train(task, tcfg, workdir, config_json=json.dumps(run_json, sort_keys=True))
    params = parallel.to_host(result.state.params["model"])
    return {"summary": result.summary, "params": params, "data": data, "subset": subset}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Every method of ``config.methods`` for ``config.num_seeds`` seeds; the table and plot."""
    validate(config)
    import scipy.linalg  # noqa: F401  (loads the OpenBLAS that jaxlib's LAPACK calls use)
    import threadpoolctl  # a scikit-learn dependency; limits only libraries already loaded

    x64 = config.precision == "float64"
    seeds = [config.train.seed + k for k in range(config.num_seeds)]
    runs: dict[str, list[dict[str, Any]]] = {}
    # jaxlib's CPU triangular solves and Cholesky factors call OpenBLAS, whose threads cost more
    # than they save on these M x M matrices (a 100 x 100 solve: 8.8 ms with 2 threads on 2 busy
    # cores, 0.19 ms with 1, measured), so BLAS runs single-threaded for the run.
    with (
        jax.enable_x64(x64),
        threadpoolctl.threadpool_limits(config.blas_threads, user_api="blas"),
    ):
        for method in config.methods:
            for seed in method_seeds(config, method, seeds):
                out = run_one(config, method, seed, os.path.join(workdir, method, f"seed{seed}"))
                runs.setdefault(method, []).append(out)
        summary = aggregate(config, runs, seeds)
        if jax.process_index() == 0:
            paths.write_text(os.path.join(workdir, "results.md"), format_summary(summary) + "\n")
            paths.write_text(
                os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2) + "\n"
            )
            if "dkm" in runs and "nngp" in runs:
                plot_grams(config, runs["dkm"][0], runs["nngp"][0], f"{workdir}/grams.png")
    return summary


def method_seeds(config, method: str, seeds: list[int]) -> list[int]:
    """The exact GP on digits' fixed split has no randomness (deterministic initialisation, full
    batch): one run stands for every seed."""
    return seeds[:1] if method == "gp" and config.dataset == "digits" else seeds


def aggregate(config, runs, seeds) -> dict[str, Any]:
    """Mean and sample std over seeds of each test metric, plus per-seed values and wall time."""
    out: dict[str, Any] = {"dataset": config.dataset, "seeds": seeds, "methods": {}}
    for method, results in runs.items():
        entry: dict[str, Any] = {}
        for name in metric_names(config.dataset):
            values = [r["summary"][f"eval/{name}"] for r in results]
            entry[name] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "per_seed": values,
            }
        entry["wall_seconds"] = float(sum(r["summary"]["wall_seconds"] for r in results))
        out["methods"][method] = entry
    return out


LABELS = {"dkm": "DKM (finite nu)", "nngp": "NNGP (nu -> inf, same kernels)", "gp": "exact GP"}


def format_summary(summary: Mapping[str, Any]) -> str:
    """A markdown table: one row per method, ``mean ± std`` of each test metric over seeds."""
    methods = summary["methods"]
    names = metric_names(summary["dataset"])
    titles = {"rmse": "test RMSE", "log_lik": "test log-lik / point", "accuracy": "test accuracy"}
    lines = [
        f"{summary['dataset']} ({len(summary['seeds'])} seeds: "
        + ", ".join(map(str, summary["seeds"]))
        + ")",
        "",
        "| method | " + " | ".join(titles[n] for n in names) + " | train wall (s, all seeds) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for method, entry in methods.items():
        cells = [f"{entry[n]['mean']:.4f} ± {entry[n]['std']:.4f}" for n in names]
        wall = f"{entry['wall_seconds']:.1f}"
        label = LABELS.get(method, method)
        if len(entry[names[0]]["per_seed"]) == 1 < len(summary["seeds"]):
            label += " (one run: no randomness)"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The Gram-matrix plot.


def inducing_grams(config, params) -> list[np.ndarray]:
    """The Gram matrices over the inducing points, ``G^1..G^L`` then the output kernel."""
    g0 = dkm_losses.feature_gram_blocks(
        _input_scale(config, params, params["inducing"]),
        _input_scale(config, params, params["inducing"]),
    )
    k_out, _, grams = dkm_losses.sparse_dkm_forward(
        _grams(config, params), g0, **_forward_kwargs(config, params)
    )
    return [np.asarray(g.ii) for g in grams] + [np.asarray(k_out.ii)]


def plot_grams(config, dkm_run, nngp_run, path: str) -> None:
    """NNGP (left) and learned DKM (right) Gram matrices per layer, inducing points sorted by
    their initial target (digits: class), one colour scale per row."""
    from matplotlib.figure import Figure

    rows = []
    for run_ in (nngp_run, dkm_run):
        targets = run_["data"].train.targets[run_["subset"]]
        key = np.argmax(targets, -1) if run_["data"].classification else targets[:, 0]
        order = np.argsort(key, kind="stable")
        rows.append([g[np.ix_(order, order)] for g in inducing_grams(config, run_["params"])])
    num = len(rows[0])
    fig = Figure(figsize=(6.4, 3.0 * num), dpi=100, layout="constrained")
    axes = fig.subplots(num, 2, squeeze=False)
    for layer in range(num):
        pair = [rows[0][layer], rows[1][layer]]
        lo, hi = min(float(p.min()) for p in pair), max(float(p.max()) for p in pair)
        name = f"G^{layer + 1}" if layer < num - 1 else f"K(G^{num - 1}) (output)"
        for col, (mat, who) in enumerate(zip(pair, ("NNGP", "DKM"), strict=True)):
            ax = axes[layer, col]
            image = ax.imshow(mat, vmin=lo, vmax=hi, cmap="viridis", interpolation="nearest")
            ax.set_title(f"{who}: {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=axes[layer, :].tolist(), shrink=0.8)
    fig.suptitle(f"{config.dataset}: inducing-point Gram matrices (seed {config.train.seed})")
    plots._save(fig, path)
