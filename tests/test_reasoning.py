"""The arithmetic reasoning testbed (fdiv.data.reasoning) and its distillation experiment
(experiments.lm_reasoning): answers, text, sentences and selection against independent
hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fdiv.data import reasoning as rz


def _by_hand(start, ops, operands, steps):
    x = start
    for op, b in list(zip(ops, operands, strict=True))[:steps]:
        x = {"+": x + b, "-": x - b, "*": x * b}[rz.OPS[op]] % 10
    return x


def test_answers_follow_the_operations_left_to_right_modulo_10():
    p = rz.sample_problems(np.random.default_rng(0), 300, (1, 2, 3, 4), 4)
    want = [_by_hand(p.start[i], p.ops[i], p.operands[i], p.steps[i]) for i in range(300)]
    np.testing.assert_array_equal(p.answers(), want)
    assert set(p.steps.tolist()) == {1, 2, 3, 4}
    assert np.all(p.operands[np.arange(4) >= p.steps[:, None]] == 0)


def test_two_styles_of_one_problem_by_hand():
    p = rz.Problems(np.array([7]), np.array([[2, 0, 1]]), np.array([[3, 5, 2]]), np.array([3]))
    assert rz.prompt_text(p, 0, 4) == "Q:7*3+5-2  |"
    assert rz.solution_text(p, 0, "equation") == "7*3=1. 1+5=6. 6-2=4. A:4."
    assert rz.solution_text(p, 0, "words") == "mul 3 is 1. add 5 is 6. sub 2 is 4. A:4."
    rows = rz.encode_rows(p, "words", 4)
    assert rows.shape == (1, rz.sequence_length(4))
    assert rz.decode(rows[0]) == "Q:7*3+5-2  |mul 3 is 1. add 5 is 6. sub 2 is 4. A:4."
    assert rz.parse_answers(rows, rz.prompt_length(4)).tolist() == [4]


def test_sentence_ids_by_hand():
    p = rz.Problems(
        np.array([7]), np.array([[2, 0, 0, 0]]), np.array([[3, 5, 0, 0]]), np.array([2])
    )
    start = rz.prompt_length(4)
    rows = rz.encode_rows(p, "equation", 4)
    text = rz.decode(rows[0])[start:]
    assert text == "7*3=1. 1+5=6. A:6."
    ids = np.asarray(rz.sentence_ids(rows, start, 8))[0]
    assert np.all(ids[:start] == -1)
    want = [0] * 7 + [1] * 7 + [2] * 4 + [2]  # "7*3=1. " "1+5=6. " "A:6." and the end token
    np.testing.assert_array_equal(ids[start : start + len(want)], want)
    assert np.all(ids[start + len(want) :] == -1)  # padding after the end of text
    # sentences past max_sentences - 1 are dropped
    np.testing.assert_array_equal(np.asarray(rz.sentence_ids(rows, start, 2))[0, start + 14 :], -1)


def test_answers_are_parsed_only_when_well_formed():
    start = rz.prompt_length(1)
    make = lambda text: np.asarray([rz.encode("Q:1+1|" + text) + [rz.EOS] + [0] * 4])  # noqa: E731
    assert rz.parse_answers(make("1+1=2. A:2."), start).tolist() == [2]
    assert rz.parse_answers(make("1+1=2. A:2"), start).tolist() == [-1]  # no "."
    assert rz.parse_answers(make("1+1=2. 2"), start).tolist() == [-1]  # no "A:"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        rz.encode("Q:7/2")


# ---------------------------------------------------------------------------------------------
# The experiment.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.reasoning_arithmetic import get_config  # noqa: E402
from experiments import lm_reasoning as lr  # noqa: E402


def tiny(**overrides):
    c = get_config()
    c.num_train, c.num_distill_prompts, c.candidates, c.num_eval = 200, 12, 2, 8
    c.student = {"dim": 8, "num_heads": 2, "num_layers": 1}
    c.teacher = {"dim": 16, "num_heads": 2, "num_layers": 1}
    c.base_steps = c.teacher_steps = 2
    c.train.update(total_steps=2, batch_size=4, eval_batch_size=8, eval_every=1, log_every=1, checkpoint_every=2)  # fmt: skip
    c.update_from_flattened_dict(overrides)
    return c


def _params(config, net, seed):
    m = lr.model(config, net)
    dummy = jnp.zeros((1, rz.sequence_length(config.max_steps)), jnp.int32)
    return m, m.init(jax.random.key(seed), lr._context(dummy), dummy)["params"]


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_selection_scores_against_numpy():
    config = tiny()
    teacher, t_params = _params(config, "teacher", 1)
    student, s_params = _params(config, "student", 2)
    p = rz.sample_problems(np.random.default_rng(3), 10, (1, 2, 3), 4)
    rows = rz.encode_rows(p, "words", 4)
    start = rz.prompt_length(4)
    mask = np.asarray(rz.sentence_ids(rows, start, 99)) >= 0
    ctx = jnp.zeros((10,), jnp.int32)
    log_t = _log_softmax(teacher.apply({"params": t_params}, ctx, jnp.asarray(rows))[:, :-1])
    log_s = _log_softmax(student.apply({"params": s_params}, ctx, jnp.asarray(rows))[:, :-1])
    # divergence: KL(teacher || base student) per solution token, mean (and sum) per row
    kl = np.sum(np.exp(log_t) * (log_t - log_s), -1)
    for reduce, want in (("mean", (kl * mask).sum(1) / mask.sum(1)), ("sum", (kl * mask).sum(1))):
        config.selection.update(method="divergence", reduce=reduce)
        np.testing.assert_allclose(lr.selection_scores(config, rows, t_params, s_params), want, rtol=2e-4)  # fmt: skip
    # teacher_count: sentences whose geometric-mean probability is > beta higher under the teacher
    taken = lambda lp: np.take_along_axis(lp, rows[..., None], -1)[..., 0]  # noqa: E731
    lt, ls = taken(log_t), taken(log_s)
    ids = np.asarray(rz.sentence_ids(rows, start, config.max_steps + lr.MAX_SENTENCES_EXTRA))
    want = [
        sum(
            np.exp(lt[i][ids[i] == k].mean()) - np.exp(ls[i][ids[i] == k].mean())
            > config.provenance.beta
            for k in range(ids[i].max() + 1)
        )  # fmt: skip
        for i in range(10)
    ]
    config.selection.method = "teacher_count"
    np.testing.assert_array_equal(lr.selection_scores(config, rows, t_params, s_params), want)
    # length: solution tokens
    config.selection.method = "length"
    np.testing.assert_array_equal(
        lr.selection_scores(config, rows, t_params, s_params), mask.sum(1)
    )
    # the budget: floor(budget * N), best first; random: a seeded subset of that size
    chosen = lr.select(config.copy_and_resolve_references(), rows, t_params, s_params, seed=0)
    assert len(chosen) == 10 and sorted(chosen.tolist()) == list(range(10))
    config.selection.budget = 0.3
    chosen = lr.select(config, rows, t_params, s_params, seed=0)
    order = np.argsort(-mask.sum(1), kind="stable")[:3]
    np.testing.assert_array_equal(chosen, order)
    config.selection.method = "random"
    a, b = (lr.select(config, rows, None, None, seed=s) for s in (0, 0))
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 3


def test_greedy_decoding_is_the_argmax_of_teacher_forcing():
    config = tiny()
    student, params = _params(config, "student", 4)
    prompts = lr.prompt_rows(config, lr.problems(config, "valid")).tokens[:3]
    start = rz.prompt_length(config.max_steps)
    rows = np.asarray(lr.decode(student, params, jnp.asarray(prompts), start))
    np.testing.assert_array_equal(rows[:, :start], prompts[:, :start])
    logits = np.asarray(student.apply({"params": params}, jnp.zeros((3,), jnp.int32), jnp.asarray(rows)))  # fmt: skip
    np.testing.assert_array_equal(rows[:, start:], logits[:, start:-1].argmax(-1))


def test_a_tiny_run_reports_accuracy_and_provenance(tmp_path):
    config = tiny(**{"selection.method": "divergence", "selection.budget": 0.5})
    summary = lr.run(config, str(tmp_path))
    assert summary["selected"] == 12  # half of 12 prompts x 2 candidates
    for prefix in ("eval/", "eval/novel_", "valid/"):
        assert 0 <= summary[f"{prefix}accuracy"] <= 1
        fractions = [summary[f"{prefix}{name}_fraction"] for name in lr.prov.CATEGORIES]
        assert min(fractions) >= 0 and sum(fractions) == pytest.approx(1.0)
    assert (tmp_path / "base_student" / "summary.json").exists()
    assert list(tmp_path.glob("teacher_samples_*.npz"))
    # a second run sharing the stages reads their stored weights: the stages are not re-opened
    config.stages_dir = str(tmp_path)
    stages = [tmp_path / name / "metrics.jsonl" for name in ("base_student", "teacher")]
    before = [p.stat().st_mtime_ns for p in stages]
    again = lr.run(config, str(tmp_path / "again"))
    assert [p.stat().st_mtime_ns for p in stages] == before
    assert again["eval/accuracy"] == pytest.approx(summary["eval/accuracy"])
    with pytest.raises(ValueError, match="keeps every candidate"):
        lr.validate(tiny(**{"selection.budget": 0.5}))
    with pytest.raises(ValueError, match="novel_lengths"):
        lr.validate(tiny(novel_lengths=(9,)))


def test_committed_config_is_valid():
    lr.validate(get_config())


@pytest.mark.slow  # eight tiny trainer runs (~40 s)
def test_reasoning_table_reports_every_selector_and_budget_with_seed_std(tmp_path, monkeypatch):
    from experiments import reasoning_table

    small = tiny()
    fields = {
        "num_train": small.num_train, "num_distill_prompts": small.num_distill_prompts,
        "candidates": 2, "num_eval": 8, "student.dim": 8, "student.num_heads": 2,
        "student.num_layers": 1, "teacher.dim": 16, "teacher.num_heads": 2,
        "teacher.num_layers": 1, "base_steps": 2, "teacher_steps": 2, "train.total_steps": 2,
        "train.batch_size": 4, "train.eval_batch_size": 8, "train.eval_every": 1,
        "train.log_every": 1, "train.checkpoint_every": 2,
    }  # fmt: skip
    out = tmp_path / "tables.md"
    argv = ["reasoning_table", f"--workdir={tmp_path / 'runs'}", f"--out={out}", "--seeds=0,1", "--selectors=random,length", "--budgets=0.5", "--set"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv + [f"{k}={v!r}" for k, v in fields.items()])
    reasoning_table.main()
    text = out.read_text()
    for method in ("random", "length"):
        acc = []
        for seed in (0, 1):
            directory = reasoning_table.run_dir(str(tmp_path / "runs"), seed, method, 0.5)
            with open(f"{directory}/summary.json") as f:
                acc.append(json.load(f)["eval/accuracy"])
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        assert f"| {np.mean(acc):.4f} ± {np.std(acc, ddof=1):.4f} / " in row
    # one shared set of stages for both seeds
    assert sorted(p.name for p in (tmp_path / "runs" / "stages").iterdir() if p.is_dir()) == ["base_student", "teacher"]  # fmt: skip
    assert "Spearman" in text and "| teacher |" in text
