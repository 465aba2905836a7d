r"""f-DPG towards a constraint target, measured exactly.

The base policy ``a`` is fitted to the Markov language; the target is the energy-based
``p(y) ∝ a(y) b(y)`` with ``b(y) = 1[token appears >= minimum times]`` (``b = floor`` instead of 0
for violators when ``constraint.floor > 0``). The policy, initialised at ``a``, samples a batch
inside each step and follows the f-DPG estimator of ``grad D_f(pi || p)`` (pseudo-reward
``-f'(pi / p)``, moving-average baseline, ``Z`` estimated by a running importance average over
every sample so far). The proposal is the policy itself (``proposal_every = 0``, importance
weights 1) or a stale copy of it refreshed every ``proposal_every`` steps (weights ``pi / q``). ``config.divergence`` takes the alignment names of
:func:`fdiv.losses.policy.alignment_generator` (``forward_kl`` = ``KL(p || pi)`` = DPG,
``reverse_kl`` = ``KL(pi || p)``, ``js``, ``tv``) or any catalog generator (``D_f(pi || p)``).

Measured by enumeration: forward / reverse KL, JS and TV of the policy to ``p``, the constraint
satisfaction rate ``sum_y pi(y) b(y)``, the entropy, ``KL(pi || a)`` and the ``Z`` estimate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _checks, lm
from fdiv.data import language as lang
from fdiv.losses import policy as policy_losses
from fdiv.models import sampling
from fdiv.train import Task, Update

format_summary = lm.format_summary


FIELD_RULES = {
    **lm.FIELD_RULES,
    "constraint.floor": _checks.interval(0, 1, "[)"),
    "constraint.token": _checks.count(0),
    "constraint.minimum": _checks.count(1),
    "proposal_every": _checks.count(0),  # 0: on-policy
    "baseline_decay": _checks.interval(0, 1, "[)"),
}


def validate(config: ml_collections.ConfigDict) -> None:
    lm.validate_common(config, FIELD_RULES)
    g = policy_losses.alignment_generator(config.divergence)  # raises, listing the names
    # f'(inf) = lim f(u)/u = dual.f(0+): finite for bounded generators (JS, TV, squared Hellinger)
    if config.constraint.floor == 0 and not np.isfinite(float(g.dual.f(jnp.array(-jnp.inf)))):
        raise ValueError(
            f"divergence={config.divergence!r} is infinite for a hard constraint target (f'(u) is "
            "unbounded as pi/p -> inf where p = 0): set constraint.floor > 0, e.g. 1e-4"
        )
    if not config.constraint.token < config.vocab_size:
        raise ValueError(f"constraint.token must be in [0, {config.vocab_size})")


def target_log_unnormalized(config, seqs: np.ndarray, log_base: np.ndarray) -> np.ndarray:
    """``log a(y) + log b(y)`` over all sequences (``-inf`` for violators of a hard constraint)."""
    ok = lang.count_constraint(
        seqs, token=config.constraint.token, minimum=config.constraint.minimum
    )
    floor = config.constraint.floor
    with np.errstate(divide="ignore"):
        return log_base + np.where(ok, 0.0, np.log(floor) if floor > 0 else -np.inf)


def fdpg_loss_fn(config, module, table: jax.Array, satisfied: jax.Array):
    """The f-DPG update on sequences sampled from the proposal: the policy (on-policy) or a copy
    refreshed every ``proposal_every`` steps. ``table[index]`` is the target's unnormalised
    log-probability of a sequence, its normaliser estimated online from the same samples."""
    V, L, B = config.vocab_size, config.length, config.train.batch_size
    generator = policy_losses.alignment_generator(config.divergence)
    context = jnp.zeros((B,), jnp.int32)

    def fdpg(params, model_state, batch, key):
        del batch
        stats = model_state["stats"]
        policy = params["policy"]
        current = jax.lax.stop_gradient(policy)
        if config.proposal_every:  # a stale copy of the policy, refreshed every k steps
            refresh = stats["step"] % config.proposal_every == 0
            proposal = jax.tree.map(
                lambda new, old: jnp.where(refresh, new, old), current, model_state["proposal"]
            )
        else:  # on-policy: the policy at sampling time is the proposal
            proposal = current
        tokens = sampling.sample(lm.logits_fn(module, proposal), key, context, length=L).tokens
        log_pi = lm.sequence_log_prob(module, policy, context, tokens, num_tokens=V)
        if config.proposal_every:
            log_q = lm.sequence_log_prob(module, proposal, context, tokens, num_tokens=V)
        else:  # the proposal is the policy: no second forward pass
            log_q = jax.lax.stop_gradient(log_pi)
        index = sampling.sequence_index(tokens, V)
        log_p_unnorm = table[index]
        estimate = policy_losses.partition_update(
            policy_losses.PartitionEstimate(stats["log_sum"], stats["count"]), log_p_unnorm, log_q
        )
        log_z = policy_losses.partition_log_z(estimate)
        loss, terms = policy_losses.fdpg_loss(
            log_pi=log_pi,
            log_target=log_p_unnorm - log_z,
            divergence=generator,
            baseline=stats["baseline"],
            log_proposal=log_q if config.proposal_every else None,
        )
        signal = jnp.mean(terms.importance_weight * terms.pseudo_reward)
        new_stats = {
            "log_sum": estimate.log_sum,
            "count": estimate.count,
            "baseline": policy_losses.moving_average(
                stats["baseline"], signal, decay=config.baseline_decay
            ),
            "step": stats["step"] + 1,
        }
        metrics = {
            "log_z": log_z,
            "pseudo_reward": jnp.mean(terms.pseudo_reward),
            "importance_weight": jnp.mean(terms.importance_weight),
            "constraint_rate": jnp.mean(satisfied[index].astype(jnp.float32)),
        }
        updates = {"stats": new_stats}
        if config.proposal_every:
            updates["proposal"] = proposal
        return loss, (updates, metrics)

    return fdpg


def init_fn(config, base):
    """The policy starts at the base; the normaliser estimate, baseline and step at zero."""

    def init(key):
        del key
        start = policy_losses.partition_init()
        stats = {
            "log_sum": start.log_sum,
            "count": start.count,
            "baseline": jnp.zeros(()),
            "step": jnp.zeros((), jnp.int32),
        }
        model_state = {"stats": stats}
        if config.proposal_every:
            model_state["proposal"] = base
        return {"policy": base}, model_state

    return init


def exact_metrics(log_pi, log_unnorm, log_base, satisfied, stats) -> dict[str, float]:
    """Divergences to the normalised target, constraint rates, entropy and ``log Z`` (exact, and
    the run's final estimate), by enumeration of every sequence."""
    log_z = np.logaddexp.reduce(log_unnorm)
    out = {f"exact/{k}": v for k, v in lm.divergences_to(log_unnorm - log_z, log_pi).items()}
    out["exact/constraint_rate"] = float(np.sum(np.exp(log_pi) * np.asarray(satisfied)))
    out["exact/base_constraint_rate"] = float(np.sum(np.exp(log_base) * np.asarray(satisfied)))
    out["exact/entropy"] = lm.entropy(log_pi)
    out["exact/kl_to_base"] = lm.kl(log_pi, log_base)
    out["exact/log_z"] = float(log_z)
    out["exact/log_z_estimate"] = float(
        policy_losses.partition_log_z(
            policy_losses.PartitionEstimate(stats["log_sum"], stats["count"])
        )
    )
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    V, L = config.vocab_size, config.length
    rng = np.random.default_rng(config.train.seed)
    module = lm.model(config, num_actions=V, num_contexts=1)
    data = lm.language(config).sample(rng, config.base.num_samples, L)
    base = lm.train_base(config, workdir, module, np.zeros(len(data), np.int32), data)
    seqs = sampling.all_sequences(V, L)
    log_base = lm.exact_log_probs(config, module, base)[0]
    log_unnorm = target_log_unnormalized(config, seqs, log_base)
    satisfied = jnp.asarray(
        lang.count_constraint(
            seqs, token=config.constraint.token, minimum=config.constraint.minimum
        )
    )
    task = Task(
        init=init_fn(config, base),
        updates=[
            Update(
                "fdpg",
                fdpg_loss_fn(config, module, jnp.asarray(log_unnorm, jnp.float32), satisfied),
                ("policy",),
            )
        ],
        optimizers={"policy": lm.optimizer(config.optimizer.learning_rate)},
    )
    summary, params, state = lm.train_policy(task, config, workdir)
    log_pi = lm.exact_log_probs(config, module, params)[0]
    out = exact_metrics(log_pi, log_unnorm, log_base, satisfied, state.model_state["stats"])
    return lm.finish(workdir, {**summary, **out})
