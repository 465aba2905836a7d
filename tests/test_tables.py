"""The results scripts' shared helpers: cells, slugs, and committed per-run records (a long table
run in parts and re-assembled from its records without training)."""

import argparse
import sys

import numpy as np
import pytest

from experiments import _tables, diffusion_table, fdistill, sweep


def test_mean_std_is_numpys_sample_std():
    values = [0.25, 0.5, 1.0]
    assert _tables.mean_std(values) == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    assert _tables.mean_std([3.0]) == "3.0000 ± 0.0000"


def test_slug():
    assert _tables.slug("alpha (α = 1.5)") == "alpha_1_5"
    assert _tables.slug("reverse KL (DMD2)") == "reverse_kl_dmd2"


def test_cpu_model_names_the_widest_vector_extension(tmp_path):
    def cpuinfo(flags, model="model name\t: Some CPU"):
        path = tmp_path / "cpuinfo"
        # two processors, as /proc/cpuinfo lists them; a line with an empty value
        block = f"processor\t: 0\n{model}\nflags\t\t: {flags}\npower management:\n\n"
        path.write_text(block + block.replace(": 0", ": 1", 1))
        return _tables.cpu_model(str(path))

    assert cpuinfo("fpu sse2 avx avx2 fma avx512f avx512bw") == "Some CPU, AVX-512"
    assert cpuinfo("fpu sse2 avx avx2 fma") == "Some CPU, AVX2"
    assert cpuinfo("fpu sse2 avx") == "Some CPU, AVX"
    assert cpuinfo("fpu sse2 neon", model="") == ""  # neither a model name nor an x86 extension
    assert _tables.cpu_model(str(tmp_path / "absent")) == ""


def _config(**overrides):
    return diffusion_table.make_config("configs.fdistill_mog", overrides, 0, "/somewhere/stages", 0)


def test_run_records_round_trip(tmp_path):
    store = _tables.RunRecords(str(tmp_path))
    config = _config(divergence="js")
    samples = np.arange(10, dtype=np.float16).reshape(5, 2)
    store.put("seed0/js", config, {"eval/energy": 0.5, "step": 3, "note": "text", "ok": True}, {"samples": samples})  # fmt: skip
    record = store.get("seed0/js", config)
    assert record["summary"] == {"eval/energy": 0.5, "step": 3}  # numbers only, no booleans
    np.testing.assert_array_equal(record["arrays"]["samples"], samples)
    # Paths and fields that cannot change a result do not matter ...
    moved = _config(divergence="js")
    moved.stages_dir = "/elsewhere"
    moved.train.log_every = 7
    assert store.get("seed0/js", moved) is not None
    # ... anything else does: another config is not this record.
    assert store.get("seed0/js", _config(divergence="kl")) is None
    longer = _config(divergence="js")
    longer.train.total_steps += 1
    assert store.get("seed0/js", longer) is None
    assert store.get("seed1/js", config) is None


def _fake_summary(i: int, digits: bool) -> dict:
    summary = {"step": 3000.0, "wall_seconds": 60.0}
    for key, _ in diffusion_table.COLUMNS:
        summary[f"eval/{key}"] = 0.01 * i
        summary[f"eval/teacher_{key}"] = 0.5
    if digits:
        summary.update({"eval/frechet": 2.0 + i, "eval/teacher_frechet": 2.0, "eval/data_frechet": 1.5, "eval/classes_present": 10.0})  # fmt: skip
        summary.update({f"eval/class_{k}": 0.1 for k in range(10)})
    return summary


def test_diffusion_table_assembles_from_records_without_training(tmp_path, monkeypatch):
    records, out = str(tmp_path / "records"), str(tmp_path / "diffusion.md")
    args = argparse.Namespace(workdir=str(tmp_path / "runs"), records=records, steps=0)
    parts = diffusion_table.PARTS
    jobs, unique = diffusion_table.jobs_of(args, [0, 1], [0], parts)
    # the official ablation row is the JS run of the main table, not a second run
    assert len(unique) == len(jobs) - 1
    store = diffusion_table.run_records(records)
    for i, (_, a) in enumerate(unique):
        module, overrides, seed, _, stages, steps, _, name, keep = a
        config = diffusion_table.make_config(module, overrides, seed, stages, steps)
        arrays = {"samples": np.zeros((20, 2), np.float16)} if keep else None
        store.put(name, config, _fake_summary(i, "digits" in name), arrays)

    def no_training(*_, **__):
        raise AssertionError("a recorded run was retrained or re-opened")

    monkeypatch.setattr(fdistill, "run", no_training)
    monkeypatch.setattr(sweep, "finished_summary", no_training)
    argv = ["diffusion_table", f"--workdir={args.workdir}", f"--records={records}", f"--out={out}", "--seeds=0,1", f"--parts={','.join(parts)}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    diffusion_table.main()
    text = open(out, encoding="utf-8").read()
    assert (tmp_path / "diffusion_samples.png").stat().st_size > 0
    names = [a[7] for _, a in unique]
    js_seed0 = names.index("seed0/js")
    js_seed1 = names.index("seed1/js")
    # the JS row: mean over the two seeds of what the records hold
    js_energy = np.mean([0.01 * js_seed0, 0.01 * js_seed1])
    js_row = next(line for line in text.splitlines() if line.startswith("| JS |"))
    assert f"{js_energy:.4f} ±" in js_row
    # the cosine part: the same method with the generator's rate decayed, its own runs
    by_name = {a[7]: a for _, a in unique}
    cosine_config = diffusion_table.make_config(*by_name["seed1/cosine_js"][:3], "", 0)
    official_config = diffusion_table.make_config(*by_name["seed1/js"][:3], "", 0)
    assert cosine_config.divergence == official_config.divergence == "js"
    assert cosine_config.generator_optimizer.schedule == "cosine"
    assert official_config.generator_optimizer.schedule == "constant"
    cosine_energy = np.mean([0.01 * names.index("seed0/cosine_js"), 0.01 * names.index("seed1/cosine_js")])  # fmt: skip
    cosine_row = next(line for line in text.splitlines() if line.startswith("| JS, cosine |"))
    assert f"{cosine_energy:.4f} ±" in cosine_row
    # the gan part: the official update with the GAN weight at the mixture's scale, SIM's too
    for name in ("seed1/gan_js", "seed1/gan_sim_l2"):
        gan_config = diffusion_table.make_config(*by_name[name][:3], "", 0)
        assert gan_config.gan_weight == diffusion_table.GAN_WEIGHT > 1e-3
        assert gan_config.generator_optimizer.schedule == "constant"
    assert diffusion_table.make_config(*by_name["seed1/sim_l2"][:3], "", 0).gan_weight == 0.0
    gan_energy = np.mean([0.01 * names.index("seed0/gan_js"), 0.01 * names.index("seed1/gan_js")])
    gan_row = next(line for line in text.splitlines() if line.startswith("| JS, GAN 0.1 |"))
    assert f"{gan_energy:.4f} ±" in gan_row
    # the gan_ema part: the gan part's training, the generator's EMA evaluated
    ema_config = diffusion_table.make_config(*by_name["seed1/gan_ema_js"][:3], "", 0)
    gan_config = diffusion_table.make_config(*by_name["seed1/gan_js"][:3], "", 0)
    assert ema_config.generator.ema_decay == diffusion_table.EMA_DECAY > 0
    assert gan_config.generator.ema_decay == 0.0
    ema_config.generator.ema_decay = 0.0
    assert ema_config.to_json(sort_keys=True) == gan_config.to_json(sort_keys=True)
    ema_energy = np.mean([0.01 * names.index("seed0/gan_ema_js"), 0.01 * names.index("seed1/gan_ema_js")])  # fmt: skip
    ema_row = next(line for line in text.splitlines() if line.startswith("| JS, GAN 0.1, EMA 0.999 |"))  # fmt: skip
    assert f"{ema_energy:.4f} ±" in ema_row
    # the gan_ema_long part: the gan_ema part's runs, only longer
    long_config = diffusion_table.make_config(*by_name["seed1/gan_ema_27k_js"][:3], "", 0)
    assert (
        long_config.train.total_steps == diffusion_table.LONG_STEPS > ema_config.train.total_steps
    )
    long_config.train.total_steps = ema_config.train.total_steps
    long_config.generator.ema_decay = 0.0
    assert long_config.to_json(sort_keys=True) == gan_config.to_json(sort_keys=True)
    long_energy = np.mean([0.01 * names.index("seed0/gan_ema_27k_js"), 0.01 * names.index("seed1/gan_ema_27k_js")])  # fmt: skip
    long_row = next(line for line in text.splitlines() if line.startswith("| JS, GAN 0.1, EMA 0.999, 27k updates |"))  # fmt: skip
    assert f"{long_energy:.4f} ±" in long_row
    # the sid_alpha part: the gan_ema part's SIM runs only, with SiD's alpha
    sid_names = sorted(n for n in names if "sid_alpha_1_2" in n)
    assert sid_names == [f"seed{s}/gan_ema_sid_alpha_1_2_sim_{d}" for s in (0, 1) for d in ("l2", "pseudo_huber")]  # fmt: skip
    # and its pair at alpha = 1: the gan_ema config under another name (trained again)
    pair = diffusion_table.make_config(*by_name["seed1/gan_ema_sid_alpha_1_sim_l2"][:3], "", 0)
    assert len([n for n in names if "sid_alpha_1_sim" in n]) == 4
    sid_config = diffusion_table.make_config(*by_name["seed1/gan_ema_sid_alpha_1_2_sim_l2"][:3], "", 0)  # fmt: skip
    sim_ema_config = diffusion_table.make_config(*by_name["seed1/gan_ema_sim_l2"][:3], "", 0)
    assert sid_config.sid_alpha == diffusion_table.SID_ALPHA != sim_ema_config.sid_alpha == 1.0
    sid_config.sid_alpha = 1.0
    assert sid_config.to_json(sort_keys=True) == sim_ema_config.to_json(sort_keys=True)
    assert pair.to_json(sort_keys=True) == sim_ema_config.to_json(sort_keys=True)
    sid_rows = [line for line in text.splitlines() if "SiD α = 1.2 |" in line]
    assert [row.split(" |")[0] for row in sid_rows[:2]] == ["| SIM-L2, GAN 0.1, EMA 0.999, SiD α = 1.2", "| SIM-pseudo-Huber, GAN 0.1, EMA 0.999, SiD α = 1.2"]  # fmt: skip
    official = next(line for line in text.splitlines() if line.startswith("| official"))
    assert f"| {0.01 * js_seed0:.4f} ± 0.0000 |" in official
    assert f"took {len(unique)} min of training" in text  # 60 s per recorded run
    assert "3,000 generator updates" in text
    digits = [line for line in text.splitlines() if line.startswith("| forward KL | ")][-1]
    assert f"{2.0 + names.index('digits/forward_kl'):.2f}" in digits


def test_diffusion_table_refuses_an_unknown_part(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["diffusion_table", "--parts=methods,cosin"])
    with pytest.raises(SystemExit):
        diffusion_table.main()
    assert (
        "unknown --parts ['cosin']; known: methods, cosine, gan, gan_ema, gan_ema_long, "
        "sid_alpha_base, sid_alpha, ablations, digits" in capsys.readouterr().err
    )


def test_run_records_keep_old_records_valid_for_a_field_added_later(tmp_path):
    """A record written before a config field existed is this config's only while the field holds
    the value that computes what the record computed."""
    old = _tables.RunRecords(str(tmp_path))
    config = _config(divergence="js")
    del config["sid_alpha"]  # as the config was before the field was added
    old.put("r", config, {"x": 1.0})
    store = _tables.RunRecords(str(tmp_path), added_later={"sid_alpha": 1.0})
    assert "sid_alpha" in _config(divergence="js")
    assert store.get("r", _config(divergence="js"))["summary"] == {"x": 1.0}
    assert store.get("r", _config(divergence="js", sid_alpha=1.2)) is None
    assert _tables.RunRecords(str(tmp_path)).get("r", _config(divergence="js")) is None


def test_run_records_refuse_nothing_silently(tmp_path):
    """A record of another config is replaced by the rerun, never mixed in."""
    store = _tables.RunRecords(str(tmp_path))
    store.put("r", _config(divergence="js"), {"x": 1.0})
    store.put("r", _config(divergence="kl"), {"x": 2.0})
    assert store.get("r", _config(divergence="js")) is None
    assert store.get("r", _config(divergence="kl"))["summary"] == {"x": 2.0}
