"""The trainer's jitted KD step on the 8x8 digits vs the same step in PyTorch eager, steps/s.

    python -m benchmarks.train_step                          # vanilla, dml, bdkd; MLP networks
    python -m benchmarks.train_step --model cnn --steps 20 --repeats 3 --no-profile
    python -m benchmarks.train_step --methods vanilla --torch-threads default,1   # PyTorch's own
                                                              # thread count as well as 1 thread

Sizes are ``configs/kd_digits.py``'s: teacher MLP (256, 256), student MLP (16,), batch 64, adam
lr 3e-3 with the config's cosine schedule, temperature 4, ``kd_weight`` 1, BD-KD ``kappa`` 1 and
teacher weight 0.1. ``--model cnn`` makes both networks ``fdiv.models.CNN`` through the config's
network spec (teacher channels (32, 64), hidden 128; student (8, 16), hidden 32).

JAX: the step is built as ``fdiv.train.train`` builds it (``experiments.kd``'s loss and
optimisers, ``make_train_step``, ``jax.jit(..., donate_argnums=0, out_shardings=(replicated,
replicated))``, the state replicated on ``parallel.make_data_mesh()``), XLA's CPU defaults.
PyTorch: ``nn.Linear`` / ``nn.Conv2d`` stacks of the same widths, the same loss math
(``log_softmax`` cross-entropy, ``tau^2 KL(p_tau || q_tau)`` via ``F.kl_div(log q, log p,
log_target=True)``, reverse KL and the BD-KD entropy weight written out), ``torch.optim.Adam``
with the same cosine ``LambdaLR``; for offline KD the teacher runs in eval mode under
``torch.no_grad()``. ``--torch-threads`` sets PyTorch's intra-op threads (default 1: what the JAX
MLP steps keep busy, see the "cores busy" column; ``default`` is PyTorch's own choice).

Three ways of feeding each step, all timed:
- "feed": per step, on the host before the step is dispatched: ``fdiv.data.train_indices`` of
  the step, ``Dataset.get`` of them (the loop's ``local_batch``), then ``parallel.global_batch``
  (JAX) or ``torch.from_numpy`` (+ int64 labels, PyTorch);
- "feed, prefetched" (JAX): the same batches built one step ahead on a background thread while
  the step runs, with the trainer's ``fdiv.train.loop.Prefetcher`` (what ``fdiv.train.train``
  does);
- "resident": one batch made once, already a device array / tensor, fed to every step.

Without PyTorch installed (or with ``--no-torch``) only the JAX variants run:
``python -m benchmarks.train_step --methods vanilla --no-profile --no-torch``.

Each repeat runs ``--steps`` steps of every variant, round-robin (``_harness.time_interleaved``),
after one warm-up (compiling) run of each; the table has the medians, the feeds' own per-step cost
and the CPU time / wall time of the resident loops ("cores busy"). XLA compilations during the
timed repeats are counted (``jax.monitoring``). Before timing, both frameworks start from the same
weights (the JAX initial parameters copied into the torch modules) and run 3 steps on the same
batches: the largest loss and parameter differences are printed. Last, a profile of the JAX step
(``jax_profile``): the computation alone in one ``lax.scan``, one dispatch of a no-op, and the
step with the feed's parts added one at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from benchmarks import _harness as h
from configs import kd_digits
from configs._kd_common import network
from experiments import kd
from fdiv import data as fdata
from fdiv.train import Update, init_state, make_train_step, optim, parallel
from fdiv.train.loop import Prefetcher, local_batch

METHODS = ("student", "vanilla", "dml", "bdkd")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def make_config(method: str, batch_size: int, model: str):
    config = kd_digits.get_config()
    config.method = method
    config.train.batch_size = batch_size
    if model == "cnn":
        config.teacher = network("cnn")
        config.student = network("cnn", cnn_channels=(8, 16), cnn_hidden=32)
    kd.validate(config)
    return config


# ---------------------------------------------------------------------------------------------
# JAX: the trainer's step.


class JaxStep:
    """The trainer's jitted step for ``config.method`` and its host-side batch pipeline."""

    def __init__(self, config, data):
        self.config, self.data = config, data
        nets = kd.Networks(
            {
                name: kd._model(config[name], num_classes=data.num_classes)
                for name in ("teacher", "student")
            },
            data.input_shape,
        )
        total = config.train.total_steps
        if config.method in kd.ONLINE:
            update = Update("online", kd.online_loss_fn(config, nets), ("student", "teacher"))
            optimizers = {
                "student": optim.from_config(config.optimizer, total),
                "teacher": optim.from_config(config.teacher_optimizer, total),
            }
        else:
            update = Update("student", kd.student_loss_fn(config, nets), ("student",))
            optimizers = {"student": optim.from_config(config.optimizer, total)}
        self.mesh = parallel.make_data_mesh()
        replicated = parallel.replicated(self.mesh)

        def init(key):
            # Offline KD's teacher is random here (the trainer pre-trains it): same shapes, same cost.
            params, model_state = nets.init(key, ["student", "teacher"])
            return init_state(key, params, model_state, optimizers)

        self.init = jax.jit(init, out_shardings=replicated)
        self.train_step = make_train_step([update], optimizers)
        self.step = jax.jit(
            self.train_step,
            donate_argnums=0,
            out_shardings=(replicated, replicated),
        )

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        indices = fdata.train_indices(
            step,
            num_examples=len(self.data),
            batch_size=self.config.train.batch_size,
            seed=self.config.train.seed,
        )
        return local_batch(self.data, indices)

    def batch(self, step: int) -> dict[str, jax.Array]:
        return parallel.global_batch(self.host_batch(step), self.mesh)


# ---------------------------------------------------------------------------------------------
# PyTorch eager: the same networks, losses and optimisers.


def torch_module(net_config, input_shape, num_classes):
    import torch.nn as nn

    if net_config.model == "mlp":
        widths = [int(np.prod(input_shape)), *net_config.mlp.hidden]
        layers = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))
    if net_config.model != "cnn" or net_config.cnn.batch_norm:
        raise ValueError(f"no PyTorch twin for {net_config.model} (batch norm: off only)")
    *spatial, channels = input_shape
    layers = []
    for features in net_config.cnn.channels:
        layers += [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU()]
        if all(s >= 4 for s in spatial):  # fdiv's CNN pools every dim of size >= 4 (2-D here)
            layers.append(nn.MaxPool2d(2))
            spatial = [s // 2 for s in spatial]
        channels = features
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(channels * int(np.prod(spatial)), net_config.cnn.hidden),
        nn.ReLU(),
        nn.Linear(net_config.cnn.hidden, num_classes),
    )


def copy_flax_params(module, params) -> None:
    """Load flax params (``Dense_i`` kernel ``[in, out]``, ``Conv_i`` ``[kh, kw, in, out]``) into
    the matching ``nn.Linear`` (``[out, in]``) / ``nn.Conv2d`` (``[out, in, kh, kw]``) layers.

    The first Linear after convolutions gets its input rows reordered from flax's channels-last
    flatten ``(h, w, c)`` to PyTorch's ``(c, h, w)``.
    """
    import torch
    import torch.nn as nn

    params = jax.tree.map(np.array, params)  # writable copies for torch.from_numpy
    convs = [m for m in module if isinstance(m, nn.Conv2d)]
    linears = [m for m in module if isinstance(m, nn.Linear)]
    last_conv_hw = None
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(torch.from_numpy(params[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)))
            conv.bias.copy_(torch.from_numpy(params[f"Conv_{i}"]["bias"]))
        if convs:
            channels = convs[-1].out_channels
            last_conv_hw = linears[0].in_features // channels
        for i, linear in enumerate(linears):
            kernel = params[f"Dense_{i}"]["kernel"]
            if i == 0 and last_conv_hw is not None:
                side = int(round(last_conv_hw**0.5))
                kernel = kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3)
                kernel = kernel.reshape(linear.in_features, -1)
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
            linear.bias.copy_(torch.from_numpy(params[f"Dense_{i}"]["bias"]))


class TorchStep:
    """PyTorch eager twin of :class:`JaxStep`: ``step(x, y) -> loss`` (a detached tensor)."""

    def __init__(self, config, data, params=None):
        import torch

        self.config = config
        self.cnn = config.student.model == "cnn"
        self.nets = {
            name: torch_module(config[name], data.input_shape, data.num_classes)
            for name in ("teacher", "student")
        }
        if params is not None:
            for name, module in self.nets.items():
                copy_flax_params(module, params[name])
        trained = ["student", "teacher"] if config.method in kd.ONLINE else ["student"]
        total = config.train.total_steps
        self.optimizers, self.schedules = [], []
        for name in trained:
            opt = config.teacher_optimizer if name == "teacher" else config.optimizer
            if opt.name != "adam" or opt.warmup_steps or opt.weight_decay or opt.clip_norm:
                raise ValueError("the PyTorch twin mirrors plain adam only")
            optimizer = torch.optim.Adam(self.nets[name].parameters(), lr=opt.learning_rate)
            self.optimizers.append(optimizer)
            if opt.schedule == "cosine":  # optax.cosine_decay_schedule(lr, total), alpha 0
                decay = lambda s, total=total: 0.5 * (1 + np.cos(np.pi * min(s, total) / total))
                self.schedules.append(torch.optim.lr_scheduler.LambdaLR(optimizer, decay))
        self.nets["teacher"].train(config.method in kd.ONLINE)
        self.nets["student"].train()

    def tensors(self, batch: dict[str, np.ndarray]):
        import torch

        x = torch.from_numpy(batch["inputs"])
        if self.cnn:
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW (a view)
        return x, torch.from_numpy(batch["labels"]).long()

    def step(self, x, y):
        import torch
        import torch.nn.functional as F

        c = self.config
        tau, student, teacher = c.temperature, self.nets["student"], self.nets["teacher"]

        def ce(logits):
            return -F.log_softmax(logits, -1).gather(1, y[:, None])[:, 0]

        def log_soft(logits):
            return F.log_softmax(logits / tau, -1)

        def kl(log_p, log_q):  # tau^2 KL(P || Q) per example
            return tau**2 * F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)

        if c.method in ("student", "vanilla"):
            s = student(x)
            loss = ce(s)
            if c.method == "vanilla":
                with torch.no_grad():
                    t = teacher(x)
                loss = loss + c.kd_weight * kl(log_soft(t), log_soft(s))
            loss = loss.mean()
        else:
            s, t = student(x), teacher(x)
            ls, lt = log_soft(s), log_soft(t)
            ls_d, lt_d = ls.detach(), lt.detach()
            if c.method == "dml":
                s_loss = ce(s) + c.kd_weight * kl(lt_d, ls)
                t_loss = ce(t) + c.kd_weight * kl(ls_d, lt)
            else:  # bdkd
                entropy = lambda lp: -(lp.exp() * lp).sum(-1)
                w = torch.sigmoid(c.bdkd.kappa * (entropy(lt_d) - entropy(ls_d)))
                reverse = tau**2 * (ls.exp() * (ls - lt_d)).sum(-1)  # KL(Q || P), grad via Q
                s_loss = ce(s) + c.kd_weight * (w * kl(lt_d, ls) + (1 - w) * reverse)
                t_loss = ce(t) + c.bdkd.teacher_kd_weight * kl(ls_d, lt)
            loss = s_loss.mean() + t_loss.mean()
        for optimizer in self.optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        for schedule in self.schedules:
            schedule.step()
        return loss.detach()


# ---------------------------------------------------------------------------------------------
# Equivalence check and timing.


def equivalence(jx: JaxStep, steps: int = 3) -> tuple[float, float]:
    """Max |loss difference| over ``steps`` steps from the same weights on the same batches, and
    max |parameter difference| after them."""
    import torch

    config, data = jx.config, jx.data
    state = jx.init(jax.random.key(config.train.seed))
    tx = TorchStep(config, data, params=parallel.to_host(state.params))
    loss_diff = 0.0
    for s in range(steps):
        batch = jx.host_batch(s)
        state, metrics = jx.step(state, parallel.global_batch(batch, jx.mesh))
        torch_loss = float(tx.step(*tx.tensors(batch)))
        loss_diff = max(loss_diff, abs(float(metrics["loss"]) - torch_loss))
    jax_after = TorchStep(config, data, params=parallel.to_host(state.params))
    param_diff = 0.0
    for name, module in tx.nets.items():
        for a, b in zip(module.parameters(), jax_after.nets[name].parameters(), strict=True):
            param_diff = max(param_diff, float(torch.max(torch.abs(a.detach() - b.detach()))))
    return loss_diff, param_diff


class Counter:
    """Counts XLA compilations (``jax.monitoring`` backend-compile events) while ``active``."""

    def __init__(self):
        self.active, self.count = False, 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event == COMPILE_EVENT:
            self.count += 1


def measure(jx: JaxStep, steps: int, repeats: int, threads, compiles: Counter) -> list[dict]:
    """Steps/s of each variant (median over repeats), per-step cost of each feed alone and the
    CPU time / wall time of the resident-batch loops (how many cores each framework keeps busy),
    once per PyTorch thread count in ``threads`` (JAX measured alongside every time).
    ``threads=None``: JAX alone (PyTorch not installed, or ``--no-torch``)."""
    config, data = jx.config, jx.data
    holder = {"state": jx.init(jax.random.key(config.train.seed)), "step": 0}
    resident_jax = jx.batch(0)
    if threads is not None:
        import torch

        tx = TorchStep(config, data, params=parallel.to_host(holder["state"].params))
        resident_torch = tx.tensors(jx.host_batch(0))

    def next_steps():
        start = holder["step"]
        holder["step"] += steps
        return range(start, start + steps)

    def jax_feed():
        state = holder["state"]
        for s in next_steps():
            state, _ = jx.step(state, jx.batch(s))
        holder["state"] = state
        return state

    def jax_prefetched():  # the trainer's loop: the next batch built while the step runs
        state = holder["state"]
        todo = next_steps()
        with Prefetcher(jx.batch, todo) as prefetch:
            for s in todo:
                state, _ = jx.step(state, prefetch.get(s))
        holder["state"] = state
        return state

    def jax_resident():
        state = holder["state"]
        for _ in range(steps):
            state, _ = jx.step(state, resident_jax)
        holder["state"] = state
        return state

    def torch_feed():
        for s in next_steps():
            loss = tx.step(*tx.tensors(jx.host_batch(s)))
        return loss

    def torch_resident():
        for _ in range(steps):
            loss = tx.step(*resident_torch)
        return loss

    def jax_feed_only():
        return [jx.batch(s) for s in next_steps()][-1]

    def torch_feed_only():
        return [tx.tensors(jx.host_batch(s)) for s in next_steps()][-1]

    fns = {
        "jax_feed": jax_feed,
        "jax_prefetched": jax_prefetched,
        "torch_feed": torch_feed,
        "jax_resident": jax_resident,
        "torch_resident": torch_resident,
        "jax_feed_only": jax_feed_only,
        "torch_feed_only": torch_feed_only,
    }
    if threads is None:
        fns = {k: v for k, v in fns.items() if not k.startswith("torch")}
    cpu = {}

    def cpu_timed(name, fn):
        def go():
            start = time.process_time()
            out = jax.block_until_ready(fn())
            cpu.setdefault(name, []).append(time.process_time() - start)
            return out

        return go

    fns = {name: cpu_timed(name, fn) for name, fn in fns.items()}
    jax_resident()  # compile before counting compilations
    default_threads = None if threads is None else torch.get_num_threads()
    rows = []
    for n in [None] if threads is None else threads:
        if n is not None:
            torch.set_num_threads(n)
        cpu.clear()
        compiles.active = True
        seconds = h.time_interleaved(fns, repeats=repeats)
        compiles.active = False
        row = {"torch_threads": n}
        for name in ("jax_resident", "torch_resident", "jax_feed", "jax_prefetched"):
            if name in seconds:
                row[f"{name}_cores"] = statistics.median(cpu[name][1:]) / seconds[name]
        row.update({k: steps / v for k, v in seconds.items() if not k.endswith("feed_only")})
        row.update({k: 1e6 * v / steps for k, v in seconds.items() if k.endswith("feed_only")})
        rows.append(row)
    if default_threads is not None:
        torch.set_num_threads(default_threads)
    return rows


def jax_profile(jx: JaxStep, steps: int, repeats: int) -> dict[str, float]:
    """Where a JAX step's time goes, microseconds per step (medians over repeats, interleaved):

    - ``in_xla``: ``steps`` steps inside one jitted ``lax.scan``, each on its own batch (so nothing
      is hoisted out of the loop): the computation alone, no per-step dispatch;
    - ``noop``: a jitted identity on the same state and batch, the state donated: one dispatch of
      this pytree alone;
    - ``resident``: the jitted step, one call per step, the batches already on the device;
    - ``host``: as ``resident`` plus the host half of the trainer's feed (``train_indices`` and
      ``Dataset.get``), whose result is dropped;
    - ``feed``: the trainer's loop, the host half plus ``parallel.global_batch`` of its result;
    - ``numpy``: the host half's numpy arrays passed to the jitted step as they are (jit moves them
      to the device itself; single-process only).
    """
    holder = {"state": jx.init(jax.random.key(jx.config.train.seed)), "step": 0}
    host = [jx.host_batch(s) for s in range(steps)]
    batches = [parallel.global_batch(b, jx.mesh) for b in host]
    stacked = jax.device_put({k: np.stack([b[k] for b in host]) for k in host[0]})

    def scan(state, stacked):
        return jax.lax.scan(lambda s, b: (jx.train_step(s, b)[0], None), state, stacked)[0]

    in_xla = jax.jit(scan, donate_argnums=0)
    noop = jax.jit(lambda state, batch: (state, batch["labels"][0]), donate_argnums=0)

    def per_step(fn, feed):
        def go():
            state = holder["state"]
            for i in range(steps):
                holder["step"] += 1
                state = fn(state, feed(i, holder["step"]))[0]
            holder["state"] = state
            return state

        return go

    def scanned():
        holder["state"] = in_xla(holder["state"], stacked)
        return holder["state"]

    fns = {
        "in_xla": scanned,
        "noop": per_step(noop, lambda i, s: batches[i]),
        "resident": per_step(jx.step, lambda i, s: batches[i]),
        "host": per_step(jx.step, lambda i, s: (jx.host_batch(s), batches[i])[1]),
        "feed": per_step(jx.step, lambda i, s: jx.batch(s)),
        "numpy": per_step(jx.step, lambda i, s: jx.host_batch(s)),
    }
    return {k: 1e6 * v / steps for k, v in h.time_interleaved(fns, repeats=repeats).items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--methods", default="vanilla,dml,bdkd", help=f"any of {METHODS}")
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--steps", type=int, default=100, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--torch-threads",
        default="1",
        help="comma-separated PyTorch intra-op thread counts, one table row each ('default': "
        "PyTorch's own choice, the number of cores)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the equivalence check")
    parser.add_argument("--no-profile", action="store_true", help="skip the JAX step profile")
    parser.add_argument(
        "--no-torch", action="store_true", help="JAX only (also when PyTorch is not installed)"
    )
    args = parser.parse_args()

    methods = args.methods.split(",")
    for method in methods:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: JAX alone (as with --no-torch)")
    if torch is None:
        threads, args.no_check, torch_text = None, True, "no torch"
    else:
        default_threads = torch.get_num_threads()
        threads = [
            default_threads if t == "default" else int(t) for t in args.torch_threads.split(",")
        ]
        threads = list(dict.fromkeys(threads))
        torch_text = f"torch {torch.__version__} (default {default_threads} intra-op threads)"
    data = fdata.load("digits", "train")
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device, XLA "
        f"CPU defaults), {torch_text}, "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, load average "
        f"{os.getloadavg()[0]:.1f}; digits train ({len(data)} examples), batch {args.batch_size}, "
        f"model {args.model}, {args.steps} steps x {args.repeats} repeats (medians)"
    )
    compiles = Counter()
    jax_steps = {m: JaxStep(make_config(m, args.batch_size, args.model), data) for m in methods}
    if not args.no_check:
        for method in methods:
            loss_diff, param_diff = equivalence(jax_steps[method])
            print(
                f"equivalence {method}: 3 steps from the same weights on the same batches, max "
                f"|loss diff| {loss_diff:.1e}, max |param diff| {param_diff:.1e}"
            )
    if threads is None:
        print(
            "| method | JAX steps/s (feed) | JAX steps/s (feed, prefetched) | prefetched / feed "
            "| JAX steps/s (resident) | feed µs/step | cores busy feed / prefetched / resident |"
        )
        print("|---|---|---|---|---|---|---|")
    else:
        print(
            "| method | torch threads | JAX steps/s (feed) | JAX steps/s (feed, prefetched) "
            "| PyTorch steps/s (feed) | ratio | JAX steps/s (resident) "
            "| PyTorch steps/s (resident) | ratio | feed µs/step JAX | feed µs/step PyTorch "
            "| cores busy JAX / PyTorch |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        for r in measure(jax_steps[method], args.steps, args.repeats, threads, compiles):
            if threads is None:
                print(
                    f"| {method} | {r['jax_feed']:,.0f} | {r['jax_prefetched']:,.0f} | "
                    f"{r['jax_prefetched'] / r['jax_feed']:.2f}x | {r['jax_resident']:,.0f} | "
                    f"{r['jax_feed_only']:.0f} | {r['jax_feed_cores']:.2f} / "
                    f"{r['jax_prefetched_cores']:.2f} / {r['jax_resident_cores']:.2f} |",
                    flush=True,
                )
                continue
            print(
                f"| {method} | {r['torch_threads']} | {r['jax_feed']:,.0f} | "
                f"{r['jax_prefetched']:,.0f} | "
                f"{r['torch_feed']:,.0f} | {r['jax_feed'] / r['torch_feed']:.2f}x | "
                f"{r['jax_resident']:,.0f} | {r['torch_resident']:,.0f} | "
                f"{r['jax_resident'] / r['torch_resident']:.2f}x | {r['jax_feed_only']:.0f} | "
                f"{r['torch_feed_only']:.0f} | {r['jax_resident_cores']:.2f} / "
                f"{r['torch_resident_cores']:.2f} |",
                flush=True,
            )
    print(f"XLA compilations during the timed repeats: {compiles.count}")
    if not args.no_profile:
        print("JAX step profile, µs/step:")
        print(
            "| method | in one lax.scan | no-op dispatch | step, resident batch "
            "| + host indices/get | + global_batch (trainer) | numpy batch to jit |"
        )
        print("|---|---|---|---|---|---|---|")
        for method in methods:
            p = jax_profile(jax_steps[method], args.steps, args.repeats)
            print(
                f"| {method} | {p['in_xla']:.0f} | {p['noop']:.0f} | {p['resident']:.0f} | "
                f"{p['host']:.0f} | {p['feed']:.0f} | {p['numpy']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
