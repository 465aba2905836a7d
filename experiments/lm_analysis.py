"""The Markov-category measures over NLL training of the tiny transformer, on exact languages.

For each language of ``config.languages`` and each of ``config.num_seeds`` seeds, a
:class:`fdiv.models.CausalTransformer` is trained by maximum likelihood on sequences sampled from
the language (one trainer run in ``<workdir>/<language>/seed<k>``), and every ``train.eval_every``
steps the three measures of :mod:`fdiv.analysis.markov` are computed against the language's exact
conditionals (all ``V^(L-1)`` prefixes fed at once; the causal mask makes each position a prefix):

- **categorical entropy**: the per-token NLL ``= H(data) + KL(data || model)`` averaged over the
  ``L`` positions with the prefixes' exact probabilities, and the model's own entropy;
- **information surplus** at the context length ``L - 2``: the data's intrinsic surplus (exact),
  ``I(C; X_{t+2} | X_{t+1})`` (exact) and probe estimates from the final hidden state ``h`` and
  from the next-token log-probabilities ``q`` (``fdiv.analysis.probe_conditional_information``,
  contexts split in halves: the probe is scored on contexts it never saw);
- **spectral alignment** at the context length ``L - 1``: the fraction of the top ``V - 1``
  non-trivial directions of the predictive similarity operator that ``span(h)`` captures, with
  its chance level ``d / (C' - 1)``.

Languages (``V`` tokens, rows Dirichlet(``language.concentration``), seed ``language.seed``):
  ``markov``  first order: the next token depends on the last one (no surplus exists);
  ``order2``  second order, a row per pair of last tokens (rows distinct, so the next-token
              distribution names the state: no intrinsic surplus either);
  ``lag2``    ``x_t ~ R[x_{t-2}]``, two interleaved chains: the next-token distribution reveals
              ``x_{t-2}`` but not ``x_{t-1}``, which decides the token after next: the surplus is
              ``I(X_{t-1}; X_{t+1}) > 0``.

Writes ``results.md`` (final values, mean ± std over seeds), ``curves_kl.png``,
``curves_surplus.png`` and ``curves_spectral.png`` (the measures over training, seed 0, from the
initialisation on) and ``summary.json`` in the workdir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _checks
from experiments._tables import mean_std
from fdiv import analysis, models, plots
from fdiv import data as fdata
from fdiv.data import language as lang
from fdiv.models import sampling
from fdiv.train import Task, TrainConfig, Update, paths, train
from fdiv.train import workdir as wd

LANGUAGES = ("markov", "order2", "lag2")
FIELD_RULES = {
    "vocab_size": _checks.count(2),
    "length": _checks.count(3),
    "num_seeds": _checks.count(1),
    "num_samples": _checks.count(1),
    "language.concentration": _checks.greater(0),
    "probe.samples": _checks.count(1),
    "probe.l2": _checks.at_least(0),
    "probe.steps": _checks.count(1),
}
# The measures logged at every evaluation and reported (name -> label).
MEASURES = {
    "nll": "NLL / token",
    "data_entropy": "H(data) / token",
    "kl": "KL(data || model) / token",
    "model_entropy": "H(model) / token",
    "surplus_exact": "intrinsic surplus (exact)",
    "cmi_exact": "I(C; X_t+2 | X_t+1) (exact)",
    "probe_info_hidden": "probe I(h; X_t+2 | X_t+1)",
    "probe_info_head": "probe I(q; X_t+2 | X_t+1)",
    "surplus_probe": "surplus estimate (h over q)",
    "spectral_captured": "spectral alignment (captured)",
    "spectral_chance": "chance level",
}


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject a bad config with a message naming the field, before anything is computed."""
    _checks.fields(config, FIELD_RULES)
    for name in config.languages:
        _checks.allowed("languages", name, LANGUAGES)
    if config.vocab_size ** (config.length - 1) > 2**16:
        raise ValueError(
            f"vocab_size={config.vocab_size}, length={config.length}: the exact measures enumerate "
            f"V^(L-1) = {config.vocab_size ** (config.length - 1)} prefixes; keep it <= 65536"
        )
    m = config.model
    models.CausalTransformer(
        num_actions=config.vocab_size, vocab_size=config.vocab_size, max_len=config.length,
        dim=m.dim, num_heads=m.num_heads, num_layers=m.num_layers,
    )  # fmt: skip
    TrainConfig.from_mapping(config.train.to_dict()).validate()


def make_language(config, name: str) -> lang.MarkovLanguage | lang.NgramLanguage:
    v, seed, alpha = config.vocab_size, config.language.seed, config.language.concentration
    if name == "markov":
        return lang.markov_language(v, seed=seed, forbidden_per_token=0, concentration=alpha)
    if name == "order2":
        return lang.ngram_language(v, order=2, seed=seed, concentration=alpha)
    return lang.lagged_language(v, lag=2, seed=seed, concentration=alpha)


# ---------------------------------------------------------------------------------------------
# The measures, from the model's outputs on every prefix.


class Reference:
    """What the measures compare with: the language's exact conditionals for every prefix length,
    the joint for the surplus, and the probe's fixed samples (drawn once per run)."""

    def __init__(self, config, language, seed: int):
        v, length = config.vocab_size, config.length
        self.v, self.length = v, length
        first = np.exp(language.log_prob(np.arange(v)[:, None]))  # p(x_1): the empty prefix
        self.positions = [(np.ones(1), first[None])] + [
            (c.probs, c.conditionals) for c in lang.prefix_conditionals(language, length).values()
        ]
        t = length - 2  # surplus: contexts of L - 2 tokens, then X_{t+1}, X_{t+2}
        self.surplus_t = t
        self.joint = lang.prefix_joint(language, t)
        contexts = self.joint.shape[0]
        self.exact = analysis.exact_information_surplus(
            self.joint, np.arange(contexts), analysis.row_labels(self.positions[t][1])
        )
        # held-out contexts: a random half of the contexts for fitting the probe, the rest scored
        rng = np.random.default_rng(seed)
        order = rng.permutation(contexts)
        self.probe_samples = [
            _sample_triples(rng, self.joint, half, config.probe.samples)
            for half in (order[: contexts // 2], order[contexts // 2 :])
        ]
        self.probe = config.probe

    def rows(self, t: int) -> np.ndarray:
        """Rows of the all-prefixes batch (length ``L - 1``, lexicographic) holding each prefix of
        length ``t`` (followed by zeros, which the causal mask hides from position ``t``)."""
        return np.arange(self.v**t) * self.v ** (self.length - 1 - t)

    def measures(self, log_probs: np.ndarray, hidden: np.ndarray) -> dict[str, float]:
        """``log_probs [N, L, V]`` and ``hidden [N, L, d]`` of the ``N = V^(L-1)`` prefixes."""
        out = {}
        parts = [
            analysis.nll_decomposition(probs, log_probs[self.rows(t), t], weights)
            for t, (weights, probs) in enumerate(self.positions)
        ]
        for key in ("nll", "data_entropy", "kl", "model_entropy"):
            out[key] = float(np.mean([float(p[key]) for p in parts]))  # per token

        out["surplus_exact"] = float(self.exact["surplus"])
        out["cmi_exact"] = float(self.exact["hidden"])
        t = self.surplus_t
        rows = self.rows(t)
        features = {"hidden": hidden[rows, t], "head": log_probs[rows, t]}
        for name, feats in features.items():
            (train_c, train_a, train_b), (test_c, test_a, test_b) = self.probe_samples
            estimate = analysis.probe_conditional_information(
                feats[train_c], train_a, train_b, feats[test_c], test_a, test_b,
                num_classes=self.v, l2=self.probe.l2, steps=self.probe.steps,
            )  # fmt: skip
            out[f"probe_info_{name}"] = float(estimate["information"])
        out["surplus_probe"] = out["probe_info_hidden"] - out["probe_info_head"]

        weights, probs = self.positions[-1]
        k = self.v - 1
        alignment = analysis.spectral_alignment(hidden[:, -1], probs, weights, k)
        out["spectral_captured"] = float(alignment.captured)
        supported = int(np.sum(weights > 0))
        out["spectral_chance"] = min(1.0, hidden.shape[-1] / (supported - 1))
        return out


def _sample_triples(rng, joint: np.ndarray, contexts: np.ndarray, num: int):
    """``num`` draws of ``(c, a, b)`` from the joint restricted to ``contexts`` (renormalised)."""
    sub = joint[contexts].reshape(-1)
    flat = rng.choice(sub.size, size=num, p=sub / sub.sum())
    c, a, b = np.unravel_index(flat, joint[contexts].shape)
    return contexts[c], a.astype(np.int32), b.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# One run.


def run_one(config, name: str, seed: int, workdir: str) -> dict[str, Any]:
    language = make_language(config, name)
    v, length, m = config.vocab_size, config.length, config.model
    module = models.CausalTransformer(
        num_actions=v, vocab_size=v, max_len=length, dim=m.dim, num_heads=m.num_heads,
        num_layers=m.num_layers,
    )  # fmt: skip
    data_rng = np.random.default_rng([config.language.seed, seed])
    tokens = language.sample(data_rng, config.num_samples, length)
    prefixes = sampling.all_sequences(v, length - 1)  # every prefix, lexicographic
    reference = Reference(config, language, seed)

    @jax.jit  # op by op, the transformer's init compiles each of its primitives on its own
    def init(key):
        context, x = jnp.zeros((1,), jnp.int32), jnp.zeros((1, length), jnp.int32)
        return {"model": module.init(key, context, x)["params"]}, {}

    def mle(params, model_state, batch, key):
        del model_state, key
        x = batch["tokens"]
        logits = module.apply({"params": params["model"]}, jnp.zeros(x.shape[:1], jnp.int32), x)
        nll = -jnp.mean(sampling.token_log_probs(logits, x))  # position t predicts x_t
        return nll, ({}, {"nll": nll})

    def predict(params, model_state, batch):
        x = batch["tokens"]
        logits, (hidden,) = models.sown_features(
            module, {"params": params["model"]}, jnp.zeros(x.shape[:1], jnp.int32), x
        )
        return {"log_probs": jax.nn.log_softmax(logits, axis=-1), "hidden": hidden}

    def summarize(outputs):
        return reference.measures(
            np.asarray(outputs["log_probs"], np.float64), np.asarray(outputs["hidden"], np.float64)
        )

    task = Task(
        init=init,
        updates=[Update("mle", mle, ("model",))],
        optimizers={"model": optax.adam(config.learning_rate)},
        train_data=fdata.ArrayDict(tokens=tokens),
        eval_data=fdata.ArrayDict(tokens=prefixes),
        predict=predict,
        summarize=summarize,
    )
    tcfg = TrainConfig.from_mapping({**config.train.to_dict(), "seed": seed})
    run_dir = os.path.join(workdir, name, f"seed{seed}")
    config_json = json.dumps(
        {**json.loads(config.to_json_best_effort(sort_keys=True)), "run": [name, seed]},
        sort_keys=True,
    )
    result = train(task, tcfg, run_dir, config_json=config_json)
    # at initialisation (the same init function and seed), for the curves' first point
    params0, _ = init(jax.random.key(seed))
    start = summarize(jax.jit(predict)(params0, {}, {"tokens": jnp.asarray(prefixes)}))
    curve = [(0, start)] + [
        (r["step"], {k[len("eval/") :]: v for k, v in r.items() if k.startswith("eval/")})
        for r in wd.read_metrics(run_dir)
        if any(k.startswith("eval/") for k in r)
    ]
    return {"summary": result.summary, "curve": curve}


# ---------------------------------------------------------------------------------------------
# The experiment.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Every language x seed; returns ``{language: {measure: {"mean", "std", "per_seed"}}}`` plus
    the curves, also written to ``summary.json``, ``results.md`` and the ``curves_*.png``."""
    validate(config)
    seeds = list(range(config.num_seeds))
    runs = {(n, s): run_one(config, n, s, workdir) for n in config.languages for s in seeds}
    summary: dict[str, Any] = {"seeds": seeds, "languages": {}}
    for name in config.languages:
        finals = [runs[(name, s)]["summary"] for s in seeds]
        summary["languages"][name] = {
            key: {
                "per_seed": [f[f"eval/{key}"] for f in finals],
                "mean": float(np.mean([f[f"eval/{key}"] for f in finals])),
                "std": float(np.std([f[f"eval/{key}"] for f in finals], ddof=1))
                if len(seeds) > 1
                else 0.0,
            }
            for key in MEASURES
        }
        summary["languages"][name]["curve"] = runs[(name, seeds[0])]["curve"]
    if jax.process_index() == 0:
        paths.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
        paths.write_text(os.path.join(workdir, "results.md"), format_summary(summary) + "\n")
        plot_curves(summary, workdir)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """One row per measure, one column per language: final values, mean ± std over seeds."""
    names = list(summary["languages"])
    lines = [
        f"Final values after training ({len(summary['seeds'])} seeds, mean ± sample std):",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, label in MEASURES.items():
        cells = [mean_std(summary["languages"][n][key]["per_seed"]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(summary: Mapping[str, Any], directory: str) -> None:
    """``curves_{kl,surplus,spectral}.png``: KL to the data, the probe estimates and the spectral
    alignment over training (seed 0, every language)."""
    groups = {
        "kl": ("KL(data || model) per token (nats)", ["kl"]),
        "surplus": ("probe estimate (nats)", ["probe_info_hidden", "probe_info_head"]),
        "spectral": ("captured fraction", ["spectral_captured"]),
    }
    for suffix, (ylabel, keys) in groups.items():
        series = {}
        for name, entry in summary["languages"].items():
            steps = [step for step, _ in entry["curve"]]
            for key in keys:
                label = name if len(keys) == 1 else f"{name}: {MEASURES[key]}"
                series[label] = (steps, [values[key] for _, values in entry["curve"]])
        plots.line_plot(
            series, os.path.join(directory, f"curves_{suffix}.png"), ylabel=ylabel,
            title=f"{MEASURES[keys[0]].split(' (')[0] if len(keys) == 1 else 'probe estimates'} "
            "over NLL training (seed 0)",
        )  # fmt: skip
