"""Shared pieces of the language-model alignment experiments (``lm_fdpo``, ``lm_fdpg``,
``lm_dphrl``, ``lm_seqmatch``): the tiny transformer, the base (SFT) policy every method starts
from, and exact metrics by enumeration of all ``V^L`` sequences.

The base policy is a :class:`fdiv.models.CausalTransformer` fitted by maximum likelihood to samples
of a Markov "data language" (``config.language``) through the shared trainer in
``<workdir>/base`` (or ``config.base.workdir``, so several runs can share it); it resumes from its
own checkpoints like every trainer run.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import fdiv
from experiments import _checks
from fdiv import data as fdata
from fdiv.data import language as lang
from fdiv.losses import kd as kd_losses
from fdiv.models import sampling
from fdiv.models.transformer import CausalTransformer
from fdiv.train import Task, TrainConfig, Update, fingerprint, optim, train, train_stage
from fdiv.train import paths as fdiv_paths

# Ranges beyond experiments._checks.RULES that every LM config shares.
FIELD_RULES = {
    "vocab_size": _checks.count(2),
    "length": _checks.count(2),
    "language.forbidden_per_token": _checks.count(0),
}


def validate_common(config: ml_collections.ConfigDict, field_rules=FIELD_RULES) -> None:
    """The fields every LM config shares: task size, model, optimiser, trainer; ``field_rules``
    are the experiment's ranges (``FIELD_RULES`` and its own, see ``experiments._checks.fields``)."""
    _checks.fields(config, field_rules)
    if config.vocab_size**config.length > 2**16:
        raise ValueError(
            f"vocab_size**length = {config.vocab_size**config.length} sequences is too many to "
            "enumerate exactly (at most 65536)"
        )
    lang.markov_language(
        config.vocab_size,
        seed=config.language.seed,
        forbidden_per_token=config.language.forbidden_per_token,
    )  # raises on a bad forbidden_per_token
    model(config, num_actions=config.vocab_size, num_contexts=1)  # raises on bad sizes
    train_config(config).validate()


def train_config(config: ml_collections.ConfigDict, **overrides) -> TrainConfig:
    return TrainConfig.from_mapping({**config.train.to_dict(), **overrides})


def language(config: ml_collections.ConfigDict) -> lang.MarkovLanguage:
    return lang.markov_language(
        config.vocab_size,
        seed=config.language.seed,
        forbidden_per_token=config.language.forbidden_per_token,
    )


def model(config, *, num_actions: int, num_contexts: int) -> CausalTransformer:
    m = config.model
    return CausalTransformer(
        num_actions=num_actions, vocab_size=config.vocab_size, num_contexts=num_contexts,
        max_len=config.length, dim=m.dim, num_heads=m.num_heads, num_layers=m.num_layers,
    )  # fmt: skip


def init_params(module: CausalTransformer, key: jax.Array, length: int):
    return module.init(key, jnp.zeros((1,), jnp.int32), jnp.zeros((1, length), jnp.int32))["params"]


@functools.partial(jax.jit, static_argnums=0)
def _apply(module: CausalTransformer, params, context, tokens):
    return module.apply({"params": params}, context, tokens)


def logits_fn(module: CausalTransformer, params):
    """``(context, tokens) -> logits``: what :mod:`fdiv.models.sampling` calls. Jitted once per
    module and shape (the exact evaluations call it outside any jit, where an op-by-op transformer
    compiled each of its ~300 primitives on its own); inside a jitted step it is simply inlined."""
    return functools.partial(_apply, module, params)


def sequence_log_prob(module, params, context, tokens, *, num_tokens: int) -> jax.Array:
    """``log pi(y | c)`` summed over tokens, the token actions only: ``[B]``."""
    logits = module.apply({"params": params}, context, tokens)[..., :num_tokens]
    return jnp.sum(sampling.token_log_probs(logits, tokens), axis=-1)


def exact_log_probs(config, module, params, contexts=(0,)) -> np.ndarray:
    """``log pi(y | c)`` of every sequence for each context (token actions only): float64
    ``[C, V^L]`` (:func:`fdiv.models.sampling.enumerate_log_probs`)."""
    fn = logits_fn(module, params)
    out = sampling.enumerate_log_probs(
        fn, contexts, vocab_size=config.vocab_size, length=config.length
    )
    return np.asarray(out, np.float64)


def train_policy(task: Task, config: ml_collections.ConfigDict, workdir: str):
    """Run ``task`` with ``config.train`` in ``workdir``: ``(summary, policy params, final state)``."""
    result = train(
        task, train_config(config), workdir, config_json=config.to_json_best_effort(sort_keys=True)
    )
    return result.summary, result.state.params["policy"], result.state


def finish(workdir: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Add the experiment's exact metrics to the trainer's ``summary.json`` (process 0)."""
    if jax.process_index() == 0:
        text = json.dumps(summary, indent=2, sort_keys=True)
        fdiv_paths.write_text(os.path.join(workdir, "summary.json"), text)
    return summary


def optimizer(learning_rate: float) -> optax.GradientTransformation:
    """The alignment experiments' optimiser: Adam at a constant rate, gradients clipped to norm 1."""
    return optim.make_optimizer("adam", learning_rate=learning_rate, clip_norm=1.0)


def train_base(
    config: ml_collections.ConfigDict,
    workdir: str,
    module: CausalTransformer,
    context: np.ndarray,
    tokens: np.ndarray,
):
    """Maximum likelihood on ``(context, tokens)`` pairs: the base / reference / initial policy."""
    base_dir = config.base.workdir or os.path.join(workdir, "base")
    num_tokens = config.vocab_size

    def mle(params, model_state, batch, key):
        del model_state, key
        logp = sequence_log_prob(
            module, params["policy"], batch["context"], batch["tokens"], num_tokens=num_tokens
        )
        return -jnp.mean(logp) / tokens.shape[1], ({}, {})

    task = Task(
        init=lambda key: ({"policy": init_params(module, key, config.length)}, {}),
        updates=[Update("mle", mle, ("policy",))],
        optimizers={"policy": optimizer(config.base.learning_rate)},
        train_data=fdata.ArrayDict(context=context, tokens=tokens),
    )
    cfg = train_config(config, total_steps=config.base.steps, batch_size=config.base.batch_size)
    # The stage's config: what decides the base policy (runs sharing base.workdir must agree).
    base = {k: v for k, v in config.base.to_dict().items() if k != "workdir"}
    config_json = fingerprint(
        config, ("experiment", "vocab_size", "length", "language", "model"),
        stage="base", base=base, train={"seed": config.train.seed},
    )  # fmt: skip
    return train_stage(task, cfg, base_dir, config_json=config_json, network="policy").params


def divergences_to(log_target, log_model, prefix: str = "") -> dict[str, float]:
    """Exact forward KL ``KL(p||pi)``, reverse KL ``KL(pi||p)``, JS, TV between two log-prob
    vectors over the same enumerated support (``-inf`` for zero mass)."""
    log_target, log_model = jnp.asarray(log_target), jnp.asarray(log_model)
    return {
        f"{prefix}forward_kl": float(fdiv.divergence("kl", log_target, log_model)),
        f"{prefix}reverse_kl": float(fdiv.divergence("kl", log_model, log_target)),
        f"{prefix}js": float(fdiv.divergence("js", log_target, log_model)),
        f"{prefix}tv": float(fdiv.divergence("total_variation", log_target, log_model)),
    }


def kl(log_p, log_q) -> float:
    """Exact ``KL(P || Q)`` between two log-prob vectors over the same enumerated support."""
    return float(fdiv.divergence("kl", jnp.asarray(log_p), jnp.asarray(log_q)))


def entropy(log_p) -> float:
    """``H(P)`` of a log-prob vector (``-inf`` entries contribute 0)."""
    return float(kd_losses.entropy(jnp.asarray(log_p)))


def format_summary(summary: Mapping[str, Any]) -> str:
    """One ``key: value`` line per exact metric, then the wall time."""
    lines = [
        f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
        for k, v in summary.items()
        if k.startswith("exact/")
    ]
    wall = summary.get("wall_seconds")
    if wall is not None:
        lines.append(f"wall_seconds: {wall:.1f}")
    return "\n".join(lines)
