"""Entry point for every experiment: ``python -m experiments.main --config=configs/<name>.py --workdir=DIR``.

Override any config field on the command line: ``--config.method=bdkd --config.train.total_steps=100``.
Unknown fields are rejected by ``ml_collections``; bad values by the experiment's ``validate`` before
anything is computed. Multi-process runs (one process per host, as on a TPU pod, or several on one
machine with CPU collectives) set ``--config.distributed.num_processes=N
--config.distributed.process_id=i --config.distributed.coordinator_address=host:port``; on a
Cloud TPU pod or under SLURM, ``--config.distributed.auto=True`` alone lets JAX find them. The
workdir may be ``gs://bucket/run`` (every file goes through ``etils.epath``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/<name>.py file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, plots.")
flags.mark_flags_as_required(["config", "workdir"])

REQUIRED = ("validate", "run", "format_summary")


def available() -> list[str]:
    """The experiments in this package: its modules that define (or bind) every function of
    :data:`REQUIRED` at top level (read as text: nothing is imported for an error message)."""
    here = os.path.dirname(os.path.abspath(__file__))
    names = []
    for filename in sorted(os.listdir(here)):
        if filename.endswith(".py") and not filename.startswith("_"):
            with open(os.path.join(here, filename), encoding="utf-8") as f:
                text = f.read()
            if all(re.search(rf"^(def {fn}\(|{fn} = )", text, re.M) for fn in REQUIRED):
                names.append(filename[: -len(".py")])
    return names


def experiment_module(name):
    """The module ``config.experiment`` names: ``experiments.<name>``, or any importable module
    for a dotted name (an experiment of your own). An experiment is a module that defines
    ``validate(config)``, ``run(config, workdir) -> summary`` and ``format_summary(summary)``:
    adding one is a module and a config, nothing to register.

    Raises:
      ValueError: no such module (the message lists :func:`available`), or it lacks a function.
    """
    path = name if isinstance(name, str) and "." in name else f"experiments.{name}"
    try:
        module = importlib.import_module(path)
    except (ModuleNotFoundError, TypeError) as e:
        if isinstance(e, ModuleNotFoundError) and e.name != path:
            raise  # the module exists but one of its own imports is missing
        raise ValueError(
            f"config.experiment={name!r}: there is no module {path}; the experiments are "
            f"{', '.join(available())} (or a dotted module path of your own)"
        ) from None
    missing = [fn for fn in REQUIRED if not callable(getattr(module, fn, None))]
    if missing:
        raise ValueError(f"config.experiment={name!r}: {path} does not define {', '.join(missing)}")
    return module


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    config = _CONFIG.value
    try:
        experiment = experiment_module(config.get("experiment"))
    except ValueError as e:
        raise app.UsageError(str(e)) from None

    # jax.distributed must be initialised before any other JAX call.
    from fdiv.train import parallel

    dist = config.distributed
    try:
        parallel.initialize_distributed(
            num_processes=dist.num_processes,
            process_id=dist.process_id,
            coordinator_address=dist.coordinator_address,
            auto=dist.get("auto", False),
        )
    except ValueError as e:
        print(f"error: invalid config: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:
        if not dist.get("auto", False):
            raise
        print(f"error: {e}", file=sys.stderr)  # auto-detection found no cluster
        sys.exit(1)
    try:
        experiment.validate(config)
    except ValueError as e:
        print(f"error: invalid config: {e}", file=sys.stderr)
        sys.exit(2)
    import json

    import jax

    from fdiv.train import workdir as wd

    # One workdir, one run: refuse a different config before any stage computes, and hold the
    # workdir for the whole run (the stages inside take the same lock again).
    try:
        lock = wd.WorkdirLock(_WORKDIR.value).acquire() if jax.process_index() == 0 else None
        wd.check_config(_WORKDIR.value, json.loads(config.to_json_best_effort(sort_keys=True)))
    except (wd.ConfigMismatchError, wd.WorkdirBusyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    try:
        summary = experiment.run(config, _WORKDIR.value)
    finally:
        if lock is not None:
            lock.release()

    if jax.process_index() == 0:
        print(experiment.format_summary(summary))


def _unknown_fields(argv: list[str]) -> list[str]:
    """For each ``--config.a.b=v`` naming a field the config lacks: the field and its siblings."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None:
        return []
    spec = importlib.util.spec_from_file_location("_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    problems = []
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        node, walked = config, []
        for part in arg.split("=", 1)[0][len("--config.") :].split("."):
            if not hasattr(node, "keys") or part not in node:
                where = ".".join(["config", *walked])
                allowed = sorted(node.keys()) if hasattr(node, "keys") else []
                problems.append(f"{where}.{part} does not exist; {where} has {allowed}")
                break
            node, walked = node[part], [*walked, part]
    return problems


def run() -> None:
    try:
        app.run(main)
    except (AttributeError, KeyError):
        # ml_collections rejects an override of a field the config lacks while absl parses the
        # flags, with a bare key name; say which field and what is allowed instead.
        problems = _unknown_fields(sys.argv[1:])
        if not problems:
            raise  # not an override problem: a real error inside the experiment
        print("error: invalid config override: " + "; ".join(problems), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
