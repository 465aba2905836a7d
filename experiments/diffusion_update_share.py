"""Where a finished mixture run's generator update goes: samples on a mode vs between modes.

    python -m experiments.diffusion_update_share runs/diffusion_table/seed0/forward_kl ...

For the final raw generator weights of each run (the ones the next update would change; not an
EMA): ``n`` generator samples ``x_i``, each noised at a level drawn from the run's own
distribution, and the per-sample update of the distribution-matching loss
``g_i = d loss / d x_i`` exactly as in training (f-distill: with its weight ``h_i``, batch
normalised; SIM: ``h ≡ 1``). A sample is *off* when it lies more than 3 std from every mode
(the complement of ``eval/high_quality``). Printed per run (:func:`update_by_region`):

- ``off``: the fraction of samples off every mode;
- ``h ratio``: mean ``h`` over the off samples / mean ``h`` over all;
- ``push ratio``: the off samples' share of ``Σ_i ||g_i||`` / their share of samples, i.e. the mean
  update size of an off sample relative to the average sample (1: no preference; < 1: samples
  between modes are pulled less than the rest).

Where the run has a GAN term (``gan_weight > 0``), also the GAN loss's own per-sample gradient
``a_i = gan_weight · d mean_j softplus(-D(x_t,j)) / d x_i`` beside the distribution-matching one as
the loss reduces it, ``g_i / (n · numel)`` (:func:`gan_to_dm`):

- ``GAN/DM``: ``||a||_F / ||g / (n · numel)||_F`` over the batch;
- ``GAN push ratio``: the push ratio of ``a``.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import ml_collections
import numpy as np

from experiments import fdistill
from fdiv import diffusion, metrics
from fdiv.losses import diffusion as dl
from fdiv.train import checkpoint, paths


def update_by_region(g: np.ndarray, h: np.ndarray, off: np.ndarray) -> dict[str, float]:
    """``off``, ``h_ratio`` and ``push_ratio`` (module docstring) of per-sample updates ``g [n, d]``,
    weights ``h [n]`` and the mask ``off [n]`` (NaN ratios when no sample is off)."""
    g, h, off = np.asarray(g, np.float64), np.asarray(h, np.float64), np.asarray(off, bool)
    norms = np.linalg.norm(g.reshape(len(g), -1), axis=-1)
    fraction = float(np.mean(off))
    if not off.any():
        return {"off": 0.0, "h_ratio": float("nan"), "push_ratio": float("nan")}
    return {
        "off": fraction,
        "h_ratio": float(np.mean(h[off]) / np.mean(h)),
        "push_ratio": float(np.sum(norms[off]) / np.sum(norms) / fraction),
    }


def gan_to_dm(g: np.ndarray, a: np.ndarray, off: np.ndarray, numel: int) -> dict[str, float]:
    """``gan_dm`` and ``gan_push_ratio`` (module docstring) of the distribution-matching updates
    ``g [n, d]`` (``d loss_i / d x_i``, before the loss's mean) and the GAN term's ``a [n, d]``."""
    g, a = np.asarray(g, np.float64), np.asarray(a, np.float64)
    dm = g / (len(g) * numel)
    return {
        "gan_dm": float(np.linalg.norm(a) / np.linalg.norm(dm)),
        "gan_push_ratio": update_by_region(a, np.ones(len(a)), off)["push_ratio"],
    }


def measure(workdir: str, n: int = 5000, seed: int = 0) -> dict[str, float]:
    """:func:`update_by_region` of the mixture run finished in ``workdir`` (its latest checkpoint)."""
    config = ml_collections.ConfigDict(json.loads(paths.read_text(os.path.join(workdir, "config.json"))))  # fmt: skip
    if config.dataset != "mog":
        raise ValueError(f"{workdir} is a {config.dataset!r} run; the modes are the mixture's")
    setting = fdistill.mixture_setting(config, workdir)  # loads the teacher stage
    run = fdistill.Distillation(config, setting)
    state = checkpoint.load_arrays(os.path.join(workdir, "checkpoints"))
    params, model_state = state["params"], dict(state.get("model_state", {}))
    if "ratio_stats" in model_state:  # restored as a plain dict
        model_state["ratio_stats"] = dl.RatioStats(**model_state["ratio_stats"])
    kz, ks, ke = jax.random.split(jax.random.key(seed), 3)
    x = run.generate(params, jax.random.normal(kz, (n, *setting.shape)))
    sigma = fdistill.sample_sigma(ks, n, config)
    eps = jax.random.normal(ke, x.shape)
    if config.method == "sim":
        _, g, _, _ = run.sim_generator(params, x, sigma, eps)
    else:
        _, g, _, _ = run.fdistill_generator(params, model_state, x, sigma, eps)
    logit = a = None
    if run.use_discriminator:
        # One discriminator pass gives the logits (for h) and the GAN term's gradient on x.
        def gan(xx):
            logit, loss = run.gan_term(params, diffusion.add_noise(xx, sigma, eps), sigma, {})
            return config.gan_weight * loss, logit

        a, logit = jax.grad(gan, has_aux=True)(x)
    h = np.asarray(run.ratio_weight(logit, sigma, model_state)[0]) if run.uses_ratio else np.ones(n)
    mix = fdistill._mixture(config)
    _, inside = metrics.mode_assignment(x, mix.means, std=float(np.max(mix.std)))
    off = ~np.asarray(inside)
    result = update_by_region(np.asarray(g), h, off)
    if a is not None and config.gan_weight > 0:
        result.update(gan_to_dm(np.asarray(g), np.asarray(a), off, run.numel))
    return result


def summary_at(workdir: str, step: int) -> dict[str, float]:
    """The run's evaluation summary (``eval/*`` without the prefix) recomputed from its checkpoint at
    ``step`` with the run's own evaluation noise: how much the final figures move between two
    checkpoints of one run (the trainer keeps the last two)."""
    config = ml_collections.ConfigDict(json.loads(paths.read_text(os.path.join(workdir, "config.json"))))  # fmt: skip
    task, setting = fdistill.build_task(config, workdir)
    state = checkpoint.load_arrays(os.path.join(workdir, "checkpoints"), step)
    z, _ = task.eval_data.get(np.arange(len(task.eval_data)))
    samples = task.predict(state["params"], dict(state.get("model_state", {})), {"inputs": z})
    return setting.summarize(np.asarray(samples["samples"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality_at", type=int, default=0, help="print instead each run's high quality at this checkpoint step (summary_at) beside its final one")  # fmt: skip
    args = parser.parse_args()
    if args.quality_at:
        print("| run | high quality at", args.quality_at, "| final |\n|---|---|---|")
        for workdir in args.workdirs:
            at = summary_at(workdir, args.quality_at)["high_quality"]
            final = json.loads(paths.read_text(os.path.join(workdir, "summary.json")))["eval/high_quality"]  # fmt: skip
            print(f"| {workdir} | {at:.3f} | {final:.3f} |", flush=True)
        return
    print(
        "| run | off | h ratio | push ratio | GAN/DM | GAN push ratio |\n|---|---|---|---|---|---|"
    )
    for workdir in args.workdirs:
        r = measure(workdir, args.n, args.seed)
        gan = " | ".join(f"{r[k]:.3f}" if k in r else "—" for k in ("gan_dm", "gan_push_ratio"))
        print(f"| {workdir} | {r['off']:.3f} | {r['h_ratio']:.3f} | {r['push_ratio']:.3f} | {gan} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
