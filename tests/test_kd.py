"""KD losses against hand computations and numpy references; the KD experiment end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from fdiv.losses import kd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_kl(p, q):
    return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0.0), axis=-1)


def np_entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), axis=-1)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(6, 5)).astype(np.float32) * 2,
        rng.normal(size=(6, 5)).astype(np.float32) * 2,
        rng.integers(0, 5, size=6),
    )


def test_hand_example_two_classes():
    # Teacher p = (1/2, 1/2), student q = (1/4, 3/4), label 1, tau = 1:
    # CE = -log(3/4); KL(p||q) = 1/2 log 2 + 1/2 log(2/3); KL(q||p) = 1/4 log(1/2) + 3/4 log(3/2).
    teacher = jnp.log(jnp.array([[0.5, 0.5]]))
    student = jnp.log(jnp.array([[0.25, 0.75]]))
    labels = jnp.array([1])
    ce = -np.log(0.75)
    fwd = 0.5 * np.log(2) + 0.5 * np.log(2 / 3)
    rev = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
    np.testing.assert_allclose(kd.cross_entropy(student, labels), [ce], rtol=1e-6)
    np.testing.assert_allclose(
        kd.kd_loss(
            student_logits=student,
            teacher_logits=teacher,
            labels=labels,
            temperature=1.0,
            kd_weight=2.0,
        ),
        [ce + 2 * fwd],
        rtol=1e-6,
    )
    # H(p) = log 2, H(q) = -(1/4 log 1/4 + 3/4 log 3/4); forward weight sigmoid(kappa (H(p) - H(q))).
    h_q = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    w = 1 / (1 + np.exp(-3.0 * (np.log(2) - h_q)))
    np.testing.assert_allclose(
        kd.bdkd_forward_weight(student_logits=student, teacher_logits=teacher, kappa=3.0),
        [w],
        rtol=1e-6,
    )
    value = kd.bdkd_student_loss(
        student_logits=student,
        teacher_logits=teacher,
        labels=labels,
        temperature=1.0,
        kappa=3.0,
        kd_weight=0.5,
    )
    np.testing.assert_allclose(value, [ce + 0.5 * (w * fwd + (1 - w) * rev)], rtol=1e-6)
    # Teacher loss: CE(y, p) + lambda_t KL(q || p) = log 2 + 0.1 * rev.
    np.testing.assert_allclose(
        kd.bdkd_teacher_loss(
            teacher_logits=teacher,
            student_logits=student,
            labels=labels,
            temperature=1.0,
            teacher_kd_weight=0.1,
        ),
        [np.log(2) + 0.1 * rev],
        rtol=1e-6,
    )


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_and_dml_match_numpy(logits, tau):
    s, t, y = logits
    p, q = softmax(t / tau, axis=-1), softmax(s / tau, axis=-1)
    ce = -log_softmax(s, axis=-1)[np.arange(6), y]
    expected = ce + 0.7 * tau**2 * np_kl(p, q)
    np.testing.assert_allclose(
        kd.kd_loss(student_logits=s, teacher_logits=t, labels=y, temperature=tau, kd_weight=0.7),
        expected,
        rtol=1e-5,
    )
    np.testing.assert_allclose(jax.jit(kd.dml_loss, static_argnames=("temperature", "kd_weight"))(logits=s, peer_logits=t, labels=y, temperature=tau, kd_weight=0.7), expected, rtol=1e-5)  # fmt: skip


def test_any_f_distillation_uses_the_named_generator(logits):
    s, t, _ = logits
    tau = 2.0
    p, q = softmax(t / tau, axis=-1), softmax(s / tau, axis=-1)
    m = (p + q) / 2
    js = 0.5 * np_kl(p, m) + 0.5 * np_kl(q, m)
    tv = 0.5 * np.abs(p - q).sum(-1)
    np.testing.assert_allclose(
        kd.distillation_term(student_logits=s, teacher_logits=t, divergence="js", temperature=tau),
        tau**2 * js,
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        kd.distillation_term(student_logits=s, teacher_logits=t, divergence="tv", temperature=tau),
        tau**2 * tv,
        rtol=1e-5,
    )
    np.testing.assert_allclose(kd.entropy(s), np_entropy(softmax(s, axis=-1)), rtol=1e-5)


def test_teacher_side_is_detached_and_student_gradient_matches_closed_form(logits):
    s, t, y = logits
    tau = 3.0

    def total(s, t):
        return jnp.sum(
            kd.kd_loss(
                student_logits=s,
                teacher_logits=t,
                labels=y,
                temperature=tau,
                kd_weight=1.0,
                ce_weight=0.0,
            )
        )

    grad_s, grad_t = jax.grad(total, argnums=(0, 1))(s, t)
    np.testing.assert_array_equal(grad_t, 0.0)
    # d/ds [tau^2 KL(p_tau || q_tau)] = tau (q_tau - p_tau).
    np.testing.assert_allclose(
        grad_s, tau * (softmax(s / tau, -1) - softmax(t / tau, -1)), atol=1e-5
    )
    g = jax.grad(
        lambda t: jnp.sum(kd.bdkd_student_loss(student_logits=s, teacher_logits=t, labels=y))
    )(t)
    np.testing.assert_array_equal(g, 0.0)


def test_masked_classes_give_finite_losses_and_gradients():
    s = jnp.array([[0.0, 1.0, -jnp.inf], [2.0, -jnp.inf, 0.5]])
    t = jnp.array([[1.0, 0.0, -jnp.inf], [0.0, -jnp.inf, 1.0]])
    y = jnp.array([0, 2])
    for fn in (
        lambda s: kd.kd_loss(student_logits=s, teacher_logits=t, labels=y),
        lambda s: kd.bdkd_student_loss(student_logits=s, teacher_logits=t, labels=y),
        lambda s: kd.sinkd_loss(student_logits=s, teacher_logits=t, labels=y)[None],
    ):
        value, grad = jax.value_and_grad(lambda s, fn=fn: jnp.sum(fn(s)))(s)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), fn


def np_sinkhorn_plan(cost, epsilon, iters):
    """Independent probability-domain Sinkhorn: K = exp(-C/eps), alternate row and column scaling."""
    k = np.exp(-cost / epsilon)
    u, v = np.ones(cost.shape[0]), np.ones(cost.shape[1])
    for _ in range(iters):
        u = 1.0 / (k @ v)
        v = 1.0 / (k.T @ u)
    return u[:, None] * k * v[None, :]


def test_sinkhorn_distillation_matches_numpy(logits):
    s, t, y = logits
    q, p = softmax(s.astype(np.float64) / 2, -1), softmax(t.astype(np.float64) / 2, -1)
    cost = np.abs(q[:, None, :] - p[None, :, :]).sum(-1)
    plan = np_sinkhorn_plan(cost, 0.5, 20)
    np.testing.assert_allclose(plan.sum(0), 1.0, rtol=1e-6)  # doubly stochastic (columns exact)
    expected = np.sum(plan * cost)
    got = kd.sinkhorn_distillation(
        student_logits=s, teacher_logits=t, temperature=2.0, epsilon=0.5, num_iters=20
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    options = dict(alpha=0.8, beta=0.5, sinkhorn_scale=0.01, kd_temperature=4.0, sinkhorn_temperature=2.0, epsilon=0.5)  # fmt: skip
    ce = -log_softmax(s, -1)[np.arange(6), y]
    p4, log_q4 = softmax(t / 4, -1), log_softmax(s / 4, -1)
    # the authors' KD term: soft cross-entropy without tau^2, i.e. KL plus the teacher's entropy
    soft_ce = -np.sum(p4 * log_q4, -1)
    kl = soft_ce + np.sum(p4 * np.log(p4), -1)
    np.testing.assert_allclose(kl, np_kl(p4, softmax(s / 4, -1)), rtol=1e-5)
    total = kd.sinkd_loss(student_logits=s, teacher_logits=t, labels=y, **options)
    np.testing.assert_allclose(
        total, np.mean(0.8 * kl + 0.2 * ce) + 0.5 * 0.01 * expected, rtol=1e-4
    )
    # the switch back to Hinton's tau^2 scaling
    total = kd.sinkd_loss(
        student_logits=s, teacher_logits=t, labels=y, **options, kd_temperature_squared=True
    )
    np.testing.assert_allclose(
        total, np.mean(0.8 * 16 * kl + 0.2 * ce) + 0.5 * 0.01 * expected, rtol=1e-4
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: kd.distillation_term(
                student_logits=np.zeros((1, 2)), teacher_logits=np.zeros((1, 2)), temperature=0.0
            ),
            "temperature must be > 0",
        ),
        (
            lambda: kd.sinkd_loss(
                student_logits=np.zeros((1, 2)),
                teacher_logits=np.zeros((1, 2)),
                labels=np.zeros(1, int),
                alpha=1.5,
            ),
            "alpha must be in",
        ),
        (
            lambda: kd.kd_loss(
                student_logits=np.zeros((1, 2)),
                teacher_logits=np.zeros((1, 2)),
                labels=np.zeros(1, int),
                divergence="nope",
            ),
            "kl",
        ),
    ],
)
def test_bad_loss_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the experiment -----------------------------------------------------------------------------


def tiny_config(method, **train):
    from configs.kd_digits import get_config

    c = get_config()
    c.method = method
    c.divergence = "js"
    c.teacher_steps = 2
    c.train.total_steps = 2
    c.train.progress = False
    c.train.update(train)
    return c


METHODS = ["student", "vanilla", "fkd", "sinkd", "dml", "bdkd"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_two_steps(method, tmp_path):
    from experiments import kd as kd_experiment

    summary = kd_experiment.run(tiny_config(method), str(tmp_path))
    assert summary["step"] == 2
    assert 0.0 <= summary["eval/student/accuracy"] <= 1.0 and np.isfinite(
        summary["eval/student/nll"]
    )
    for name in ["config.json", "metrics.jsonl", "summary.json", "reliability_student.png"]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.load(open(tmp_path / "config.json"))["method"] == method
    if method in ("vanilla", "fkd", "sinkd"):
        assert json.load(open(tmp_path / "teacher" / "summary.json"))["step"] == 2
    if method != "student":
        assert "eval/agreement" in summary and (tmp_path / "reliability_teacher.png").exists()


@pytest.mark.parametrize(
    "field, value, match",
    [
        (
            "method",
            "kd++",
            r"method='kd\+\+' is not one of \['bdkd', 'dml', 'fkd', 'sinkd', 'student', 'vanilla'\]",
        ),
        ("divergence", "klx", "klx.*kl"),
        ("temperature", -1.0, "temperature=-1.0: must be > 0"),
        ("dataset", "imagenet", "dataset='imagenet' is not one of"),
        ("teacher.model", "vit", "teacher.model='vit' is not one of"),
        ("train.batch_size", 0, "train.batch_size=0: must be an integer >= 1"),
        ("optimizer.name", "lion", "optimizer.name='lion' is not one of"),
        ("sinkd.num_iters", 0, "sinkd.num_iters=0: must be an integer >= 1"),
    ],
)
def test_bad_configs_are_rejected_before_compute(field, value, match, tmp_path):
    from experiments import kd as kd_experiment

    c = tiny_config("fkd")
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        kd_experiment.run(c, str(tmp_path))
    assert not os.listdir(tmp_path)  # nothing computed, nothing written


def run_main(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", "--config=configs/kd_digits.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_main_rejects_unknown_fields_and_bad_values(tmp_path):
    out = run_main(f"--workdir={tmp_path}/a", "--config.tempertaure=2.0")
    assert out.returncode == 2 and "config.tempertaure does not exist; config has [" in out.stderr
    assert "'temperature'" in out.stderr  # the allowed fields are listed
    out = run_main(f"--workdir={tmp_path}/b", "--config.method=distill")
    assert out.returncode == 2 and "method='distill' is not one of" in out.stderr
    out = run_main(f"--workdir={tmp_path}/c", "--config.train.batch_size=10", env={"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"})  # fmt: skip
    assert out.returncode == 2 and "batch_size=10 is not divisible by the 4 devices" in out.stderr
    assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "c")


def run_config_two_steps(config_name, tmp_path, tfds_mock, **networks):
    import importlib

    from experiments import kd as kd_experiment

    c = importlib.import_module(f"configs.{config_name}").get_config()
    c.teacher_steps = c.train.total_steps = 2
    c.train.batch_size = c.train.eval_batch_size = 8
    c.train.progress = False
    for name, model in networks.items():
        c[name].model = model
    _, mock = tfds_mock
    with mock(8):
        summary = kd_experiment.run(c, str(tmp_path))
    assert summary["step"] == 2 and np.isfinite(summary["eval/student/nll"])
    teacher_stage = json.load(open(tmp_path / "teacher" / "config.json"))
    assert teacher_stage["stage"] == "teacher" and "optimizer" not in teacher_stage  # its fields
    return json.load(open(tmp_path / "config.json"))


def test_mnist1d_config_runs_two_steps(tmp_path, tfds_mock):
    assert run_config_two_steps("kd_mnist1d", tmp_path, tfds_mock)["teacher"]["model"] == "cnn"


def test_cifar100_config_runs_two_steps_on_mock_data(tmp_path, tfds_mock):
    """TFDS mock CIFAR-100 with the config's augmentation, SGD and batch-norm ResNets (shallow here)."""
    config = run_config_two_steps(
        "kd_cifar100", tmp_path, tfds_mock, teacher="resnet8", student="resnet8"
    )
    assert config["augment"] and config["optimizer"]["name"] == "sgd"


@pytest.mark.slow
def test_cifar100_config_as_written_runs_two_steps_on_mock_data(tmp_path, tfds_mock):
    """ResNet-56 -> ResNet-20 as configured (about a minute of compilation on 2 CPU cores)."""
    assert (
        run_config_two_steps("kd_cifar100", tmp_path, tfds_mock)["teacher"]["model"] == "resnet56"
    )


def test_network_features_and_alignment_of_a_network_with_itself():
    """Layer features of the KD networks (shapes as the config says) and the alignment matrices:
    a network against itself gives CKA and RSA 1 on the diagonal; the student's 16-unit layer
    against the teacher's 256-unit layers lies in [0, 1]."""
    from experiments import kd as kd_experiment
    from fdiv import data as fdata

    config = tiny_config("vanilla")
    eval_data = fdata.load("digits", "test")
    nets = kd_experiment.Networks(
        {n: kd_experiment._model(config[n], num_classes=10) for n in ("teacher", "student")},
        eval_data.input_shape,
    )
    params, model_state = nets.init(jax.random.key(0), ["teacher", "student"])
    kd_run = kd_experiment.KDRun({}, nets, params, model_state, eval_data)
    inputs = eval_data.get(np.arange(60))[0]
    teacher = kd_experiment.network_features(kd_run, "teacher", inputs)
    student = kd_experiment.network_features(kd_run, "student", inputs)
    assert [f.shape for f in teacher] == [(60, 256), (60, 256), (60, 10)]
    assert [f.shape for f in student] == [(60, 16), (60, 10)]
    same = kd_experiment.alignment(teacher[1:], teacher[1:])
    for measure in ("linear CKA", "RBF CKA", "RSA"):
        np.testing.assert_allclose(np.diag(same[measure]), 1.0, rtol=1e-6)
    cross = kd_experiment.alignment(teacher, student, ["linear CKA"])
    assert list(cross) == ["linear CKA"] and cross["linear CKA"].shape == (3, 2)
    assert np.all((cross["linear CKA"] >= 0) & (cross["linear CKA"] <= 1))


def test_kd_table_reads_finished_runs_without_reopening(tmp_path, monkeypatch):
    """A finished run's summary is read back only for exactly its config: another setting, or a
    longer run, is not taken for it."""
    import configs.kd_digits
    from experiments import kd_table

    tiny = tiny_config("student")
    monkeypatch.setattr(configs.kd_digits, "get_config", tiny.copy_and_resolve_references)
    workdir = str(tmp_path)
    summary = kd_table.summary_of("digits", 0, "student", "kl", workdir, {})
    config = kd_table.run_config("digits", 0, "student", "kl", workdir, {})
    directory = kd_table.run_dir(workdir, "digits", 0, "student", "kl", {})
    assert kd_table.finished_summary(config, directory)["eval/student/accuracy"] == summary["eval/student/accuracy"]  # fmt: skip
    assert kd_table.summary_of("digits", 0, "student", "kl", workdir, {}) == summary
    config.temperature = 2.0
    assert kd_table.finished_summary(config, directory) is None
    config.temperature, config.train.total_steps = tiny.temperature, 4
    assert kd_table.finished_summary(config, directory) is None
    assert kd_table.finished_summary(config, str(tmp_path / "nothing")) is None


@pytest.mark.slow
def test_kd_table_tunes_each_method_on_validation(tmp_path, monkeypatch):
    """The table end to end on 2-step runs with a small grid: each method's setting is chosen on
    validation metrics (the chosen one is the appendix's best valid accuracy), stage 2 starts from
    the stage-1 choice, the paired section uses the extra seed, BD-KD's balance weight is
    reported, and the alignment part has its per-method cells, peer column and heatmaps."""
    import configs.kd_digits
    from experiments import kd_table

    methods = [
        ("student alone (CE)", "student", "kl"),
        ("vanilla KD (KL)", "vanilla", "kl"),
        ("DML (online)", "dml", "kl"),
        ("BD-KD (online)", "bdkd", "kl"),
    ]
    monkeypatch.setattr(kd_table, "METHODS", methods)
    grid = {"temperature": (1.0, 4.0), "kd_weight": (1.0,)}
    monkeypatch.setattr(kd_table, "STAGE1", {"student": {}, "vanilla": grid, "dml": grid, "bdkd": grid})  # fmt: skip
    monkeypatch.setattr(kd_table, "STAGE2", {"vanilla": ("kd_weight", (2.0,)), "dml": ("kd_weight", (2.0,)), "bdkd": ("bdkd.kappa", (0.0,))})  # fmt: skip
    tiny = tiny_config("student", total_steps=6, log_every=3)  # built before get_config is replaced
    tiny.teacher_steps = 6
    monkeypatch.setattr(configs.kd_digits, "get_config", tiny.copy_and_resolve_references)
    out = tmp_path / "results" / "kd.md"
    argv = ["kd_table", f"--workdir={tmp_path / 'runs'}", f"--out={out}", "--settings=digits"]
    monkeypatch.setattr("sys.argv", [*argv, "--seeds=0", "--paired-seeds=1"])
    kd_table.main()
    text = out.read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    # the sweep appendix: 3 settings per distilling method (2 + 1), the student's single one
    appendix = text.split("## Appendix: the whole sweep")[1]
    sweep_rows = [r for r in (line.split(" | ") for line in appendix.splitlines()) if len(r) == 6 and r[0] != "| method"]  # fmt: skip
    assert [r[0][2:] for r in sweep_rows] == ["student alone (CE)"] + [m[0] for m in methods[1:] for _ in range(3)]  # fmt: skip
    for label in ("vanilla KD (KL)", "DML (online)", "BD-KD (online)"):
        mine = [r for r in sweep_rows if r[0][2:] == label]
        valid = [float(r[2].split(" ± ")[0]) for r in mine]
        chosen = [r for r in mine if r[1].startswith("**")]
        assert len(chosen) == 1 and float(chosen[0][2].split(" ± ")[0]) == max(valid)
        main_row = next(r for r in rows if r[0][2:] == label and len(r) == 8)
        assert main_row[1] == chosen[0][1].strip("*")
    assert "## Paired comparisons" in text and "| BD-KD beats DML | BD-KD (online) | DML (online) | 2 |" in text  # fmt: skip
    assert "## BD-KD's balance weight" in text and (out.parent / "kd_bdkd_weight_digits.png").stat().st_size > 0  # fmt: skip
    assert (out.parent / "kd_sweep_digits.png").stat().st_size > 0
    assert "## Representational alignment to the teacher" in text
    alignment_rows = [r for r in rows if len(r) == 7][1:]  # 7 columns, header dropped
    assert [r[0][2:] for r in alignment_rows] == [m[0] for m in methods]
    assert alignment_rows[1][5] == "—" and alignment_rows[2][5] != "—"
    assert "Spearman rho" in text and (out.parent / "kd_alignment_digits.png").stat().st_size > 0
    for name in ("vanilla", "dml", "bdkd"):
        assert (tmp_path / "runs" / "digits" / f"alignment_{name}.png").stat().st_size > 0
