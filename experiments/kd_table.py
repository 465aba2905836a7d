"""Every KD method over several seeds on the embedded data sets, as a markdown table.

    python -m experiments.kd_table --workdir=runs/kd_table --out=results/kd.md

Each (setting, seed) trains its teacher once (``<workdir>/<setting>/seed<k>/teacher``) and shares it
between the offline methods; every run is an ordinary trainer run, so an interrupted table resumes
where it stopped and finished runs are not repeated. Rows report the student's test accuracy, NLL
and ECE (15 bins) as mean ± sample standard deviation over the seeds.

Representational alignment (issue 16): for every run, linear CKA, RBF CKA and RSA between each
layer of the seed's offline teacher and each layer of the student on the whole test split; a table
of the last hidden layers and the logits, whether alignment tracks accuracy or calibration across
methods (Spearman correlations), and the linear-CKA heatmap of each method (mean over seeds): all
methods in one figure, ``kd_alignment_<setting>.png`` beside ``--out``, and one PNG per method,
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

from experiments import kd
from experiments._tables import machine, mean_std, write
from fdiv.train import paths
from fdiv.train import plots as train_plots

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


def run_one(setting: str, seed: int, method: str, divergence: str, workdir: str) -> kd.KDRun:
    """One trained (or re-opened) run; offline runs' summaries gain their teacher's evaluation."""
    config = importlib.import_module(SETTINGS[setting]).get_config()
    config.method, config.divergence = method, divergence
    config.train.seed = seed
    config.train.progress = False
    config.teacher_workdir = os.path.join(workdir, setting, f"seed{seed}", "teacher")
    name = method if method != "fkd" else f"fkd_{divergence}"
    run_dir = os.path.join(workdir, setting, f"seed{seed}", name)
    kd_run = kd.train_run(config, run_dir)
    if method in kd.OFFLINE:
        teacher = json.loads(paths.read_text(os.path.join(config.teacher_workdir, "summary.json")))
        teacher_eval = {k: v for k, v in teacher.items() if k.startswith("eval/teacher/")}
        kd_run = kd_run._replace(summary={**kd_run.summary, **teacher_eval})
    return kd_run


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
    train_plots.heatmap_grid({k[0]: m for k, m in matrices.items()}, path, title=title, **axes)
    for (label, method, divergence), matrix in matrices.items():
        name = method if method != "fkd" else f"fkd_{divergence}"
        train_plots.heatmap_grid(
            {label: matrix}, os.path.join(method_dir, f"alignment_{name}.png"), **axes
        )


def table(setting: str, results: dict, seeds: list[int]) -> str:
    lines = [
        f"### {setting} ({len(seeds)} seeds: {', '.join(map(str, seeds))})",
        "",
        "| method | student accuracy | student NLL | student ECE | teacher accuracy |",
        "|---|---|---|---|---|",
    ]
    for label, method, divergence in METHODS:
        runs = [results[(setting, s, method, divergence)] for s in seeds]
        cells = [
            mean_std([r[f"eval/student/{m}"] for r in runs]) for m in ("accuracy", "nll", "ece")
        ]
        teacher = (
            mean_std([r["eval/teacher/accuracy"] for r in runs]) if method != "student" else "—"
        )
        lines.append(f"| {label} | {' | '.join(cells)} | {teacher} |")
    return "\n".join(lines)


def findings(setting: str, results: dict, seeds: list[int]) -> str:
    """Which method is best on each metric, and whether BD-KD's claim holds here."""

    def stats(method, divergence, metric):
        values = [
            results[(setting, s, method, divergence)][f"eval/student/{metric}"] for s in seeds
        ]
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    label = {(m, d): name for name, m, d in METHODS}
    lines = [f"{setting}:"]
    for metric, better in (("accuracy", max), ("nll", min), ("ece", min)):
        best = better(label, key=lambda md: stats(*md, metric)[0])
        lines.append(f"- best student {metric}: {label[best]} ({stats(*best, metric)[0]:.4f})")
    bdkd_acc, bdkd_ece = stats("bdkd", "kl", "accuracy"), stats("bdkd", "kl", "ece")
    for other in (("dml", "kl"), ("vanilla", "kl")):
        acc, ece = stats(*other, "accuracy"), stats(*other, "ece")
        verdict_acc = "higher" if bdkd_acc[0] > acc[0] else "not higher"
        verdict_ece = "lower" if bdkd_ece[0] < ece[0] else "not lower"
        lines.append(
            f"- BD-KD vs {label[other]}: accuracy {verdict_acc} ({bdkd_acc[0] - acc[0]:+.4f}), "
            f"ECE {verdict_ece} ({bdkd_ece[0] - ece[0]:+.4f}); seed std of BD-KD accuracy {bdkd_acc[1]:.4f}"
        )
    return "\n".join(lines)


ALIGNMENT_INTRO = (
    "Each student's layers against the seed's offline teacher (the same frozen network for every "
    "method, so the rows compare; DML and BD-KD never see it), on the whole test split: linear CKA, "
    f"RBF CKA (bandwidth {kd.RBF_BANDWIDTH} x the median pairwise distance) and RSA (correlation-"
    "distance RDMs, Spearman), all from `fdiv.analysis`. 'Last hidden' pairs the teacher's and the "
    "student's last hidden layers (after the activation). For the online methods the next column "
    "compares the student with its own online peer. Mean ± sample std over seeds."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/kd_table")
    parser.add_argument("--out", default="results/kd.md")
    parser.add_argument("--settings", default="digits,mnist1d")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    settings = args.settings.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; allowed: {sorted(SETTINGS)}")

    start = time.time()
    results, aligned = {}, {}
    for setting in settings:
        for seed in seeds:
            runs = {
                (setting, seed, method, divergence): run_one(
                    setting, seed, method, divergence, args.workdir
                )
                for _, method, divergence in METHODS
            }
            results.update({key: kd_run.summary for key, kd_run in runs.items()})
            aligned[(setting, seed)] = alignments(setting, seed, runs)
    out_dir = os.path.dirname(args.out) or "."
    for setting in settings:
        alignment_heatmaps(
            setting, aligned, seeds, os.path.join(out_dir, f"kd_alignment_{setting}.png"),
            os.path.join(args.workdir, setting),
        )  # fmt: skip
    minutes = (time.time() - start) / 60

    command = f"python -m experiments.kd_table --workdir={args.workdir} --out={args.out} --settings={args.settings} --seeds={args.seeds}"  # fmt: skip
    header = [
        "# Knowledge distillation on the embedded data sets",
        "",
        f"Produced by `{command}` ({minutes:.1f} min on {machine()}; runs already complete "
        "in the workdir are re-opened and evaluated, not retrained: from scratch the table took "
        "15.0 min on 2 cores, part of it shared with other jobs). Student test "
        "accuracy, NLL and ECE (15 bins), mean ± sample std over seeds; the teacher column is the "
        "offline teacher (pre-trained once per seed) or, for DML and BD-KD, the online peer.",
        "Settings are those of `configs/kd_digits.py` and `configs/kd_mnist1d.py` as committed.",
        "",
    ]
    body = "\n\n".join(table(setting, results, seeds) for setting in settings)
    body += "\n\n### Computed from the table\n\n" + "\n\n".join(
        findings(s, results, seeds) for s in settings
    )
    body += "\n\n## Representational alignment to the teacher\n\n" + ALIGNMENT_INTRO + "\n\n"
    body += "\n\n".join(alignment_table(s, aligned, results, seeds) for s in settings)
    body += "\n\n### Computed from the alignment tables\n\n" + "\n\n".join(
        alignment_findings(s, aligned, results, seeds) for s in settings
    )
    body += "\n\n" + "\n".join(
        f"![{s}: linear CKA heatmaps](kd_alignment_{s}.png)" for s in settings
    )
    write(args.out, "\n".join(header) + "\n" + body + "\n")
    print(body)


if __name__ == "__main__":
    main()
