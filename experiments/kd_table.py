"""Every KD method at its own temperature and weight, chosen on a validation split, over several
seeds on the embedded data sets, as a markdown table.

    python -m experiments.kd_table --workdir=runs/kd_table --out=results/kd.md --workers=2

Tuning (issue 18). ``VALID_FRACTION`` of the training split (fdiv.data's seeded permutation) is
held out; every run, teacher included, trains on the rest, and the test split is read only by the
reported evaluation. Every distillation method gets the same budget of 8 settings per data set:

1. ``STAGE1``: the temperature tau in {1, 2, 4} x the method's weight in two values (lambda in
   {0.5, 1} next to the cross-entropy; SinKD's alpha in {0.5, 0.9});
2. ``STAGE2``: at the stage-1 choice, two values of one more knob: lambda in {0.25, 2} (vanilla,
   any-f, DML), BD-KD's kappa in {0, 10} (0: the balance weight is 1/2 always, the mechanism
   switched off), SinKD's beta in {0, 4} (0: no Sinkhorn term).

A setting's score is its validation accuracy, mean over the seeds (equal means: lower validation
NLL); each method's setting is the best of its 8. The test columns are the same runs' test metrics.
``--paired-seeds`` re-runs the compared methods at their chosen settings on more seeds for paired
t-tests (``PAIRS``). BD-KD's balance weight is logged over training (mean, 5% and 95% batch
quantiles) and reported, to show whether its mechanism is active.

Each (data set, seed) trains its teacher once (``<workdir>/<setting>/seed<k>/teacher``), shared by
the offline runs; every run is an ordinary trainer run
(``<workdir>/<setting>/seed<k>/<method>/<field=value,...>``), so an interrupted table resumes where
it stopped and finished runs are re-opened, not retrained.

Representational alignment (issue 16): for the chosen runs, linear CKA, RBF CKA and RSA between
each layer of the seed's offline teacher and each layer of the student on the whole test split; a
table of the last hidden layers and the logits, whether alignment tracks accuracy or calibration
across methods (Spearman correlations), and the linear-CKA heatmap of each method (mean over seeds):
all methods in one figure, ``kd_alignment_<setting>.png`` beside ``--out``, and one PNG per method,
``<workdir>/<setting>/alignment_<method>.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import numpy as np
from absl import logging
from scipy import stats

from experiments import kd, sweep
from experiments._tables import machine, mean_std, write
from fdiv import plots
from fdiv.train import paths

# (label, method, divergence)
METHODS = [
    ("student alone (CE)", "student", "kl"),
    ("vanilla KD (KL)", "vanilla", "kl"),
    ("any-f KD: JS", "fkd", "js"),
    ("any-f KD: reverse KL", "fkd", "reverse_kl"),
    ("any-f KD: total variation", "fkd", "tv"),
    ("any-f KD: squared Hellinger", "fkd", "squared_hellinger"),
    ("SinKD", "sinkd", "kl"),
    ("DML (online)", "dml", "kl"),
    ("BD-KD (online)", "bdkd", "kl"),
]
SETTINGS = {"digits": "configs.kd_digits", "mnist1d": "configs.kd_mnist1d"}
VALID_FRACTION = 0.1
SELECT = ("valid/student/accuracy", "max")
TIEBREAK = ("valid/student/nll", "min")
TEMPERATURES = (1.0, 2.0, 4.0)
STAGE1 = {  # method -> {field: values}; the student alone has nothing to tune
    "student": {},
    "vanilla": {"temperature": TEMPERATURES, "kd_weight": (0.5, 1.0)},
    "fkd": {"temperature": TEMPERATURES, "kd_weight": (0.5, 1.0)},
    "sinkd": {"temperature": TEMPERATURES, "sinkd.alpha": (0.5, 0.9)},
    "dml": {"temperature": TEMPERATURES, "kd_weight": (0.5, 1.0)},
    "bdkd": {"temperature": TEMPERATURES, "kd_weight": (0.5, 1.0)},
}
STAGE2 = {  # method -> (field, values) tried at the stage-1 choice
    "vanilla": ("kd_weight", (0.25, 2.0)),
    "fkd": ("kd_weight", (0.25, 2.0)),
    "sinkd": ("sinkd.beta", (0.0, 4.0)),
    "dml": ("kd_weight", (0.25, 2.0)),
    "bdkd": ("bdkd.kappa", (0.0, 10.0)),
}
# Paired comparisons (claim, method A, method B): "best any-f" is the any-f row other than KL
# with the best validation accuracy.
PAIRS = [
    ("KD helps the student (Hinton et al.)", ("vanilla", "kl"), ("student", "kl")),
    ("another f beats KL (any-f KD)", "best any-f", ("vanilla", "kl")),
    ("SinKD beats vanilla KD", ("sinkd", "kl"), ("vanilla", "kl")),
    ("mutual learning helps the student (DML)", ("dml", "kl"), ("student", "kl")),
    ("BD-KD beats DML", ("bdkd", "kl"), ("dml", "kl")),
    ("BD-KD beats vanilla KD", ("bdkd", "kl"), ("vanilla", "kl")),
]


def run_name(method: str, divergence: str) -> str:
    return method if method != "fkd" else f"fkd_{divergence}"


def run_dir(workdir: str, setting: str, seed: int, method: str, divergence: str, overrides) -> str:
    base = os.path.join(workdir, setting, f"seed{seed}", run_name(method, divergence))
    return os.path.join(base, sweep.setting_name(overrides)) if overrides else base


def run_config(setting: str, seed: int, method: str, divergence: str, workdir: str, overrides):
    overrides = dict(overrides or {})
    config = importlib.import_module(SETTINGS[setting]).get_config()
    config.method, config.divergence = method, divergence
    config.valid_fraction = VALID_FRACTION
    for field, value in overrides.items():
        sweep.set_field(config, field, value)
    config.train.seed = seed
    config.train.progress = False
    config.teacher_workdir = os.path.join(workdir, setting, f"seed{seed}", "teacher")
    return config


def with_teacher(config, summary: dict) -> dict:
    """An offline run's summary with its teacher's test evaluation added."""
    if config.method not in kd.OFFLINE:
        return summary
    teacher = json.loads(paths.read_text(os.path.join(config.teacher_workdir, "summary.json")))
    return {**summary, **{k: v for k, v in teacher.items() if k.startswith("eval/teacher/")}}


def run_one(setting: str, seed: int, method: str, divergence: str, workdir: str, overrides=None) -> kd.KDRun:  # fmt: skip
    """One trained (or re-opened) run at ``overrides`` (dotted config fields); offline runs'
    summaries gain their teacher's evaluation."""
    config = run_config(setting, seed, method, divergence, workdir, overrides)
    directory = run_dir(workdir, setting, seed, method, divergence, overrides or {})
    kd_run = sweep.wait_for_workdir(lambda: kd.train_run(config, directory), directory)
    return kd_run._replace(summary=with_teacher(config, kd_run.summary))


finished_summary = sweep.finished_summary  # a finished run's summary, not re-opened


def summary_of(setting, seed, method, divergence, workdir, overrides) -> dict:
    """A worker's job: the run's numeric summary (module level, so a spawned process can call
    it). A finished run's summary is read from its workdir: re-opening all of them to assemble the
    table would cost minutes of restores and evaluations."""
    logging.set_verbosity(logging.WARNING)
    config = run_config(setting, seed, method, divergence, workdir, overrides)
    summary = finished_summary(
        config, run_dir(workdir, setting, seed, method, divergence, overrides)
    )
    if summary is None:
        summary = run_one(setting, seed, method, divergence, workdir, overrides).summary
    else:
        summary = with_teacher(config, summary)
    return sweep.numbers(summary)


# ---------------------------------------------------------------------------------------------
# Tuning.


def stage1_settings(method: str) -> list[dict]:
    return sweep.settings(STAGE1[method]) if STAGE1[method] else [{}]


def stage2_settings(method: str, chosen: dict) -> list[dict]:
    if method not in STAGE2:
        return []
    field, values = STAGE2[method]
    return [{**chosen, field: v} for v in values if v != chosen.get(field)]


def teachers_first(jobs: list[tuple]) -> list[tuple]:
    """The first offline job of each (data set, seed) moved to the front: those train the shared
    teachers side by side, instead of every worker queueing at one teacher's lock."""
    firsts = list({(j[0], j[1]): j for j in reversed(jobs) if j[2] in kd.OFFLINE}.values())
    return [*firsts, *[j for j in jobs if j not in firsts]]


def tune(settings, seeds, workdir, workers, log) -> tuple[dict, dict, dict]:
    """Run both stages for every (data set, method); returns ``(results, chosen, evaluated)``:
    ``results[(setting, method, divergence)][(setting_name, seed)]`` = summary,
    ``chosen[(setting, method, divergence)]`` = the selected overrides and ``evaluated[...]`` every
    tried overrides, in order."""
    results: dict = {}
    evaluated: dict = {}  # (setting, method, divergence) -> list of overrides, in order

    def execute(jobs):
        def done(i, job, summary, seconds):
            setting, seed, method, divergence, _, overrides = job
            results.setdefault((setting, method, divergence), {})[(sweep.setting_name(overrides), seed)] = summary  # fmt: skip
            log(f"[{i}/{len(jobs)}] {setting} {run_name(method, divergence)} {sweep.setting_name(overrides) or '-'} seed {seed}: "
                f"valid accuracy {summary[SELECT[0]]:.4f}, test {summary['eval/student/accuracy']:.4f} ({seconds:.0f} s)")  # fmt: skip

        sweep.run_jobs(summary_of, teachers_first(jobs), workers, done)

    def choose(key):
        return sweep.select(results[key], evaluated[key], seeds, *SELECT, [], tiebreak=TIEBREAK)[
            ()
        ][0]

    keys = [(s, m, d) for s in settings for _, m, d in METHODS]
    for key in keys:
        evaluated[key] = stage1_settings(key[1])
    execute([(s, seed, m, d, workdir, o) for (s, m, d) in keys for o in evaluated[(s, m, d)] for seed in seeds])  # fmt: skip
    second = {key: stage2_settings(key[1], choose(key)) for key in keys}
    for key in keys:
        evaluated[key] += second[key]
    execute([(s, seed, m, d, workdir, o) for (s, m, d) in keys for o in second[(s, m, d)] for seed in seeds])  # fmt: skip
    chosen = {key: choose(key) for key in keys}
    return results, chosen, evaluated


# ---------------------------------------------------------------------------------------------
# Representational alignment.

REFERENCE = ("vanilla", "kl")  # the run whose frozen teacher is the seed's offline teacher
HIDDEN = -2  # index of the last hidden layer in layer_features' list (the logits are -1)


def layer_names(count: int) -> list[str]:
    return [f"h{i}" for i in range(1, count)] + ["logits"]


def alignments(setting: str, seed: int, runs: dict) -> dict:
    """``(method, divergence)`` -> {"heatmap": linear CKA ``[L_t, L_s]`` to the seed's offline
    teacher, "last hidden": {measure: value} of the last hidden layers (every measure), "peer":
    linear CKA of the last hidden layers to the online peer (DML / BD-KD only)}. RBF CKA and RSA
    are computed for the reported pair only: their exact pairwise distances are the slow part."""
    reference = runs[(setting, seed, *REFERENCE)]
    inputs = reference.eval_data.get(np.arange(len(reference.eval_data)))[0]
    teacher = kd.network_features(reference, "teacher", inputs)
    out = {}
    for _, method, divergence in METHODS:
        kd_run = runs[(setting, seed, method, divergence)]
        student = kd.network_features(kd_run, "student", inputs)
        entry = {
            "heatmap": kd.alignment(teacher, student, ["linear CKA"])["linear CKA"],
            "last hidden": {
                name: float(measure(teacher[HIDDEN], student[HIDDEN]))
                for name, measure in kd.ALIGNMENT_MEASURES.items()
            },
        }
        if method in kd.ONLINE:
            peer = kd.network_features(kd_run, "teacher", inputs)[HIDDEN]
            entry["peer"] = float(kd.ALIGNMENT_MEASURES["linear CKA"](peer, student[HIDDEN]))
        out[(method, divergence)] = entry
    return out


def alignment_table(setting: str, aligned: dict, results: dict, seeds: list[int]) -> str:
    lines = [
        f"### alignment: {setting} ({len(seeds)} seeds)",
        "",
        "| method | linear CKA (last hidden) | linear CKA (logits) | RBF CKA (last hidden) "
        "| RSA (last hidden) | linear CKA to its online peer (last hidden) | student accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, method, divergence in METHODS:
        per_seed = [aligned[(setting, s)][(method, divergence)] for s in seeds]
        columns = [
            [a["last hidden"]["linear CKA"] for a in per_seed],
            [a["heatmap"][-1, -1] for a in per_seed],
            [a["last hidden"]["RBF CKA"] for a in per_seed],
            [a["last hidden"]["RSA"] for a in per_seed],
        ]
        cells = [mean_std(values) for values in columns]
        peer = mean_std([a["peer"] for a in per_seed]) if method in kd.ONLINE else "—"
        accuracy = mean_std(
            [results[(setting, s, method, divergence)]["eval/student/accuracy"] for s in seeds]
        )
        lines.append(f"| {label} | {' | '.join(cells)} | {peer} | {accuracy} |")
    return "\n".join(lines)


def alignment_findings(setting: str, aligned: dict, results: dict, seeds: list[int]) -> str:
    """Does alignment (last hidden layer, linear CKA) track accuracy or ECE? Spearman correlations
    over the methods' seed means and over all (method, seed) runs."""
    keys = [(m, d) for _, m, d in METHODS]
    cka = np.array(
        [[aligned[(setting, s)][k]["last hidden"]["linear CKA"] for s in seeds] for k in keys]
    )  # fmt: skip
    lines = [f"{setting}:"]
    for metric in ("accuracy", "ece"):
        values = np.array(
            [[results[(setting, s, *k)][f"eval/student/{metric}"] for s in seeds] for k in keys]
        )
        means = stats.spearmanr(cka.mean(1), values.mean(1))
        runs = stats.spearmanr(cka.ravel(), values.ravel())
        lines.append(
            f"- linear CKA (last hidden) vs student {metric}: Spearman rho {means.statistic:+.2f} "
            f"(p = {means.pvalue:.2g}) over the {len(keys)} method means, "
            f"{runs.statistic:+.2f} (p = {runs.pvalue:.2g}) over all {cka.size} runs"
        )
    fkd = [i for i, (m, _) in enumerate(keys) if m in ("vanilla", "fkd")]
    spread = cka[fkd].mean(1)
    lines.append(
        f"- across the choice of f (vanilla KL and the four any-f rows): linear CKA "
        f"{spread.min():.3f} to {spread.max():.3f}; largest seed std among them "
        f"{cka[fkd].std(1, ddof=1).max() if len(seeds) > 1 else 0.0:.3f}"
    )
    return "\n".join(lines)


def alignment_heatmaps(
    setting: str, aligned: dict, seeds: list[int], path: str, method_dir: str
) -> None:
    """Linear CKA of every (offline teacher layer, student layer), seed mean: one figure with a
    panel per method at ``path`` (the one results/ keeps) and one PNG per method in
    ``method_dir`` (``alignment_<run name>.png``)."""
    matrices = {
        (label, method, divergence): np.mean(
            [aligned[(setting, s)][(method, divergence)]["heatmap"] for s in seeds], axis=0
        )
        for label, method, divergence in METHODS
    }
    rows, cols = next(iter(matrices.values())).shape
    axes = {
        "row_names": layer_names(rows), "col_names": layer_names(cols),
        "row_label": "teacher layer", "col_label": "student layer",
    }  # fmt: skip
    title = f"{setting}: linear CKA to the offline teacher (test split, mean of {len(seeds)} seeds)"
    plots.heatmap_grid({k[0]: m for k, m in matrices.items()}, path, title=title, **axes)
    for (label, method, divergence), matrix in matrices.items():
        name = method if method != "fkd" else f"fkd_{divergence}"
        plots.heatmap_grid(
            {label: matrix}, os.path.join(method_dir, f"alignment_{name}.png"), **axes
        )


SYMBOLS = {"temperature": "τ", "kd_weight": "λ", "sinkd.alpha": "α", "sinkd.beta": "β", "bdkd.kappa": "κ"}  # fmt: skip
# The setting results/kd.md used for every method before tuning (committed config defaults).
SHARED = {"temperature": 4.0, "kd_weight": 1.0, "sinkd.alpha": 0.9}


def describe(overrides: dict) -> str:
    return ", ".join(f"{SYMBOLS.get(k, k)} = {v:g}" for k, v in overrides.items()) or "—"


def shared_setting(method: str) -> dict:
    return {k: SHARED[k] for k in STAGE1[method]}


def column(runs: dict, name: str, seeds, metric: str) -> list[float]:
    return [runs[(name, s)][metric] for s in seeds]


def table(setting: str, results: dict, chosen: dict, seeds: list[int]) -> str:
    lines = [
        f"### {setting} ({len(seeds)} seeds: {', '.join(map(str, seeds))})",
        "",
        "| method | chosen setting | valid accuracy | student accuracy | student NLL | student ECE "
        "| teacher accuracy | accuracy at τ = 4, λ = 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, method, divergence in METHODS:
        runs, overrides = results[(setting, method, divergence)], chosen[(setting, method, divergence)]  # fmt: skip
        name = sweep.setting_name(overrides)
        cells = [mean_std(column(runs, name, seeds, m)) for m in (SELECT[0], *EVAL)]
        teacher = mean_std(column(runs, name, seeds, "eval/teacher/accuracy")) if method != "student" else "—"  # fmt: skip
        shared = mean_std(column(runs, sweep.setting_name(shared_setting(method)), seeds, EVAL[0])) if method != "student" else "—"  # fmt: skip
        lines.append(f"| {label} | {describe(overrides)} | {' | '.join(cells)} | {teacher} | {shared} |")  # fmt: skip
    return "\n".join(lines)


EVAL = ("eval/student/accuracy", "eval/student/nll", "eval/student/ece")


def appendix(setting: str, results: dict, chosen: dict, evaluated: dict, seeds: list[int]) -> str:
    """Every evaluated setting of every method (the chosen one in bold)."""
    lines = [
        f"### sweep: {setting}",
        "",
        "| method | setting | valid accuracy | valid NLL | test accuracy | test ECE |",
        "|---|---|---|---|---|---|",
    ]
    for label, method, divergence in METHODS:
        key = (setting, method, divergence)
        for overrides in evaluated[key]:
            name = sweep.setting_name(overrides)
            metrics = (SELECT[0], TIEBREAK[0], EVAL[0], EVAL[2])
            cells = [mean_std(column(results[key], name, seeds, m)) for m in metrics]
            text = describe(overrides)
            if overrides == chosen[key] and len(evaluated[key]) > 1:
                text = f"**{text}**"
            lines.append(f"| {label} | {text} | {' | '.join(cells)} |")
    return "\n".join(lines)


def sweep_plot(setting: str, results: dict, evaluated: dict, seeds, path: str) -> None:
    """Validation accuracy (seed mean) of each method's settings, in the appendix's order."""
    series = {}
    for label, method, divergence in METHODS:
        key = (setting, method, divergence)
        values = [np.mean(column(results[key], sweep.setting_name(o), seeds, SELECT[0])) for o in evaluated[key]]  # fmt: skip
        if len(values) > 1:
            series[label] = (list(range(1, len(values) + 1)), values)
    plots.line_plot(
        series, path, xlabel="setting (order of the appendix: 6 of stage 1, then 2 of stage 2)",
        ylabel="validation accuracy (seed mean)", title=f"{setting}: the sweep",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Claims: paired comparisons and BD-KD's balance weight.


def best_any_f(setting: str, results: dict, chosen: dict, seeds) -> tuple[str, str] | None:
    """The any-f row other than KL with the best validation accuracy at its chosen setting (ties:
    validation NLL); ``None`` without any-f rows."""
    keys = [(m, d) for _, m, d in METHODS if m == "fkd"]
    if not keys:
        return None

    def score(md):
        runs = results[(setting, *md)]
        name = sweep.setting_name(chosen[(setting, *md)])
        return (np.mean(column(runs, name, seeds, SELECT[0])), -np.mean(column(runs, name, seeds, TIEBREAK[0])))  # fmt: skip

    return max(keys, key=score)


def pair_keys(setting, results, chosen, seeds) -> list[tuple[str, tuple, tuple]]:
    """PAIRS with "best any-f" resolved; pairs of a method missing from METHODS are left out."""
    best = best_any_f(setting, results, chosen, seeds)
    present = {(m, d) for _, m, d in METHODS}
    pairs = [(claim, best if a == "best any-f" else a, b) for claim, a, b in PAIRS]
    return [(claim, a, b) for claim, a, b in pairs if a in present and b in present]


def paired_seed_runs(settings, results, chosen, seeds, extra_seeds, workdir, workers, log) -> dict:
    """``(setting, method, divergence)`` -> {seed: summary} at the chosen setting, for every method
    in a pair, over ``seeds + extra_seeds``."""
    wanted = sorted({k for s in settings for _, a, b in pair_keys(s, results, chosen, seeds) for k in ((s, *a), (s, *b))})  # fmt: skip
    jobs = [(s, seed, m, d, workdir, chosen[(s, m, d)]) for (s, m, d) in wanted for seed in extra_seeds]  # fmt: skip
    paired = {
        key: {seed: results[key][(sweep.setting_name(chosen[key]), seed)] for seed in seeds}
        for key in wanted
    }

    def done(i, job, summary, seconds):
        setting, seed, method, divergence = job[:4]
        paired[(setting, method, divergence)][seed] = summary
        log(f"[paired {i}/{len(jobs)}] {setting} {run_name(method, divergence)} seed {seed} ({seconds:.0f} s)")  # fmt: skip

    sweep.run_jobs(summary_of, teachers_first(jobs), workers, done)
    return paired


def verdict_of(mean_difference: float, p_value: float, level: float = 0.05) -> str:
    if not p_value < level:  # NaN (identical runs) included
        return f"no significant difference (p ≥ {level:g})"
    return "holds: A higher" if mean_difference > 0 else "does not hold: B higher"


def paired_table(setting: str, paired: dict, results, chosen, seeds) -> str:
    label = {(m, d): name for name, m, d in METHODS}
    lines = [
        "| claim | A | B | seeds | accuracy A − B | t (p) | ECE A − B | t (p) | verdict (accuracy) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for claim, a, b in pair_keys(setting, results, chosen, seeds):
        runs_a, runs_b = paired[(setting, *a)], paired[(setting, *b)]
        common = sorted(set(runs_a) & set(runs_b))
        cells, verdict = [], ""
        for metric in (EVAL[0], EVAL[2]):
            diff = np.array([runs_a[k][metric] - runs_b[k][metric] for k in common])
            test = stats.ttest_rel([runs_a[k][metric] for k in common], [runs_b[k][metric] for k in common])  # fmt: skip
            cells += [mean_std(diff), f"{test.statistic:+.2f} ({test.pvalue:.2g})"]
            if metric == EVAL[0]:
                verdict = verdict_of(float(diff.mean()), float(test.pvalue))
        lines.append(f"| {claim} | {label[a]} | {label[b]} | {len(common)} | {' | '.join(cells)} | {verdict} |")  # fmt: skip
    return "\n".join(lines)


def balance_weights(directory: str) -> dict[str, np.ndarray]:
    """BD-KD's logged forward-KL weight over training: ``step``, ``mean``, ``p05``, ``p95``
    (batch mean and batch quantiles, each averaged over a logging interval)."""
    rows = [json.loads(line) for line in paths.read_text(os.path.join(directory, "metrics.jsonl")).splitlines() if line.strip()]  # fmt: skip
    rows = [r for r in rows if "online/forward_weight" in r]
    names = {"step": "step", "mean": "online/forward_weight", "p05": "online/forward_weight_p05", "p95": "online/forward_weight_p95"}  # fmt: skip
    return {k: np.array([r[v] for r in rows], float) for k, v in names.items()}


def balance_report(setting: str, workdir: str, results, chosen, evaluated, seeds, path: str) -> str:
    """Where BD-KD's weight sits during training at each evaluated setting (seed 0's log for the
    figure, all seeds for the range), and the kappa = 0 ablation against the chosen setting."""
    key = (setting, "bdkd", "kl")
    lines = [
        "| setting | weight mean over training | 5% quantile, min over training | 95% quantile, max over training | valid accuracy | test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    curves = {}
    for overrides in evaluated[key]:
        logs = [
            balance_weights(run_dir(workdir, setting, s, "bdkd", "kl", overrides)) for s in seeds
        ]
        name = sweep.setting_name(overrides)
        text = describe(overrides)
        if overrides == chosen[key]:
            text = f"**{text}**"
            curves = {f"{q} (seed {seeds[0]})": (logs[0]["step"], logs[0][q]) for q in ("p05", "mean", "p95")}  # fmt: skip
        cells = [
            f"{np.mean([g['mean'].mean() for g in logs]):.3f}",
            f"{min(g['p05'].min() for g in logs):.3f}",
            f"{max(g['p95'].max() for g in logs):.3f}",
            mean_std(column(results[key], name, seeds, SELECT[0])),
            mean_std(column(results[key], name, seeds, EVAL[0])),
        ]
        lines.append(f"| {text} | {' | '.join(cells)} |")
    plots.line_plot(
        curves, path, ylabel="forward-KL weight w", title=f"{setting}: BD-KD's balance weight at the chosen setting",
    )  # fmt: skip
    return "\n".join(lines)


ALIGNMENT_INTRO = (
    "Each student's layers against the seed's offline teacher (the same frozen network for every "
    "method, so the rows compare; DML and BD-KD never see it), on the whole test split: linear CKA, "
    f"RBF CKA (bandwidth {kd.RBF_BANDWIDTH} x the median pairwise distance) and RSA (correlation-"
    "distance RDMs, Spearman), all from `fdiv.analysis`. 'Last hidden' pairs the teacher's and the "
    "student's last hidden layers (after the activation). For the online methods the next column "
    "compares the student with its own online peer. Each method at its chosen setting; mean ± "
    "sample std over seeds."
)


def document(args, minutes: float, settings, seeds, extra_seeds, results, chosen, evaluated, paired, aligned, final) -> str:  # fmt: skip
    """``results/kd.md``: the method table, paired comparisons, BD-KD's weight, alignment and the
    whole sweep, each section per setting (figures written next to ``args.out``)."""
    # Over 60 lines: the document's prose, section after section in reading order.
    out_dir = os.path.dirname(args.out) or "."
    command = f"python -m experiments.kd_table --workdir={args.workdir} --out={args.out} --settings={args.settings} --seeds={args.seeds} --paired-seeds={args.paired_seeds} --workers={args.workers}"  # fmt: skip
    header = [
        "# Knowledge distillation on the embedded data sets, each method tuned on validation",
        "",
        f"Produced by `{command}` ({minutes:.1f} min on {machine()}; runs already complete in the "
        "workdir are re-opened and evaluated, not retrained).",
        "",
        f"Every run trains on {1 - VALID_FRACTION:.0%} of the training split; the other "
        f"{VALID_FRACTION:.0%} (fdiv.data's seeded permutation) is the validation split that chooses "
        "each method's setting; the test split is read only by the columns reported here. Each "
        "distillation method gets the same budget of 8 settings: τ ∈ {1, 2, 4} × its weight "
        "(λ ∈ {0.5, 1}; SinKD's α ∈ {0.5, 0.9}), then two values of one more knob at the stage-1 "
        "choice (λ ∈ {0.25, 2}; BD-KD's κ ∈ {0, 10}; SinKD's β ∈ {0, 4}). Chosen: the best "
        "validation accuracy, seed mean (ties: validation NLL). Student test accuracy, NLL and ECE "
        "(15 bins), mean ± sample std over seeds; the teacher column is the offline teacher "
        "(pre-trained once per seed, on the same 90%) or, for DML and BD-KD, the online peer. The "
        "last column is the same method at the setting the earlier table shared between all "
        "methods (τ = 4, λ = 1; SinKD α = 0.9). Networks, optimiser and steps: "
        "`configs/kd_digits.py`, `configs/kd_mnist1d.py` as committed.",
        "",
    ]
    body = "\n\n".join(table(setting, results, chosen, seeds) for setting in settings)
    body += (
        "\n\n## Paired comparisons\n\nEach method at its chosen setting, seeds "
        f"{', '.join(map(str, seeds + extra_seeds))} (the same seed: the same offline teacher and "
        "data order); difference A − B as mean ± sample std over seeds, paired t statistic "
        "(scipy.stats.ttest_rel, two-sided p). 'Another f' is the any-f row other than KL with "
        "the best validation accuracy.\n\n"
    )
    body += "\n\n".join(
        f"### {s}\n\n" + paired_table(s, paired, results, chosen, seeds) for s in settings
    )
    body += (
        "\n\n## BD-KD's balance weight\n\nThe student's per-example forward-KL weight "
        "w = σ(κ (H(q) − H(p))) at temperature τ, logged each step as the batch mean and the batch's "
        "5% and 95% quantiles (averaged over each 200-step logging interval). The mechanism is "
        "active only where w leaves 1/2; κ = 0 fixes w = 1/2 (the ablation). Range over training "
        "and seeds.\n\n"
    )
    body += "\n\n".join(
        f"### {s}\n\n"
        + balance_report(
            s,
            args.workdir,
            results,
            chosen,
            evaluated,
            seeds,
            os.path.join(out_dir, f"kd_bdkd_weight_{s}.png"),
        )  # fmt: skip
        + f"\n\n![{s}: BD-KD balance weight](kd_bdkd_weight_{s}.png)"
        for s in settings
    )
    body += "\n\n## Representational alignment to the teacher\n\n" + ALIGNMENT_INTRO + "\n\n"
    body += "\n\n".join(alignment_table(s, aligned, final, seeds) for s in settings)
    body += "\n\n### Computed from the alignment tables\n\n" + "\n\n".join(
        alignment_findings(s, aligned, final, seeds) for s in settings
    )
    body += "\n\n" + "\n".join(
        f"![{s}: linear CKA heatmaps](kd_alignment_{s}.png)" for s in settings
    )
    body += "\n\n## Appendix: the whole sweep\n\n" + "\n\n".join(
        appendix(s, results, chosen, evaluated, seeds) + f"\n\n![{s}: the sweep](kd_sweep_{s}.png)"
        for s in settings
    )
    for s in settings:
        sweep_plot(s, results, evaluated, seeds, os.path.join(out_dir, f"kd_sweep_{s}.png"))
    return "\n".join(header) + "\n" + body + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/kd_table")
    parser.add_argument("--out", default="results/kd.md")
    parser.add_argument("--settings", default="digits,mnist1d")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--paired-seeds", default="3,4,5,6,7", help="more seeds for PAIRS ('' = none)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (processes)")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    settings = args.settings.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra_seeds = [int(s) for s in args.paired_seeds.split(",") if s.strip()]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; allowed: {sorted(SETTINGS)}")
    if set(extra_seeds) & set(seeds):
        parser.error(f"--paired-seeds {extra_seeds} overlap --seeds {seeds}")

    def log(line):
        print(line, flush=True)

    start = time.time()
    results, chosen, evaluated = tune(settings, seeds, args.workdir, args.workers, log)
    paired = paired_seed_runs(settings, results, chosen, seeds, extra_seeds, args.workdir, args.workers, log)  # fmt: skip
    final, aligned = {}, {}
    for setting in settings:
        for seed in seeds:
            runs = {
                (setting, seed, m, d): run_one(
                    setting, seed, m, d, args.workdir, chosen[(setting, m, d)]
                )  # fmt: skip
                for _, m, d in METHODS
            }
            final.update({key: kd_run.summary for key, kd_run in runs.items()})
            aligned[(setting, seed)] = alignments(setting, seed, runs)
    out_dir = os.path.dirname(args.out) or "."
    for setting in settings:
        alignment_heatmaps(
            setting, aligned, seeds, os.path.join(out_dir, f"kd_alignment_{setting}.png"),
            os.path.join(args.workdir, setting),
        )  # fmt: skip
    minutes = (time.time() - start) / 60

    text = document(args, minutes, settings, seeds, extra_seeds, results, chosen, evaluated, paired, aligned, final)  # fmt: skip
    write(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
