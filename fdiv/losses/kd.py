r"""Classifier knowledge-distillation losses: vanilla KD, any-f KD, DML, BD-KD, SinKD.

Every loss takes logits (``[B, C]``) and integer labels (``[B]``) and returns per-example values
``[B]`` (SinKD, which couples the samples of a batch, returns a scalar). Reduction is the
caller's. ``P`` is the teacher / peer, ``Q`` the network being trained; the teacher side is held
under ``stop_gradient`` unless ``stop_teacher_gradient=False``. The two distributions are passed
by role, keyword-only (``student_logits=``, ``teacher_logits=``; DML: ``logits=``,
``peer_logits=``), so that swapping them is a ``TypeError``, not a silent (Q, P) call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import divergences, transport
from fdiv import generators as gen

__all__ = [
    "bdkd_forward_weight",
    "bdkd_student_loss",
    "bdkd_teacher_loss",
    "cross_entropy",
    "distillation_term",
    "dml_loss",
    "entropy",
    "kd_loss",
    "sinkd_loss",
    "sinkhorn_distillation",
]


def _check_temperature(temperature: float) -> None:
    nx.check_hyperparameter("temperature", temperature, lambda t: t > 0, "> 0")


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""``-log softmax(logits)[label]`` per example, from ``log_softmax`` (exact for -inf logits).

    Args:
      logits: ``[B, C]``. labels: ``[B]`` integers in ``[0, C)``.
    Returns:
      ``[B]`` in float32 (or the logits' wider float dtype).
    """
    logits = jnp.asarray(logits)
    log_q = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    return -jnp.take_along_axis(log_q, jnp.asarray(labels)[..., None].astype(jnp.int32), axis=-1)[
        ..., 0
    ]


def entropy(logits: ArrayLike) -> jax.Array:
    r"""Shannon entropy ``H(softmax(logits)) = -sum_k p_k log p_k`` per example, ``0 log 0 = 0``."""
    logits = jnp.asarray(logits)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, log_p, 0.0), 0.0), axis=-1)


def distillation_term(
    *,
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    divergence: str | gen.Generator = "kl",
    temperature: float = 1.0,
    stop_teacher_gradient: bool = True,
) -> jax.Array:
    r"""``tau^2 D_f(p_tau || q_tau)`` per example, ``p_tau = softmax(teacher / tau)``, ``q_tau = softmax(student / tau)``.

    The ``tau^2`` factor keeps the gradient's scale independent of ``tau`` (Hinton et al. 2015).

    Args:
      student_logits: ``[B, C]``. teacher_logits: ``[B, C]``.
      divergence: any name of ``fdiv.generators.names()`` or a ``Generator``.
      temperature: ``tau > 0``.
      stop_teacher_gradient: hold the teacher logits constant.
    Returns:
      ``[B]``.
    """
    _check_temperature(temperature)
    teacher_logits = jnp.asarray(teacher_logits)
    if stop_teacher_gradient:
        teacher_logits = jax.lax.stop_gradient(teacher_logits)
    student_logits = jnp.asarray(student_logits)
    d = divergences.divergence(
        divergence, teacher_logits / temperature, student_logits / temperature
    )
    return temperature**2 * d


def kd_loss(
    *,
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    divergence: str | gen.Generator = "kl",
    temperature: float = 4.0,
    kd_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> jax.Array:
    r"""Vanilla (``"kl"``) or any-f knowledge distillation, per example.

    ``ce_weight * CE(y, q) + kd_weight * tau^2 D_f(p_tau || q_tau)`` with the teacher detached.

    References:
      Hinton, Vinyals, Dean (2015), Distilling the Knowledge in a Neural Network.
    """
    ce = cross_entropy(student_logits, labels)
    kd = distillation_term(
        student_logits=student_logits,
        teacher_logits=teacher_logits,
        divergence=divergence,
        temperature=temperature,
    )
    return ce_weight * ce + kd_weight * kd


def dml_loss(
    *,
    logits: ArrayLike,
    peer_logits: ArrayLike,
    labels: ArrayLike,
    divergence: str | gen.Generator = "kl",
    temperature: float = 1.0,
    kd_weight: float = 1.0,
) -> jax.Array:
    r"""Deep mutual learning, one peer's loss: ``CE(y, q) + kd_weight tau^2 D_f(p_peer || q)``, peer detached.

    Summing this over every peer (each with the others as ``peer_logits``) and differentiating the
    sum with respect to all peers' parameters trains them all in one step.

    References:
      Zhang, Xiang, Hospedales, Lu (2018), Deep Mutual Learning.
    """
    return kd_loss(
        student_logits=logits,
        teacher_logits=peer_logits,
        labels=labels,
        divergence=divergence,
        temperature=temperature,
        kd_weight=kd_weight,
    )


def bdkd_forward_weight(
    *,
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    kappa: float = 1.0,
    temperature: float = 1.0,
) -> jax.Array:
    r"""BD-KD's per-example weight of the forward KL: ``w = sigmoid(kappa (H(p_tau) - H(q_tau)))``.

    With ``kappa > 0``, a student less certain than its teacher (``H(q) > H(p)``) gets ``w < 1/2``:
    the reverse KL ``KL(q || p)`` (mode-seeking) dominates and sharpens it; a student more certain
    than its teacher gets ``w > 1/2``: the forward KL (mass-covering) softens it. ``kappa < 0``
    gives the opposite assignment, ``kappa = 0`` the plain average. The weight is a coefficient,
    held under ``stop_gradient``. This is a reconstruction (METHODS.md §2), not the paper's text.

    Returns:
      ``[B]`` in ``(0, 1)``.
    """
    _check_temperature(temperature)
    h_student = entropy(jnp.asarray(student_logits) / temperature)
    h_teacher = entropy(jnp.asarray(teacher_logits) / temperature)
    return jax.lax.stop_gradient(jax.nn.sigmoid(kappa * (h_teacher - h_student)))


def bdkd_student_loss(
    *,
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    temperature: float = 4.0,
    kappa: float = 1.0,
    kd_weight: float = 1.0,
) -> jax.Array:
    r"""BD-KD student loss, per example: entropy-balanced forward and reverse KL, teacher detached.

    ``CE(y, q) + kd_weight tau^2 [w KL(p_tau || q_tau) + (1 - w) KL(q_tau || p_tau)]`` with
    ``w`` from :func:`bdkd_forward_weight`.

    References:
      Amara, Ziaeefard, Meyer, Gross, Clark (2022), BD-KD: Balancing the Divergences for Online
      Knowledge Distillation.
    """
    pair = {"student_logits": student_logits, "teacher_logits": teacher_logits}
    w = bdkd_forward_weight(**pair, kappa=kappa, temperature=temperature)
    forward = distillation_term(**pair, divergence="kl", temperature=temperature)
    reverse = distillation_term(**pair, divergence="reverse_kl", temperature=temperature)
    return cross_entropy(student_logits, labels) + kd_weight * (w * forward + (1.0 - w) * reverse)


def bdkd_teacher_loss(
    *,
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    labels: ArrayLike,
    temperature: float = 4.0,
    teacher_kd_weight: float = 0.1,
) -> jax.Array:
    r"""BD-KD teacher loss, per example: ``CE(y, p) + lambda_t tau^2 KL(q_tau || p_tau)``, student detached.

    A small ``lambda_t`` keeps the teacher learning from the labels rather than being pulled toward
    its weaker student.
    """
    return kd_loss(  # the roles swap: the teacher is the network trained, the student its target
        student_logits=teacher_logits,
        teacher_logits=student_logits,
        labels=labels,
        divergence="kl",
        temperature=temperature,
        kd_weight=teacher_kd_weight,
    )


def sinkhorn_distillation(
    *,
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 2.0,
    epsilon: float = 0.1,
    num_iters: int = 20,
    stop_teacher_gradient: bool = True,
) -> jax.Array:
    r"""Batch-wise Sinkhorn distance between student and teacher predictions (SinKD), a scalar.

    Cost between *samples*: ``W_ij = ||q_i - p_j||_1`` (``[B, B]``) on the softened probabilities;
    the plan ``Pi`` is the doubly stochastic matrix (rows and columns summing to 1) reached by
    ``num_iters`` log-domain row/column normalisations of ``exp(-W / epsilon)``; the value is
    ``sum_ij Pi_ij W_ij``, differentiated through the plan and the cost.

    References:
      Cui et al. (2024), Sinkhorn Distance Minimization for Knowledge Distillation.
    """
    _check_temperature(temperature)
    teacher_logits = jnp.asarray(teacher_logits)
    if stop_teacher_gradient:
        teacher_logits = jax.lax.stop_gradient(teacher_logits)
    q = jax.nn.softmax(jnp.asarray(student_logits).astype(jnp.float32) / temperature, axis=-1)
    p = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    cost = transport.l1_cost(q, p)
    plan = transport.sinkhorn(cost, epsilon=epsilon, num_iters=num_iters).plan
    return jnp.sum(plan * cost)


def sinkd_loss(
    *,
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    alpha: float = 0.9,
    beta: float = 0.8,
    sinkhorn_scale: float = 1e-3,
    kd_temperature: float = 4.0,
    sinkhorn_temperature: float = 2.0,
    epsilon: float = 0.1,
    num_iters: int = 20,
    kd_temperature_squared: bool = False,
) -> jax.Array:
    r"""SinKD total loss, a scalar: ``mean[alpha KL(p_tau || q_tau) + (1 - alpha) CE] + beta c Sinkhorn``.

    ``c = sinkhorn_scale``; the Sinkhorn term is :func:`sinkhorn_distillation` on the batch.
    The KD term follows the authors' code (``2018cx/SinKD``, ``loss.py``, ``DistillKL``): the soft
    cross-entropy ``-sum p_tau log q_tau`` *without* Hinton's ``tau^2``. fdiv computes it as
    ``KL(p_tau || q_tau)``, which differs by the teacher's entropy, a constant for the student, so
    the gradients are the official ones. ``kd_temperature_squared=True`` multiplies the KD term by
    ``tau^2`` as in vanilla KD (fdiv's default before 2026-12; at tau = 4 it makes the KD gradient
    ~16x larger next to the cross-entropy's).
    """
    nx.check_hyperparameter("alpha", alpha, lambda a: 0.0 <= a <= 1.0, "in [0, 1]")
    # distillation_term carries tau^2; the official term does not, so divide it back out
    tau_squared = (
        1.0 if kd_temperature_squared else jnp.square(jnp.asarray(kd_temperature, jnp.float32))
    )
    per_example = kd_loss(
        student_logits=student_logits,
        teacher_logits=teacher_logits,
        labels=labels,
        temperature=kd_temperature,
        kd_weight=alpha / tau_squared,
        ce_weight=1.0 - alpha,
    )
    ot = sinkhorn_distillation(
        student_logits=student_logits,
        teacher_logits=teacher_logits,
        temperature=sinkhorn_temperature,
        epsilon=epsilon,
        num_iters=num_iters,
    )
    return jnp.mean(per_example) + beta * sinkhorn_scale * ot
