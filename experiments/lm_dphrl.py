r"""DPH-RL on a verifiable-reward task, measured exactly.

The task: prompt ``c`` asks for ``L`` tokens whose sum is ``target_offset + c``; several answers are
correct for every prompt. The initial policy ``pi_0`` is fitted (maximum likelihood) to answers from
the Markov language, whatever the prompt, so it solves each prompt only by chance. RL trains on the
even prompts (the odd ones are held out): each step samples ``group_size`` answers per training
prompt from the current policy, scores them (1 if correct), and follows the group-relative policy
gradient (GRPO advantages, on-policy) plus DPH-RL's penalty ``eta E_{y ~ pi_0}[mean_t g(u_t)]``
over a stored set of ``pi_0`` samples and their stored log-probs (no reference model is run).
``config.divergence``: ``none`` (GRPO alone), ``forward_kl`` (``KL(pi_0 || pi)``, mass-covering),
``js``, ``reverse_kl`` (``KL(pi || pi_0)``, importance-weighted on the stored samples), ``alpha``,
or any catalog generator (``D_f(pi || pi_0)``).

Measured per prompt by enumeration of every answer: pass@1 and pass@k (exact,
``1 - (1 - pass@1)^k``) and the unbiased estimator from ``eval_samples`` samples, the entropy of
the policy and of its correct answers (diversity), exact divergences to ``pi_0``; averaged over the
training prompts and over the held-out prompts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _checks, lm
from fdiv import metrics
from fdiv.data import language as lang
from fdiv.losses import policy as policy_losses
from fdiv.models import sampling
from fdiv.train import Task, Update

format_summary = lm.format_summary


FIELD_RULES = {
    **lm.FIELD_RULES,
    "eta": _checks.at_least(0),
    "num_prompts": _checks.count(2),  # even: train, odd: held out
    "group_size": _checks.count(2),
    "num_stored": _checks.count(1),
    "eval_samples": _checks.count(1),
    "pass_k": _checks.count(1),
    "target_offset": _checks.count(0),
}


def validate(config: ml_collections.ConfigDict) -> None:
    lm.validate_common(config, FIELD_RULES)
    if config.divergence != "none":
        try:
            policy_losses.alignment_generator(config.divergence)
        except ValueError as e:
            raise ValueError(f"{e}; or 'none' (GRPO without a penalty)") from None
    if max(config.pass_k) > config.eval_samples:
        raise ValueError(
            f"pass_k {tuple(config.pass_k)} must be in [1, eval_samples={config.eval_samples}]"
        )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    V, L, C, G = config.vocab_size, config.length, config.num_prompts, config.group_size
    seed = config.train.seed
    rng = np.random.default_rng(seed)
    module = lm.model(config, num_actions=V, num_contexts=C)
    answers = lm.language(config).sample(rng, config.base.num_samples, L)
    prompts = rng.integers(0, C, config.base.num_samples).astype(np.int32)
    initial = lm.train_base(config, workdir, module, prompts, answers)

    targets = config.target_offset + np.arange(C)
    train_prompts = np.arange(0, C, 2, dtype=np.int32)
    # The stored set: num_stored samples of pi_0 per training prompt with their token log-probs.
    stored_context = np.repeat(train_prompts, config.num_stored)
    stored = sampling.sample(
        lm.logits_fn(module, initial), jax.random.key(seed), jnp.asarray(stored_context), length=L
    )
    rl_context = jnp.asarray(np.repeat(train_prompts, G))
    rl_targets = jnp.asarray(targets[np.repeat(train_prompts, G)])
    generator = (
        None
        if config.divergence == "none"
        else policy_losses.alignment_generator(config.divergence)
    )

    def dphrl(params, model_state, batch, key):
        del model_state
        policy = params["policy"]
        frozen = lm.logits_fn(module, jax.lax.stop_gradient(policy))
        tokens = sampling.sample(frozen, key, rl_context, length=L).tokens
        reward = (jnp.sum(tokens, axis=-1) == rl_targets).astype(jnp.float32)
        advantage = policy_losses.group_advantages(reward.reshape(-1, G)).reshape(-1)
        logits = module.apply({"params": policy}, rl_context, tokens)
        pg = jnp.mean(policy_losses.grpo_loss(sampling.token_log_probs(logits, tokens), advantage))
        metrics_ = {"reward": jnp.mean(reward), "policy_gradient": pg}
        loss = pg
        if generator is not None:
            logits0 = module.apply({"params": policy}, batch["context"], batch["tokens"])
            penalty = policy_losses.dph_penalty(
                sampling.token_log_probs(logits0, batch["tokens"]),
                batch["log_prob"],
                divergence=generator,
            )
            metrics_["penalty"] = jnp.mean(penalty)
            loss = loss + config.eta * jnp.mean(penalty)
        return loss, ({}, metrics_)

    task = Task(
        init=lambda key: ({"policy": initial}, {}),
        updates=[Update("dphrl", dphrl, ("policy",))],
        optimizers={"policy": lm.optimizer(config.optimizer.learning_rate)},
        train_data=lm.ArrayDict(
            context=stored_context,
            tokens=np.asarray(stored.tokens),
            log_prob=np.asarray(stored.log_prob),
        ),
    )
    summary, final, _ = lm.train_policy(task, config, workdir)
    return lm.finish(workdir, {**summary, **evaluate(config, module, initial, final, targets)})


def evaluate(config, module, initial, final, targets) -> dict[str, float]:
    """Exact pass@k, diversity and divergences to ``pi_0`` per prompt, averaged by split, for the
    trained policy (``exact/<split>/...``) and for ``pi_0`` itself (``exact/<split>/initial/...``)."""
    C = config.num_prompts
    log_pi0 = lm.exact_log_probs(config, module, initial, range(C))
    out = {}
    log_pi_final = lm.exact_log_probs(config, module, final, range(C))
    for name, params, log_pi, seed in (
        ("", final, log_pi_final, 10_000),
        ("initial/", initial, log_pi0, 20_000),
    ):
        rows = _prompt_metrics(config, module, params, log_pi, log_pi0, targets, seed)
        for split, ids in (("train", range(0, C, 2)), ("heldout", range(1, C, 2))):
            for key in rows[0]:
                out[f"exact/{split}/{name}{key}"] = float(np.mean([rows[c][key] for c in ids]))
    return out


def _prompt_metrics(config, module, params, log_pi, log_pi0, targets, seed) -> list[dict]:
    V, L, C, n = config.vocab_size, config.length, config.num_prompts, config.eval_samples
    correct = lang.sum_task_correct(sampling.all_sequences(V, L)[None], targets[:, None])
    draws = sampling.sample(
        lm.logits_fn(module, params),
        jax.random.key(config.train.seed + seed),
        jnp.asarray(np.repeat(np.arange(C), n)),
        length=L,
    ).tokens
    num_correct = lang.sum_task_correct(np.asarray(draws), np.repeat(targets, n))
    num_correct = num_correct.reshape(C, n).sum(1)
    rows = []
    for c in range(C):
        pass1 = float(np.sum(np.exp(log_pi[c]) * correct[c]))
        row = {"pass@1": pass1}
        for k in config.pass_k:
            row[f"pass@{k}"] = 1.0 - (1.0 - pass1) ** k  # exact, for independent samples
            row[f"pass@{k}_estimate"] = float(metrics.pass_at_k(n, int(num_correct[c]), k))
        row["entropy"] = lm.entropy(log_pi[c])
        log_correct = np.where(correct[c], log_pi[c], -np.inf)
        row["correct_entropy"] = lm.entropy(log_correct - np.logaddexp.reduce(log_correct))
        row.update(lm.divergences_to(log_pi0[c], log_pi[c], prefix="to_initial/"))
        rows.append(row)
    return rows
