r"""SequenceMatch against maximum likelihood on a language with invalid sequences, measured exactly.

The data language is a Markov chain with forbidden transitions: a sequence containing a forbidden
bigram is *invalid* (probability 0). A base policy (actions: ``V`` tokens and a backspace, id
``V``) is fitted by maximum likelihood to ``num_train`` data sequences, then trained further with
``config.divergence``:

- ``kl``: maximum likelihood (forward KL to the data), on the data augmented with a wrong token
  followed by a backspace at rate ``backspace_rate`` (0 gives plain MLE; the wrong token itself is
  never imitated);
- ``chi2``: SequenceMatch, the chi^2 divergence to the data/model mixture in its soft-Q form over
  the same augmented data and the model's own rollouts (sampled with the backspace inside each
  step), plus ``mle_weight`` times the maximum-likelihood term.

Measured exactly (:func:`fdiv.models.sampling.final_distribution`, no sampling): the distribution of
the sequence generation ends with after ``max_actions`` actions, its invalid rate (invalid or
unfinished), forward KL / JS / TV to the data language, entropy; and *recovery*: starting from
held-out data prefixes followed by a forced forbidden token, the probability of ending with a valid
sequence (only a backspace can achieve it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _checks, lm
from fdiv import data as fdata
from fdiv.losses import sequence as seq_losses
from fdiv.models import sampling
from fdiv.train import Task, Update

DIVERGENCES = ("kl", "chi2")
format_summary = lm.format_summary


FIELD_RULES = {
    **lm.FIELD_RULES,
    "backspace_rate": _checks.interval(0, 1),
    "max_actions": _checks.count(1),
    "chi2_alpha": _checks.greater(0),
}


def validate(config: ml_collections.ConfigDict) -> None:
    lm.validate_common(config, FIELD_RULES)
    _checks.allowed("divergence", config.divergence, DIVERGENCES)
    if config.language.forbidden_per_token < 1:
        raise ValueError("language.forbidden_per_token must be >= 1: recovery needs invalid tokens")
    if config.max_actions < config.length:
        raise ValueError(f"max_actions must be >= length={config.length}, got {config.max_actions}")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    V, L, B = config.vocab_size, config.length, config.train.batch_size
    backspace = V
    rng = np.random.default_rng(config.train.seed)
    language = lm.language(config)
    module = lm.model(config, num_actions=V + 1, num_contexts=1)
    data = language.sample(rng, config.num_train, L)
    base = lm.train_base(config, workdir, module, np.zeros(len(data), np.int32), data)
    context = jnp.zeros((B,), jnp.int32)
    sm_kwargs = dict(backspace=backspace, terminal_length=L, alpha=config.chi2_alpha, gamma=1.0)

    def q_logits(params, transitions):
        tokens = seq_losses.transition_inputs(transitions, backspace=backspace)
        return module.apply({"params": params}, jnp.zeros(tokens.shape[0], jnp.int32), tokens)

    def objective(params, model_state, batch, key):
        del model_state
        policy = params["policy"]
        data_key, sample_key = jax.random.split(key)
        if config.backspace_rate > 0:
            demo = seq_losses.augment_with_backspace(
                data_key, batch["tokens"], vocab_size=V, backspace=backspace,
                rate=config.backspace_rate,
            )  # fmt: skip
        else:
            demo = seq_losses.mle_transitions(batch["tokens"])
        demo_logits = q_logits(policy, demo)
        nll = jnp.sum(seq_losses.transition_nll(demo_logits, demo, backspace=backspace))
        nll = nll / jnp.sum(demo.weight)
        if config.divergence == "kl":
            return nll, ({}, {"nll": nll})
        frozen = lm.logits_fn(module, jax.lax.stop_gradient(policy))
        roll = sampling.sample(
            frozen, sample_key, context, length=L, backspace=backspace,
            max_actions=config.max_actions,
        )  # fmt: skip
        own = seq_losses.Transitions(
            prefix=roll.prefix.reshape(-1, L),
            length=roll.prefix_length.reshape(-1),
            action=roll.action.reshape(-1),
            weight=roll.active.reshape(-1).astype(jnp.float32),
        )
        sm, terms = seq_losses.sequencematch_loss(
            demo_logits, demo, q_logits(policy, own), own, **sm_kwargs
        )
        metrics = {"nll": nll, "chi2": sm, "sample_backspace_rate": jnp.sum(
            (roll.action == backspace) & roll.active) / jnp.sum(roll.active)}  # fmt: skip
        return sm + config.mle_weight * nll, ({}, metrics)

    task = Task(
        init=lambda key: ({"policy": base}, {}),
        updates=[Update(config.divergence, objective, ("policy",))],
        optimizers={"policy": lm.optimizer(config.optimizer.learning_rate)},
        train_data=fdata.ArrayDict(tokens=data),
    )
    summary, final, _ = lm.train_policy(task, config, workdir)
    return lm.finish(workdir, {**summary, **evaluate(config, module, final, language, rng)})


def evaluate(config, module, params, language, rng) -> dict[str, float]:
    """Exact outcome distribution, invalid rate, divergences to the data language, recovery."""
    V, L = config.vocab_size, config.length
    fn = lm.logits_fn(module, params)
    probs = sampling.prefix_action_probs(fn, 0, vocab_size=V, length=L, backspace=V)
    kwargs = dict(vocab_size=V, length=L, backspace=V, max_actions=config.max_actions)
    final = sampling.final_distribution(fn, 0, action_probs=probs, **kwargs)
    seqs = sampling.all_sequences(V, L)
    log_data = language.log_prob(seqs)
    valid = np.isfinite(log_data)
    # Outcomes: the V^L sequences and "unfinished" (mass 0 under the data).
    with np.errstate(divide="ignore"):
        log_model = np.append(final.log_probs, np.log(final.incomplete))
    out = {
        f"exact/{k}": v
        for k, v in lm.divergences_to(np.append(log_data, -np.inf), log_model).items()
    }
    p = np.exp(final.log_probs)
    out["exact/invalid_rate"] = float(np.sum(p[~valid]) + final.incomplete)
    out["exact/unfinished_rate"] = final.incomplete
    out["exact/entropy"] = lm.entropy(log_model)
    # Recovery: a held-out data prefix, then a forbidden token; P(the final sequence is valid).
    held_out = language.sample(rng, config.num_forced, L)
    recovered = []
    for y, k in zip(held_out, rng.integers(1, L, config.num_forced), strict=True):
        wrong = rng.choice(language.forbidden_next(int(y[k - 1])))
        start = np.append(y[:k], wrong)
        if start.shape[0] >= L:  # the error completes the sequence: nothing left to recover with
            recovered.append(0.0)
            continue
        outcome = sampling.final_distribution(fn, 0, start=start, action_probs=probs, **kwargs)
        recovered.append(float(np.sum(np.exp(outcome.log_probs)[valid])))
    out["exact/recovery"] = float(np.mean(recovered))
    return out
