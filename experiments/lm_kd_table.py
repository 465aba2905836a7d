"""Token-level KD on the standard-library corpus against the student trained alone, over seeds.

    python -m experiments.lm_kd_table --workdir=runs/lm_kd_table --out=results/lm_distill.md

Every run is ``configs/lm_kd_code.py`` as committed, with only the fields of its row changed. Each
seed trains its teacher once (``<workdir>/seed<s>/teacher``, shared by that seed's KD runs); the
student alone and the default KD run (supervised, forward KL) run on every seed, other divergences
and the cached top-k teacher on ``--extra_seeds``. The on-policy and sequence-level regimes are not
rows: they decode a continuation every step (with this sampler, which has no key-value cache, 32
full forward passes of a model per training step), too slow for this table on 2 CPU cores. Finished runs are read from their workdirs, not retrained;
an interrupted table resumes. The report gives held-out (test files) perplexity, the student's
top-1 agreement with the teacher and ``D_f(teacher || student)``, and the paired per-seed
difference of each KD row to the student alone.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from absl import logging

from experiments import lm_kd, sweep
from experiments._tables import machine, mean_std, slug, write
from fdiv.train import paths

CONFIG = "configs/lm_kd_code.py"
# (label, overrides); the first is the reference every KD row is paired with.
ALONE = ("student alone (CE)", {"method": "student"})
DEFAULT_KD = ("KD, supervised, forward KL", {})
EXTRA = [
    ("KD, supervised, reverse KL", {"divergence": "reverse_kl"}),
    ("KD, supervised, JS", {"divergence": "js"}),
    ("KD, supervised, top-32 teacher", {"teacher_top_k": 32}),
]
COLUMNS = [
    ("eval/student/perplexity", "test perplexity"),
    ("valid/student/perplexity", "valid perplexity"),
    ("eval/agreement", "top-1 agreement"),
    ("eval/divergence", "D_f(T ‖ S)"),
]


def run_dir(workdir: str, seed: int, label: str) -> str:
    return os.path.join(workdir, f"seed{seed}", slug(label))


def config_for(overrides: dict, seed: int, workdir: str, fixed: dict):
    config = sweep.run_config(CONFIG, fixed, overrides, seed, workdir)
    config.teacher_workdir = os.path.join(workdir, f"seed{seed}", "teacher")
    return config


def summary_of(label: str, overrides: dict, seed: int, workdir: str, fixed: dict) -> dict:
    """One job (module level: a spawned worker calls it): the run's numeric summary, with its
    teacher's as ``teacher:<key>`` for a KD run."""
    logging.set_verbosity(logging.WARNING)
    config = config_for(overrides, seed, workdir, fixed)
    directory = run_dir(workdir, seed, label)
    summary = sweep.finished_summary(config, directory)
    if summary is None:
        summary = sweep.wait_for_workdir(lambda: lm_kd.run(config, directory), directory)
    out = sweep.numbers(summary)
    teacher = os.path.join(config.teacher_workdir, "summary.json")
    if config.method == "kd" and os.path.exists(teacher):
        for k, v in sweep.numbers(json.loads(paths.read_text(teacher))).items():
            out[f"teacher:{k}"] = v
    return out


def report(results: dict, rows: list[str], seeds: dict[str, list[int]], command: str, minutes: float) -> str:  # fmt: skip
    alone = ALONE[0]
    lines = [
        "# Language-model distillation on the Python standard library",
        "",
        f"Produced by `{command}` ({minutes:.1f} min on {machine()}; finished runs are read back, "
        "not retrained). Configuration: `configs/lm_kd_code.py` as committed (with `--set`'s "
        "changes, if any); each row changes only the fields its label names. Held-out perplexity is on the test files; validation on "
        "the valid files (`fdiv.data.text`'s split by file name). Mean ± sample std over seeds.",
        "",
        "| run | seeds | " + " | ".join(name for _, name in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    teacher_seeds = [s for s in seeds[DEFAULT_KD[0]] if "teacher:eval/teacher/perplexity" in results[(DEFAULT_KD[0], s)]]  # fmt: skip
    if teacher_seeds:
        cells = [
            mean_std([results[(DEFAULT_KD[0], s)][f"teacher:{key.replace('student', 'teacher')}"] for s in teacher_seeds])  # fmt: skip
            if "perplexity" in key else "—"
            for key, _ in COLUMNS
        ]  # fmt: skip
        lines.append(f"| *teacher* | {len(teacher_seeds)} | " + " | ".join(cells) + " |")
    for label in rows:
        ss = seeds[label]
        cells = [
            mean_std([results[(label, s)][key] for s in ss])
            if all(key in results[(label, s)] for s in ss) else "—"
            for key, _ in COLUMNS
        ]  # fmt: skip
        lines.append(f"| {label} | {len(ss)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired difference to the student alone on the same seed (test perplexity; negative: "
        "KD is better), and how many seeds KD wins:",
        "",
        "| run | seeds | Δ test perplexity | KD better on |",
        "|---|---|---|---|",
    ]
    key = COLUMNS[0][0]
    for label in rows:
        if label == alone:
            continue
        ss = [s for s in seeds[label] if (alone, s) in results]
        diff = [results[(label, s)][key] - results[(alone, s)][key] for s in ss]
        lines.append(f"| {label} | {len(ss)} | {mean_std(diff)} | {int(np.sum(np.asarray(diff) < 0))} of {len(ss)} |")  # fmt: skip
    lines += [
        "",
        "Training wall time per run (s, mean over seeds; the trainer's `wall_seconds`, with the "
        "other worker sharing the machine where `--workers=2`); a KD run also needs its seed's "
        "teacher:",
        "",
        "| run | student (s) | teacher (s) |",
        "|---|---|---|",
    ]
    for label in rows:
        ss = seeds[label]
        cells = [
            f"{np.mean([results[(label, s)][k] for s in ss]):.0f}"
            if all(k in results[(label, s)] for s in ss) else "—"
            for k in ("wall_seconds", "teacher:wall_seconds")
        ]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/lm_kd_table")
    parser.add_argument("--out", default="results/lm_distill.md")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--extra_seeds", default="0", help="seeds of the other regimes and f ('' none)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="change the committed config for every run (e.g. a smaller one)")  # fmt: skip
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    extra_seeds = [int(s) for s in args.extra_seeds.split(",") if s]
    rows = [(ALONE, seeds), (DEFAULT_KD, seeds)] + [(row, extra_seeds) for row in EXTRA if extra_seeds]  # fmt: skip
    # KD first on each seed: it trains the seed's teacher, which the other KD rows then wait for.
    fixed = sweep.parse_assignments(args.set)
    jobs = [(label, ov, s, args.workdir, fixed) for (label, ov), ss in rows for s in ss]
    jobs.sort(key=lambda job: (job[0] != DEFAULT_KD[0], job[2]))
    results: dict = {}
    t0 = time.perf_counter()

    def done(i, job, summary, seconds):
        results[(job[0], job[2])] = summary
        print(f"[{i}/{len(jobs)}] {job[0]} seed {job[2]}: test ppl {summary.get(COLUMNS[0][0], float('nan')):.2f} ({seconds:.0f} s)", flush=True)  # fmt: skip

    sweep.run_jobs(summary_of, jobs, args.workers, done)
    command = (
        "python -m experiments.lm_kd_table "
        + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "set")
        + (" --set " + " ".join(args.set) if args.set else "")
    )
    text = report(results, [label for (label, _), _ in rows], {label: ss for (label, _), ss in rows}, command, (time.perf_counter() - t0) / 60)  # fmt: skip
    write(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
