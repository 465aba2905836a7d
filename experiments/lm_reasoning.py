r"""Reasoning distillation on checkable arithmetic: provenance of the distilled model's steps and
teacher-guided data selection (:mod:`fdiv.data.reasoning`, :mod:`fdiv.analysis.provenance`).

Stages (each an ordinary resumable trainer run under ``config.stages_dir`` or the workdir, seeded by
``config.stages_seed``, so runs of several ``train.seed`` can share one base student, teacher and
set of teacher samples):

1. ``base_student``: a small causal transformer trained on the problems' solutions in
   ``student_style`` (cross-entropy on the solution tokens);
2. ``teacher``: a larger one trained on the other style, ``teacher_style``;
3. teacher samples: ``candidates`` solutions per distillation prompt sampled from the teacher at
   ``sample_temperature`` (stored once, ``teacher_samples_<...>.npz``), unfiltered: wrong ones too;
4. the run itself: the distilled student, initialised from the base student, trained on the
   selected teacher samples (sequence-level KD: cross-entropy on the teacher's tokens).

Selection (``config.selection``) keeps ``floor(budget * N)`` of the ``N`` candidates:
``all`` (budget 1), ``random``, ``length`` (longest solutions first), ``divergence`` (largest
``D_f(teacher || base student)`` along the solution, :func:`fdiv.analysis.provenance.
selection_scores` with ``divergence``; ``reduce="mean"`` per token, ``"sum"`` per sequence), or
``teacher_count`` (the provenance paper's criterion: the most teacher sentences under the three-way
rule; the paper keeps the best per problem, here the best of the pool at the same budget).

Evaluation (every ``train.eval_every`` steps and at the end): the distilled student decodes the
prompts greedily; ``accuracy`` is the fraction whose ``"A:<digit>."`` is right. Each sentence it
writes is scored under the teacher, the base student and itself (geometric-mean token
probability, teacher-forced on its own text) and classified by the four-way rule (``alpha``,
``beta``): ``teacher_fraction``, ``student_fraction``, ``shared_fraction``, ``boosted_fraction``,
pooled over sentences. ``valid/*``: held-out problems of the training lengths (selection decides
nothing here, but the sweep tool reads it); ``eval/*``: test problems of the training lengths and,
with the ``novel_`` prefix, of the held-out lengths ``novel_steps``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _checks
from fdiv import generators
from fdiv.analysis import provenance as prov
from fdiv.data import reasoning as rz
from fdiv.models.transformer import CausalTransformer
from fdiv.train import Task, TrainConfig, Update, fingerprint, optim, train, train_stage

SELECTIONS = ("all", "random", "length", "divergence", "teacher_count")
FIELD_RULES = {
    "max_steps": _checks.count(1),
    "train_lengths": _checks.count(1),  # each entry; <= max_steps is checked in validate
    "novel_lengths": _checks.count(1),
    "num_train": _checks.count(1),
    "num_distill_prompts": _checks.count(1),
    "candidates": _checks.count(1),
    "num_eval": _checks.count(1),
    "sample_temperature": _checks.greater(0),
    "learning_rate": _checks.greater(0),
    "base_steps": _checks.count(1),
    "teacher_steps": _checks.count(1),
    "data_seed": _checks.count(0),
    "stages_seed": _checks.count(0),
    "selection.budget": _checks.interval(0, 1, "(]"),
    "provenance.alpha": _checks.interval(0, 1),
    "provenance.beta": _checks.interval(0, 1),
    "student.dim": _checks.count(1),
    "student.num_heads": _checks.count(1),
    "student.num_layers": _checks.count(0),
    "teacher.dim": _checks.count(1),
    "teacher.num_heads": _checks.count(1),
    "teacher.num_layers": _checks.count(0),
}
MAX_SENTENCES_EXTRA = 2  # sentences per row scored: the steps, the answer, one more (run-on text)


def validate(config: ml_collections.ConfigDict) -> None:
    _checks.fields(config, FIELD_RULES)
    _checks.allowed("student_style", config.student_style, rz.STYLES)
    _checks.allowed("teacher_style", config.teacher_style, rz.STYLES)
    _checks.allowed("selection.method", config.selection.method, SELECTIONS)
    _checks.allowed("selection.reduce", config.selection.reduce, ("mean", "sum"))
    generators.resolve(config.selection.divergence)
    for field in ("train_lengths", "novel_lengths"):
        lengths = tuple(config[field])
        if not lengths or min(lengths) < 1 or max(lengths) > config.max_steps:
            raise ValueError(f"{field}={lengths}: every length must be in [1, max_steps={config.max_steps}]")  # fmt: skip
    if config.selection.method == "all" and config.selection.budget != 1.0:
        raise ValueError("selection.method='all' keeps every candidate: set selection.budget=1.0")
    for net in ("student", "teacher"):
        model(config, net)
    TrainConfig.from_mapping(config.train.to_dict()).validate()


def model(config, net: str) -> CausalTransformer:
    m = config[net]
    return CausalTransformer(
        num_actions=len(rz.VOCAB), vocab_size=len(rz.VOCAB), num_contexts=1,
        max_len=rz.sequence_length(config.max_steps), dim=m.dim, num_heads=m.num_heads,
        num_layers=m.num_layers,
    )  # fmt: skip


class Rows:
    """Rows of tokens ``[n, L]`` with their answers, for the trainer: ``get(i)`` ->
    ``{"tokens": int32 [k, L], "answer": int32 [k]}``."""

    def __init__(self, tokens: np.ndarray, answers: np.ndarray):
        self.tokens, self.answers = np.asarray(tokens, np.int32), np.asarray(answers, np.int32)

    def __len__(self) -> int:
        return len(self.answers)

    def get(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        return {"tokens": self.tokens[indices], "answer": self.answers[indices]}


def problems(config, split: str) -> rz.Problems:
    """The fixed problem sets (``data_seed``; the same for every training seed): ``train``,
    ``distill`` (the teacher's prompts), ``valid``, ``test`` (training lengths), ``novel``."""
    index = ("train", "distill", "valid", "test", "novel").index(split)
    rng = np.random.default_rng([config.data_seed, index])
    n = {"train": config.num_train, "distill": config.num_distill_prompts}.get(split, config.num_eval)  # fmt: skip
    lengths = config.novel_lengths if split == "novel" else config.train_lengths
    return rz.sample_problems(rng, n, tuple(lengths), config.max_steps)


def prompt_rows(config, p: rz.Problems) -> Rows:
    """Prompts padded to full rows (the decoder fills the rest)."""
    rows = np.zeros((len(p.start), rz.sequence_length(config.max_steps)), np.int32)
    rows[:, : rz.prompt_length(config.max_steps)] = rz.prompts(p, config.max_steps)
    return Rows(rows, p.answers())


def _context(rows):
    return jnp.zeros(rows.shape[:1], jnp.int32)


def token_log_probs(module, params, rows) -> jax.Array:
    """``log p(rows[:, t] | rows[:, :t])`` ``[B, L]`` (the context slot predicts token 0)."""
    logits = module.apply({"params": params}, _context(rows), rows)[:, :-1]
    return prov.token_log_probs(logits.astype(jnp.float32), rows)


def solution_mask(rows, start: int) -> jax.Array:
    """The solution's tokens (from ``start`` through the first end-of-text)."""
    return rz.sentence_ids(rows, start, rows.shape[1]) >= 0


def decode(module, params, rows, start: int, key=None, temperature: float = 1.0) -> jax.Array:
    """Fill ``rows [B, L]`` from column ``start`` on: greedy (``key=None``) or sampled at
    ``temperature``. Each step re-runs the model on the whole row (rows are short)."""

    def step(t, carry):
        rows, key = carry
        logits = module.apply({"params": params}, _context(rows), rows)[:, t].astype(jnp.float32)
        if key is None:
            token = jnp.argmax(logits, axis=-1)
        else:
            key, sub = jax.random.split(key)
            token = jax.random.categorical(sub, logits / temperature)
        return rows.at[:, t].set(token.astype(rows.dtype)), key

    rows, _ = jax.lax.fori_loop(start, rows.shape[1], step, (jnp.asarray(rows), key))
    return rows


def ce_loss_fn(module, name: str, start: int):
    def loss(params, model_state, batch, key):
        del model_state, key
        rows = batch["tokens"]
        mask = solution_mask(rows, start)
        nll = -token_log_probs(module, params[name], rows)
        ce = jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        return ce, ({}, {"ce": ce})

    return loss


def _optimizer(config, steps: int) -> optax.GradientTransformation:
    return optim.make_optimizer("adamw", learning_rate=config.learning_rate, total_steps=steps, schedule="cosine", warmup_steps=min(100, steps // 10), clip_norm=1.0)  # fmt: skip


def summarize_fn(config, start: int):
    """Host side: accuracy and pooled provenance fractions, on the training lengths and (with the
    ``novel_`` prefix) the held-out ones; a prefix with no rows is left out (never NaN)."""
    lengths = set(config.train_lengths)

    def summarize(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        rows = np.asarray(outputs["generated"])
        ops = np.isin(rows[:, :start], [rz.VOCAB.index(o) for o in rz.OPS])
        novel = ~np.isin(ops.sum(axis=1), list(lengths))
        correct = rz.parse_answers(rows, start) == np.asarray(outputs["answer"])
        out = {}
        for prefix, keep in (("", ~novel), ("novel_", novel)):
            if not keep.any():
                continue
            out[f"{prefix}accuracy"] = float(np.mean(correct[keep]))
            if "counts" in outputs:
                counts = np.asarray(outputs["counts"])[keep].sum(axis=0)
                for code, name in enumerate(prov.CATEGORIES):
                    out[f"{prefix}{name}_fraction"] = float(counts[code] / max(counts.sum(), 1))
        return out

    return summarize


def sentence_log_probs(config, rows, start: int, scorers: Mapping[str, tuple]):
    """Each decoded sentence's log-probability (geometric mean of its tokens' probabilities) under
    each ``(module, params)`` of ``scorers``: ``{name: [B * M]}`` with ``M = max_steps +
    MAX_SENTENCES_EXTRA`` slots per row (NaN for an empty slot), and the row of each slot ``[B * M]``."""
    b, m = rows.shape[0], config.max_steps + MAX_SENTENCES_EXTRA
    ids = rz.sentence_ids(rows, start, m)
    ids = jnp.where(ids >= 0, jnp.arange(b)[:, None] * m + ids, -1)  # one slot per (row, sentence)
    logps = {k: prov.action_log_probs(token_log_probs(module, params, rows), ids, b * m) for k, (module, params) in scorers.items()}  # fmt: skip
    return logps, jnp.repeat(jnp.arange(b), m)


def predict_fn(config, modules: Mapping[str, CausalTransformer], name: str, start: int):
    """Greedy decoding by ``modules[name]``; with ``"teacher"`` and ``"base"`` present as well,
    each decoded sentence's four-way provenance counts per row (``counts [B, 4]``)."""
    p = config.provenance

    def predict(params, model_state, batch):
        del model_state
        rows = decode(modules[name], params[name], batch["tokens"], start)
        out = {"generated": rows, "answer": batch["answer"]}
        if set(modules) >= {"teacher", "base", "student"}:
            scorers = {k: (modules[k], params[k]) for k in ("teacher", "base", "student")}
            action, rows_of = sentence_log_probs(config, rows, start, scorers)
            cats = prov.classify_actions(teacher_logp=action["teacher"], student_logp=action["base"], distilled_logp=action["student"], alpha=p.alpha, beta=p.beta)  # fmt: skip
            out["counts"] = prov.provenance_summary(cats, rows_of, rows.shape[0]).counts
        return out

    return predict


def stage(config, workdir: str, name: str, net: str, style: str, steps: int, evaluation) -> Any:
    """Train ``net`` alone on the training problems in ``style``; its parameters (host)."""
    start = rz.prompt_length(config.max_steps)
    module = model(config, net)
    p = problems(config, "train")
    data = Rows(rz.encode_rows(p, style, config.max_steps), p.answers())
    dummy = jnp.zeros((1, data.tokens.shape[1]), jnp.int32)
    # only what decides the stage: changing the evaluation cadence keeps a trained teacher
    stage_json = fingerprint(
        config, ("max_steps", "num_train", "train_lengths", "data_seed", "learning_rate", net),
        style=style, train={"batch_size": config.train.batch_size, "seed": config.stages_seed, "total_steps": steps},
    )  # fmt: skip
    result = train_stage(
        Task(
            init=lambda key: ({net: module.init(key, _context(dummy), dummy)["params"]}, {}),
            updates=[Update(net, ce_loss_fn(module, net, start), (net,))],
            optimizers={net: _optimizer(config, steps)},
            train_data=data,
            eval_data=evaluation,
            predict=predict_fn(config, {net: module}, net, start),
            summarize=summarize_fn(config, start),
        ),
        TrainConfig.from_mapping(
            {
                **config.train.to_dict(),
                "total_steps": steps,
                "eval_every": 0,
                "seed": config.stages_seed,
            }
        ),  # fmt: skip
        os.path.join(workdir, name),
        config_json=stage_json,
        network=net,
    )
    return result.params, result.summary


def teacher_samples(config, directory: str, teacher_params, seed: int) -> np.ndarray:
    """``candidates`` sampled solutions per distillation prompt, ``[P * C, L]`` (prompt-major),
    computed once and stored in ``directory``."""
    path = os.path.join(directory, f"teacher_samples_n{config.num_distill_prompts}_c{config.candidates}_t{config.sample_temperature:g}_seed{seed}.npz")  # fmt: skip
    if os.path.exists(path):
        with np.load(path) as f:
            return f["rows"]
    start = rz.prompt_length(config.max_steps)
    prompts = np.repeat(prompt_rows(config, problems(config, "distill")).tokens, config.candidates, axis=0)  # fmt: skip
    fn = jax.jit(functools.partial(decode, model(config, "teacher"), start=start, temperature=config.sample_temperature))  # fmt: skip
    key = jax.random.key(seed)
    parts = []
    for i in range(0, len(prompts), 512):
        parts.append(np.asarray(fn(teacher_params, jnp.asarray(prompts[i : i + 512]), key=jax.random.fold_in(key, i))))  # fmt: skip
    rows = np.concatenate(parts)
    if jax.process_index() == 0:
        np.savez(path + ".tmp.npz", rows=rows)
        os.replace(path + ".tmp.npz", path)
    return rows


def selection_scores(config, rows, teacher_params, base_params) -> np.ndarray:
    """The score each selection method ranks candidates by (larger first)."""
    start = rz.prompt_length(config.max_steps)
    method, s = config.selection.method, config.selection
    mask = np.asarray(solution_mask(jnp.asarray(rows), start))
    if method == "length":
        return mask.sum(axis=1).astype(np.float64)
    if method in ("all", "random"):
        return np.zeros(len(rows))
    teacher, base = model(config, "teacher"), model(config, "student")
    out = []
    for i in range(0, len(rows), 512):
        chunk, chunk_mask = jnp.asarray(rows[i : i + 512]), mask[i : i + 512]
        if method == "divergence":
            lt = teacher.apply({"params": teacher_params}, _context(chunk), chunk)[:, :-1]
            ls = base.apply({"params": base_params}, _context(chunk), chunk)[:, :-1]
            mean = np.asarray(prov.selection_scores(teacher_logits=lt, student_logits=ls, divergence=s.divergence, mask=jnp.asarray(chunk_mask)))  # fmt: skip
            out.append(mean if s.reduce == "mean" else mean * chunk_mask.sum(-1))
        else:  # teacher_count: sentences the teacher favours over the base student (three-way)
            scorers = {"teacher": (teacher, teacher_params), "base": (base, base_params)}
            action, rows_of = sentence_log_probs(config, chunk, start, scorers)
            cats = prov.classify_actions(teacher_logp=action["teacher"], student_logp=action["base"], rule="three_way", beta=config.provenance.beta)  # fmt: skip
            counts = prov.provenance_summary(cats, rows_of, chunk.shape[0], num_categories=3).counts  # fmt: skip
            out.append(np.asarray(counts[:, prov.TEACHER], np.float64))
    return np.concatenate(out)


def select(config, rows, teacher_params, base_params, seed: int) -> np.ndarray:
    """Indices of the candidates kept (``floor(budget * N)``, at least 1)."""
    method = config.selection.method
    if method == "all":
        return np.arange(len(rows))
    if method == "random":
        k = max(1, int(np.floor(config.selection.budget * len(rows) + 1e-9)))
        return np.random.default_rng([seed, 1]).permutation(len(rows))[:k]
    scores = selection_scores(config, rows, teacher_params, base_params)
    return prov.select_top(scores, float(config.selection.budget))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    validate(config)
    start = rz.prompt_length(config.max_steps)
    stages = config.stages_dir or workdir
    valid = prompt_rows(config, problems(config, "valid"))
    seed = config.train.seed  # the distillation run's (and random selection's)
    base_params, _ = stage(config, stages, "base_student", "student", config.student_style, config.base_steps, valid)  # fmt: skip
    teacher_params, _ = stage(config, stages, "teacher", "teacher", config.teacher_style, config.teacher_steps, valid)  # fmt: skip
    rows = teacher_samples(config, stages, teacher_params, config.stages_seed)
    chosen = select(config, rows, teacher_params, base_params, seed)
    answers = np.repeat(problems(config, "distill").answers(), config.candidates)
    train_data = Rows(rows[chosen], answers[chosen])
    test, novel = (prompt_rows(config, problems(config, s)) for s in ("test", "novel"))
    eval_data = Rows(np.concatenate([test.tokens, novel.tokens]), np.concatenate([test.answers, novel.answers]))  # fmt: skip
    modules = {"student": model(config, "student"), "teacher": model(config, "teacher"), "base": model(config, "student")}  # fmt: skip

    def init(key):
        del key  # the distilled student starts as the base student
        return {"student": base_params, "base": base_params, "teacher": teacher_params}, {}

    task = Task(
        init=init,
        updates=[
            Update("student", ce_loss_fn(modules["student"], "student", start), ("student",))
        ],  # fmt: skip
        optimizers={"student": _optimizer(config, config.train.total_steps)},
        train_data=train_data,
        eval_data=eval_data,
        valid_data=valid,
        predict=predict_fn(config, modules, "student", start),
        summarize=summarize_fn(config, start),
    )
    config_json = config.to_json_best_effort(sort_keys=True)
    summary = train(task, TrainConfig.from_mapping(config.train.to_dict()), workdir, config_json=config_json).summary  # fmt: skip
    summary["selected"] = len(chosen)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    return "\n".join(f"{k}: {v:.4f}" for k, v in sorted(summary.items()) if isinstance(v, float) and k.split("/")[0] in ("eval", "valid"))  # fmt: skip
