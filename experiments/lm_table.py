"""f-DPO, f-DPG, DPH-RL and SequenceMatch on the enumerable tasks, over several seeds: one table.

    python -m experiments.lm_table --workdir=runs/lm_table --out=results/lm.md

Every run is an ordinary trainer run of ``configs/{fdpo,fdpg,dphrl,seqmatch}_toy.py`` with the
overrides listed in the table (an interrupted table resumes; finished runs are re-opened and
re-evaluated, not retrained). Runs of one family and seed share one base policy. All metrics are
exact (enumeration of every sequence), except the pass@k estimates (unbiased estimator over
``eval_samples`` samples per prompt).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import numpy as np
from absl import logging

from experiments._tables import machine, slug, write
from fdiv.train import paths

# DPH-RL as fdiv ran it before following the official code (configs/dphrl_toy.py's docstring).
EARLIER_DPHRL = {
    "prompt_split": "shared", "sample_filter": "all", "grpo.ddof": 0, "grpo.clip_high": 0.2,
    "grpo.dual_clip": 0.0, "grpo.minibatches": 1, "penalty_clip": False,
}  # fmt: skip
# family -> (field, values, validation metric, tolerance): rows of the family that do not fix the
# field get, per row, the smallest value whose validation metric (seed mean) stays within
# `tolerance` of the initial policy's, else the largest: the most the method may move on its
# training prompts at a matched preservation of held-out prompts (the test never decides). In the
# DPH-RL task a held-out prompt cannot gain from RL (prompts are independent ids), so "best
# validation pass@8" would always pick the largest eta, i.e. no RL at all.
TUNE = {
    "dphrl": ("eta", (0.1, 0.3, 1.0, 3.0, 10.0), "valid/pass@8", 0.02),
}

# family -> (config module, [(label, overrides)], [(summary key, column title)])
FAMILIES = {
    "fdpo": (
        "configs.fdpo_toy",
        [
            ("reverse KL (DPO)", {"divergence": "reverse_kl"}),
            ("forward KL", {"divergence": "forward_kl"}),
            ("JS", {"divergence": "js"}),
            ("alpha = 0.5", {"divergence": "alpha", "alpha": 0.5}),
        ],
        [
            ("reward", "E[reward]"),
            ("entropy", "entropy"),
            ("forward_kl", "KL(p*‖π)"),
            ("reverse_kl", "KL(π‖p*)"),
            ("js", "JS"),
            ("tv", "TV"),
            ("kl_to_reference", "KL(π‖π_ref)"),
            ("preference_accuracy", "pref. acc."),
            ("preference_ece", "pref. ECE"),
        ],
    ),
    "fdpg": (
        "configs.fdpg_toy",
        [
            ("forward KL (DPG)", {"divergence": "forward_kl"}),
            (
                "forward KL, stale proposal (10 steps)",
                {"divergence": "forward_kl", "proposal_every": 10},
            ),
            ("JS", {"divergence": "js"}),
            ("TV", {"divergence": "tv"}),
            ("reverse KL, floor 1e-4", {"divergence": "reverse_kl", "constraint.floor": 1e-4}),
        ],
        [
            ("constraint_rate", "constraint rate"),
            ("entropy", "entropy"),
            ("forward_kl", "KL(p‖π)"),
            ("reverse_kl", "KL(π‖p)"),
            ("js", "JS"),
            ("tv", "TV"),
            ("kl_to_base", "KL(π‖a)"),
        ],
    ),
    "dphrl": (
        "configs.dphrl_toy",
        [
            ("GRPO alone", {"divergence": "none"}),
            ("DPH forward KL", {"divergence": "forward_kl"}),
            ("DPH JS", {"divergence": "js"}),
            ("DPH reverse KL", {"divergence": "reverse_kl"}),
            (
                "DPH forward KL, fdiv's earlier setup (η = 1)",
                {"divergence": "forward_kl", "eta": 1.0, **EARLIER_DPHRL},
            ),  # fmt: skip
        ],
        [
            ("explore/pass@1", "explore pass@1"),
            ("explore/correct_entropy", "explore H(correct)"),
            ("perfect/pass@1", "perfect pass@1"),
            ("valid/pass@8", "valid pass@8"),
            ("test/pass@1", "test pass@1"),
            ("test/pass@8", "test pass@8"),
            ("test/pass@32_estimate", "test pass@32"),
            ("test/correct_entropy", "test H(correct)"),
            ("test/to_initial/forward_kl", "test KL(π₀‖π)"),
        ],
    ),
    "seqmatch": (
        "configs.seqmatch_toy",
        [
            ("MLE", {"divergence": "kl", "backspace_rate": 0.0}),
            ("MLE + backspace data", {"divergence": "kl"}),
            ("SequenceMatch (chi²)", {"divergence": "chi2"}),
        ],
        [
            ("invalid_rate", "invalid rate"),
            ("unfinished_rate", "unfinished"),
            ("recovery", "recovery"),
            ("forward_kl", "KL(data‖π)"),
            ("js", "JS"),
            ("tv", "TV"),
            ("entropy", "entropy"),
        ],
    ),
}


ABOUT = {
    "fdpo": "Hidden reward r(y) = Σ_t w[y_t] over 4^5 sequences; 2,048 Bradley–Terry pairs sampled "
    "from the base policy π_ref; p* ∝ π_ref e^{r/β} (β = 0.5) is the reverse-KL optimum, the same "
    "target for every row. Preference accuracy / ECE of P(y > y') on 4,096 held-out pairs.",
    "fdpg": "Target p ∝ a(y)·1[token 0 appears ≥ 2 times], a = the base policy (constraint rate "
    "0.15-0.18 under a, by seed); divergences are D_f(π‖p) in the alignment naming. The reverse-KL row's target "
    "gives violators 1e-4 of their base mass (KL(π‖p) is infinite for the hard constraint).",
    "dphrl": "Prompt c asks for 4 tokens summing to 2 + c mod 8 (16 prompts); π₀ is fitted to "
    "correct answers on the prompts with c mod 4 ∈ {0, 1} (mastered), to the Markov language's "
    "answers elsewhere. Even prompts are the RL pool: those π₀ answers 4/4 correctly are the "
    "penalty's ('perfect') prompts, with their correct π₀ samples stored (256 drawn per prompt), "
    "the others GRPO's ('explore'); odd prompts are held out, c < 8 for validation and c ≥ 8 for the test (the "
    "same sums). η per divergence from {0.1, 0.3, 1, 3, 10}: the smallest whose mean validation "
    "pass@8 stays within 0.02 of π₀'s (held-out prompts cannot gain from RL here, they can only be "
    "preserved), so the rows compare what each divergence lets GRPO learn at matched "
    "preservation. GRPO as the official code: sample std (ddof = 1), clip [0.8, 1.28], dual clip 3, two "
    "mini-batch steps per rollout of 16 answers per prompt. pass@1 / pass@8 exact, pass@32 the "
    "unbiased estimator over 128 samples per prompt; H(correct): entropy of the policy restricted "
    "to the correct answers. The last row is fdiv's earlier setup (penalty on unfiltered samples "
    "of GRPO's own prompts, population std, symmetric clip, one step per rollout).",
    "seqmatch": "Markov language over 4 tokens with one forbidden successor per token, 512 training "
    "sequences of length 5; 10 actions at most (invalid = a forbidden bigram or unfinished). "
    "Recovery: from 64 held-out prefixes followed by a forced forbidden token, the probability of "
    "ending with a valid sequence.",
}


def cell(values) -> str:
    values = np.asarray(values, float)
    if np.isinf(values).any():
        return "∞"
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {std:.3f}"


def _initial(key: str) -> str:
    split, rest = key.split("/", 1)
    return f"{split}/initial/{rest}"


def run_one(family, module, label, overrides, seed, workdir, steps):
    """One run (a worker's job): its summary with ``train_seconds``. The run directory is
    ``<workdir>/<family>/seed<k>/<label slug>[/<field=value>]`` for a tuned value."""
    from experiments import sweep

    logging.set_verbosity(logging.WARNING)
    config = importlib.import_module(module).get_config()
    config.update_from_flattened_dict(overrides)
    config.train.seed = seed
    if steps:
        config.train.total_steps = steps
    family_dir = os.path.join(workdir, family, f"seed{seed}")
    config.base.workdir = os.path.join(family_dir, "base")
    experiment = importlib.import_module(f"experiments.lm_{family}")
    experiment.validate(config)
    run_dir = os.path.join(family_dir, slug(label))
    tuned = TUNE.get(family, (None,))[0]
    if tuned in overrides and (family, label) in TUNED_ROWS:
        run_dir = os.path.join(run_dir, f"{tuned}={overrides[tuned]}")
    summary = sweep.numbers(sweep.wait_for_workdir(lambda: experiment.run(config, run_dir), run_dir))  # fmt: skip
    summary["train_seconds"] = train_seconds(run_dir)
    return summary


def train_seconds(workdir: str) -> float:
    """Training time of a run from its ``metrics.jsonl`` (steps / steps_per_sec per log interval),
    which survives re-opening the finished run (its ``wall_seconds`` does not)."""
    seconds, last = 0.0, 0
    for line in paths.read_text(os.path.join(workdir, "metrics.jsonl")).splitlines():
        record = json.loads(line)
        if "steps_per_sec" in record:
            seconds += (record["step"] - last) / record["steps_per_sec"]
            last = record["step"]
    return seconds


def command(module: str, overrides) -> str:
    flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
    return (
        f"python -m experiments.main --config={module.replace('.', '/')}.py --workdir=DIR {flags}"
    )


TUNED_ROWS = {
    (family, label)
    for family, (_, rows, _) in FAMILIES.items()
    for label, overrides in rows
    if family in TUNE and TUNE[family][0] not in overrides and overrides.get("divergence") != "none"
}


def row_settings(family: str, label: str, overrides: dict) -> list[dict]:
    """The overrides of every run a row needs: one, or one per tuned value."""
    if (family, label) not in TUNED_ROWS:
        return [overrides]
    field, values, _, _ = TUNE[family]
    return [{**overrides, field: v} for v in values]


def choose(family: str, settings: list[dict], summaries: dict, seeds) -> dict:
    """The smallest tuned value whose seed-mean validation metric is within the tolerance of the
    initial policy's (``TUNE``); the largest if none is."""
    if len(settings) == 1:
        return settings[0]
    field, _, metric, tolerance = TUNE[family]
    split, rest = metric.split("/", 1)

    def mean(o, key):
        return np.mean([summaries[(json.dumps(o, sort_keys=True), s)][f"exact/{key}"] for s in seeds])  # fmt: skip

    ordered = sorted(settings, key=lambda o: o[field])
    close = [
        o for o in ordered if mean(o, metric) >= mean(o, f"{split}/initial/{rest}") - tolerance
    ]
    return close[0] if close else ordered[-1]


def family_section(family: str, summaries: dict, seeds: list[int]) -> str:
    """One family's section of ``results/lm.md``: each row at its chosen setting (mean ± std over
    ``seeds``), the tuned field's whole sweep, and the command of every row."""
    module, rows, columns = FAMILIES[family]
    lines = [
        f"## {family}",
        "",
        ABOUT[family],
        "",
        "| method | " + " | ".join(title for _, title in columns) + " | train s |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    commands, appendix = [], []
    for label, overrides in rows:
        settings = row_settings(family, label, overrides)
        by_setting = {
            json.dumps(o, sort_keys=True): [
                summaries[(family, label, json.dumps(o, sort_keys=True), s)] for s in seeds
            ]  # fmt: skip
            for o in settings
        }
        chosen = choose(family, settings, {(k, s): r for k, runs in by_setting.items() for s, r in zip(seeds, runs, strict=True)}, seeds)  # fmt: skip
        runs = by_setting[json.dumps(chosen, sort_keys=True)]
        shown = label
        if (family, label) in TUNED_ROWS:
            field = TUNE[family][0]
            shown = f"{label} ({'η' if field == 'eta' else field} = {chosen[field]:g}, chosen)"
            appendix += [
                f"| {label} | {o[field]:g}{' (chosen)' if o == chosen else ''} | "
                + " | ".join(
                    cell([r[f"exact/{key}"] for r in by_setting[json.dumps(o, sort_keys=True)]])
                    for key, _ in columns
                )  # fmt: skip
                + " |"
                for o in settings
            ]
        if family == "dphrl" and label == "GRPO alone":  # the initial policy, from the same runs
            cells = [cell([s[f"exact/{_initial(key)}"] for s in runs]) for key, _ in columns]
            lines.append("| initial policy π₀ | " + " | ".join(cells) + " | |")
        cells = [cell([s[f"exact/{key}"] for s in runs]) for key, _ in columns]
        wall = np.mean([s["train_seconds"] for s in runs])
        lines.append(f"| {shown} | " + " | ".join(cells) + f" | {wall:.0f} |")
        commands.append(f"- {shown}: `{command(module, chosen)}`")
    if appendix:
        field = TUNE[family][0]
        lines_appendix = [
            "",
            f"The {field} sweep (every value, mean ± sample std over seeds). Chosen: the "
            f"smallest {field} whose {TUNE[family][2]} (validation prompts, seed mean) is "
            f"within {TUNE[family][3]} of the initial policy's, else the largest:",
            "",
            f"| method | {field} | " + " | ".join(title for _, title in columns) + " |",
            "|---|---|" + "---|" * len(columns),
            *appendix,
        ]
    else:
        lines_appendix = []
    return "\n".join(lines + lines_appendix + ["", *commands, ""])


def main() -> None:
    from experiments import sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/lm_table")
    parser.add_argument("--out", default="results/lm.md")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=0, help="override total_steps (0: configs')")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (processes)")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    families = args.families.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {sorted(FAMILIES)}")

    start = time.perf_counter()
    jobs = [
        (family, FAMILIES[family][0], label, setting, seed, args.workdir, args.steps)
        for family in families
        for label, overrides in FAMILIES[family][1]
        for setting in row_settings(family, label, overrides)
        for seed in seeds
    ]
    summaries: dict = {}

    def done(i, job, summary, seconds):
        family, _, label, setting, seed = job[:5]
        summaries[(family, label, json.dumps(setting, sort_keys=True), seed)] = summary
        print(f"[{i}/{len(jobs)}] {family} {label} {setting} seed {seed} ({seconds:.0f} s)", flush=True)  # fmt: skip

    sweep.run_jobs(run_one, jobs, args.workers, done)
    sections = []
    for family in families:
        sections.append(family_section(family, summaries, seeds))
        print(sections[-1], flush=True)

    total = (time.perf_counter() - start) / 60
    header = (
        "# Language-model alignment on enumerable tasks\n\n"
        f"Regenerate: `python -m experiments.lm_table --workdir=runs/lm_table --out={args.out}"
        f" --seeds={args.seeds} --workers={args.workers}"
        + (f" --steps={args.steps}" if args.steps else "")
        + f"`\n\nMean ± sample std over seeds {seeds}; every value is exact (all sequences "
        "enumerated) except pass@k estimates, the unbiased estimator over the sampled answers. "
        f"{machine()}. This invocation took {total:.1f} min (finished runs are re-opened and "
        "re-evaluated, not retrained).\n\n"
    )
    write(args.out, header + "\n".join(sections))


if __name__ == "__main__":
    main()
