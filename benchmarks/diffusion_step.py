"""Steps/s of the jitted one-step distillation step on the mixture config, and where the time goes.

    python -m benchmarks.diffusion_step                      # f-distill JS, DMD, SIM
    python -m benchmarks.diffusion_step --steps 200 --repeats 5

One step = ``critic_steps`` critic updates (fake denoiser, plus for f-distill the discriminator
head on the teacher's features) and one generator update (for f-distill with the GAN term through
the teacher's features), built exactly as the trainer builds it. The critic and generator updates are also timed alone (each as its own jitted
step on the same state), which gives their share of the full step.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile

import jax

from benchmarks._harness import time_interleaved
from experiments import fdistill
from fdiv.data import train_indices
from fdiv.train import init_state, make_train_step, parallel
from fdiv.train.loop import local_batch

# (config module, overrides)
VARIANTS = {
    "f-distill JS": ("configs.fdistill_mog", {"divergence": "js"}),
    "f-distill forward KL": ("configs.fdistill_mog", {"divergence": "kl"}),
    "DMD2 (reverse KL)": ("configs.fdistill_mog", {"divergence": "reverse_kl"}),
    "DMD2 without GAN term": (
        "configs.fdistill_mog",
        {"divergence": "reverse_kl", "gan_weight": 0.0},
    ),  # fmt: skip
    "SIM pseudo-Huber": ("configs.sim_mog", {"distance": "pseudo_huber"}),
}


def steps_per_second(task, updates, batch, mesh, steps: int):
    replicated = parallel.replicated(mesh)

    def init(key):
        params, model_state = task.init(key)
        return init_state(key, params, model_state, task.optimizers)

    state = jax.jit(init, out_shardings=replicated)(jax.random.key(0))
    step = jax.jit(
        make_train_step(updates, task.optimizers),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
    )
    holder = {"state": state}

    def loop():
        s = holder["state"]
        for _ in range(steps):
            s, metrics = step(s, batch)
        jax.block_until_ready(metrics)
        holder["state"] = s

    return loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    mesh = parallel.make_data_mesh()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device(s)); "
          f"{args.steps} steps x {args.repeats} repeats, medians")  # fmt: skip
    rows = ["| variant | full step (steps/s) | critic updates alone (ms) | generator update alone (ms) | critic share | generator share |", "|---|---|---|---|---|---|"]  # fmt: skip
    stages = tempfile.mkdtemp(prefix="diffusion_step_")  # one throwaway teacher for every variant
    for name in args.variants.split(","):
        module, overrides = VARIANTS[name]
        config = importlib.import_module(module).get_config()
        config.update(overrides)
        config.stages_dir, config.teacher.steps = stages, 10  # its quality is not timed
        task, _ = fdistill.build_task(config)
        indices = train_indices(
            0, num_examples=len(task.train_data), batch_size=config.train.batch_size, seed=0
        )
        batch = parallel.global_batch(local_batch(task.train_data, indices), mesh)
        critic, generator = task.updates
        loops = {
            "full": steps_per_second(task, task.updates, batch, mesh, args.steps),
            "critic": steps_per_second(task, [critic], batch, mesh, args.steps),
            "generator": steps_per_second(task, [generator], batch, mesh, args.steps),
        }
        seconds = {
            k: v / args.steps for k, v in time_interleaved(loops, repeats=args.repeats).items()
        }
        parts = seconds["critic"] + seconds["generator"]
        rows.append(
            f"| {name} | {1 / seconds['full']:,.0f} | {seconds['critic'] * 1e3:.2f} | "
            f"{seconds['generator'] * 1e3:.2f} | {seconds['critic'] / parts:.0%} | {seconds['generator'] / parts:.0%} |"
        )
    print("\n".join(rows))
    print(f"(batch {config.train.batch_size}, {config.critic_steps} critic updates per generator update; "
          f"shares are of the critic + generator times measured alone)")  # fmt: skip


if __name__ == "__main__":
    main()
