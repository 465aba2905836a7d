"""f-distill for several f, DMD2 and SIM on the 2-D mixture over seeds, the ablations, the digits rows.

    python -m experiments.diffusion_table --workdir=runs/diffusion_table --out=results/diffusion.md

Every run is an ordinary trainer run of ``configs/fdistill_mog.py`` / ``configs/sim_mog.py`` /
``configs/fdistill_digits.py`` (an interrupted table resumes). Each finished run leaves a committed
record (``--records``, :class:`experiments._tables.RunRecords`: its config, numeric summary and
machine; seed 0's samples for the figure), so the table, hours of CPU, can be run in parts
(``--only=seed1`` runs just those records' runs, ``--workers=2`` two at a time) and re-assembled
from a clean clone without training. The runs of one seed share that seed's teacher (``<workdir>/seed<s>/stages``). The
ablation table switches off one piece of the official update at a time for ``ABLATION_F``; the
``cosine``, ``gan``, ``gan_ema`` and ``gan_ema_long`` parts repeat every method and seed with a
named deviation (:data:`VARIANTS`: the generator's learning rate decayed; the GAN weight at the
mixture's scale; that again, evaluated on an EMA of the generator's weights; that trained 3x
longer), the ``sid_alpha`` part SIM's rows of ``gan_ema`` with SiD's official alpha (beside
``sid_alpha_base``, the same runs at SIM's alpha = 1 on the same teachers); the figure shows seed
0's 5,000 evaluation samples of every method over the true density's contours.
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import os
import time
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import fdistill, sweep
from experiments._tables import RunRecords, machine, mean_std, slug, write
from fdiv import data as fdata
from fdiv import metrics, plots
from fdiv.train import paths

# (label, config module, overrides)
METHODS = [
    ("reverse KL (DMD2)", "configs.fdistill_mog", {"divergence": "reverse_kl"}),
    ("forward KL", "configs.fdistill_mog", {"divergence": "kl"}),
    ("JS", "configs.fdistill_mog", {"divergence": "js"}),
    ("squared Hellinger", "configs.fdistill_mog", {"divergence": "squared_hellinger"}),
    ("Jeffreys", "configs.fdistill_mog", {"divergence": "jeffreys"}),
    (
        "alpha (α = 1.5)",
        "configs.fdistill_mog",
        {"divergence": "alpha", "divergence_params": {"alpha": 1.5}},
    ),  # fmt: skip
    ("SIM-L2", "configs.sim_mog", {"distance": "l2"}),
    ("SIM-pseudo-Huber", "configs.sim_mog", {"distance": "pseudo_huber"}),
]
ABLATION_F = "js"  # FastGen's default f
# (label, overrides): each switches one piece of the official update off.
ABLATIONS = [
    ("official (FastGen f-distill)", {}),
    ("score-space weighting", {"generator_update": {"space": "score"}}),
    ("no mean|x − x̂| normaliser", {"generator_update": {"normalize": False}}),
    ("no GAN term", {"gan_weight": 0.0}),
    ("no teacher initialisation", {"generator": {"init_from_teacher": False}}),
    ("ratio EMA momentum 0.99", {"stabilizers": {"ratio_momentum": 0.99}}),
    ("FastGen's unweighted fake-score loss", {"fake_score_weighting": "none"}),
]


# The deviations measured beside the official update, every method and seed, one table part each
# (label suffix, record-name prefix, overrides, heading, what it changes).
class Variant(NamedTuple):
    suffix: str
    prefix: str
    overrides: dict
    heading: str
    text: str
    methods: tuple[str, ...] = ()  # the METHODS labels it applies to; () for every method


# The generator's learning rate decayed to 0 by a cosine over the run (FastGen: constant).
COSINE = {"generator_optimizer": {"schedule": "cosine"}}
# The GAN weight at the mixture's scale. FastGen's 1e-3 weighs the GAN loss (a per-sample mean)
# against the distribution-matching surrogate averaged over every element of 3,072-dimensional
# images at sigma_data 0.5; on the 2-D mixture at sigma_data 3 the same weight leaves the GAN term
# 0.2% of the generator update's norm at the end of training (measured), so it does not transfer.
GAN_WEIGHT = 0.1
GAN = {"gan_weight": GAN_WEIGHT}
# An EMA of the generator's weights evaluated instead of the raw ones, as FastGen evaluates its
# EMAs (0.9999 and up for runs of 10^5 updates); 0.999 (half-life ~690 updates) for the mixture's
# 9k. Training is unchanged (deterministic: the raw trajectory is the gan part's, loss for loss).
EMA_DECAY = 0.999
EMA_HALF_LIFE = round(math.log(0.5) / math.log(EMA_DECAY), -1)  # updates
GAN_EMA = {**GAN, "generator": {"ema_decay": EMA_DECAY}}
# The gan_ema part trained 3x longer (FastGen trains 10^5+ updates; the mixture's configs 9k).
# The generator's rate is constant, so continuing a 9k run's checkpoint (the trainer records the
# extension in extensions.jsonl) is the same run as a straight one of this length.
LONG_STEPS = 27_000
VARIANTS = {
    "cosine": Variant(
        "cosine",
        "cosine_",
        COSINE,
        "Every method, the generator's learning rate decayed by a cosine (a deviation)",
        "Everything as above but `generator_optimizer.schedule=cosine`: the generator's rate "
        "falls from 1e-3 to 0 over the run (FastGen keeps it constant and evaluates EMAs of the "
        "weights; the critic's rate stays constant). The same teachers.",
    ),
    "gan": Variant(
        f"GAN {GAN_WEIGHT:g}",
        "gan_",
        GAN,
        f"Every method, the GAN weight at the mixture's scale ({GAN_WEIGHT:g}; a deviation)",
        f"The official update with `gan_weight={GAN_WEIGHT:g}` (FastGen's CIFAR-10 1e-3 weighs "
        "the GAN loss against a surrogate averaged over 3,072 elements per sample; on the 2-D "
        "mixture it leaves the GAN term 0.2% of the generator update's norm). SIM gets the same "
        "GAN term and discriminator (SiD has none; SiDA adds one). The same teachers.",
    ),
    "gan_ema": Variant(
        f"GAN {GAN_WEIGHT:g}, EMA {EMA_DECAY:g}",
        "gan_ema_",
        GAN_EMA,
        f"Every method, GAN weight {GAN_WEIGHT:g} and the generator's weights evaluated as an "
        f"EMA ({EMA_DECAY:g})",
        "The runs of the previous part, evaluated on an exponential moving average of the "
        f"generator's weights (decay {EMA_DECAY:g}, half-life ~{EMA_HALF_LIFE:.0f} of the 9,000 "
        "updates) instead of the last update's: FastGen evaluates EMAs of the generator (0.9999 "
        "and up, for runs of 10⁵ updates). Training is unchanged: the runs repeat the previous part's loss for "
        "loss (deterministic on CPU), so the two tables differ only in the weights evaluated.",
    ),
    "gan_ema_long": Variant(
        f"GAN {GAN_WEIGHT:g}, EMA {EMA_DECAY:g}, {LONG_STEPS // 1000}k updates",
        f"gan_ema_{LONG_STEPS // 1000}k_",
        {**GAN_EMA, "train": {"total_steps": LONG_STEPS}},
        f"Every method, GAN weight {GAN_WEIGHT:g}, EMA {EMA_DECAY:g}, trained "
        f"{LONG_STEPS:,} updates",
        f"The previous part's runs trained to {LONG_STEPS:,} generator updates instead of 9,000 "
        "(FastGen trains 10⁵ and more); nothing else changes. Forward KL, JS, α = 1.5, SIM-L2 "
        "and SIM-pseudo-Huber continued the previous part's checkpoints at 9,000 (the "
        "generator's rate is constant, so on one machine that is the straight run; each "
        "workdir's `extensions.jsonl` records it, and the recorded wall time counts only the "
        "continuation). The others (reverse KL, squared Hellinger, Jeffreys) are straight runs "
        "recorded later on another machine (`machine` in each record; the first, AVX2), whose "
        "rounding differs: its teachers differ from the previous part's in the sixth digit "
        "(energy 0.0099630 vs 0.0099635, seed 0), so they are other realisations of the same "
        "configs, not the previous part's runs continued.",
    ),
}
# SiD's official alpha (sid_loss.py; SIM's gradient is alpha = 1), for the SIM rows only, and its
# pair: the same runs at alpha = 1 on the same machine and teachers (the gan_ema records may come
# from another machine, whose rounding makes other realisations of the same config).
SID_ALPHA = 1.2
SIM_ROWS = tuple(label for label, module, _ in METHODS if module == "configs.sim_mog")
VARIANTS["sid_alpha_base"] = Variant(
    f"GAN {GAN_WEIGHT:g}, EMA {EMA_DECAY:g}, SiD α = 1",
    "gan_ema_sid_alpha_1_",
    GAN_EMA,
    f"SIM at α = 1 again (GAN weight {GAN_WEIGHT:g}, EMA {EMA_DECAY:g}): the next part's pair",
    "The `gan_ema` part's SIM runs (α = 1, SIM's own gradient) trained again beside the next "
    "part's, with the same teachers on the same machine (`machine` in each record), so that the "
    "two parts differ in α alone. Where the `gan_ema` records were made on another machine, "
    "these are other realisations of the same configs (teachers differ in the sixth digit).",
    SIM_ROWS,
)
VARIANTS["sid_alpha"] = Variant(
    f"GAN {GAN_WEIGHT:g}, EMA {EMA_DECAY:g}, SiD α = {SID_ALPHA:g}",
    f"gan_ema_sid_alpha_{slug(f'{SID_ALPHA:g}')}_",
    {**GAN_EMA, "sid_alpha": SID_ALPHA},
    f"SIM with SiD's α = {SID_ALPHA:g} (GAN weight {GAN_WEIGHT:g}, EMA {EMA_DECAY:g})",
    f"The previous part's runs with `sid_alpha={SID_ALPHA:g}`, SiD's official value "
    "(`sid_loss.py`; 1.0 on AFHQ), where SIM's own gradient is α = 1: the generator loss "
    f"gains `2 (1 − α) d(Y) = −{2 * (SID_ALPHA - 1):g} d(Y)` differentiated through `x_t`, the "
    "sampling distribution's share of the divergence's gradient subtracted (α = ½ would add it "
    "whole; `fdiv.losses.diffusion.sim_generator_loss`). 9,000 updates, the same teachers and "
    "machine as the previous part: seed for seed, the two differ in α alone.",
    SIM_ROWS,
)
# Every part of the table, in the document's order (the default --parts).
PARTS = ["methods", *VARIANTS, "ablations", "digits"]
# Config fields added after records were written, at the value that computes what they computed
# (RunRecords.added_later): the old records stay valid.
ADDED_LATER = {"sid_alpha": 1.0}
DIGITS = [("JS", {"divergence": "js"}), ("forward KL", {"divergence": "kl"})]
COLUMNS = [
    ("modes_covered", "modes covered (of 8)"),
    ("light_modes_covered", "3 lightest covered"),
    ("high_quality", "high quality"),
    ("weight_tv", "mode-weight TV"),
    ("mmd", "MMD²"),
    ("energy", "energy"),
    ("precision", "precision"),
    ("recall", "recall"),
]


def make_config(module, overrides, seed, stages, steps):
    config = importlib.import_module(module).get_config()
    config.update(overrides)
    config.train.seed = seed
    config.train.progress = False
    config.stages_dir = stages
    if steps:
        config.train.total_steps = steps
    return config


def run_records(root: str) -> RunRecords:
    """The table's committed records under ``root``."""
    return RunRecords(root, added_later=ADDED_LATER)


def run_one(module, overrides, seed, path, stages, steps, records, name, keep_samples=False):
    """One table run: its committed record (``records/<name>``) if there is one for this exact
    config; else the run finished in ``path`` (read back) or trained there, then recorded.
    Returns ``(summary, samples)``: the mixture's 5,000 evaluation samples (float16, for the
    figure) when ``keep_samples``, else ``None``."""
    logging.set_verbosity(logging.WARNING)
    config = make_config(module, overrides, seed, stages, steps)
    store = run_records(records)
    record = store.get(name, config)
    if record is not None and (not keep_samples or "arrays" in record):
        return record["summary"], record.get("arrays", {}).get("samples")
    summary = sweep.finished_summary(config, path)
    if summary is None:
        summary = sweep.wait_for_workdir(lambda: fdistill.run(config, path), path)
    samples = None
    if config.dataset == "mog":
        # Light modes: the three smallest mixture weights, covered if they hold >= 20% of their share.
        mix = fdistill._mixture(config)
        samples = np.load(io.BytesIO(paths.read_bytes(os.path.join(path, "samples.npy"))))
        stats = metrics.mode_statistics(samples, mix.means, mix.weights, std=float(np.max(mix.std)))
        weights = np.asarray(mix.weights)
        light = np.argsort(weights)[:3]
        expected = 0.2 * weights[light] * len(samples)
        summary["eval/light_modes_covered"] = float(
            np.sum(np.asarray(stats.counts)[light] >= expected)
        )
        samples = samples.astype(np.float16) if keep_samples else None
    store.put(name, config, summary, {"samples": samples} if samples is not None else None)
    return sweep.numbers(summary), samples


def table(rows, seeds, results, teacher_row=True) -> list[str]:
    lines = [
        "| method | " + " | ".join(name for _, name in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    if teacher_row:  # the teacher's own Heun samples (the same teacher for every method of a seed)
        first = rows[0]
        cells = []
        for key, _ in COLUMNS:
            values = [results[(first, s)].get(f"eval/teacher_{key}") for s in seeds]
            cells.append("—" if None in values else mean_std(values))
        lines.append("| *teacher (Heun, 35 evaluations)* | " + " | ".join(cells) + " |")
    for label in rows:
        cells = [
            mean_std([results[(label, s)][f"eval/{key}"] for s in seeds]) for key, _ in COLUMNS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def methods_section(results, panels, seeds, out) -> list[str]:
    """The main table over ``seeds`` and the figure of the first seed's samples (beside ``out``)."""
    mix = fdistill._mixture(make_config("configs.fdistill_mog", {}, seeds[0], "", 0))
    figure = os.path.splitext(out)[0] + "_samples.png"
    plots.scatter_grid(
        {k: np.asarray(v, np.float32) for k, v in panels.items()},
        figure,
        density_fn=lambda x: np.asarray(fdata.mixture_log_prob(mix, jnp.asarray(x))),
        extent=fdistill.plot_extent(mix),
        ncols=4,
    )
    weights = ", ".join(f"{w:.3f}" for w in np.asarray(mix.weights))
    steps = results[(METHODS[0][0], seeds[0])]["step"]
    return [
        "## Every method, the official update",
        "",
        f"Mixture weights {weights} (std 0.25, radius 4). Teacher: an EDM `ScoreMLP` denoiser "
        "(3 × 256) fitted to 20,000 samples, one per seed; the generator and the fake score "
        f"start as copies of it. {steps:,.0f} generator updates (f-distill: 4 critic updates "
        "each; SIM: 1). Metrics "
        "against 5,000 true samples, mean ± sample std over seeds "
        f"{', '.join(map(str, seeds))}: a mode is covered when it holds ≥ 20% of its expected "
        "count within 3 std; high quality = fraction of samples within 3 std of a mode; MMD² "
        "(RBF, bandwidths 0.1–5) and energy distance; k-NN (k = 5) precision / recall.",
        "",
        *table([m[0] for m in METHODS], seeds, results),
        "",
        f"![samples]({os.path.basename(figure)})",
        "",
        f"Samples of seed {seeds[0]} over the true density's contours: "
        f"`{os.path.basename(figure)}`.",
        "",
        *per_seed_section(results, seeds),
    ]


# Issue 11's bar for every method and seed: modes, energy distance, high quality.
BAR = {"modes_covered": 7, "energy": 0.1, "high_quality": 0.85}


def meets_bar(summary) -> bool:
    return (
        summary["eval/modes_covered"] >= BAR["modes_covered"]
        and summary["eval/energy"] <= BAR["energy"]
        and summary["eval/high_quality"] >= BAR["high_quality"]
    )


def per_seed_section(results, seeds, labels=None) -> list[str]:
    """Each method's (``labels``: every method's by default) modes / high quality / energy per
    seed, marked where it meets :data:`BAR`."""
    lines = [
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | seeds meeting the bar |",
        "|---" * (len(seeds) + 2) + "|",
    ]
    labels = labels or [m[0] for m in METHODS]
    teacher_hq = np.mean([results[(labels[0], s)]["eval/teacher_high_quality"] for s in seeds])
    for label in labels:
        cells, met = [], 0
        for s in seeds:
            r = results[(label, s)]
            ok = meets_bar(r)
            met += ok
            cells.append(
                f"{r['eval/modes_covered']:.0f} / {r['eval/high_quality']:.3f} / "
                f"{r['eval/energy']:.3f}{' ✓' if ok else ''}"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {met} of {len(seeds)} |")
    return [
        "### Per seed: modes covered / high quality / energy",
        "",
        f"✓: at least {BAR['modes_covered']} of 8 modes, energy ≤ {BAR['energy']} and high "
        f"quality ≥ {BAR['high_quality']} (the teacher's own samples: {teacher_hq:.3f} on average).",
        "",
        *lines,
        "",
    ]


def variant_label(label: str, part: str) -> str:
    return f"{label}, {VARIANTS[part].suffix}"


def variant_methods(part: str) -> list[tuple]:
    """The :data:`METHODS` entries the :data:`VARIANTS` ``part`` repeats."""
    only = VARIANTS[part].methods
    return [m for m in METHODS if not only or m[0] in only]


def variant_section(results, seeds, part) -> list[str]:
    """The main table again with the :data:`VARIANTS` ``part``, the per-seed bar beside it."""
    labels = [variant_label(m[0], part) for m in variant_methods(part)]
    return [
        f"## {VARIANTS[part].heading}",
        "",
        VARIANTS[part].text,
        "",
        *table(labels, seeds, results),
        "",
        *per_seed_section(results, seeds, labels),
    ]


def ablations_section(results, ablation_seeds) -> list[str]:
    return [
        f"## Ablations ({ABLATION_F.upper()}): each piece of the official update off alone",
        "",
        f"Seeds {', '.join(map(str, ablation_seeds))}; everything else as above.",
        "",
        *table([a[0] for a in ABLATIONS], ablation_seeds, results, teacher_row=False),
        "",
    ]


def digits_section(results, seed) -> list[str]:
    lines = [
        "| f | Fréchet distance | teacher's Heun samples | training images | classes present "
        "(≥ 2%) | class histogram (0–9) |",
        "|---|---|---|---|---|---|",
    ]
    for label, _ in DIGITS:
        summary = results[(label, "digits")]
        histogram = " ".join(f"{summary[f'eval/class_{k}']:.2f}" for k in range(10))
        lines.append(
            f"| {label} | {summary['eval/frechet']:.2f} | {summary['eval/teacher_frechet']:.2f}"
            f" | {summary['eval/data_frechet']:.2f} | {summary['eval/classes_present']:.0f} "
            f"| {histogram} |"
        )
    return [
        "## Digits (8 × 8, `configs/fdistill_digits.py`, seed " + str(seed) + ")",
        "",
        "Fréchet distance in the hidden layer of an MLP classifier against the 360 test "
        "images; the class histogram is that classifier's prediction on 1,000 generated "
        "digits.",
        "",
        *lines,
        "",
    ]


def jobs_of(args, seeds, ablation_seeds, parts) -> list[tuple]:
    """Every run of the requested parts as ``(key, run_one's arguments)``; the methods' runs
    ordered seed-innermost, so that parallel workers train different seeds' teachers at once."""

    def job(key, module, overrides, seed, where, name, keep=False):
        stages = os.path.join(args.workdir, where, "stages")
        path = os.path.join(args.workdir, where, name)
        steps = args.steps if where != "digits" else 0
        return key, (module, overrides, seed, path, stages, steps, args.records, f"{where}/{name}", keep)  # fmt: skip

    jobs = []
    if "methods" in parts:
        for label, module, overrides in METHODS:
            for seed in seeds:
                jobs.append(job((label, seed), module, overrides, seed, f"seed{seed}", slug(label), seed == seeds[0]))  # fmt: skip
    for part in (p for p in parts if p in VARIANTS):
        variant = VARIANTS[part]
        for label, module, overrides in variant_methods(part):
            for seed in seeds:
                jobs.append(job((variant_label(label, part), seed), module, {**overrides, **variant.overrides}, seed, f"seed{seed}", variant.prefix + slug(label)))  # fmt: skip
    if "ablations" in parts:
        official = next(label for label, _, o in METHODS if o.get("divergence") == ABLATION_F)
        for label, overrides in ABLATIONS:
            for seed in ablation_seeds:
                # the official row is the main table's run of that f
                name = slug(official) if not overrides else "ablation_" + slug(label)
                jobs.append(job((label, seed), "configs.fdistill_mog", {"divergence": ABLATION_F, **overrides}, seed, f"seed{seed}", name))  # fmt: skip
    if "digits" in parts:
        for label, overrides in DIGITS:
            jobs.append(job((label, "digits"), "configs.fdistill_digits", overrides, seeds[0], "digits", slug(label)))  # fmt: skip
    unique = {}
    for key, arguments in jobs:  # the official ablation row and the JS row are one run
        unique.setdefault(arguments[7], (key, arguments))
    return jobs, list(unique.values())


def document(args, sections, minutes: float, run_seconds: float) -> str:
    """``results/diffusion.md``: how it was produced, then ``sections``."""
    command = (
        f"python -m experiments.diffusion_table --workdir={args.workdir} --out={args.out} "
        f"--records={args.records} --seeds={args.seeds} --ablation_seeds={args.ablation_seeds} "
        f"--parts={args.parts}"
    )
    if args.steps:
        command += f" --steps={args.steps}"
    return "\n".join(
        [
            "# One-step diffusion distillation: the official updates on a 2-D mixture and digits",
            "",
            f"Produced by `{command}` ({minutes:.1f} min to assemble on {machine()}; the runs "
            f"themselves took {run_seconds / 60:.0f} min of training, summed over runs; each "
            f"run's record, with the machine it ran on, is in `{args.records}/`: recorded runs "
            "are read back, not retrained). The update is NVlabs FastGen's f-distill "
            "(x0-space, per-sample `mean|x − x̂_teacher|` normaliser, GAN term 1e-3, generator and "
            "fake score initialised from the teacher) and SiD's weighting for SIM; the parity "
            "table is in `experiments/README.md`.",
            "",
            *sections,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/diffusion_table")
    parser.add_argument("--out", default="results/diffusion.md")
    parser.add_argument("--records", default="results/diffusion_runs", help="committed per-run records (see _tables.RunRecords)")  # fmt: skip
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ablation_seeds", default="0")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default="", help="run (or read back) only the records whose name contains this; write no table")  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=0, help="override total_steps (0: the configs')"
    )
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    ablation_seeds = [int(s) for s in args.ablation_seeds.split(",")]
    parts = args.parts.split(",")
    if unknown := [p for p in parts if p not in PARTS]:
        parser.error(f"unknown --parts {unknown}; known: {', '.join(PARTS)}")
    jobs, unique = jobs_of(args, seeds, ablation_seeds, parts)
    if args.only:
        unique = [(k, a) for k, a in unique if args.only in a[7]]
    by_name = {}
    start = time.time()

    def done(i, job, result, seconds):
        by_name[job[7]] = result
        print(f"[{i}/{len(unique)}] {job[7]} ({seconds:.0f} s)", flush=True)

    sweep.run_jobs(run_one, [a for _, a in unique], args.workers, done)
    if args.only:
        return
    results = {key: by_name[a[7]][0] for key, a in jobs}
    panels = {key[0]: by_name[a[7]][1] for key, a in jobs if a[8]}
    run_seconds = sum(by_name[a[7]][0].get("wall_seconds", 0.0) for _, a in unique)
    sections = []
    if "methods" in parts:
        sections += methods_section(results, panels, seeds, args.out)
    for part in (p for p in parts if p in VARIANTS):
        sections += variant_section(results, seeds, part)
    if "ablations" in parts:
        sections += ablations_section(results, ablation_seeds)
    if "digits" in parts:
        sections += digits_section(results, seeds[0])
    minutes = (time.time() - start) / 60
    text = document(args, sections, minutes, run_seconds)
    write(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
