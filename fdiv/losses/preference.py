r"""f-DPO: direct preference optimisation under an f-divergence constraint (Wang et al. 2023).

Inputs are *sequence* log-probabilities ``[B]`` (summed token log-probs of a chosen response
``y_w`` and a rejected one ``y_l``) under the policy ``pi_theta`` and the frozen reference
``pi_ref``; every function returns per-example values ``[B]``. Reduction is the caller's.

The policy is regularised by ``D_f(pi_theta || pi_ref) = E_ref[f(pi_theta / pi_ref)]``. With
``u = pi_theta(y) / pi_ref(y)`` (``log u = policy_logp - reference_logp``), the optimal policy
of the constrained reward maximisation satisfies ``r(y) = beta f'(u(y)) + const`` wherever the
policy has support, so the Bradley-Terry model gives the per-example loss

    z = beta [psi(u_w) - psi(u_l)],      loss = -log sigmoid(z),

where ``psi`` is ``f'`` without its additive constant (the constants cancel in ``z``):

    divergence    f(u) (the paper's)                          psi(u)
    ------------  ------------------------------------------  ---------------------------------
    reverse_kl    u log u                                     log u               (plain DPO)
    forward_kl    -log u                                      -1/u
    js            u log u - (u + 1) log((u + 1)/2)            log(2u / (1 + u))
    alpha         (u^(1-a) - (1-a) u - a) / (a (a - 1))       -u^(-a) / a,        a in (0, 1)
    a Generator   g.f (also any other catalog name)           g.f_prime(u)

``"reverse_kl"`` is the alignment literature's name for ``KL(pi_theta || pi_ref)`` (mode-seeking,
DPO) and ``"forward_kl"`` for ``KL(pi_ref || pi_theta)`` (mass-covering); in the catalog of
:mod:`fdiv.generators` these are ``"kl"`` and ``"reverse_kl"`` respectively, because the catalog
names ``D_f(P || Q)`` with ``P`` the first argument. Here the four names above are always read
in the paper's sense; any other catalog name (``"squared_hellinger"``, ``"kl"``, ...) or a
:class:`~fdiv.generators.Generator` is used as is, with ``psi = g.f_prime``.

**The alpha convention.** ``alpha`` here is the *paper's* ``a`` in ``(0, 1)``: ``a -> 0`` tends to
DPO (``psi ~ -1/a + log u``), ``a -> 1`` is the forward KL. It is ``1 -`` the catalog's ``alpha``
generator parameter: ``generators.get("alpha", alpha=1 - a).f_prime(log u) = 1/a - u^(-a)/a =
psi_alpha(u) + 1/a``.

**Exponent clamps.** The argument of every ``exp`` (``-log u`` for the forward KL, ``-a log u`` for
alpha) is clipped at ``max_exponent``, and a generator's ``f'`` sees ``log u`` clipped to
``[-max_exponent, max_exponent]``, so values and gradients stay finite for any finite log-probs
(``|log u|`` of ``1e4`` and beyond). Beyond the clamp ``psi`` is held constant, so its gradient
is 0. For a rejected response that is the saturated side (``z`` is then ``beta e^50``-sized and
the loss ~0); for a *chosen* response whose ratio has fallen below ``e^-max_exponent`` the true
gradient, of size ``beta e^|log u|``, is replaced by 0. ``reverse_kl`` and ``js`` involve no
``exp`` and are never clipped (``reverse_kl`` is exactly DPO for every input).

Inputs are promoted to at least float32 before any arithmetic (bfloat16 log-probs give float32
results), and float64 stays float64.

References:
  Wang, Jiang, Yang, Liu, Chen (2023), Beyond Reverse KL: Generalizing Direct Preference
  Optimization with Diverse Divergence Constraints (ICLR 2024).
  Rafailov et al. (2023), Direct Preference Optimization: Your Language Model is Secretly a
  Reward Model.
  Mitchell (2023), A note on DPO with noisy preferences and relationship to IPO (conservative
  DPO, ``label_smoothing``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import generators as gen

__all__ = [
    "DIVERGENCES",
    "fdpo_logits",
    "fdpo_loss",
    "implied_reward",
    "preference_probability",
    "psi",
]

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
"""The divergences with a closed-form ``psi`` (named in the alignment literature's sense)."""

_LOG2 = math.log(2.0)


def _resolve(divergence: str | gen.Generator, alpha: float) -> str | gen.Generator:
    """A name of :data:`DIVERGENCES` or a ``Generator``; validates ``alpha`` for ``"alpha"``."""
    if isinstance(divergence, gen.Generator):
        return divergence
    if not isinstance(divergence, str):
        raise ValueError(
            f"divergence must be a name or a fdiv.generators.Generator, got {divergence!r}"
        )
    if divergence in DIVERGENCES:
        if divergence == "alpha":
            nx.check_hyperparameter(
                "alpha",
                alpha,
                lambda a: 0.0 < a < 1.0,
                "in (0, 1) (the f-DPO paper's alpha; alpha -> 0 is DPO, alpha -> 1 the forward KL)",
            )
        return divergence
    try:
        return gen.get(divergence)
    except ValueError as err:
        raise ValueError(
            f"unknown divergence {divergence!r}; f-DPO names: {', '.join(DIVERGENCES)}; "
            f"or any catalog name: {', '.join(gen.names())}; or a fdiv.generators.Generator"
        ) from err


def _check(beta: float | None, max_exponent: float) -> None:
    if beta is not None:
        nx.check_hyperparameter("beta", beta, lambda b: b > 0, "> 0")
    nx.check_hyperparameter("max_exponent", max_exponent, lambda m: m > 0, "> 0")


def _clamp(x, lo, hi):
    """``clip(x, lo, hi)`` whose gradient is 1 at the bounds themselves (``jnp.minimum`` and
    ``jnp.clip`` split a tie and give 1/2 there)."""
    return jnp.where(x > hi, hi, jnp.where(x < lo, lo, x))


def _psi(log_u: jax.Array, kind: str | gen.Generator, alpha: float, max_exponent: float):
    if kind == "reverse_kl":
        return log_u
    if kind == "forward_kl":
        return -jnp.exp(_clamp(-log_u, -jnp.inf, max_exponent))
    if kind == "js":
        return _LOG2 - jax.nn.softplus(-log_u)
    if kind == "alpha":
        return -jnp.exp(_clamp(-alpha * log_u, -jnp.inf, max_exponent)) / alpha
    return kind.f_prime(_clamp(log_u, -max_exponent, max_exponent))


def psi(
    log_u: ArrayLike,
    *,
    divergence: str | gen.Generator = "reverse_kl",
    alpha: float = 0.5,
    max_exponent: float = 50.0,
) -> jax.Array:
    r"""``psi(u)``: ``f'(u)`` up to an additive constant, from ``log u = log pi_theta - log pi_ref``

    ``reverse_kl``: ``log u``; ``forward_kl``: ``-1/u``; ``js``: ``log(2u / (1 + u))``;
    ``alpha``: ``-u^(-alpha) / alpha``; a generator (or other catalog name): ``f'(u)``.

    Args:
      log_u: ``[...]`` log density ratios.
      divergence: one of :data:`DIVERGENCES` (alignment-literature names), another catalog name
        or a :class:`~fdiv.generators.Generator`.
      alpha: the paper's alpha in ``(0, 1)``, used by ``"alpha"`` only (= 1 - the catalog's).
      max_exponent: clip for every ``exp`` argument (and for ``|log u|`` given a generator).

    Returns:
      ``[...]`` in float32 or wider.

    Raises:
      ValueError: unknown divergence (the message lists the names), ``alpha`` outside ``(0, 1)``
        for ``"alpha"``, ``max_exponent <= 0``.
    """
    _check(None, max_exponent)
    kind = _resolve(divergence, alpha)
    (log_u,) = nx.in_compute_dtype(log_u)
    return _psi(log_u, kind, alpha, max_exponent)


def implied_reward(
    *,
    policy_logp: ArrayLike,
    reference_logp: ArrayLike,
    beta: float = 0.1,
    divergence: str | gen.Generator = "reverse_kl",
    alpha: float = 0.5,
    max_exponent: float = 50.0,
) -> jax.Array:
    r"""The reward the policy implies, ``beta psi(pi_theta(y) / pi_ref(y))``, up to a constant.

    Args:
      policy_logp: ``[B]`` sequence log-probs under ``pi_theta``.
      reference_logp: ``[B]`` sequence log-probs under ``pi_ref``.
      beta, divergence, alpha, max_exponent: as in :func:`fdpo_loss`.

    Returns:
      ``[B]``.
    """
    _check(beta, max_exponent)
    kind = _resolve(divergence, alpha)
    policy_logp, reference_logp = nx.in_compute_dtype(policy_logp, reference_logp)
    return beta * _psi(policy_logp - reference_logp, kind, alpha, max_exponent)


def fdpo_logits(
    *,
    policy_chosen: ArrayLike,
    policy_rejected: ArrayLike,
    reference_chosen: ArrayLike,
    reference_rejected: ArrayLike,
    beta: float = 0.1,
    divergence: str | gen.Generator = "reverse_kl",
    alpha: float = 0.5,
    max_exponent: float = 50.0,
) -> jax.Array:
    r"""The preference logit ``z = beta [psi(u_w) - psi(u_l)]``, ``log u = policy - reference``.

    Args:
      policy_chosen, policy_rejected: ``[B]`` sequence log-probs of ``y_w`` / ``y_l`` under
        ``pi_theta``.
      reference_chosen, reference_rejected: ``[B]`` the same under ``pi_ref``.
      beta, divergence, alpha, max_exponent: as in :func:`fdpo_loss`.

    Returns:
      ``[B]``.
    """
    _check(beta, max_exponent)
    kind = _resolve(divergence, alpha)
    pw, pl, rw, rl = nx.in_compute_dtype(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    chosen = _psi(pw - rw, kind, alpha, max_exponent)
    rejected = _psi(pl - rl, kind, alpha, max_exponent)
    return beta * (chosen - rejected)


def fdpo_loss(
    *,
    policy_chosen: ArrayLike,
    policy_rejected: ArrayLike,
    reference_chosen: ArrayLike,
    reference_rejected: ArrayLike,
    beta: float = 0.1,
    divergence: str | gen.Generator = "reverse_kl",
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    max_exponent: float = 50.0,
) -> jax.Array:
    r"""f-DPO loss per example: ``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``.

    ``z = beta [psi(pi_theta(y_w)/pi_ref(y_w)) - psi(pi_theta(y_l)/pi_ref(y_l))]``
    (:func:`fdpo_logits`); ``divergence="reverse_kl"`` with ``eps = 0`` is DPO,
    ``-log sigmoid(beta [(pw - rw) - (pl - rl)])``. ``eps = label_smoothing > 0`` is conservative
    DPO: the labels are taken to be flipped with probability ``eps``.

    Args:
      policy_chosen, policy_rejected: ``[B]`` sequence log-probs of ``y_w`` / ``y_l`` under
        ``pi_theta`` (differentiable).
      reference_chosen, reference_rejected: ``[B]`` the same under ``pi_ref``.
      beta: ``> 0``, the strength of the divergence constraint.
      divergence: ``"reverse_kl"`` (DPO), ``"forward_kl"``, ``"js"``, ``"alpha"``, another catalog
        name or a :class:`~fdiv.generators.Generator` (see the module docstring).
      alpha: the paper's alpha in ``(0, 1)`` for ``divergence="alpha"``.
      label_smoothing: ``eps`` in ``[0, 0.5)``.
      max_exponent: clip of every ``exp`` argument (module docstring).

    Returns:
      ``[B]`` in float32 or wider.

    Raises:
      ValueError: ``beta <= 0``, ``label_smoothing`` outside ``[0, 0.5)``, ``alpha`` outside
        ``(0, 1)`` for ``"alpha"``, an unknown divergence (the message lists the names).

    References:
      Wang et al. (2023), Beyond Reverse KL: Generalizing Direct Preference Optimization with
      Diverse Divergence Constraints; Rafailov et al. (2023), DPO.
    """
    label_smoothing = nx.check_hyperparameter(
        "label_smoothing", label_smoothing, lambda e: 0.0 <= e < 0.5, "in [0, 0.5)"
    )
    z = fdpo_logits(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        reference_chosen=reference_chosen,
        reference_rejected=reference_rejected,
        beta=beta,
        divergence=divergence,
        alpha=alpha,
        max_exponent=max_exponent,
    )
    loss = -jax.nn.log_sigmoid(z)
    if not (nx.is_static(label_smoothing) and label_smoothing == 0):
        loss = (1.0 - label_smoothing) * loss - label_smoothing * jax.nn.log_sigmoid(-z)
    return loss


def preference_probability(
    *,
    policy_chosen: ArrayLike,
    policy_rejected: ArrayLike,
    reference_chosen: ArrayLike,
    reference_rejected: ArrayLike,
    beta: float = 0.1,
    divergence: str | gen.Generator = "reverse_kl",
    alpha: float = 0.5,
    max_exponent: float = 50.0,
) -> jax.Array:
    r"""The model's Bradley-Terry probability ``P(y_w > y_l) = sigmoid(z)`` (:func:`fdpo_logits`).

    Returns:
      ``[B]`` in ``[0, 1]``.
    """
    return jax.nn.sigmoid(
        fdpo_logits(
            policy_chosen=policy_chosen,
            policy_rejected=policy_rejected,
            reference_chosen=reference_chosen,
            reference_rejected=reference_rejected,
            beta=beta,
            divergence=divergence,
            alpha=alpha,
            max_exponent=max_exponent,
        )
    )
