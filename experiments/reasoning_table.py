"""The reasoning-distillation tables: provenance of the distilled student's steps, its relation to
accuracy, and teacher-guided data selection at equal budgets, over seeds.

    python -m experiments.reasoning_table --workdir=runs/reasoning_table --out=runs/reasoning_table/tables.md

Every run is ``configs/reasoning_arithmetic.py`` as committed with only its selection changed; the
runs share one base student, teacher and set of teacher samples (``<workdir>/stages``,
``stages_seed`` 0): the seeds vary the distillation run (batch order, random selection), not the
models it starts from. Finished runs are read from their workdirs, not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from absl import logging
from scipy import stats

from experiments import lm_reasoning, sweep
from experiments._tables import machine, mean_std, slug, write
from fdiv.train import paths

CONFIG = "configs/reasoning_arithmetic.py"
SELECTORS = ("random", "length", "divergence", "teacher_count")
BUDGETS = (0.1, 0.25, 0.5)
NAMES = lm_reasoning.prov.CATEGORIES


def run_dir(workdir: str, seed: int, method: str, budget: float) -> str:
    return os.path.join(workdir, f"seed{seed}", slug(f"{method} {budget:g}"))


def summary_of(method: str, budget: float, seed: int, workdir: str, fixed: dict) -> dict:
    """One job: the run's numeric summary plus its stages' (``base:``/``teacher:`` keys) and the
    evaluation records over training (``history``)."""
    logging.set_verbosity(logging.WARNING)
    setting = {"selection.method": method, "selection.budget": budget}
    config = sweep.run_config(CONFIG, fixed, setting, seed, workdir)
    config.stages_dir = os.path.join(workdir, "stages")
    directory = run_dir(workdir, seed, method, budget)
    summary = sweep.finished_summary(config, directory)
    if summary is None:
        summary = sweep.wait_for_workdir(lambda: lm_reasoning.run(config, directory), directory)
    out = sweep.numbers(summary)
    for stage in ("base_student", "teacher"):
        stage_summary = json.loads(paths.read_text(os.path.join(config.stages_dir, stage, "summary.json")))  # fmt: skip
        out.update({f"{stage}:{k}": v for k, v in sweep.numbers(stage_summary).items()})
    with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as f:
        out["history"] = [r for r in map(json.loads, f) if "eval/accuracy" in r]
    return out


def provenance_table(runs: list[dict], seeds: list[int]) -> list[str]:
    lines = [
        "| model | seeds | accuracy, training lengths | accuracy, held-out lengths | "
        + " | ".join(f"{n} (train. / held-out)" for n in NAMES) + " |",
        "|---|---|---|---|" + "---|" * len(NAMES),
    ]  # fmt: skip
    for stage, label in (("base_student", "base student (equation style)"), ("teacher", "teacher (words style)")):  # fmt: skip
        # one stage shared by every seed: its accuracy once (on the validation problems)
        lines.append(f"| {label} | 1 (shared) | {runs[0][f'{stage}:eval/accuracy']:.4f} | — |" + " — |" * len(NAMES))  # fmt: skip
    cells = [mean_std([r["eval/accuracy"] for r in runs]), mean_std([r["eval/novel_accuracy"] for r in runs])]  # fmt: skip
    for n in NAMES:
        cells.append(f"{np.mean([r[f'eval/{n}_fraction'] for r in runs]):.3f} / {np.mean([r[f'eval/novel_{n}_fraction'] for r in runs]):.3f}")  # fmt: skip
    lines.append(f"| distilled student (all teacher samples) | {len(seeds)} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def correlation_lines(runs: list[dict]) -> list[str]:
    """Spearman correlation between each provenance fraction and accuracy over every evaluation
    record (checkpoints x runs x seeds)."""
    records = [h for r in runs for h in r["history"]]
    lines = [
        f"Over {len(records)} evaluations (every checkpoint of every run of the tables, all "
        "seeds): Spearman rank correlation between each category's fraction of the distilled "
        "student's sentences and its accuracy on the same problems.",
        "",
        "| category | ρ, training lengths | ρ, held-out lengths |",
        "|---|---|---|",
    ]
    for n in NAMES:
        cells = []
        for prefix in ("", "novel_"):
            x = [h[f"eval/{prefix}{n}_fraction"] for h in records]
            y = [h[f"eval/{prefix}accuracy"] for h in records]
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                cells.append("— (constant)")
                continue
            rho, p = stats.spearmanr(x, y)
            cells.append(f"{rho:+.3f} (p = {p:.2g})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def selection_table(results: dict, seeds: list[int], selectors, budgets) -> list[str]:
    lines = [
        "| selector | " + " | ".join(f"budget {b:g}: training lengths / held-out" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]  # fmt: skip
    for method in selectors:
        cells = []
        for b in budgets:
            runs = [results[(method, b, s)] for s in seeds]
            cells.append(f"{mean_std([r['eval/accuracy'] for r in runs])} / {mean_std([r['eval/novel_accuracy'] for r in runs])}")  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    full = [results[("all", 1.0, s)] for s in seeds]
    lines.append(f"| all (budget 1) | {mean_std([r['eval/accuracy'] for r in full])} / {mean_std([r['eval/novel_accuracy'] for r in full])} |" + " |" * (len(budgets) - 1))  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/reasoning_table")
    parser.add_argument("--out", default="runs/reasoning_table/tables.md")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--selectors", default=",".join(SELECTORS))
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="change the committed config for every run")  # fmt: skip
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    selectors = [s for s in args.selectors.split(",") if s]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    fixed = sweep.parse_assignments(args.set)
    settings = [("all", 1.0)] + [(m, b) for m in selectors for b in budgets]
    # the first seed's "all" run first: it trains the shared stages the others wait for and reuse
    jobs = [(m, b, s, args.workdir, fixed) for s in seeds for m, b in settings]
    jobs.sort(key=lambda job: (job[:3] != ("all", 1.0, seeds[0]), job[0] != "all", job[2]))
    results: dict = {}
    t0 = time.perf_counter()

    def done(i, job, summary, seconds):
        results[job[:3]] = summary
        print(f"[{i}/{len(jobs)}] {job[0]} {job[1]:g} seed {job[2]}: accuracy {summary['eval/accuracy']:.3f} ({seconds:.0f} s)", flush=True)  # fmt: skip

    sweep.run_jobs(summary_of, jobs, args.workers, done)
    minutes = (time.perf_counter() - t0) / 60
    command = "python -m experiments.reasoning_table " + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "set")  # fmt: skip
    all_runs = [results[("all", 1.0, s)] for s in seeds]
    text = "\n".join(
        [
            f"Produced by `{command}`{' --set ' + ' '.join(args.set) if args.set else ''} "
            f"({minutes:.1f} min on {machine()}; finished runs are read back, not retrained).",
            "",
            "### Provenance of the distilled student's sentences (test problems, end of training; the base student and teacher rows: validation problems)",
            "",
            *provenance_table(all_runs, seeds),
            "",
            *correlation_lines(list(results.values())),
            "",
            "### Teacher-guided data selection: test accuracy at equal budgets (mean ± std over seeds)",
            "",
            *selection_table(results, seeds, selectors, budgets),
        ]
    )
    write(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
