r"""Policy-gradient losses with f-divergences: f-DPG, DPH-RL's rehearsal penalty, and GRPO.

Everything here fits or regularises the policy ``pi_theta`` toward a target by

    D_f(pi_theta || target) = E_target[f(pi_theta / target)],   u = pi_theta / target,

with ``log u`` the sum of token log-ratios at sequence level. The catalog of
:mod:`fdiv.generators` names ``D_f(P || Q)`` after its first argument, so the catalog's ``"kl"``
(``f = u log u``) gives ``KL(pi || target)``: what the alignment literature calls the *reverse*
KL (mode-seeking). :func:`alignment_generator` translates the alignment names:

    alignment name   catalog generator          D_f(pi || target) is
    ---------------  -------------------------  ---------------------------------------------
    "forward_kl"     get("reverse_kl")          KL(target || pi), mass-covering
    "reverse_kl"     get("kl")                  KL(pi || target), mode-seeking
    "js"             get("js")                  Jensen-Shannon (symmetric)
    "tv"             get("total_variation")     total variation (symmetric)
    "alpha"          get("alpha", alpha=a)      catalog alpha convention (a = 1: KL(pi || .),
                                                a = 0: KL(target || pi)); default a = 0.5
    any other name   get(name, **params)        the catalog's own meaning
    a Generator      passed through

(Note the catalog's own alias ``"forward_kl"`` means ``"kl"``; through :func:`alignment_generator`
the alignment meaning wins.)

**f-DPG** (Go et al. 2023) fits ``pi_theta`` to an energy-based target ``p(y) = P(y) / Z`` by
minimising ``D_f(pi_theta || p)``, whose gradient is

    grad D_f(pi_theta || p) = sum_y p(y) f'(pi(y)/p(y)) grad pi(y) / p(y)
                            = E_{y ~ pi}[f'(pi(y)/p(y)) grad log pi(y)].

So ``-f'(pi/p)`` is a *pseudo-reward* (:func:`fdpg_pseudo_reward`) for REINFORCE:
:func:`fdpg_loss` is the surrogate whose gradient is an unbiased estimate of that gradient, for
samples from ``pi`` itself or from any proposal ``q`` covering it (importance weight
``pi/q``), and any constant baseline. ``Z`` is estimated by importance sampling
(:class:`PartitionEstimate`), the baseline by a :func:`moving_average`.

**DPH-RL** (Li et al. 2025) keeps ``pi_theta`` close to the initial policy ``pi_0`` with a
mass-covering f-divergence evaluated on a *stored* set of responses sampled from ``pi_0`` and
their stored token log-probs: :func:`dph_penalty`. It is combined with a group-relative policy
gradient (GRPO, :func:`group_advantages`, :func:`grpo_loss`) on the fresh samples.

Inputs are promoted to at least float32 before any arithmetic; float64 stays float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv import generators as gen

__all__ = [
    "ALIGNMENT_NAMES",
    "FDPGTerms",
    "PartitionEstimate",
    "alignment_generator",
    "dph_penalty",
    "fdpg_loss",
    "fdpg_pseudo_reward",
    "group_advantages",
    "grpo_loss",
    "moving_average",
    "partition_init",
    "partition_log_z",
    "partition_update",
]

ALIGNMENT_NAMES = ("forward_kl", "reverse_kl", "js", "tv", "alpha")
"""Divergence names in the alignment literature's sense (see the module docstring)."""


# ------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------


def alignment_generator(divergence: str | gen.Generator, **params) -> gen.Generator:
    r"""The catalog generator ``g`` whose ``D_g(pi || target)`` is the named ``divergence``.

    ``"forward_kl"`` -> ``get("reverse_kl")`` (``KL(target || pi)``); ``"reverse_kl"`` ->
    ``get("kl")`` (``KL(pi || target)``); ``"js"`` -> ``get("js")``; ``"tv"`` ->
    ``get("total_variation")``; ``"alpha"`` -> ``get("alpha", alpha=params.get("alpha", 0.5))``
    (the catalog's alpha convention); any other name -> ``get(name, **params)``; a generator is
    returned as is.

    Args:
      divergence: an alignment name (:data:`ALIGNMENT_NAMES`), a catalog name or a generator.
      **params: generator parameters (``alpha=...`` for ``"alpha"``; catalog parameters).

    Returns:
      The generator.

    Raises:
      ValueError: unknown name (the message lists the alignment and the catalog names), bad
        parameters, or parameters given with a generator object.
    """
    if isinstance(divergence, gen.Generator):
        if params:
            raise ValueError(
                f"alignment_generator: parameters {sorted(params)} cannot be applied to the "
                f"generator object {divergence!r}; build it with them instead"
            )
        return divergence
    if not isinstance(divergence, str):
        raise ValueError(
            f"divergence must be a name or a fdiv.generators.Generator, got {divergence!r}"
        )
    if divergence == "forward_kl":
        return gen.get("reverse_kl", **params)
    if divergence == "reverse_kl":
        return gen.get("kl", **params)
    if divergence == "tv":
        return gen.get("total_variation", **params)
    if divergence == "alpha":
        return gen.get("alpha", **{"alpha": 0.5, **params})
    known = set(gen.names()) | set(getattr(gen, "_ALIASES", {}))
    if divergence not in known:
        raise ValueError(
            f"unknown divergence {divergence!r}; alignment names: {', '.join(ALIGNMENT_NAMES)}; "
            f"catalog names: {', '.join(gen.names())}"
        )
    return gen.get(divergence, **params)


def _mask(where: ArrayLike | None, shape) -> jax.Array:
    if where is None:
        return jnp.ones(shape, bool)
    return jnp.broadcast_to(jnp.asarray(where, bool), shape)


def _f_prime_extended(g: gen.Generator, log_u: jax.Array) -> jax.Array:
    """``f'(u)`` including ``u = inf`` (``log u = +inf``), where it is ``f'(inf) = lim f(u)/u``."""
    at_inf = log_u == jnp.inf
    safe = jnp.where(at_inf, 0.0, log_u)
    slope = g.dual.f(jnp.full_like(log_u, -jnp.inf))  # dual f(0+) = f'(inf)
    return jnp.where(at_inf, slope, g.f_prime(safe))


# ------------------------------------------------------------------------------------------------
# f-DPG.
# ------------------------------------------------------------------------------------------------


class FDPGTerms(NamedTuple):
    """Per-sample quantities of :func:`fdpg_loss` (all ``[B]``, without gradient; 0 where masked).

    Attributes:
      pseudo_reward: ``R = -f'(pi(y)/p(y))``.
      advantage: ``R - baseline``.
      importance_weight: ``w = pi(y)/q(y)`` (1 on-policy).
    """

    pseudo_reward: jax.Array
    advantage: jax.Array
    importance_weight: jax.Array


def fdpg_pseudo_reward(
    *, log_pi: ArrayLike, log_target: ArrayLike, divergence: str | gen.Generator
) -> jax.Array:
    r"""f-DPG's pseudo-reward ``R(y) = -f'(pi(y) / p(y))``, ``f`` from :func:`alignment_generator`.

    Maximising ``E_pi[R]`` by REINFORCE (``R`` held fixed) follows ``-grad D_f(pi || p)``.
    With the catalog forms: ``"forward_kl"`` (``f'(u) = -1/u``) gives ``R = p/pi``, DPG's
    importance weight; ``"reverse_kl"`` (``f'(u) = log u + 1``) gives ``R = log p - log pi - 1``,
    the KL-regularised reward; ``"js"`` gives ``R = log((1 + p/pi)/2) / 2``; ``"tv"`` gives
    ``R = sign(p - pi) / 2``. Where ``p(y) = 0 < pi(y)`` the value is ``-f'(inf)`` (0 for the
    forward KL, ``-log(2)/2`` for JS, ``-1/2`` for TV, ``-inf`` for the reverse KL, which is
    infinite there).

    Args:
      log_pi: ``[B]`` sequence log-probs of the samples under ``pi``.
      log_target: ``[B]`` *normalised* target log-probs ``log p(y) = log P(y) - log Z``
        (``-inf`` allowed); ``log Z`` from :func:`partition_log_z`.
      divergence: an alignment name, a catalog name or a generator.

    Returns:
      ``[B]``.
    """
    g = alignment_generator(divergence)
    log_pi, log_target = nx.in_compute_dtype(log_pi, log_target)
    return -_f_prime_extended(g, log_pi - log_target)


def fdpg_loss(
    *,
    log_pi: ArrayLike,
    log_target: ArrayLike,
    divergence: str | gen.Generator,
    baseline: ArrayLike = 0.0,
    log_proposal: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> tuple[jax.Array, FDPGTerms]:
    r"""f-DPG surrogate loss (a scalar) whose gradient estimates ``grad D_f(pi_theta || p)``.

    ``loss = -mean_i sg(w_i (R_i - b)) log pi_theta(y_i)``, ``R_i = -f'(pi(y_i)/p(y_i))`` from
    ``sg(log pi)``, ``w_i = pi(y_i)/q(y_i)``, ``y_i ~ q`` (``q = pi`` when ``log_proposal`` is
    None, then ``w = 1``), ``sg`` = stop-gradient. Because
    ``E_q[w (R - b) grad log pi] = E_pi[R grad log pi] - b sum_y grad pi(y)`` and
    ``sum_y grad pi(y) = 0``, its gradient is an unbiased estimate of
    ``-E_pi[R grad log pi] = grad D_f(pi || p)`` for any constant baseline ``b``, provided
    ``q > 0`` wherever ``pi > 0``. Samples with ``w = 0`` (``pi(y) = 0``) contribute exactly 0.

    Args:
      log_pi: ``[B]`` differentiable sequence log-probs ``log pi_theta(y_i)``.
      log_target: ``[B]`` normalised target log-probs ``log P(y_i) - log Z`` (``-inf`` where the
        target has no mass).
      divergence: an alignment name (``"forward_kl"`` is DPG), a catalog name or a generator.
      baseline: a constant ``b`` (scalar or ``[B]``, e.g. a :func:`moving_average` of ``R``).
      log_proposal: ``[B]`` ``log q(y_i)`` when the samples come from a proposal ``q``.
      mask: ``[B]`` booleans; ``False`` samples are left out (the mean is over kept ones).

    Returns:
      ``(loss, FDPGTerms(pseudo_reward, advantage, importance_weight))``; the loss is a scalar,
      0 when no sample is kept.

    References:
      Go, Korbak, Kruszewski, Rozen, Ryu, Dymetman (2023), Aligning Language Models with
      Preferences through f-divergence Minimization (ICML 2023); Khalifa, Elsahar, Dymetman
      (2021), A Distributional Approach to Controlled Text Generation (DPG).
    """
    g = alignment_generator(divergence)
    arrays = [log_pi, log_target, baseline] + ([] if log_proposal is None else [log_proposal])
    arrays = nx.in_compute_dtype(*arrays)
    log_pi, log_target, baseline = arrays[:3]
    keep = _mask(mask, log_pi.shape)
    log_pi = jnp.where(keep, log_pi, 0.0)
    fixed = jax.lax.stop_gradient(log_pi)
    log_target = jnp.where(keep, jax.lax.stop_gradient(log_target), 0.0)
    reward = -_f_prime_extended(g, fixed - log_target)
    advantage = reward - jax.lax.stop_gradient(baseline)
    if log_proposal is None:
        weight = jnp.ones_like(fixed)
    else:
        log_q = jnp.where(keep, jax.lax.stop_gradient(arrays[3]), 0.0)
        zero = fixed == -jnp.inf
        weight = jnp.where(zero, 0.0, jnp.exp(jnp.where(zero, 0.0, fixed - log_q)))
    weight = jnp.where(keep, weight, 0.0)
    coefficient = jax.lax.stop_gradient(nx.mul0(weight, advantage))
    total = jnp.sum(nx.mul0(coefficient, log_pi))
    count = jnp.sum(keep)
    loss = -total / jnp.maximum(count, 1).astype(total.dtype)
    terms = FDPGTerms(
        pseudo_reward=jnp.where(keep, reward, 0.0),
        advantage=jnp.where(keep, advantage, 0.0),
        importance_weight=weight,
    )
    return loss, terms


class PartitionEstimate(NamedTuple):
    """Running importance-sampling estimate of ``Z = sum_y P(y) = E_q[P(y)/q(y)]``, in log space.

    Attributes:
      log_sum: scalar ``log sum_i P(y_i)/q(y_i)`` over every sample seen.
      count: scalar, the number of samples seen.
    """

    log_sum: jax.Array
    count: jax.Array


def partition_init() -> PartitionEstimate:
    """An empty :class:`PartitionEstimate` (``log_sum = -inf``, ``count = 0``)."""
    return PartitionEstimate(jnp.array(-jnp.inf, jnp.float32), jnp.array(0.0, jnp.float32))


def partition_update(
    estimate: PartitionEstimate,
    log_unnormalized: ArrayLike,
    log_proposal: ArrayLike,
    *,
    mask: ArrayLike | None = None,
) -> PartitionEstimate:
    r"""Add a batch ``y_i ~ q``: ``log_sum <- logaddexp(log_sum, logsumexp(log P - log q))``.

    ``log P(y_i) = -inf`` (a sample outside the target's support, e.g. a constraint violator)
    contributes exactly 0 to the sum and 1 to the count. No gradient flows.

    Args:
      estimate: the running :class:`PartitionEstimate`.
      log_unnormalized: ``[B]`` ``log P(y_i)``.
      log_proposal: ``[B]`` ``log q(y_i)`` of the distribution the samples were drawn from.
      mask: ``[B]`` booleans; ``False`` samples are not counted.

    Returns:
      The updated estimate.
    """
    log_sum, count, log_p, log_q = nx.in_compute_dtype(
        estimate.log_sum, estimate.count, log_unnormalized, log_proposal
    )
    keep = _mask(mask, log_p.shape)
    absent = (log_p == -jnp.inf) | ~keep
    log_ratio = jnp.where(absent, -jnp.inf, jnp.where(absent, 0.0, log_p) - log_q)
    batch = jax.nn.logsumexp(log_ratio) if log_ratio.size else jnp.array(-jnp.inf, log_sum.dtype)
    new = PartitionEstimate(
        jnp.logaddexp(log_sum, batch), count + jnp.sum(keep).astype(count.dtype)
    )
    return jax.tree_util.tree_map(jax.lax.stop_gradient, new)


def partition_log_z(estimate: PartitionEstimate) -> jax.Array:
    r"""``log Z_hat = log_sum - log(count)``: the log of the importance-sampling mean of ``P/q``.

    ``Z_hat`` is unbiased for ``Z`` (its log is not, by Jensen's inequality); ``-inf`` before any
    sample, or while every sample seen had ``P(y) = 0``.
    """
    log_sum, count = nx.in_compute_dtype(estimate.log_sum, estimate.count)
    seen = count > 0
    return jnp.where(seen, log_sum - jnp.log(jnp.where(seen, count, 1.0)), -jnp.inf)


def moving_average(average: ArrayLike, value: ArrayLike, *, decay: float) -> jax.Array:
    """Exponential moving average ``decay * average + (1 - decay) * value`` (a baseline).

    Args:
      average: the running average.
      value: the new value (e.g. ``mean(R)`` of a batch).
      decay: in ``[0, 1)``.

    Raises:
      ValueError: ``decay`` outside ``[0, 1)``.
    """
    nx.check_hyperparameter("decay", decay, lambda d: 0.0 <= d < 1.0, "in [0, 1)")
    average, value = nx.in_compute_dtype(average, value)
    return decay * average + (1.0 - decay) * value


# ------------------------------------------------------------------------------------------------
# DPH-RL and GRPO.
# ------------------------------------------------------------------------------------------------


def dph_penalty(
    *,
    log_pi_tokens: ArrayLike,
    log_pi0_tokens: ArrayLike,
    divergence: str | gen.Generator = "forward_kl",
    mask: ArrayLike | None = None,
    log_ratio_clip: float | None = None,
    value_clip: float | None = None,
) -> jax.Array:
    r"""DPH-RL's rehearsal penalty per stored sequence: ``mean_t g_c(pi(y_t|.)/pi_0(y_t|.))``.

    ``g_c(u) = f(u) - f'(1)(u - 1) >= 0`` (convexity), ``f`` from :func:`alignment_generator`.
    The sequences ``y`` were sampled from the initial policy ``pi_0`` and their token log-probs
    stored, so ``E_{y_t ~ pi_0}[g_c(u_t)] = D_f(pi(.|s_t) || pi_0(.|s_t))`` at each state: no
    reference model is needed online. ``"forward_kl"`` gives ``u - 1 - log u``, whose expectation
    is ``KL(pi_0 || pi)``; ``"js"`` gives the catalog's JS ``f``, which is *half* of the DPH-RL
    paper's ``g(u) = u log u - (u + 1) log((u + 1)/2)`` (the catalog's JS is bounded by ``log 2``);
    ``"alpha"`` follows the catalog's convention.

    Args:
      log_pi_tokens: ``[B, T]`` token log-probs of the stored sequences under ``pi_theta``.
      log_pi0_tokens: ``[B, T]`` the stored token log-probs under ``pi_0`` (no gradient).
      divergence: an alignment name (default ``"forward_kl"``), a catalog name or a generator.
      mask: ``[B, T]`` booleans; ``False`` tokens (padding) are left out.
      log_ratio_clip: ``a > 0``: ``log u`` clipped to ``[-a, a]`` first (no gradient beyond).
      value_clip: ``b > 0``: each token's ``g_c`` clipped to ``[-b, b]`` (no gradient beyond).
        DPH-RL's code clips its forward-KL term (``a = 20``, ``b = 10``, verl's ``low_var_kl``);
        ``None`` (default) keeps the exact value.

    Returns:
      ``[B]``; 0 for a row without kept tokens.

    References:
      Li et al. (2025), The Choice of Divergence: A Neglected Key to Mitigating Diversity
      Collapse in Reinforcement Learning with Verifiable Reward.
    """
    g = alignment_generator(divergence)
    log_pi, log_pi0 = nx.in_compute_dtype(log_pi_tokens, log_pi0_tokens)
    keep = _mask(mask, jnp.broadcast_shapes(log_pi.shape, log_pi0.shape))
    log_u = jnp.where(keep, log_pi - jax.lax.stop_gradient(log_pi0), 0.0)
    if log_ratio_clip is not None:
        nx.check_hyperparameter("log_ratio_clip", log_ratio_clip, lambda a: a > 0, "> 0")
        log_u = jnp.clip(log_u, -log_ratio_clip, log_ratio_clip)
    value = g.f(log_u)
    c = g.f_prime_at_one  # traced for a traced skew generator
    if not (nx.is_static(c) and c == 0):
        value = value - c * jnp.expm1(log_u)
    if value_clip is not None:
        nx.check_hyperparameter("value_clip", value_clip, lambda b: b > 0, "> 0")
        value = jnp.clip(value, -value_clip, value_clip)
    value = jnp.where(keep, value, 0.0)
    count = jnp.sum(keep, axis=-1)
    return jnp.sum(value, axis=-1) / jnp.maximum(count, 1).astype(value.dtype)


def group_advantages(
    rewards: ArrayLike, *, normalize: bool = True, eps: float = 1e-6, ddof: int = 1
) -> jax.Array:
    r"""Group-relative advantages ``(r - mean_g r) / (std_g r + eps)`` over the last axis.

    Args:
      rewards: ``[P, G]``: ``G`` sampled responses to each of ``P`` prompts.
      normalize: divide by the group's standard deviation plus ``eps``; ``False`` gives
        ``r - mean_g r``.
      eps: ``>= 0``; keeps a group of equal rewards at advantage 0.
      ddof: the standard deviation's delta degrees of freedom: 1 (default) is the sample std of
        ``torch.std``, which verl (and so DPH-RL's code) and TRL use; 0 the population std. A group
        of one response has advantage 0 either way.

    Returns:
      ``[P, G]``.

    References:
      Shao et al. (2024), DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
      Language Models (GRPO).
    """
    nx.check_hyperparameter("eps", eps, lambda e: e >= 0, ">= 0")
    if ddof not in (0, 1):
        raise ValueError(f"ddof={ddof!r}: must be 0 (population std) or 1 (sample std)")
    (rewards,) = nx.in_compute_dtype(rewards)
    centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    if not normalize:
        return centred
    dof = max(rewards.shape[-1] - ddof, 1)  # G = 1: centred is 0, any divisor gives 0
    std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / dof)
    denominator = std + eps
    safe = jnp.where(denominator > 0, denominator, 1.0)
    return jnp.where(denominator > 0, centred / safe, 0.0)


def grpo_loss(
    log_pi_tokens: ArrayLike,
    advantages: ArrayLike,
    *,
    old_log_pi_tokens: ArrayLike | None = None,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    dual_clip: float | None = None,
    mask: ArrayLike | None = None,
) -> jax.Array:
    r"""Clipped policy-gradient loss per sequence, ``-mean_t min(rho_t A, clip(rho_t, 1 - e, 1 + e_h) A)``.

    ``rho_t = exp(log pi_theta(y_t|.) - log pi_old(y_t|.))``. ``old_log_pi_tokens=None`` means
    on-policy (``old = stop_gradient(log_pi)``, ``rho = 1``), where the gradient is
    ``-A grad mean_t log pi``. The unclipped term is only evaluated where it is the minimum, so a
    huge ratio on the clipped side gives a finite value and a zero gradient. With ``dual_clip = c``
    a negative advantage's objective is also bounded below, ``max(min(...), c A)`` (Ye et al.
    2020; verl's ``clip_ratio_c``), so a huge ratio cannot make one token dominate.

    Args:
      log_pi_tokens: ``[B, T]`` differentiable token log-probs under ``pi_theta``.
      advantages: ``[B]`` per-sequence advantages (e.g. :func:`group_advantages`, flattened), or
        ``[B, T]`` per token.
      old_log_pi_tokens: ``[B, T]`` token log-probs under the sampling policy (no gradient).
      clip_epsilon: ``e`` in ``(0, 1)``, the lower clip ``1 - e`` (and the upper one unless
        ``clip_epsilon_high`` is given).
      clip_epsilon_high: ``e_h > 0``, the upper clip ``1 + e_h`` (DAPO's "clip-higher", e.g.
        0.28); ``None`` is ``e``.
      dual_clip: ``c > 1`` or ``None`` (no dual clip).
      mask: ``[B, T]`` booleans; ``False`` tokens (padding) are left out.

    Returns:
      ``[B]``; 0 for a row without kept tokens.

    References:
      Schulman et al. (2017), Proximal Policy Optimization Algorithms; Shao et al. (2024),
      DeepSeekMath (GRPO); Yu et al. (2025), DAPO (clip-higher); Ye et al. (2020), Mastering
      Complex Control in MOBA Games with Deep Reinforcement Learning (dual clip).
    """
    nx.check_hyperparameter("clip_epsilon", clip_epsilon, lambda e: 0.0 < e < 1.0, "in (0, 1)")
    if clip_epsilon_high is not None:
        nx.check_hyperparameter("clip_epsilon_high", clip_epsilon_high, lambda e: e > 0.0, "> 0")
    if dual_clip is not None:
        nx.check_hyperparameter("dual_clip", dual_clip, lambda c: c > 1.0, "> 1")
    arrays = [log_pi_tokens, advantages]
    if old_log_pi_tokens is not None:
        arrays.append(old_log_pi_tokens)
    arrays = nx.in_compute_dtype(*arrays)
    log_pi, adv = arrays[:2]
    old = arrays[2] if old_log_pi_tokens is not None else log_pi
    adv = jax.lax.stop_gradient(adv)
    if adv.ndim == log_pi.ndim - 1:
        adv = adv[..., None]
    keep = _mask(mask, log_pi.shape)
    log_ratio = jnp.where(keep, log_pi - jax.lax.stop_gradient(old), 0.0)
    high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high
    lo, hi = jnp.log1p(-clip_epsilon), jnp.log1p(high)
    # min(rho A, clip(rho) A) is the unclipped term iff (A >= 0 and rho <= 1 + e_h) or
    # (A < 0 and rho >= 1 - e); elsewhere it is the clipped, constant one. The dual clip replaces
    # a negative advantage's unclipped term by the constant c A where rho > c.
    above_dual = jnp.zeros_like(keep) if dual_clip is None else log_ratio > jnp.log(dual_clip)
    unclipped = jnp.where(adv >= 0, log_ratio <= hi, (log_ratio >= lo) & ~above_dual)
    rho = jnp.exp(jnp.where(unclipped, log_ratio, 0.0))
    rho_clipped = jnp.exp(jnp.clip(jax.lax.stop_gradient(log_ratio), lo, hi))
    clipped = rho_clipped * adv if dual_clip is None else jnp.where(above_dual & (adv < 0), dual_clip * adv, rho_clipped * adv)  # fmt: skip
    objective = jnp.where(unclipped, rho * adv, clipped)
    objective = jnp.where(keep, objective, 0.0)
    count = jnp.sum(keep, axis=-1)
    return -jnp.sum(objective, axis=-1) / jnp.maximum(count, 1).astype(objective.dtype)
