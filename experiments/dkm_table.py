"""The deep-kernel-machine table: DKM for several nu vs the NNGP vs an exact GP, 3 seeds.

    python -m experiments.dkm_table --workdir=runs/dkm_table --out=runs/dkm_table/tables.md

For each data set (``configs/dkm_diabetes.py``, ``configs/dkm_digits.py`` as committed) it runs
the config (``dkm`` at the config's ``nu``, ``nngp``, ``gp``) in ``<workdir>/<dataset>`` and the
DKM alone at each further ``--nus`` value in ``<workdir>/<dataset>_nu<value>``; runs already
complete are re-opened and evaluated, not retrained. Writes one markdown table per data set
(mean ± sample std over seeds) with the per-seed differences to the NNGP, and copies each data
set's ``grams.png`` beside ``--out`` as ``dkm_grams_<dataset>.png``.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
from absl import app, flags, logging

from configs import dkm_diabetes, dkm_digits
from experiments import dkm

_WORKDIR = flags.DEFINE_string("workdir", "runs/dkm_table", "Where the runs live.")
_OUT = flags.DEFINE_string("out", "runs/dkm_table/tables.md", "The markdown file to write.")
_DATASETS = flags.DEFINE_list("datasets", ["diabetes", "digits"], "Data sets to run.")
_NUS = flags.DEFINE_list("nus", ["10", "100"], "Further nu values for the DKM alone.")
_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per method.")

CONFIGS = {"diabetes": dkm_diabetes, "digits": dkm_digits}


def _fmt(entry) -> str:
    return f"{entry['mean']:.4f} ± {entry['std']:.4f}"


def table(dataset: str, rows: list[tuple[str, dict]], seeds: list[int]) -> str:
    """Rows ``(label, summary entry)``; then each DKM row's per-seed difference to the NNGP."""
    names = dkm.metric_names(dataset)
    titles = {"rmse": "test RMSE", "log_lik": "test log-lik / point", "accuracy": "test accuracy"}
    lines = [
        f"### {dataset} ({len(seeds)} seeds: {', '.join(map(str, seeds))})",
        "",
        "| method | " + " | ".join(titles[n] for n in names) + " | train wall (s, all seeds) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for label, e in rows:
        if len(e[names[0]]["per_seed"]) == 1 < len(seeds):
            label += " (one run: no randomness on the fixed split)"
        cells = " | ".join(_fmt(e[n]) for n in names)
        lines.append(f"| {label} | {cells} | {e['wall_seconds']:.0f} |")
    nngp = dict(rows)["NNGP (nu = inf)"]
    lines += ["", "DKM minus NNGP, per seed (mean ± std of the paired difference):", ""]
    for label, e in rows:
        if not label.startswith("DKM"):
            continue
        parts = []
        for n in names:
            diff = np.subtract(e[n]["per_seed"], nngp[n]["per_seed"])
            sign = {"rmse": -1, "log_lik": 1, "accuracy": 1}[n]  # + means the DKM is better
            better = int(np.sum(sign * diff > 0))
            parts.append(
                f"{titles[n]} {np.mean(diff):+.4f} ± {np.std(diff, ddof=1):.4f} "
                f"(DKM better in {better}/{len(diff)})"
            )
        lines.append(f"- {label}: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    out_dir = os.path.dirname(os.path.abspath(_OUT.value))
    os.makedirs(out_dir, exist_ok=True)
    sections = []
    for dataset in _DATASETS.value:
        if dataset not in CONFIGS:
            raise app.UsageError(f"unknown data set {dataset!r}; known: {sorted(CONFIGS)}")
        start = time.perf_counter()
        config = CONFIGS[dataset].get_config()
        config.num_seeds = _SEEDS.value
        base = os.path.join(_WORKDIR.value, dataset)
        summary = dkm.run(config, base)
        methods = summary["methods"]
        rows = [
            ("exact GP (SE-ARD)", methods["gp"]),
            ("NNGP (nu = inf)", methods["nngp"]),
            (f"DKM nu = {config.nu:g}", methods["dkm"]),
        ]
        for nu in _NUS.value:
            sweep = CONFIGS[dataset].get_config()
            sweep.num_seeds, sweep.nu, sweep.methods = _SEEDS.value, float(nu), ("dkm",)
            result = dkm.run(sweep, os.path.join(_WORKDIR.value, f"{dataset}_nu{nu}"))
            rows.append((f"DKM nu = {float(nu):g}", result["methods"]["dkm"]))
        sections.append(table(dataset, rows, summary["seeds"]))
        sections.append(f"({dataset}: {time.perf_counter() - start:.0f} s for this section)")
        shutil.copyfile(
            os.path.join(base, "grams.png"), os.path.join(out_dir, f"dkm_grams_{dataset}.png")
        )
    with open(_OUT.value, "w", encoding="utf-8") as f:
        f.write("\n\n".join(sections) + "\n")
    print("\n\n".join(sections))


if __name__ == "__main__":
    app.run(main)
