r"""f-DPO on a preference task with a hidden reward, measured exactly.

A base policy ``pi_ref`` is fitted to the Markov language; a hidden reward
``r(y) = sum_t w[y_t]`` labels pairs ``y, y' ~ pi_ref`` by Bradley–Terry; the policy (initialised at
``pi_ref``) is trained with ``fdpo_loss`` for ``config.divergence`` (reverse_kl = DPO, forward_kl,
js, alpha). Measured by enumeration of all sequences: expected hidden reward, entropy, exact
divergences to the reward-tilted target ``p*(y) ∝ pi_ref(y) exp(r(y) / beta)`` (the optimum of the
reverse-KL-regularised objective, the same target for every divergence) and ``KL(pi || pi_ref)``;
on held-out pairs: preference accuracy and the ECE of the predicted ``P(y > y')``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _checks, lm
from fdiv import data as fdata
from fdiv import metrics
from fdiv.data import language as lang
from fdiv.losses import preference
from fdiv.models import sampling
from fdiv.train import Task, Update

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
format_summary = lm.format_summary


FIELD_RULES = {
    **lm.FIELD_RULES,
    "beta": _checks.greater(0),
    "alpha": _checks.interval(0, 1, "()"),
    "reward_weights": _checks.ANY,
}


def validate(config: ml_collections.ConfigDict) -> None:
    lm.validate_common(config, FIELD_RULES)
    _checks.allowed("divergence", config.divergence, DIVERGENCES)
    if len(config.reward_weights) != config.vocab_size:
        raise ValueError(
            f"reward_weights has {len(config.reward_weights)} entries, vocab_size={config.vocab_size}"
        )
    if config.num_pairs < config.train.batch_size:
        raise ValueError(f"num_pairs={config.num_pairs} < train.batch_size")


def _pairs(rng, probs, seqs, reward, num):
    a = rng.choice(len(probs), num, p=probs)
    b = rng.choice(len(probs), num, p=probs)
    first_wins = lang.bradley_terry_labels(rng, reward[a], reward[b])
    chosen, rejected = np.where(first_wins, a, b), np.where(first_wins, b, a)
    return chosen, rejected, a, b, first_wins


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    V, L = config.vocab_size, config.length
    seed = config.train.seed
    rng = np.random.default_rng(seed)
    module = lm.model(config, num_actions=V, num_contexts=1)
    data = lm.language(config).sample(rng, config.base.num_samples, L)
    base = lm.train_base(config, workdir, module, np.zeros(len(data), np.int32), data)

    seqs = sampling.all_sequences(V, L)
    log_ref = lm.exact_log_probs(config, module, base)[0]
    reward = lang.unigram_reward(seqs, config.reward_weights)
    ref_probs = np.exp(log_ref) / np.exp(log_ref).sum()
    chosen, rejected, *_ = _pairs(rng, ref_probs, seqs, reward, config.num_pairs)
    _, _, eval_a, eval_b, eval_label = _pairs(rng, ref_probs, seqs, reward, config.num_eval_pairs)

    loss_kwargs = dict(
        beta=config.beta, divergence=config.divergence, alpha=config.alpha,
        label_smoothing=config.label_smoothing,
    )  # fmt: skip

    def fdpo(params, model_state, batch, key):
        del model_state, key
        tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
        logp = lm.sequence_log_prob(
            module, params["policy"], jnp.zeros(tokens.shape[0], jnp.int32), tokens, num_tokens=V
        )
        pw, pl = jnp.split(logp, 2)
        losses = preference.fdpo_loss(
            policy_chosen=pw,
            policy_rejected=pl,
            reference_chosen=batch["ref_chosen"],
            reference_rejected=batch["ref_rejected"],
            **loss_kwargs,
        )
        return jnp.mean(losses), ({}, {"margin": jnp.mean(pw - pl)})

    task = Task(
        init=lambda key: ({"policy": base}, {}),
        updates=[Update("fdpo", fdpo, ("policy",))],
        optimizers={"policy": lm.optimizer(config.optimizer.learning_rate)},
        train_data=fdata.ArrayDict(
            chosen=seqs[chosen],
            rejected=seqs[rejected],
            ref_chosen=log_ref[chosen].astype(np.float32),
            ref_rejected=log_ref[rejected].astype(np.float32),
        ),  # fmt: skip
    )
    summary, params, _ = lm.train_policy(task, config, workdir)
    log_pi = lm.exact_log_probs(config, module, params)[0]
    return lm.finish(
        workdir,
        {
            **summary,
            **evaluate(config, log_pi, log_ref, reward, eval_a, eval_b, eval_label),
        },
    )


def evaluate(config, log_pi, log_ref, reward, eval_a, eval_b, eval_label) -> dict[str, float]:
    """Exact metrics of a trained policy (``log_pi`` over all sequences) and held-out calibration."""
    tilted = log_ref + reward / config.beta
    log_target = tilted - np.logaddexp.reduce(tilted)
    out = {f"exact/{k}": v for k, v in lm.divergences_to(log_target, log_pi).items()}
    out["exact/reward"] = float(np.sum(np.exp(log_pi) * reward))
    out["exact/target_reward"] = float(np.sum(np.exp(log_target) * reward))
    out["exact/entropy"] = lm.entropy(log_pi)
    out["exact/kl_to_reference"] = lm.kl(log_pi, log_ref)
    z = preference.fdpo_logits(
        policy_chosen=jnp.asarray(log_pi[eval_a]), policy_rejected=jnp.asarray(log_pi[eval_b]),
        reference_chosen=jnp.asarray(log_ref[eval_a]), reference_rejected=jnp.asarray(log_ref[eval_b]),
        beta=config.beta, divergence=config.divergence, alpha=config.alpha,
    )  # fmt: skip
    two_class = jnp.stack([jnp.zeros_like(z), z], axis=-1)  # softmax(.)[1] = sigmoid(z) = P(a > b)
    labels = jnp.asarray(eval_label, jnp.int32)
    out["exact/preference_accuracy"] = float(metrics.accuracy(two_class, labels))
    out["exact/preference_ece"] = float(metrics.expected_calibration_error(two_class, labels)[0])
    return out
