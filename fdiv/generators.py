r"""The catalog of f-divergence generators.

An f-divergence between distributions ``P`` and ``Q`` is

    D_f(P || Q) = E_Q[f(p / q)] = sum_x q(x) f(p(x) / q(x)),   f convex, f(1) = 0.

A :class:`Generator` bundles everything the rest of fdiv needs from ``f``, always evaluated from
*log* arguments so that ratios ``u = p/q`` far from 1 (``|log u|`` up to ~80 in float32) never
overflow where the true value is finite:

- ``f(log_u)``           the generator ``f(u)``;
- ``f_prime(log_u)``     ``f'(u)``;
- ``f_double_prime(log_u)`` ``f''(u)``;
- ``weight(log_r)``      the density-ratio weight ``h(r) = r^2 f''(r)`` of f-distill;
- ``conjugate(t)``       the Fenchel conjugate ``f*(t) = sup_{u >= 0} (t u - f(u))``, ``+inf``
  outside its domain;
- ``dual``               the Csiszar dual ``f_dual(v) = v f(1/v)``, with
  ``D_f(P || Q) = D_{f_dual}(Q || P)`` (e.g. ``kl.dual`` is ``reverse_kl``).

Adding ``c (u - 1)`` to ``f`` leaves every divergence between normalised distributions unchanged
but shifts ``f'`` and ``f*``. Each generator below uses the form written in its docstring;
``f_prime_at_one`` gives ``f'(1)``, and ``fdiv.divergence`` internally sums the *normalised* form
``f(u) - f'(1)(u - 1) >= 0`` so every per-class term is non-negative.

Use :func:`get` (``get("alpha", alpha=0.5)``) and :func:`names`; :func:`from_function` turns any
convex ``f`` written in ``jax.numpy`` into a generator usable everywhere a catalogued one is.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fdiv import _numerics as nx
from fdiv._numerics import promote

__all__ = [
    "Generator",
    "get",
    "names",
    "resolve",
    "register",
    "from_function",
]

_LOG2 = math.log(2.0)


class Generator(abc.ABC):
    """Base class of an f-divergence generator; subclasses implement the private ``_`` methods.

    Public methods take log arguments (``log_u``, ``log_r``) or the conjugate variable ``t`` as
    arrays of any shape and act elementwise. ``log_u`` ranges over ``[-inf, +inf)``: ``-inf`` gives
    the limit at ``u = 0``; the limit ``u -> inf`` is the dual's value at 0 (``g.dual.f(-inf)`` is
    ``f'(inf) = lim f(u)/u``), so ``+inf`` is not a valid argument; bfloat16/float16 inputs are computed in float32 and
    returned in the input dtype.

    A generator is a pytree whose leaves are its numeric hyperparameters (``alpha``, ``beta``,
    ``lam``; none for the fixed ones): pass it through ``jax.jit`` / ``vmap`` / ``grad`` like any
    argument, or build it inside a traced function (``get("alpha", alpha=a)`` with a traced ``a``).
    Python-number parameters are validated and specialised at trace time (closed-form fast paths,
    the near-``u = 1`` series); traced ones are not checked (they have no value yet), select their
    special cases with ``jnp.where``, and use the direct forms near ``u = 1`` (see
    :func:`_near_one`). With Python-number parameters a generator hashes by name and parameters
    and works as a ``jit`` static argument.

    Attributes:
      name: registry name, e.g. ``"alpha"``.
      params: the generator's hyperparameters, e.g. ``{"alpha": 0.5}``.
      f_prime_at_one: ``f'(1)`` of the form this generator uses.
    """

    name: str = "generator"
    f_prime_at_one: float = 0.0
    # Attribute names of the numeric hyperparameters: the pytree leaves (children). Every other
    # instance attribute is static pytree data and must be hashable.
    _traceable: tuple[str, ...] = ()
    # Constructor parameters that are static (e.g. skew_js' ``normalize``), listed in ``params``.
    _static_params: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten, functools.partial(_unflatten, cls))

    @property
    def params(self) -> dict:
        return {n: getattr(self, n) for n in (*self._traceable, *self._static_params)}

    @property
    def traced(self) -> bool:
        """Whether any hyperparameter is an array (traced or batched) rather than a Python number."""
        return not all(nx.is_static(x) for x in jax.tree.leaves(self))

    # -- identity: with Python-number parameters, hashable (usable as jit static arguments) --
    def _key(self):
        children, aux = _flatten(self)
        # Arrays compare by identity: `==` on a tracer is not a Python bool.
        leaves = tuple(
            c if nx.is_static(c) or isinstance(c, Generator) else ("array", id(c)) for c in children
        )
        return (type(self), aux, leaves)

    def __eq__(self, other):
        return isinstance(other, Generator) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{self.name}({args})" if args else self.name

    # -- public, dtype-handling wrappers --
    @promote
    def f(self, log_u):
        """``f(u)`` evaluated from ``log u`` (``log_u = -inf`` gives the limit ``f(0+)``)."""
        return self._f(log_u)

    @promote
    def f_prime(self, log_u):
        """``f'(u)`` evaluated from ``log u``."""
        return self._f_prime(log_u)

    @promote
    def weight(self, log_r):
        """``h(r) = r^2 f''(r)`` from ``log r``: the f-distill weight (reverse KL gives ``h = 1``)."""
        return self._weight(log_r)

    @promote
    def f_double_prime(self, log_u):
        """``f''(u)`` evaluated from ``log u`` (``h(u) / u^2``, in closed form where catalogued)."""
        return self._f_double_prime(log_u)

    @promote
    def conjugate(self, t):
        """Fenchel conjugate ``f*(t) = sup_{u >= 0} (t u - f(u))``; ``+inf`` outside its domain."""
        return self._conjugate(t)

    @property
    def dual(self) -> Generator:
        """The Csiszar dual ``v f(1/v)``: ``D_f(P || Q) = D_dual(Q || P)``."""
        return _Dual(self)

    @property
    def bounded(self) -> bool:
        """Whether ``D_f(P || Q)`` is finite for every pair, i.e. ``f(0+)`` and ``f'(inf)`` are finite."""
        ends = jnp.array([-jnp.inf], jnp.float32)
        return bool(jnp.isfinite(self._f(ends)[0]) and jnp.isfinite(self.dual._f(ends)[0]))

    # -- normalised form used by the categorical divergence (every term >= 0) --
    def _f_normalized(self, log_u):
        """``f(u) - f'(1) (u - 1)``, by its series in ``log u`` near ``u = 1`` (:func:`_near_one`)."""
        return _near_one(self, log_u, self._f_normalized_direct(log_u), derivative=False)

    def _u_f_prime_normalized(self, log_u):
        """``u (f'(u) - f'(1))``, by its series in ``log u`` near ``u = 1`` (:func:`_near_one`)."""
        return _near_one(self, log_u, self._u_f_prime_normalized_direct(log_u), derivative=True)

    def _f_normalized_direct(self, log_u):
        c = self.f_prime_at_one
        if nx.is_static(c) and c == 0:
            return self._f(log_u)
        return self._f(log_u) - c * jnp.expm1(log_u)

    def _u_f_prime_normalized_direct(self, log_u):
        c = self.f_prime_at_one
        value = self._u_f_prime(log_u)
        return value if nx.is_static(c) and c == 0 else value - c * jnp.exp(log_u)

    def _u_f_prime(self, log_u):
        """``u f'(u) = d f / d log u``: the factor the categorical rule multiplies the larger
        probability by (``p f'(p/q) = q u f'(u)``), so that a ratio beyond the float range does not
        leave ``0 * inf``. This default is exact where ``lim_{u->0} u f'(u) = 0`` (every ``f`` with
        finite ``f(0+)``); generators whose ``f'`` grows like ``1/u`` override it in closed form.
        """
        return nx.mul0(jnp.exp(log_u), self._f_prime(log_u))

    def _near_one_traced(self, log_u, direct, *, derivative: bool):
        """:func:`_near_one` for traced parameters: ``direct`` unless a subclass has a series."""
        return direct

    def _slope_at_infinity(self, like):
        """``f'(inf) = lim f(u)/u``, which is ``dual.f(0+)``, shaped like ``like``."""
        return self.dual._f(jnp.full_like(like, -jnp.inf))

    def _f_double_prime(self, log_u):
        return self._weight(log_u) * jnp.exp(-2.0 * log_u)

    # -- what a subclass implements (from log arguments, in the compute dtype) --
    @abc.abstractmethod
    def _f(self, log_u): ...

    @abc.abstractmethod
    def _f_prime(self, log_u): ...

    @abc.abstractmethod
    def _weight(self, log_r): ...

    def _conjugate(self, t):
        return _numeric_conjugate(self, t)


def _flatten(g: Generator):
    children = tuple(getattr(g, n) for n in g._traceable)
    aux = tuple(sorted((k, v) for k, v in vars(g).items() if k not in g._traceable))
    return children, aux


def _unflatten(cls, aux, children) -> Generator:
    """Rebuild without ``__init__``: the leaves may be tracers or batched arrays (not validated)."""
    g = object.__new__(cls)
    vars(g).update(aux)
    vars(g).update(zip(cls._traceable, children, strict=True))
    return g


# ------------------------------------------------------------------------------------------------
# Near u = 1: series in r = log u.
# ------------------------------------------------------------------------------------------------

# |log u| below which the normalised f and u f'(u) come from their series. Written directly they
# cancel there: f(u) - f'(1)(u - 1) ~ f''(1) r^2 / 2 is the difference of O(r) terms (relative error
# ~eps / |r|, 0.6 at r = 1e-7 in float32), the regime of every converged distillation run.
NEAR_ONE_RADIUS = 0.5
_FIT_DEGREE = 14  # of rho(r) = phi(r) / r^2; float64 uses all of it
# Enough for float32: the terms shrink like (R / pi)^n (every singularity is >= pi away).
_FLOAT32_DEGREE = 8


@functools.cache  # generators hash by name and parameters
def _near_one_series(g: Generator) -> tuple[float, ...] | None:
    """Coefficients ``a_n`` with ``phi(r) = f_n(e^r) = r^2 sum_n a_n r^n`` on ``|r| <= R``, or None.

    ``phi(0) = phi'(0) = 0`` for every normalised generator, so ``rho = phi / r^2`` is smooth; it is
    fitted (least squares, degree 14) to ``phi`` evaluated directly in float64 at 40 Chebyshev
    points of ``[-R, R]``, where the direct form is still accurate to ~1e-14. The fit is accepted
    only if it matches the direct form to 1e-10 at 64 other points with ``|r| >= R/8``; a generator
    that is not smooth at 1 (total variation, a user's ``|u - 1|``) fails that and keeps the direct
    form. Computed once per generator (cached), eagerly, whatever trace it is first needed in.
    """
    import numpy as np

    R = NEAR_ONE_RADIUS
    nodes = R * np.cos(np.pi * (np.arange(40) + 0.5) / 40)
    checks = R * np.concatenate([np.linspace(1 / 8, 1, 32), -np.linspace(1 / 8, 1, 32)])
    try:  # float64 everywhere; this process's own CPU (a multi-process run's global device 0
        # belongs to process 0, whose arrays the other processes cannot read)
        device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        device = None
    with jax.ensure_compile_time_eval(), jax.enable_x64(True), jax.default_device(device):
        phi = np.asarray(g._f_normalized_direct(jnp.asarray(nodes, jnp.float64)), np.float64)
        direct = np.asarray(g._f_normalized_direct(jnp.asarray(checks, jnp.float64)), np.float64)
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(direct))):
        return None
    coef = np.polynomial.polynomial.polyfit(nodes / R, phi / nodes**2, _FIT_DEGREE)
    coef = coef / R ** np.arange(_FIT_DEGREE + 1)
    fitted = checks**2 * np.polynomial.polynomial.polyval(checks, coef)
    if not np.all(np.abs(fitted - direct) <= 1e-10 * np.maximum(np.abs(direct), 1e-300)):
        return None
    return tuple(float(c) for c in coef)


def _near_one(g: Generator, log_u, direct, *, derivative: bool):
    """``direct`` where ``|log u| >= R``; below, the series of ``phi(r) = f_n(e^r)`` (``derivative=
    False``) or of ``phi'(r) = u f_n'(u)`` (``derivative=True``), to the dtype's precision.

    The series is fitted from concrete parameters; with traced ones (``g.traced``) a generator's
    closed-form series is used where it has one (alpha), else the direct form, whose relative error
    near ``u = 1`` is ~``eps / |log u|``.
    """
    if g.traced:
        return g._near_one_traced(log_u, direct, derivative=derivative)
    if _near_one_series(g) is None:
        return direct
    near = jnp.abs(log_u) < NEAR_ONE_RADIUS
    series = near_one(g, jnp.where(near, log_u, 0.0), derivative=derivative)
    return jnp.where(near, series, direct)


def near_one(g: Generator, r, *, derivative: bool = False):
    """The series alone (for ``|r| < R``; the caller selects): ``f_n(e^r)`` or ``u f_n'(u)``.
    Requires a smooth generator (``_near_one_series(g)`` not None)."""
    coef = _near_one_series(g)
    if jnp.result_type(r) != jnp.float64:
        coef = coef[: _FLOAT32_DEGREE + 1]
    rho = jnp.zeros_like(r) + coef[-1]
    for c in coef[-2::-1]:  # Horner
        rho = rho * r + c
    if derivative:  # d/dr [r^2 rho] = r (2 rho + r rho')
        d_rho = jnp.zeros_like(r) + (len(coef) - 1) * coef[-1]
        for n in range(len(coef) - 2, 0, -1):
            d_rho = d_rho * r + n * coef[n]
        return r * (2.0 * rho + r * d_rho)
    return r * r * rho


class _Dual(Generator):
    """``v f(1/v)`` computed from ``f`` (used when no closed-form dual is registered)."""

    _traceable = ("base",)

    def __init__(self, base: Generator):
        self.base = base

    @property
    def name(self):
        return f"dual({self.base!r})"

    @property
    def f_prime_at_one(self):
        return -self.base.f_prime_at_one  # f_dual'(1) = f(1) - f'(1) = -f'(1)

    @property
    def params(self):
        return {}

    @property
    def dual(self):
        return self.base

    def _f(self, log_v):
        # v f(1/v); at v = 0 this is the slope f'(inf) = lim f(u)/u of the base generator.
        at_zero = log_v == -jnp.inf
        safe = jnp.where(at_zero, 0.0, log_v)
        value = jnp.exp(safe) * self.base._f(-safe)
        return jnp.where(at_zero, self.base._slope_at_infinity(log_v), value)

    def _f_prime(self, log_v):
        # d/dv [v f(1/v)] = f(u) - u f'(u), u = 1/v
        at_zero = log_v == -jnp.inf
        safe = jnp.where(at_zero, 0.0, log_v)
        value = self.base._f(-safe) - jnp.exp(-safe) * self.base._f_prime(-safe)
        return jnp.where(at_zero, -jnp.inf, value)

    def _u_f_prime(self, log_v):
        # v f_dual'(v) = v f(1/v) - f'(1/v) = f_dual(v) - f'(1/v)
        return self._f(log_v) - self.base._f_prime(-log_v)

    def _weight(self, log_r):
        # f_dual''(v) = f''(1/v) / v^3, so h_dual(r) = f''(1/r) / r = r h(1/r)
        return self.base._weight(-log_r) * jnp.exp(log_r)


# ------------------------------------------------------------------------------------------------
# The catalog.
# ------------------------------------------------------------------------------------------------


class KL(Generator):
    """Forward KL, ``KL(P || Q)`` (mass-covering): ``f(u) = u log u``, ``f'(1) = 1``.

    ``f'(u) = log u + 1``, ``h(r) = r``, ``f*(t) = exp(t - 1)``.
    """

    name = "kl"
    f_prime_at_one = 1.0

    def _f(self, l):
        return nx.xexpx(l)

    def _f_prime(self, l):
        return l + 1.0

    def _f_double_prime(self, l):
        return jnp.exp(-l)

    def _weight(self, l):
        return jnp.exp(l)

    def _conjugate(self, t):
        return jnp.exp(t - 1.0)

    @property
    def dual(self):
        return ReverseKL()


class ReverseKL(Generator):
    """Reverse KL, ``KL(Q || P)`` (mode-seeking): ``f(u) = -log u``, ``f'(1) = -1``.

    ``f'(u) = -1/u``, ``h(r) = 1`` (VSD / DMD), ``f*(t) = -1 - log(-t)`` for ``t < 0``.
    """

    name = "reverse_kl"
    f_prime_at_one = -1.0

    def _f(self, l):
        return -l

    def _f_prime(self, l):
        return -jnp.exp(-l)

    def _u_f_prime(self, l):
        return jnp.full_like(l, -1.0)

    def _f_double_prime(self, l):
        return jnp.exp(-2.0 * l)

    def _weight(self, l):
        return jnp.ones_like(l)

    def _conjugate(self, t):
        neg = t < 0
        return jnp.where(neg, -1.0 - jnp.log(jnp.where(neg, -t, 1.0)), jnp.inf)

    @property
    def dual(self):
        return KL()


class SkewJS(Generator):
    """Skew (generalised) Jensen-Shannon, ``beta KL(P || M) + (1 - beta) KL(Q || M)``, ``M = beta P + (1 - beta) Q``.

    ``f(u) = beta u log u - m log m``, ``m = beta u + 1 - beta``; ``f'(u) = beta log(u / m)``,
    ``f'(1) = 0``, ``h(r) = beta (1 - beta) r / m``,
    ``f*(t) = -(1 - beta) log((1 - beta exp(t / beta)) / (1 - beta))`` for ``t < -beta log beta``.
    ``beta = 1/2`` is :class:`JS`. This is the generalised JSD of TRL / Liger-Kernel; it tends to 0
    as ``beta -> 0`` or ``1``.

    With ``normalize=True`` everything is divided by ``beta (1 - beta)``: the result is continuous in
    ``beta`` on ``[0, 1]`` and tends to ``KL(P || Q)`` at ``beta -> 0`` and ``KL(Q || P)`` at
    ``beta -> 1`` (in their normalised forms ``u log u - u + 1`` and ``u - 1 - log u``).
    """

    name = "skew_js"
    _traceable = ("beta",)
    _static_params = ("normalize",)

    def __init__(self, beta: float = 0.5, normalize: bool = False):
        beta = nx.hyperparameter(beta)
        if not isinstance(beta, float):
            pass  # traced: unchecked; the KL end points (normalize=True) need a Python beta
        elif normalize:
            if not 0.0 <= beta <= 1.0:
                raise ValueError(f"skew_js: beta must be in [0, 1] with normalize=True, got {beta}")
        elif not 0.0 < beta < 1.0:
            raise ValueError(
                f"skew_js: beta must be in (0, 1), got {beta} (the unnormalised form is identically "
                "0 at the ends; use normalize=True for the KL limits)"
            )
        self.beta = beta
        self.normalize = bool(normalize)

    @property
    def scale(self):
        b = self.beta
        if not self.normalize or (nx.is_static(b) and b in (0.0, 1.0)):
            return 1.0
        return 1.0 / (b * (1.0 - b))

    def _at_end(self, end: float) -> bool:
        """Whether beta is the Python number ``end`` (0 or 1): the ends have their own forms."""
        return nx.is_static(self.beta) and self.beta == end

    def _log_m(self, l):
        b = self.beta
        if self._at_end(0.0):
            return jnp.zeros_like(l)
        if self._at_end(1.0):
            return l
        return jnp.logaddexp(nx.log(b) + l, nx.log1p(-b))

    def _f(self, l):
        b = self.beta
        if self.normalize and self._at_end(0.0):
            return KL()._f(l) - jnp.expm1(l)
        if self.normalize and self._at_end(1.0):
            return ReverseKL()._f(l) + jnp.expm1(l)
        # beta u log u - m log m = -beta u log(m/u) - (1 - beta) log m, with
        # log(m/u) = logaddexp(log beta, log(1 - beta) - l) formed without cancelling at large u.
        log_m_over_u = self._log_m_over_u(l)
        value = -b * nx.mul0(jnp.exp(l), log_m_over_u) - (1.0 - b) * self._log_m(l)
        return value * self.scale

    def _log_m_over_u(self, l):
        b = self.beta
        return jnp.logaddexp(nx.log(b), nx.log1p(-b) - l)

    def _f_prime(self, l):
        b = self.beta
        if self.normalize and self._at_end(0.0):
            return l
        if self.normalize and self._at_end(1.0):
            return -jnp.expm1(-l)
        return -b * self._log_m_over_u(l) * self.scale

    def _u_f_prime(self, l):
        if self.normalize and self._at_end(1.0):
            return jnp.expm1(l)  # u (1 - 1/u)
        return super()._u_f_prime(l)

    def _f_double_prime(self, l):
        b = self.beta
        k = 1.0 if self.normalize else b * (1.0 - b)
        return k * jnp.exp(-l - self._log_m(l))

    def _weight(self, l):
        b = self.beta
        if self.normalize and self._at_end(1.0):
            return jnp.ones_like(l)
        k = 1.0 if self.normalize else b * (1.0 - b)
        return k * jnp.exp(l - self._log_m(l))

    def _conjugate(self, t):
        b = self.beta
        k = b * (1.0 - b)
        # Normalised form f_n = f / k: f_n*(t) = -log1p(-b E) / b with E = expm1((1 - b) t) / (1 - b);
        # continuous in b, giving expm1(t) at b = 0 and -log(1 - t) at b = 1.
        ts = t if self.normalize else t / k
        e = nx.expm1_over(1.0 - b, ts)
        arg = -b * e
        inside = arg > -1.0
        value = -nx.log1p_over(b, jnp.where(inside, -e, 0.0))
        value = jnp.where(inside, value, jnp.inf)
        return value if self.normalize else k * value

    @property
    def dual(self):
        return SkewJS(1.0 - self.beta, normalize=self.normalize)


class JS(SkewJS):
    """Jensen-Shannon, ``JS = KL(P || M)/2 + KL(Q || M)/2``, ``M = (P + Q)/2``, bounded by ``log 2``.

    ``f(u) = [u log u - (u + 1) log((u + 1)/2)] / 2``; ``f'(u) = log(2u / (u + 1)) / 2``,
    ``f'(1) = 0``, ``h(r) = r / (2 (r + 1))``, ``f*(t) = -log(2 - exp(2t)) / 2`` for
    ``t < log(2)/2``.
    """

    name = "js"
    _traceable = ()  # beta = 1/2 is static data; the name says it all
    _static_params = ()

    def __init__(self):
        super().__init__(beta=0.5)

    def _f_prime(self, l):
        return 0.5 * (l + _LOG2 - jnp.logaddexp(l, 0.0))

    def _f_double_prime(self, l):
        return 0.5 * jnp.exp(-l - jax.nn.softplus(l))

    def _weight(self, l):
        return 0.5 * jax.nn.sigmoid(l)

    def _conjugate(self, t):
        inside = t < 0.5 * _LOG2
        return jnp.where(
            inside, -0.5 * jnp.log(2.0 - jnp.exp(2.0 * jnp.where(inside, t, 0.0))), jnp.inf
        )

    @property
    def dual(self):
        return self


class SquaredHellinger(Generator):
    """Squared Hellinger, ``sum (sqrt p - sqrt q)^2`` (no 1/2 factor; at most 2).

    ``f(u) = (sqrt u - 1)^2``; ``f'(u) = 1 - 1/sqrt u``, ``f'(1) = 0``, ``h(r) = sqrt(r) / 2``,
    ``f*(t) = t / (1 - t)`` for ``t < 1``.
    """

    name = "squared_hellinger"

    def _f(self, l):
        return jnp.square(jnp.expm1(0.5 * l))

    def _f_prime(self, l):
        return -jnp.expm1(-0.5 * l)

    def _u_f_prime(self, l):
        return jnp.exp(0.5 * l) * jnp.expm1(0.5 * l)  # u - sqrt(u)

    def _f_double_prime(self, l):
        return 0.5 * jnp.exp(-1.5 * l)

    def _weight(self, l):
        return 0.5 * jnp.exp(0.5 * l)

    def _conjugate(self, t):
        inside = t < 1.0
        return jnp.where(inside, t / (1.0 - jnp.where(inside, t, 0.0)), jnp.inf)

    @property
    def dual(self):
        return self


class TotalVariation(Generator):
    """Total variation, ``sum |p - q| / 2`` (at most 1).

    ``f(u) = |u - 1| / 2``; ``f'(u) = sign(u - 1) / 2`` (subgradient 0 at 1), ``h = 0`` (``f`` is
    not smooth at 1), ``f*(t) = max(t, -1/2)`` for ``t <= 1/2``.
    """

    name = "total_variation"

    def _f(self, l):
        return 0.5 * jnp.abs(jnp.expm1(l))

    def _f_prime(self, l):
        return 0.5 * jnp.sign(l)

    def _f_double_prime(self, l):
        return jnp.zeros_like(l)

    def _weight(self, l):
        return jnp.zeros_like(l)

    def _conjugate(self, t):
        return jnp.where(t <= 0.5, jnp.maximum(t, -0.5), jnp.inf)

    @property
    def dual(self):
        return self


class Pearson(Generator):
    """Pearson chi-squared, ``sum (p - q)^2 / q``.

    ``f(u) = (u - 1)^2``; ``f'(u) = 2 (u - 1)``, ``f'(1) = 0``, ``h(r) = 2 r^2``,
    ``f*(t) = t + t^2/4`` for ``t >= -2`` and ``-1`` below (the supremum sits at ``u = 0``).
    """

    name = "pearson"

    def _f(self, l):
        return jnp.square(jnp.expm1(l))

    def _f_prime(self, l):
        return 2.0 * jnp.expm1(l)

    def _f_double_prime(self, l):
        return jnp.full_like(l, 2.0)

    def _weight(self, l):
        return 2.0 * jnp.exp(2.0 * l)

    def _conjugate(self, t):
        return jnp.where(t >= -2.0, t + 0.25 * t * t, -1.0)

    @property
    def dual(self):
        return Neyman()


class Neyman(Generator):
    """Neyman chi-squared, ``sum (p - q)^2 / p``.

    ``f(u) = (u - 1)^2 / u = 4 sinh^2(log(u)/2)``; ``f'(u) = 1 - 1/u^2``, ``f'(1) = 0``,
    ``h(r) = 2 / r``, ``f*(t) = 2 - 2 sqrt(1 - t)`` for ``t <= 1``.
    """

    name = "neyman"

    def _f(self, l):
        return 4.0 * jnp.square(jnp.sinh(0.5 * l))

    def _f_prime(self, l):
        return -jnp.expm1(-2.0 * l)

    def _u_f_prime(self, l):
        return 2.0 * jnp.sinh(l)  # u - 1/u

    def _f_double_prime(self, l):
        return 2.0 * jnp.exp(-3.0 * l)

    def _weight(self, l):
        return 2.0 * jnp.exp(-l)

    def _conjugate(self, t):
        inside = t <= 1.0
        return jnp.where(inside, 2.0 - 2.0 * jnp.sqrt(1.0 - jnp.where(inside, t, 0.0)), jnp.inf)

    @property
    def dual(self):
        return Pearson()


class Jeffreys(Generator):
    """Jeffreys, ``KL(P || Q) + KL(Q || P)``.

    ``f(u) = (u - 1) log u``; ``f'(u) = log u + 1 - 1/u``, ``f'(1) = 0``, ``h(r) = r + 1``,
    ``f*(t) = w + 1/w + t - 2`` with ``w = W0(exp(1 - t))`` (Lambert W), for every real ``t``.
    """

    name = "jeffreys"

    def _f(self, l):
        at_zero = l == -jnp.inf
        safe = jnp.where(at_zero, 0.0, l)
        return jnp.where(at_zero, jnp.inf, jnp.expm1(safe) * safe)

    def _f_prime(self, l):
        return l - jnp.expm1(-l)

    def _u_f_prime(self, l):
        return nx.xexpx(l) + jnp.expm1(l)  # u log u + u - 1

    def _f_double_prime(self, l):
        return jnp.exp(-l) + jnp.exp(-2.0 * l)

    def _weight(self, l):
        return jnp.exp(l) + 1.0

    def _conjugate(self, t):
        # y = log w solves exp(y) + y = 1 - t; then w + 1/w = 2 cosh(y).
        y = nx.lambertw0_of_exp(1.0 - t)
        return 2.0 * jnp.cosh(y) + t - 2.0

    @property
    def dual(self):
        return self


class Triangular(Generator):
    """Triangular discrimination (Le Cam), ``sum (p - q)^2 / (p + q)`` (at most 2).

    ``f(u) = (u - 1)^2 / (u + 1) = u - 3 + 4/(u + 1)``; ``f'(u) = 1 - 4/(u + 1)^2``, ``f'(1) = 0``,
    ``h(r) = 8 r^2 / (r + 1)^3``, ``f*(t) = 4 - t - 4 sqrt(1 - t)`` on ``[-3, 1]``, ``-1`` below.
    """

    name = "triangular"

    def _f(self, l):
        neg = l < 0
        ln = jnp.where(neg, l, 0.0)
        lp = jnp.where(neg, 0.0, l)
        small = jnp.square(jnp.expm1(ln)) / (1.0 + jnp.exp(ln))
        large = 4.0 * jnp.square(jnp.sinh(0.5 * lp)) * jax.nn.sigmoid(lp)
        return jnp.where(neg, small, large)

    def _f_prime(self, l):
        return 1.0 - 4.0 * jnp.square(jax.nn.sigmoid(-l))

    def _f_double_prime(self, l):
        return 8.0 * jax.nn.sigmoid(-l) ** 3

    def _weight(self, l):
        return 8.0 * jnp.square(jax.nn.sigmoid(l)) * jax.nn.sigmoid(-l)

    def _conjugate(self, t):
        inside = t <= 1.0
        ts = jnp.where(inside, jnp.maximum(t, -3.0), 0.0)
        return jnp.where(inside, 4.0 - ts - 4.0 * jnp.sqrt(1.0 - ts), jnp.inf)

    @property
    def dual(self):
        return self


class Alpha(Generator):
    """Amari alpha-divergence: ``f(u) = (u^a - a u - (1 - a)) / (a (a - 1))``, ``a = alpha``.

    ``f'(u) = (u^(a-1) - 1)/(a - 1)``, ``f'(1) = 0``, ``h(r) = r^a``,
    ``f*(t) = ((1 + (a - 1) t)^(a/(a-1)) - 1) / a`` where ``1 + (a - 1) t > 0``; below that edge
    ``-1/a`` for ``a > 1`` and ``+inf`` for ``a < 1``. Continuous in ``a`` (no special cases):
    ``a = 1`` is ``u log u - u + 1`` (KL), ``a = 0`` is ``u - 1 - log u`` (reverse KL),
    ``a = 1/2`` is ``2 * squared_hellinger``, ``a = 2`` is ``pearson / 2``, ``a = -1`` is
    ``neyman / 2``.
    """

    name = "alpha"
    _traceable = ("alpha",)

    def __init__(self, alpha: float = 0.5):
        alpha = nx.check_hyperparameter(
            "alpha: alpha", alpha, math.isfinite, "a finite real number"
        )
        self.alpha = alpha

    def _f(self, l):
        a = self.alpha
        low = a < 0.5
        # Below 1/2: [expm1(a l)/a - expm1(l)] / (a - 1), exact for a near 0. Above: [u f'(u) -
        # (u - 1)] / a, exact for a near 1 (u f'(u) never cancels or gives 0 * inf). A traced a
        # evaluates both, each at a harmless a where the other is selected.
        a_low, a_high = nx.where_static(low, a, 0.0), nx.where_static(low, 1.0, a)
        if nx.is_static(a) and not low:
            value_low = None
        else:
            value_low = (nx.expm1_over(a_low, l) - jnp.expm1(l)) / (a_low - 1.0)
        if nx.is_static(a) and low:
            return value_low
        value_high = (self._u_f_prime_at(a_high, l) - jnp.expm1(l)) / a_high
        return value_high if value_low is None else jnp.where(low, value_low, value_high)

    def _f_prime(self, l):
        return nx.expm1_over(self.alpha - 1.0, l)

    def _near_one_traced(self, log_u, direct, *, derivative: bool):
        """The Taylor series in ``r = log u`` for any (traced) ``a``:
        ``f_n(e^r) = sum_{n >= 2} S_{n-2} r^n / n!``, ``S_k = 1 + a + ... + a^k`` (from
        ``e^{ar} - a e^r - (1 - a)`` over ``a (a - 1)``), and its ``d/dr``, ``u f_n'(u)``. Used for
        ``|r| < 1/2 / max(1, |a|)``, where ``|a r| <= 1/2`` and 10 (float32) or 16 (float64) terms
        reach the dtype's precision; beyond it the direct form does not cancel badly.
        """
        a = self.alpha
        near = jnp.abs(log_u) * jnp.maximum(1.0, jnp.abs(a)) < NEAR_ONE_RADIUS
        r = jnp.where(near, log_u, 0.0)
        n_terms = 16 if jnp.result_type(r) == jnp.float64 else 10
        sums = [jnp.ones_like(a)]
        for _ in range(n_terms - 1):
            sums.append(1.0 + a * sums[-1])
        # phi = r^2 sum_m S_m r^m / (m + 2)!;  phi' = r sum_m S_m r^m / (m + 1)!
        shift = 1 if derivative else 2
        total = jnp.zeros_like(r)
        for m in range(n_terms - 1, -1, -1):  # Horner
            total = total * r + sums[m] / math.factorial(m + shift)
        series = total * (r if derivative else r * r)
        return jnp.where(near, series, direct)

    def _u_f_prime(self, l):
        return self._u_f_prime_at(self.alpha, l)

    @staticmethod
    def _u_f_prime_at(a, l):
        # u (u^(a-1) - 1) / (a - 1): exp(l) expm1_over(a - 1, l) while |(a - 1) l| <= 1 (no
        # cancellation near a = 1), (exp(a l) - exp(l)) / (a - 1) beyond (no overflow, no 0 * inf).
        e = a - 1.0
        if nx.is_static(e) and e == 0:
            return nx.xexpx(l)
        far = jnp.abs(e * l) > 1.0
        l_near = jnp.where(far, 0.0, l)
        l_far = jnp.where(far, l, 0.0)
        near = jnp.exp(l_near) * nx.expm1_over(e, l_near)
        if not nx.is_static(e):  # a traced a = 1: u log u, exact at u = 0 (never "far" there)
            near = jnp.where(e == 0, nx.xexpx(l_near), near)
        e_far = nx.where_static(e == 0, 1.0, e)
        far_val = (jnp.exp(a * l_far) - jnp.exp(l_far)) / e_far
        return jnp.where(far, far_val, near)

    def _f_double_prime(self, l):
        return self._power_of_u(self.alpha - 2.0, l)

    def _weight(self, l):
        return self._power_of_u(self.alpha, l)

    @staticmethod
    def _power_of_u(k, l):
        """``u^k = exp(k l)``, exactly 1 at ``k = 0`` (also at ``u = 0``, where ``0 * -inf``)."""
        if nx.is_static(k):
            return jnp.ones_like(l) if k == 0 else jnp.exp(k * l)
        zero = k == 0
        return jnp.where(zero, 1.0, jnp.exp(k * jnp.where(zero, 0.0, l)))

    def _conjugate(self, t):
        a = self.alpha
        s = 1.0 + (a - 1.0) * t
        inside = s >= 0  # at s = 0 the formula gives the edge value (-1/a or +inf) by itself
        ts = jnp.where(inside, t, 0.0)
        value = nx.expm1_over(a, nx.log1p_over(a - 1.0, ts))
        if nx.is_static(a):
            outside = -1.0 / a if a > 1.0 else jnp.inf
        else:
            outside = jnp.where(a > 1.0, -1.0 / a, jnp.inf)
        return jnp.where(inside, value, outside)

    @property
    def dual(self):
        return Alpha(1.0 - self.alpha)


class GAN(Generator):
    """The f-GAN "GAN" generator shifted to ``f(1) = 0``; equals ``2 * js`` exactly.

    ``f(u) = u log u - (u + 1) log(u + 1) + (u + 1) log 2``; ``f'(u) = log(2u / (u + 1))``,
    ``f'(1) = 0``, ``h(r) = r / (r + 1)``, ``f*(t) = -log(2 - exp(t))`` for ``t < log 2``.
    """

    name = "gan"

    def _f(self, l):
        return 2.0 * JS()._f(l)

    def _f_prime(self, l):
        return l + _LOG2 - jnp.logaddexp(l, 0.0)

    def _f_double_prime(self, l):
        return jnp.exp(-l - jax.nn.softplus(l))

    def _weight(self, l):
        return jax.nn.sigmoid(l)

    def _conjugate(self, t):
        return 2.0 * JS()._conjugate(0.5 * t)

    @property
    def dual(self):
        return self


def _check_lam(name, lam):
    lam = nx.hyperparameter(lam)
    if isinstance(lam, float) and not 0.0 <= lam < 1.0:
        raise ValueError(
            f"{name}: lam must be in [0, 1), got {lam} (lam = 1 is the zero divergence)"
        )
    return lam


class SkewKL(Generator):
    """Skew KL of DistiLLM, ``KL(P || lam P + (1 - lam) Q)``; ``lam = 0`` is KL, bounded for ``lam > 0``.

    ``f(u) = u log(u / m)``, ``m = lam u + 1 - lam``; ``f'(u) = log(u/m) + 1 - lam u / m``,
    ``f'(1) = 1 - lam``, ``h(r) = (1 - lam)^2 r / m^2``,
    ``f*(t) = (1 - lam) exp(t - 1 - W0(-lam exp(t - 1)))`` for ``t <= -log lam`` (Lambert W).
    """

    name = "skew_kl"
    _traceable = ("lam",)

    def __init__(self, lam: float = 0.1):
        self.lam = _check_lam("skew_kl", lam)

    @property
    def f_prime_at_one(self):
        return 1.0 - self.lam

    def _log_m(self, l):
        lam = self.lam
        if nx.is_static(lam) and lam == 0:
            return jnp.zeros_like(l)
        return jnp.logaddexp(nx.log(lam) + l, nx.log1p(-lam))

    def _f(self, l):
        log_m = self._log_m(l)
        return nx.xexpx(l) - nx.mul0(jnp.exp(l), log_m)

    def _f_prime(self, l):
        log_ratio = l - self._log_m(l)
        return log_ratio + 1.0 - self.lam * jnp.exp(log_ratio)

    def _f_double_prime(self, l):
        return (1.0 - self.lam) ** 2 * jnp.exp(-l - 2.0 * self._log_m(l))

    def _weight(self, l):
        return (1.0 - self.lam) ** 2 * jnp.exp(l - 2.0 * self._log_m(l))

    def _conjugate(self, t):
        lam = self.lam
        if nx.is_static(lam) and lam == 0:
            return jnp.exp(t - 1.0)
        inside = t <= -nx.log(lam)
        ts = jnp.where(inside, t, 0.0)
        x = -jnp.exp(nx.log(lam) + ts - 1.0)
        x = jnp.maximum(x, -1.0 / math.e)  # rounding at the edge t = -log(lam)
        value = (1.0 - lam) * jnp.exp(ts - 1.0 - nx.lambertw0(x))
        return jnp.where(inside, value, jnp.inf)

    @property
    def dual(self):
        return SkewReverseKL(self.lam)


class SkewReverseKL(Generator):
    """Skew reverse KL, ``KL(Q || lam Q + (1 - lam) P)``; ``lam = 0`` is reverse KL, bounded for ``lam > 0``.

    ``f(u) = -log(lam + (1 - lam) u)``; ``f'(u) = -(1 - lam)/m``, ``f'(1) = -(1 - lam)``,
    ``h(r) = (1 - lam)^2 r^2 / m^2`` with ``m = lam + (1 - lam) r``;
    ``f*(t) = -1 - lam t/(1 - lam) + log(1 - lam) - log(-t)`` on ``[-(1 - lam)/lam, 0)``,
    ``log lam`` below it, ``+inf`` for ``t >= 0``.
    """

    name = "skew_reverse_kl"
    _traceable = ("lam",)

    def __init__(self, lam: float = 0.1):
        self.lam = _check_lam("skew_reverse_kl", lam)

    @property
    def f_prime_at_one(self):
        return -(1.0 - self.lam)

    def _log_m(self, l):
        lam = self.lam
        if nx.is_static(lam) and lam == 0:
            return l
        return jnp.logaddexp(nx.log(lam), nx.log1p(-lam) + l)

    def _f(self, l):
        return -self._log_m(l)

    def _f_prime(self, l):
        return -(1.0 - self.lam) * jnp.exp(-self._log_m(l))

    def _u_f_prime(self, l):
        return -(1.0 - self.lam) * jnp.exp(l - self._log_m(l))

    def _f_double_prime(self, l):
        return (1.0 - self.lam) ** 2 * jnp.exp(-2.0 * self._log_m(l))

    def _weight(self, l):
        if nx.is_static(self.lam) and self.lam == 0:
            return jnp.ones_like(l)
        return (1.0 - self.lam) ** 2 * jnp.exp(2.0 * (l - self._log_m(l)))

    def _conjugate(self, t):
        lam = self.lam
        neg = t < 0
        tn = jnp.where(neg, t, -1.0)
        value = -1.0 - lam * tn / (1.0 - lam) + nx.log1p(-lam) - jnp.log(-tn)
        if not nx.is_static(lam):  # lam > 0 assumed (a traced lam = 0 gives the same here)
            value = jnp.where(lam * tn <= -(1.0 - lam), jnp.log(lam), value)
        elif lam > 0:
            value = jnp.where(tn <= -(1.0 - lam) / lam, math.log(lam), value)
        return jnp.where(neg, value, jnp.inf)

    @property
    def dual(self):
        return SkewKL(self.lam)


# ------------------------------------------------------------------------------------------------
# Generators from user functions.
# ------------------------------------------------------------------------------------------------


def _numeric_conjugate(g: Generator, t):
    """``f*(t)`` by bisection on ``log u`` for ``f'(u) = t`` (``f'`` is nondecreasing).

    The value is formed as ``t u - f(u)`` at the stop-gradient maximiser ``u``: by the envelope
    theorem its gradient is exactly ``u = (f*)'(t)``, and an error ``du`` in the root only moves
    the value by ``O(du^2)``. ``+inf`` where ``t`` exceeds ``f'`` at the top of the bracket.
    """
    t = jnp.asarray(t)
    bound = 0.5 * nx.max_log(t.dtype)
    target = jax.lax.stop_gradient(t)
    log_u = nx.bisect_increasing(g._f_prime, target, -bound, bound)
    log_u = jax.lax.stop_gradient(log_u)
    value = t * jnp.exp(log_u) - g._f(log_u)
    too_steep = target > g._f_prime(jnp.full_like(t, bound))
    return jnp.where(too_steep, jnp.inf, value)


class FromFunction(Generator):
    """A generator built from a convex ``f(u)`` written in ``jax.numpy`` (see :func:`from_function`)."""

    def __init__(self, fn, *, name, slope_at_infinity, f_prime_at_one):
        self.fn = fn  # static pytree data: hashed and compared by identity
        self.name = name
        self.slope = slope_at_infinity
        self.f_prime_at_one = f_prime_at_one

    def _u(self, l):
        return jnp.exp(l)

    def _f(self, l):
        return self.fn(self._u(l))

    def _f_prime(self, l):
        u = self._u(l)
        return jax.grad(lambda v: jnp.sum(self.fn(v)))(u)

    def _weight(self, l):
        u = self._u(l)
        second = jax.grad(lambda v: jnp.sum(jax.grad(lambda w: jnp.sum(self.fn(w)))(v)))(u)
        return u * u * second

    def _slope_at_infinity(self, like):
        if self.slope is not None:
            return jnp.full_like(like, self.slope)
        # Estimate lim f(u)/u at the largest u whose f stays finite in this dtype.
        u = jnp.exp(jnp.full_like(like, 0.5 * nx.max_log(like.dtype)))
        return self.fn(u) / u


def from_function(
    fn: Callable[[jax.Array], jax.Array],
    *,
    name: str | None = None,
    slope_at_infinity: float | None = None,
) -> Generator:
    """Turn a convex ``f: [0, inf) -> R`` with ``f(1) = 0`` into a full :class:`Generator`.

    ``fn`` takes ``u`` (not ``log u``), acts elementwise and is written in ``jax.numpy``; ``f'`` and
    the weight ``h(r) = r^2 f''(r)`` come from autodiff, the conjugate from a bisection solve of
    ``f'(u) = t`` (gradient exact by the envelope theorem), the dual from ``v f(1/v)``.

    Write ``fn`` so that ``fn(0.)`` is its limit ``f(0+)`` (e.g. ``jax.scipy.special.xlogy(u, u)``
    rather than ``u * jnp.log(u)``), so zero-probability classes are exact. When ``P`` has mass
    where ``Q`` has none the divergence needs ``f'(inf) = lim f(u)/u``: pass ``slope_at_infinity``
    (``jnp.inf`` for a KL-like ``f``) to make that case exact; otherwise it is estimated as
    ``f(U)/U`` at ``U = exp(log(max float) / 2)``. Check your ``f`` with
    ``fdiv.testing.check_generator``.

    Args:
      fn: elementwise convex function of ``u >= 0`` with ``fn(1) == 0``.
      name: display name (default ``fn.__name__``).
      slope_at_infinity: ``lim_{u -> inf} f(u)/u`` when known.

    Returns:
      A :class:`Generator` usable wherever a catalogued one is.

    Raises:
      ValueError: if ``fn(1)`` is not 0.
    """
    at_one = float(fn(jnp.float32(1.0)))
    if not abs(at_one) <= 1e-6:
        raise ValueError(
            f"from_function: f(1) must be 0 for an f-divergence generator, got {at_one}"
        )
    slope_one = float(jax.grad(lambda u: jnp.sum(fn(u)))(jnp.float32(1.0)))
    return FromFunction(
        fn,
        name=name or getattr(fn, "__name__", "custom"),
        slope_at_infinity=slope_at_infinity,
        f_prime_at_one=slope_one,
    )


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Generator]] = {}
_ALIASES = {
    "forward_kl": "kl",
    "jensen_shannon": "js",
    "hellinger": "squared_hellinger",
    "tv": "total_variation",
    "chi2": "pearson",
    "pearson_chi2": "pearson",
    "neyman_chi2": "neyman",
    "le_cam": "triangular",
    "generalized_js": "skew_js",
}


def register(name: str, factory: Callable[..., Generator]) -> None:
    """Register ``factory(**params) -> Generator`` under ``name`` (for :func:`get` and experiments)."""
    if name in _REGISTRY or name in _ALIASES:
        raise ValueError(f"generator {name!r} is already registered")
    _REGISTRY[name] = factory


for _cls in (KL, ReverseKL, JS, SkewJS, SquaredHellinger, TotalVariation, Pearson, Neyman,
             Jeffreys, Triangular, Alpha, GAN, SkewKL, SkewReverseKL):  # fmt: skip
    register(_cls.name, _cls)


def names() -> list[str]:
    """Every registered generator name (aliases such as ``"tv"`` are accepted by :func:`get` too)."""
    return sorted(_REGISTRY)


def get(name: str, **params) -> Generator:
    """The generator registered under ``name``, built with ``params`` (e.g. ``alpha=0.5``).

    Raises:
      ValueError: unknown name (the message lists the known ones) or unknown / invalid parameter.
    """
    if not isinstance(name, str):
        raise TypeError(f"generator name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown f-divergence {name!r}; known: {', '.join(names())} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    factory = _REGISTRY[key]
    try:
        return factory(**params)
    except TypeError as err:
        import inspect

        allowed = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise ValueError(
            f"bad parameters {sorted(params)} for {key!r}; allowed: {allowed or 'none'}"
        ) from err


def resolve(name_or_generator: str | Generator) -> Generator:
    """A :class:`Generator` from a registry name or a generator object (passed through)."""
    if isinstance(name_or_generator, Generator):
        return name_or_generator
    return get(name_or_generator)
