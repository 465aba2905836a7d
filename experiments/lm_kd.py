r"""Token-level knowledge distillation of a causal transformer on real text, through a fused head.

The corpus (``config.corpus``, default the embedded Python standard library, :mod:`fdiv.data.text`)
is tokenised by its byte-level BPE and cut into blocks of ``block_length + 1`` tokens. A teacher
transformer is trained first by next-token cross-entropy (``<workdir>/teacher`` or
``config.teacher_workdir``; a resumable trainer run of its own); the student, smaller, is then
trained with

    ``ce_weight * CE(student, y_ce) + kd_weight * D_f(p_T || q_S)`` over the tokens of ``y_kd``

where ``D_f`` is any catalog generator at ``temperature`` (``forward_kl``-style KD is ``"kl"``;
``"reverse_kl"``, ``"js"``, ``"skew_kl"``, ``"tv"``, ``"alpha"``, ...), computed by
:func:`fdiv.fused.fused_linear_divergence` from the student's hidden states and head (the student's
``[N, V]`` logits never exist) against the teacher's hidden states and head (fused as well), or
against the teacher's top-``teacher_top_k`` log-probabilities (:class:`fdiv.fused.TopKTeacher`;
in the supervised regime computed once over the training blocks and stored in the teacher's
workdir, so the student's steps run no teacher at all).
``config.regime`` chooses the sequences:

- ``supervised``: off-policy KD on the data, ``y_ce = y_kd =`` the data block;
- ``on_policy``: GKD (Agarwal et al. 2024): a fraction ``on_policy_fraction`` (lambda) of the
  rows keep their first ``prefix_length`` data tokens and continue with the student's own samples;
  ``D_f`` on those continuations (and on the data rows), the cross-entropy on the data;
- ``sequence``: sequence-level KD (Kim & Rush 2016): every row's continuation is sampled from the
  teacher; ``y_ce = y_kd`` = those continuations.

``config.method="student"`` trains the student alone (cross-entropy on the data), the reference.
Evaluation on the held-out files (``valid/*`` and ``eval/*`` for the test files): the student's
and the teacher's per-token NLL and perplexity, teacher-student top-1 agreement, and ``D_f`` itself;
samples of both models are printed in the log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import _checks
from fdiv import fused, generators
from fdiv.data import text as fdata_text
from fdiv.models import sampling
from fdiv.models.transformer import CausalTransformer
from fdiv.train import Task, TrainConfig, Update, fingerprint, optim, train, train_stage

METHODS = ("student", "kd")
TEACHER_KEYS = ("corpus", "files", "data_dir", "vocab_size", "block_length", "teacher")
REGIMES = ("supervised", "on_policy", "sequence")
FIELD_RULES = {
    "vocab_size": _checks.count(2),
    "block_length": _checks.count(2),
    "prefix_length": _checks.count(1),
    "temperature": _checks.greater(0),
    "kd_weight": _checks.at_least(0),
    "ce_weight": _checks.at_least(0),
    "on_policy_fraction": _checks.interval(0, 1),
    "teacher_top_k": _checks.count(0),
    "teacher_steps": _checks.count(1),
    "learning_rate": _checks.greater(0),
    "teacher.learning_rate": _checks.greater(0),
    "num_samples": _checks.count(0),
    "teacher.dim": _checks.count(1),
    "teacher.num_heads": _checks.count(1),
    "teacher.num_layers": _checks.count(0),
    "student.dim": _checks.count(1),
    "student.num_heads": _checks.count(1),
    "student.num_layers": _checks.count(0),
}


def validate(config: ml_collections.ConfigDict) -> None:
    _checks.fields(config, FIELD_RULES)
    _checks.allowed("method", config.method, METHODS)
    _checks.allowed("regime", config.regime, REGIMES)
    generators.resolve(config.divergence)  # an unknown name lists the known ones
    if config.prefix_length >= config.block_length:
        raise ValueError(
            f"prefix_length={config.prefix_length} must be < block_length={config.block_length}"
        )
    for net in ("teacher", "student"):
        model(config, net)  # raises on bad sizes
    train_config(config).validate()


def train_config(config, **overrides) -> TrainConfig:
    return TrainConfig.from_mapping({**config.train.to_dict(), **overrides})


def model(config, net: str) -> CausalTransformer:
    m = config[net]
    return CausalTransformer(
        num_actions=config.vocab_size, vocab_size=config.vocab_size, num_contexts=1,
        max_len=config.block_length, dim=m.dim, num_heads=m.num_heads, num_layers=m.num_layers,
        head_bias=False,
    )  # fmt: skip


def load(config, split: str) -> fdata_text.TokenBlocks:
    files = list(config.files) if config.files else None
    return fdata_text.load_text(
        config.corpus, split, vocab_size=config.vocab_size, block_length=config.block_length,
        data_dir=config.data_dir or None, files=files,
    )  # fmt: skip


def _context(tokens):
    return jnp.zeros(tokens.shape[:1], jnp.int32)


def hidden_and_weight(module: CausalTransformer, params, tokens):
    """``(h [B, T, dim], W [V, dim])`` for next-token prediction of ``tokens [B, T + 1]``: the
    states after each of the first ``T`` tokens (the context slot's state predicts token 0,
    which the data gives; it is left out) and the head as ``fused_linear_divergence`` takes it."""
    inputs = tokens[:, :-1]
    h = module.apply({"params": params}, _context(inputs), inputs, hidden_only=True)[:, 1:]
    return h, params["head"]["kernel"].T


def token_nll(module, params, tokens) -> jax.Array:
    """``-log q(y_{t+1} | y_{<=t})`` per predicted token, ``[B, T]`` (float32)."""
    inputs = tokens[:, :-1]
    logits = module.apply({"params": params}, _context(inputs), inputs)[:, 1:]
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_q, tokens[:, 1:, None], axis=-1)[..., 0]


def continue_from_prefix(module, params, key, tokens, prefix_length: int):
    """``(rows [B, T + 1], log_prob [B])``: ``tokens`` with every token after block position
    ``prefix_length`` resampled from ``module`` (temperature 1) given the data before it, and the
    sampled continuation's log-probability under ``module``."""
    length = tokens.shape[1] - 1  # positions 1..T are inputs; the block's first token is kept
    prefix = jnp.zeros((tokens.shape[0], length), jnp.int32).at[:, :prefix_length].set(tokens[:, 1 : prefix_length + 1])  # fmt: skip
    first = tokens[:, :1]

    def logits_fn(context, buffer):
        # the model reads [token 0, buffer...]; its output after block token t predicts token
        # t + 1, which sits at buffer position t: shift by one (the last row is never read)
        del context
        full = jnp.concatenate([first, buffer], axis=1)[:, :length]
        out = module.apply({"params": params}, _context(full), full)[:, 1:]
        return jnp.concatenate([out, out[:, -1:]], axis=1)

    # the buffer's position t holds token t + 1 of the block; sampling fills positions >= prefix
    rollout = sampling.sample(
        logits_fn, key, _context(tokens), length=length,
        prefix=prefix, prefix_length=jnp.full((tokens.shape[0],), prefix_length, jnp.int32),
    )  # fmt: skip
    return jnp.concatenate([first, rollout.tokens], axis=1), jnp.sum(rollout.log_prob, axis=1)


def teacher_top_k(config, teacher, t_params, tokens) -> fused.TopKTeacher:
    """The teacher's top-``config.teacher_top_k`` classes and their log-probabilities at
    ``config.temperature``, ``[B, T, k]``, for the predictions of ``tokens [B, T + 1]``."""
    h_t, w_t = hidden_and_weight(teacher, jax.lax.stop_gradient(t_params), tokens)
    logits_t = jnp.einsum("btd,vd->btv", h_t, w_t).astype(jnp.float32) / config.temperature
    values, indices = jax.lax.top_k(jax.nn.log_softmax(logits_t, axis=-1), config.teacher_top_k)
    return fused.TopKTeacher(indices, values)


def kd_term(config, student, s_params, teacher, t_params, tokens, where, cached=None):
    """``D_f(p_T || q_S)`` averaged over the ``where`` tokens of ``tokens [B, T + 1]``, fused;
    ``cached``: the teacher's top-k for these tokens (:class:`CachedTopK`), no teacher pass."""
    h_s, w_s = hidden_and_weight(student, s_params, tokens)
    if cached is not None:
        target = cached
    elif config.teacher_top_k:
        target = teacher_top_k(config, teacher, t_params, tokens)
    else:
        target = hidden_and_weight(teacher, jax.lax.stop_gradient(t_params), tokens)
    return fused.fused_linear_divergence(
        config.divergence, h_s, w_s, target, temperature=config.temperature, mask=where
    )


class CachedTopK:
    """Training blocks with the teacher's top-k stored beside them: ``get(indices)`` adds
    ``top_k_indices`` (int32) and ``top_k_log_probs`` (float32), each ``[n, block_length, k]``,
    to the blocks' ``tokens``. Memory: ``8 k`` bytes per training token (k = 32: 256 bytes)."""

    def __init__(self, blocks: fdata_text.TokenBlocks, indices: np.ndarray, log_probs: np.ndarray):
        expected = (len(blocks), blocks.block_length)
        if indices.shape[:2] != expected or log_probs.shape != indices.shape:
            raise ValueError(f"top-k cache shapes {indices.shape}, {log_probs.shape} do not fit {expected}")  # fmt: skip
        self.blocks, self.indices, self.log_probs = blocks, indices, log_probs

    def __len__(self) -> int:
        return len(self.blocks)

    def get(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        out = self.blocks.get(indices)
        out.update(top_k_indices=self.indices[indices], top_k_log_probs=self.log_probs[indices])
        return out


def cache_teacher_top_k(config, teacher, t_params, blocks, directory: str, step: int) -> CachedTopK:  # fmt: skip
    """The teacher's top-k over every block of ``blocks``, computed once (batches of
    ``train.eval_batch_size``) and stored in ``directory`` (the teacher's workdir) as
    ``top_k<k>_temperature<tau>_step<step>.npz``; a later run with the same teacher (the same
    final ``step``: a teacher trained on reads none of it) reads it back."""
    name = f"top_k{config.teacher_top_k}_temperature{config.temperature:g}_step{step}.npz"
    path = os.path.join(directory, name)
    if os.path.exists(path):
        with np.load(path) as stored:
            return CachedTopK(blocks, stored["indices"], stored["log_probs"])
    fn = jax.jit(lambda params, tokens: teacher_top_k(config, teacher, params, tokens))
    size = config.train.eval_batch_size
    parts = [fn(t_params, jnp.asarray(blocks.get(np.arange(i, min(i + size, len(blocks))))["tokens"])) for i in range(0, len(blocks), size)]  # fmt: skip
    indices = np.concatenate([np.asarray(p.indices, np.int32) for p in parts])
    log_probs = np.concatenate([np.asarray(p.log_probs, np.float32) for p in parts])
    if jax.process_index() == 0:
        tmp = path + ".tmp.npz"
        np.savez(tmp, indices=indices, log_probs=log_probs)
        os.replace(tmp, path)
    return CachedTopK(blocks, indices, log_probs)


def student_loss_fn(config, student, teacher):
    T, P = config.block_length, config.prefix_length
    # the KD / CE positions of a continued row: the predictions of its sampled tokens
    continuation = jnp.arange(T) >= P

    def loss(params, model_state, batch, key):
        del model_state
        data = batch["tokens"]
        s_params = params["student"]
        if config.method == "student":
            ce = jnp.mean(token_nll(student, s_params, data))
            return ce, ({}, {"ce": ce})
        t_params = params["teacher"]
        frozen = jax.lax.stop_gradient(s_params)
        cached = None
        if config.regime == "supervised":
            y_kd, kd_where, y_ce, ce_where = data, None, data, None
            if "top_k_indices" in batch:  # computed once for the whole training split
                cached = fused.TopKTeacher(batch["top_k_indices"], batch["top_k_log_probs"])
        elif config.regime == "on_policy":
            sample_key, mix_key = jax.random.split(key)
            sampled = continue_from_prefix(student, frozen, sample_key, data, P)[0]
            own = jax.random.uniform(mix_key, (data.shape[0], 1)) < config.on_policy_fraction
            y_kd, kd_where = jnp.where(own, sampled, data), None
            y_ce, ce_where = data, None
        else:  # sequence-level: the teacher's continuations are the data
            sampled = continue_from_prefix(teacher, jax.lax.stop_gradient(t_params), key, data, P)[
                0
            ]
            y_kd = y_ce = sampled
            kd_where = ce_where = jnp.broadcast_to(continuation, (data.shape[0], T))
        nll = token_nll(student, s_params, y_ce)
        ce = jnp.mean(nll) if ce_where is None else jnp.sum(nll * ce_where) / jnp.sum(ce_where)
        kd = kd_term(config, student, s_params, teacher, t_params, y_kd, kd_where, cached)
        total = config.ce_weight * ce + config.kd_weight * kd
        return total, ({}, {"ce": ce, "kd": kd})

    return loss


def teacher_loss_fn(teacher):
    def loss(params, model_state, batch, key):
        del model_state, key
        ce = jnp.mean(token_nll(teacher, params["teacher"], batch["tokens"]))
        return ce, ({}, {"ce": ce})

    return loss


def predict_fn(config, student, teacher, names):
    def predict(params, model_state, batch):
        del model_state
        tokens = batch["tokens"]
        out = {}
        for name, module in (("student", student), ("teacher", teacher)):
            if name not in names:
                continue
            inputs = tokens[:, :-1]
            logits = module.apply({"params": params[name]}, _context(inputs), inputs)[:, 1:]
            log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            out[f"{name}/nll"] = -jnp.take_along_axis(log_q, tokens[:, 1:, None], axis=-1)[..., 0]
            out[f"{name}/top1"] = jnp.argmax(logits, axis=-1)
        if len(names) == 2:  # the batch's mean D_f, given to each of its rows
            value = kd_term(config, student, params["student"], teacher, params["teacher"], tokens, None)  # fmt: skip
            out["divergence"] = jnp.full(tokens.shape[:1], value)
        return out

    return predict


def summarize(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for name in ("student", "teacher"):
        if f"{name}/nll" in outputs:
            nll = float(np.mean(outputs[f"{name}/nll"]))
            out[f"{name}/nll"], out[f"{name}/perplexity"] = nll, float(np.exp(nll))
    if "teacher/top1" in outputs and "student/top1" in outputs:
        out["agreement"] = float(np.mean(outputs["student/top1"] == outputs["teacher/top1"]))
    if "divergence" in outputs:
        out["divergence"] = float(np.mean(outputs["divergence"]))
    return out


def samples(module, params, prompt, key, tokenizer, length: int) -> str:
    """One continuation of ``prompt [1, P + 1]`` by ``module``, decoded."""
    block = jnp.zeros((1, length + 1), jnp.int32).at[:, : prompt.shape[1]].set(prompt)
    out = continue_from_prefix(module, params, key, block, prompt.shape[1] - 1)[0]
    return tokenizer.decode(np.asarray(out[0]).tolist())


def _optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
    return optim.make_optimizer("adamw", learning_rate=learning_rate, total_steps=steps, schedule="cosine", clip_norm=1.0)  # fmt: skip


def train_teacher(config, workdir: str, splits) -> tuple[Any, Any]:
    """The teacher stage (``<teacher_workdir or workdir/teacher>``, shared by the runs that agree
    on :data:`TEACHER_KEYS`): its host params, and the training data with the teacher's top-k
    attached where ``teacher_top_k`` is set (supervised: the KD tokens are fixed, so computed
    once)."""
    train_data, valid_data, test_data = splits
    teacher, student = model(config, "teacher"), model(config, "student")
    dummy = jnp.zeros((1, config.block_length), jnp.int32)
    teacher_dir = config.teacher_workdir or os.path.join(workdir, "teacher")
    # only what decides the teacher, so runs can share it
    stage_json = fingerprint(
        config, TEACHER_KEYS, train={**config.train.to_dict(), "total_steps": config.teacher_steps}
    )
    params, _, summary = train_stage(
        Task(
            init=lambda key: ({"teacher": teacher.init(key, _context(dummy), dummy)["params"]}, {}),
            updates=[Update("teacher", teacher_loss_fn(teacher), ("teacher",))],
            optimizers={"teacher": _optimizer(config.teacher.learning_rate, config.teacher_steps)},
            train_data=train_data,
            eval_data=test_data,
            valid_data=valid_data,
            predict=predict_fn(config, student, teacher, ("teacher",)),
            summarize=summarize,
        ),
        train_config(config, total_steps=config.teacher_steps),
        teacher_dir,
        config_json=stage_json,
        network="teacher",
    )
    if config.teacher_top_k and config.regime == "supervised":
        train_data = cache_teacher_top_k(config, teacher, params, train_data, teacher_dir, int(summary["step"]))  # fmt: skip
    return params, train_data


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    validate(config)
    train_data, valid_data, test_data = (load(config, s) for s in ("train", "valid", "test"))
    teacher, student = model(config, "teacher"), model(config, "student")
    dummy = jnp.zeros((1, config.block_length), jnp.int32)
    config_json = config.to_json_best_effort(sort_keys=True)
    teacher_params = None
    if config.method == "kd":
        teacher_params, train_data = train_teacher(config, workdir, (train_data, valid_data, test_data))  # fmt: skip

    names = ("student",) if teacher_params is None else ("student", "teacher")

    def init(key):
        params = {"student": student.init(key, _context(dummy), dummy)["params"]}
        if teacher_params is not None:
            params["teacher"] = teacher_params
        return params, {}

    task = Task(
        init=init,
        updates=[Update("student", student_loss_fn(config, student, teacher), ("student",))],
        optimizers={"student": _optimizer(config.learning_rate, config.train.total_steps)},
        train_data=train_data,
        eval_data=test_data,
        valid_data=valid_data,
        predict=predict_fn(config, student, teacher, names),
        summarize=summarize,
    )
    result = train(task, train_config(config), workdir, config_json=config_json)
    if config.num_samples and jax.process_index() == 0:
        files = list(config.files) or None
        tokenizer = fdata_text.bpe_tokenizer(config.corpus, config.vocab_size, data_dir=config.data_dir or None, files=files)  # fmt: skip
        prompt = jnp.asarray(test_data.get(np.arange(1))["tokens"][:, : config.prefix_length + 1])
        for i in range(config.num_samples):
            for name, module in ((n, student if n == "student" else teacher) for n in names):
                text = samples(module, result.state.params[name], prompt, jax.random.key(i), tokenizer, config.block_length)  # fmt: skip
                logging.warning("sample %d (%s): %r", i, name, text)
    return result.summary


def format_summary(summary: Mapping[str, Any]) -> str:
    return "\n".join(f"{k}: {v:.4f}" for k, v in sorted(summary.items()) if isinstance(v, float) and k.split("/")[0] in ("eval", "valid"))  # fmt: skip
