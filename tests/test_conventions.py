"""The README's conventions, enforced over every public function of the library.

1. The generator argument is called ``divergence`` (a catalog name or a ``Generator``); the
   property checks and low-level helpers that take a ``Generator`` object itself call it ``g``.
2. Anonymous pairs of distributions are ``(P, Q)`` positionally, P the target; two or more
   distributions with roles (student / teacher, policy / reference / target, ...) are
   keyword-only, so that a swapped call is a ``TypeError``.
3. ``where=`` is a class mask (``fdiv.divergence``); row, example and token masks are ``mask=``.
4. Reductions (divergences, estimators, losses, metrics, transport) compute and return float32
   for bfloat16 / float16 inputs (float64 stays float64); a generator's elementwise methods keep
   their input's dtype.
"""

import importlib
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import fdiv
from fdiv import fused, metrics, transport
from fdiv.losses import kd, policy, preference

MODULES = [
    "fdiv.divergences",
    "fdiv.fused",
    "fdiv.transport",
    "fdiv.metrics",
    "fdiv.testing",
    "fdiv.losses.kd",
    "fdiv.losses.preference",
    "fdiv.losses.policy",
    "fdiv.losses.diffusion",
    "fdiv.losses.sequence",
    "fdiv.losses.dkm",
    "fdiv.analysis.provenance",
    "fdiv.analysis.similarity",
    "fdiv.analysis.markov",
]
ROLES = {
    "student_logits", "teacher_logits", "peer_logits",
    "policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected",
    "policy_logp", "reference_logp", "log_pi", "log_target", "log_pi_tokens", "log_pi0_tokens",
    "teacher_logp", "student_logp", "distilled_logp",
}  # fmt: skip
CLASS_MASKS = {"fdiv.divergences.divergence", "fdiv.testing.check_divergence_grads"}


def _public_functions():
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            fn = getattr(module, attr)
            if inspect.isfunction(fn):
                yield f"{name}.{attr}", inspect.signature(fn).parameters


PUBLIC = list(_public_functions())


def test_every_module_is_scanned():
    assert len(PUBLIC) > 80


@pytest.mark.parametrize("qualname,params", PUBLIC, ids=[q for q, _ in PUBLIC])
def test_signature_follows_the_conventions(qualname, params):
    roles = [name for name in params if name in ROLES]
    for name, p in params.items():
        annotation = str(p.annotation)
        if "Generator" in annotation and "str" in annotation:  # takes a name or a generator
            assert name == "divergence", f"{qualname}: the generator argument is `divergence`"
        if name in roles and len(roles) >= 2:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{qualname}: {name} keyword-only"
        if name == "where":
            assert qualname in CLASS_MASKS, f"{qualname}: a row / token mask is `mask=`"
    names = list(params)
    for p, q in (("p_logits", "q_logits"), ("log_p", "log_q"), ("mean_p", "mean_q")):
        if p in names and q in names:
            assert names.index(p) < names.index(q), f"{qualname}: (P, Q) order"


def test_no_old_spelling_left_in_the_tree():
    root = Path(__file__).parent.parent
    old = "divergence" + "_name"
    files = [*root.glob("fdiv/**/*.py"), *root.glob("experiments/*.py"), *root.glob("tests/*.py")]
    files += [root / "README.md", *root.glob("notebooks/*.ipynb"), *root.glob("configs/*.py")]
    assert len(files) > 50
    offenders = [str(f.relative_to(root)) for f in files if old in f.read_text(encoding="utf-8")]
    assert not offenders


def test_swapping_roles_positionally_is_a_type_error():
    s, t, y = jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.zeros(2, int)
    with pytest.raises(TypeError, match="positional"):
        kd.kd_loss(s, t, y)
    with pytest.raises(TypeError, match="positional"):
        kd.distillation_term(s, t)
    with pytest.raises(TypeError, match="positional"):
        preference.fdpo_loss(*jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="positional"):
        policy.fdpg_loss(jnp.zeros(2), jnp.zeros(2), divergence="js")
    # the keyword call is the documented one and gives D_f(teacher || student)
    by_role = kd.distillation_term(student_logits=s, teacher_logits=t, divergence="js")
    assert jnp.allclose(by_role, fdiv.divergence("js", t, s))


def _bf16(*shape):
    return jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(jnp.bfloat16)


REDUCTIONS = {
    "divergence": lambda: fdiv.divergence("js", _bf16(3, 5), _bf16(3, 5)),
    "monte_carlo_divergence": lambda: fdiv.monte_carlo_divergence("kl", _bf16(6)),
    "importance_weighted_divergence": lambda: fdiv.importance_weighted_divergence(
        "kl", _bf16(6), _bf16(6), _bf16(6)
    ),
    "variational_lower_bound": lambda: fdiv.variational_lower_bound("kl", _bf16(6), _bf16(6)),
    "gaussian_kl_diag": lambda: fdiv.gaussian_kl_diag(*(_bf16(2, 3) for _ in range(4))),
    "fused_divergence": lambda: fused.fused_divergence("kl", _bf16(3, 5), _bf16(3, 5)),
    "kd_loss": lambda: kd.kd_loss(
        student_logits=_bf16(3, 5), teacher_logits=_bf16(3, 5), labels=jnp.zeros(3, int)
    ),
    "fdpo_loss": lambda: preference.fdpo_loss(
        **dict(
            zip(
                ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"),
                -jnp.abs(_bf16(4, 2)),
                strict=True,
            )
        )  # fmt: skip
    ),
    "dph_penalty": lambda: policy.dph_penalty(
        log_pi_tokens=-jnp.abs(_bf16(2, 3)), log_pi0_tokens=-jnp.abs(_bf16(2, 3))
    ),
    "nll": lambda: metrics.nll(_bf16(3, 5), jnp.zeros(3, int)),
    "sinkhorn_cost": lambda: transport.sinkhorn_cost(jnp.abs(_bf16(4, 4)), epsilon=0.5),
}


@pytest.mark.parametrize("name", REDUCTIONS)
def test_reductions_return_float32_for_bfloat16(name):
    assert REDUCTIONS[name]().dtype == jnp.float32


def test_generator_methods_keep_the_input_dtype():
    g = fdiv.generators.get("js")
    x = _bf16(4)
    for method in (g.f, g.f_prime, g.weight, g.conjugate):
        assert method(x).dtype == jnp.bfloat16
