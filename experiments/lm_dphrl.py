r"""DPH-RL on a verifiable-reward task, measured exactly, set up as the authors' code does.

The task: prompt ``c`` asks for ``L`` tokens whose sum is ``target_offset + c mod num_targets``
(two prompts per target by default, like two phrasings); several answers are correct for every
prompt. The initial policy ``pi_0`` is fitted (maximum likelihood) to answers from the Markov
language, except on the *mastered* prompts (``c mod 4 in mastered_residues``), where its answers
are the language's correct ones: like an instruct model, it solves some tasks already (with
diverse answers) and others only by chance.

Prompt roles (fixed, documented): even prompts are the RL pool; odd prompts are held out, those
below ``C / 2`` for validation (they choose eta) and the rest for the test, so that both ask for
the same sums. Each split holds mastered and unmastered prompts.

Defaults follow the official code (``seamoke/DPH-RL``, a verl fork; parity table in
``experiments/README.md``), each deviation a switch:

- ``prompt_split="separate"``: ``pi_0`` answers every pool prompt ``presample`` times (4); the
  prompts it solves every time are the penalty ("perfect") set, the others GRPO's ("exploration")
  set (``data/sql/process_data/exact_correct_id.py``). ``"shared"``: GRPO and the penalty both on
  the whole pool (fdiv before 2026-12).
- ``sample_filter="correct"``: the stored ``pi_0`` samples of the penalty prompts are kept only
  if correct, with their token log-probs under ``pi_0`` (no reference model is run);
  ``"all"`` keeps every sample.
- GRPO (``config.grpo``): advantages ``(r - mean) / (std + 1e-6)`` with the sample std
  (``ddof = 1``, ``torch.std``), ratio clip ``[1 - 0.2, 1 + 0.28]``, dual clip 3, and the rollout
  split into ``minibatches`` (2) by prompt, one optimiser step each (the second is off-policy,
  importance-weighted by the rollout's log-probs).
- The penalty ``eta E_{y ~ pi_0}[mean_t g(u_t)]``, ``u = pi / pi_0`` per token, on the stored
  samples, added to every mini-batch step (on its share of the stored batch). The official code
  puts the stored rows in their own micro-batches instead (~11% of the rows, penalty only), which
  is the same objective up to the scale of eta. ``penalty_clip`` (forward KL only): verl's
  ``low_var_kl`` clips (log u to [-20, 20], the value to [-10, 10]).

``config.divergence``: ``none`` (GRPO alone), ``forward_kl`` (``KL(pi_0 || pi)``, the official
``forward``), ``js`` (the catalog's JS, *half* the official ``js_low_var`` ``g(u) = u log u -
(u + 1) log((u + 1)/2)``: fdiv's eta = 2 x the official weight), ``reverse_kl``
(``KL(pi || pi_0)``, importance-weighted on the stored samples; the official reverse KL is verl's
k3 loss on the policy's own samples with a live reference model), ``alpha``, or any catalog
generator (``D_f(pi || pi_0)``). The weight is ``config.eta``; ``experiments.lm_table`` tunes it per
divergence on the validation prompts.

Measured per prompt by enumeration of every answer: pass@1 and pass@k (exact,
``1 - (1 - pass@1)^k``) and the unbiased estimator from ``eval_samples`` samples, the entropy of
the policy and of its correct answers (diversity), exact divergences to ``pi_0``; averaged over
each split: ``explore`` (GRPO's prompts), ``perfect`` (the penalty's prompts), ``valid``, ``test``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _checks, lm
from fdiv import data as fdata
from fdiv import metrics
from fdiv.data import language as lang
from fdiv.losses import policy as policy_losses
from fdiv.models import sampling
from fdiv.train import Task, Update

format_summary = lm.format_summary

PROMPT_SPLITS = ("separate", "shared")
SAMPLE_FILTERS = ("correct", "all")
SPLITS = ("explore", "perfect", "valid", "test")

FIELD_RULES = {
    **lm.FIELD_RULES,
    "eta": _checks.at_least(0),
    "num_prompts": _checks.count(8),
    "num_targets": _checks.count(1),
    "group_size": _checks.count(2),
    "num_stored": _checks.count(1),
    "presample": _checks.count(1),
    "eval_samples": _checks.count(1),
    "pass_k": _checks.count(1),
    "target_offset": _checks.count(0),
    "grpo.minibatches": _checks.count(1),
    "grpo.ddof": _checks.Rule(lambda v: v in (0, 1), "0 or 1", integer=True),
    "mastered_residues": _checks.Rule(
        lambda v: 0 <= v < 4, "in 0..3 (residues mod 4)", integer=True
    ),
    "grpo.clip_low": _checks.interval(0, 1),
    "grpo.clip_high": _checks.at_least(0),
    "grpo.dual_clip": _checks.at_least(0),
}


def validate(config: ml_collections.ConfigDict) -> None:
    lm.validate_common(config, FIELD_RULES)
    if config.divergence != "none":
        try:
            policy_losses.alignment_generator(config.divergence)
        except ValueError as e:
            raise ValueError(f"{e}; or 'none' (GRPO without a penalty)") from None
    _checks.allowed("prompt_split", config.prompt_split, PROMPT_SPLITS)
    _checks.allowed("sample_filter", config.sample_filter, SAMPLE_FILTERS)
    if 0 < config.grpo.dual_clip <= 1:
        raise ValueError(f"grpo.dual_clip={config.grpo.dual_clip}: must be > 1, or 0 (off)")
    if max(config.pass_k) > config.eval_samples:
        raise ValueError(
            f"pass_k {tuple(config.pass_k)} must be in [1, eval_samples={config.eval_samples}]"
        )
    if max(targets(config)) > (config.vocab_size - 1) * config.length:
        raise ValueError(
            f"target_offset + num_targets - 1 = {max(targets(config))} exceeds the largest sum "
            f"{(config.vocab_size - 1) * config.length}"
        )


def targets(config) -> np.ndarray:
    """``[C]`` the sum each prompt asks for."""
    return config.target_offset + np.arange(config.num_prompts) % config.num_targets


def prompt_roles(config) -> dict[str, np.ndarray]:
    """The fixed roles: ``pool`` (even prompts, RL), ``valid`` / ``test`` (odd, below ``C / 2`` /
    the rest) and ``mastered`` (``c mod 4`` in ``mastered_residues``)."""
    c = np.arange(config.num_prompts)
    odd = c % 2 == 1
    return {
        "pool": c[~odd],
        "valid": c[odd & (c < config.num_prompts // 2)],
        "test": c[odd & (c >= config.num_prompts // 2)],
        "mastered": c[np.isin(c % 4, config.mastered_residues)],
    }


def correct_answers(language, rng, target: int, num: int, length: int) -> np.ndarray:
    """``num`` answers of the language conditioned on summing to ``target`` (rejection)."""
    found = np.zeros((0, length), np.int32)
    for _ in range(1000):
        draws = language.sample(rng, 64 * num, length)
        found = np.concatenate([found, draws[draws.sum(-1) == target]])
        if len(found) >= num:
            return found[:num]
    raise ValueError(f"the language almost never sums to {target} over {length} tokens")


def sft_data(config, rng) -> tuple[np.ndarray, np.ndarray]:
    """``pi_0``'s training pairs ``(prompts [N], answers [N, L])``: language samples, correct-only
    on the mastered prompts."""
    n, L = config.base.num_samples, config.length
    language = lm.language(config)
    prompts = rng.integers(0, config.num_prompts, n).astype(np.int32)
    answers = language.sample(rng, n, L)
    goal = targets(config)
    for c in prompt_roles(config)["mastered"]:
        rows = np.flatnonzero(prompts == c)
        answers[rows] = correct_answers(language, rng, int(goal[c]), len(rows), L)
    return prompts, answers


def _sample(module, params, key, context, length):
    return sampling.sample(lm.logits_fn(module, params), key, jnp.asarray(context), length=length)


def split_pool(config, module, initial, key) -> tuple[np.ndarray, np.ndarray]:
    """``(explore, perfect)`` prompts of the pool: with ``prompt_split="separate"``, perfect = the
    prompts whose ``presample`` answers from ``pi_0`` are all correct; ``"shared"``: both the pool."""
    pool = prompt_roles(config)["pool"]
    if config.prompt_split == "shared":
        return pool, pool
    k = config.presample
    draws = _sample(module, initial, key, np.repeat(pool, k), config.length).tokens
    solved = lang.sum_task_correct(np.asarray(draws), np.repeat(targets(config)[pool], k))
    all_correct = solved.reshape(len(pool), k).all(-1)
    explore, perfect = pool[~all_correct], pool[all_correct]
    if not len(perfect) or len(explore) < config.grpo.minibatches:
        raise ValueError(
            f"pi_0 solves {len(perfect)} of the {len(pool)} pool prompts {k}/{k} times: the "
            f"penalty needs at least one and GRPO at least grpo.minibatches="
            f"{config.grpo.minibatches} others (change mastered_residues or base.steps)"
        )
    return explore, perfect


def stored_set(config, module, initial, key, perfect) -> dict[str, np.ndarray]:
    """``num_stored`` answers of ``pi_0`` per penalty prompt with their token log-probs under
    ``pi_0``; ``sample_filter="correct"`` keeps the correct ones only."""
    context = np.repeat(perfect, config.num_stored)
    draws = _sample(module, initial, key, context, config.length)
    tokens, log_prob = np.asarray(draws.tokens), np.asarray(draws.log_prob)
    keep = np.ones(len(context), bool)
    if config.sample_filter == "correct":
        keep = lang.sum_task_correct(tokens, targets(config)[context])
    if not keep.any():
        raise ValueError("no correct pi_0 sample to store: raise num_stored")
    return {"context": context[keep], "tokens": tokens[keep], "log_prob": log_prob[keep]}


def _rollout(module, policy, key, context, target, config) -> dict[str, jax.Array]:
    """An answer per row of ``context`` (``group_size`` rows per prompt) from the held ``policy``,
    with its 0/1 reward and its GRPO advantage within its prompt's group."""
    draws = _sample(module, jax.lax.stop_gradient(policy), key, context, config.length)
    reward = (jnp.sum(draws.tokens, axis=-1) == target).astype(jnp.float32)
    advantage = policy_losses.group_advantages(
        reward.reshape(-1, config.group_size), ddof=config.grpo.ddof
    )
    return {
        "tokens": draws.tokens,
        "log_prob": draws.log_prob,
        "advantage": advantage.reshape(-1),
        "reward": reward,
    }


def minibatch_loss_fn(config, module, explore: np.ndarray, m: int):
    """The loss of GRPO mini-batch ``m`` (whole prompt groups, as verl splits by prompt) plus
    ``eta`` times the DPH penalty on its share of the stored ``pi_0`` answers. Mini-batch 0 draws
    the step's rollout from the policy before the step's updates; the others reuse it."""
    G, M, g = config.group_size, config.grpo.minibatches, config.grpo
    rl_context = jnp.asarray(np.repeat(explore, G))
    rl_targets = jnp.asarray(targets(config)[np.repeat(explore, G)])
    part = np.array_split(np.arange(len(explore)), M)[m]
    rows = np.concatenate([np.arange(p * G, (p + 1) * G) for p in part])
    share = np.array_split(np.arange(config.train.batch_size), M)[m]
    generator = None if config.divergence == "none" else policy_losses.alignment_generator(config.divergence)  # fmt: skip
    clip = {
        "clip_epsilon": g.clip_low,
        "clip_epsilon_high": g.clip_high or None,
        "dual_clip": g.dual_clip or None,
    }
    penalty_clip = (
        {"log_ratio_clip": 20.0, "value_clip": 10.0}
        if config.penalty_clip and config.divergence == "forward_kl"
        else {}
    )

    def loss(params, model_state, batch, key):
        policy = params["policy"]
        if m == 0:
            rollout = _rollout(module, policy, key, rl_context, rl_targets, config)
        else:
            rollout = model_state["rollout"]
        logits = module.apply({"params": policy}, rl_context[rows], rollout["tokens"][rows])
        pg = policy_losses.grpo_loss(
            sampling.token_log_probs(logits, rollout["tokens"][rows]),
            rollout["advantage"][rows],
            old_log_pi_tokens=rollout["log_prob"][rows],
            **clip,
        )
        total = jnp.mean(pg)
        metrics_ = {"reward": jnp.mean(rollout["reward"]), "policy_gradient": total}
        if generator is not None:
            logits0 = module.apply({"params": policy}, batch["context"][share], batch["tokens"][share])  # fmt: skip
            penalty = policy_losses.dph_penalty(
                log_pi_tokens=sampling.token_log_probs(logits0, batch["tokens"][share]),
                log_pi0_tokens=batch["log_prob"][share],
                divergence=generator,
                **penalty_clip,
            )
            metrics_["penalty"] = jnp.mean(penalty)
            total = total + config.eta * jnp.mean(penalty)
        return total, ({"rollout": rollout} if m == 0 else {}, metrics_)

    return loss


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    V, L, C, G = config.vocab_size, config.length, config.num_prompts, config.group_size
    seed = config.train.seed
    module = lm.model(config, num_actions=V, num_contexts=C)
    prompts, answers = sft_data(config, np.random.default_rng(seed))
    initial = lm.train_base(config, workdir, module, prompts, answers)
    split_key, store_key = jax.random.split(jax.random.key(seed))
    explore, perfect = split_pool(config, module, initial, split_key)
    stored = stored_set(config, module, initial, store_key, perfect)
    M, n = config.grpo.minibatches, len(explore) * G
    empty_rollout = {
        "tokens": jnp.zeros((n, L), jnp.int32),
        "log_prob": jnp.zeros((n, L), jnp.float32),
        "advantage": jnp.zeros((n,), jnp.float32),
        "reward": jnp.zeros((n,), jnp.float32),
    }
    task = Task(
        init=lambda key: ({"policy": initial}, {"rollout": empty_rollout}),
        updates=[
            Update(
                f"grpo{m}" if M > 1 else "dphrl",
                minibatch_loss_fn(config, module, explore, m),
                ("policy",),
            )
            for m in range(M)
        ],  # fmt: skip
        optimizers={"policy": lm.optimizer(config.optimizer.learning_rate)},
        train_data=fdata.ArrayDict(**stored),
    )
    summary, final, _ = lm.train_policy(task, config, workdir)
    roles = {"explore": explore, "perfect": perfect, **{k: prompt_roles(config)[k] for k in ("valid", "test")}}  # fmt: skip
    summary = {
        **summary,
        "prompts/explore": len(explore),
        "prompts/perfect": len(perfect),
        "stored": len(stored["tokens"]),
    }
    return lm.finish(workdir, {**summary, **evaluate(config, module, initial, final, roles)})


def evaluate(config, module, initial, final, roles) -> dict[str, float]:
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
        rows = _prompt_metrics(config, module, params, log_pi, log_pi0, seed)
        for split in SPLITS:
            for key in rows[0]:
                out[f"exact/{split}/{name}{key}"] = float(np.mean([rows[c][key] for c in roles[split]]))  # fmt: skip
    return out


def _prompt_metrics(config, module, params, log_pi, log_pi0, seed) -> list[dict]:
    V, L, C, n = config.vocab_size, config.length, config.num_prompts, config.eval_samples
    goal = targets(config)
    correct = lang.sum_task_correct(sampling.all_sequences(V, L)[None], goal[:, None])
    draws = _sample(module, params, jax.random.key(config.train.seed + seed), np.repeat(np.arange(C), n), L).tokens  # fmt: skip
    num_correct = lang.sum_task_correct(np.asarray(draws), np.repeat(goal, n))
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
