"""The one table of independent numpy references for every catalog generator, shared by the
tests that need one (generators, divergences, estimators).

Each entry is written from the textbook definition of ``f`` (not from fdiv): ``f``, ``f'``,
``h = u^2 f''`` from ``l = log u``, the Fenchel conjugate ``f*`` and its maximiser, the points that
probe its domain, and the two limits ``f(0+)`` and ``f'(inf)`` by hand. A new generator needs one
entry here (and its mpmath form in ``_mp_reference.SPECS`` for the high-precision tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

INF = math.inf
LOG2 = math.log(2.0)


def np_fn(fn):
    """Wrap a numpy reference: float64 in and out, floating-point warnings silenced (the
    references use ``np.where`` over branches that may overflow where they are not selected)."""

    def wrapped(x):
        with np.errstate(all="ignore"):
            return np.asarray(fn(np.asarray(x, np.float64)), np.float64)

    return wrapped


# ------------------------------------------------------------------------------------------------
# numpy references (written from the definitions; l = log u, t the conjugate variable).
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    f: Callable  # f(u) from l = log u
    fp: Callable  # f'(u)
    h: Callable  # h(u) = u^2 f''(u)
    conj: Callable  # f*(t), +inf outside its domain
    ustar: Callable  # the maximiser u*(t) = (f*)'(t) for t in t_in
    t_in: tuple  # interior points of dom f* with a finite maximiser u* > 0
    t_flat: tuple = ()  # points where the maximiser is u = 0 (f* = -f(0))
    t_edge: tuple = ()  # closed edge of dom f*, maximiser at u = inf (value only)
    t_out: tuple = ()  # outside dom f*: f* = +inf
    f0: float = 0.0  # f(0+)
    slope: float = INF  # lim_{u -> inf} f(u)/u = f'(inf)


def _ones(l):
    return np.ones_like(l)


def _kl_ref():
    return Ref(
        f=lambda l: np.exp(l) * l,
        fp=lambda l: l + 1.0,
        h=np.exp,
        conj=lambda t: np.exp(t - 1.0),
        ustar=lambda t: np.exp(t - 1.0),
        t_in=(-3.0, -1.0, 0.0, 1.0, 3.0),
        f0=0.0,
        slope=INF,
    )


def _reverse_kl_ref():
    return Ref(
        f=lambda l: -l,
        fp=lambda l: -np.exp(-l),
        h=_ones,
        conj=lambda t: np.where(t < 0, -1.0 - np.log(-t), INF),
        ustar=lambda t: -1.0 / t,
        t_in=(-5.0, -1.0, -0.2),
        t_out=(0.0, 0.5, 2.0),
        f0=INF,
        slope=0.0,
    )


def _js_ref():
    edge = 0.5 * LOG2
    return Ref(
        f=lambda l: 0.5 * (np.exp(l) * l - (np.exp(l) + 1) * (np.log1p(np.exp(l)) - LOG2)),
        fp=lambda l: 0.5 * (LOG2 + l - np.log1p(np.exp(l))),
        h=lambda l: np.exp(l) / (2.0 * (np.exp(l) + 1.0)),
        conj=lambda t: np.where(t < edge, -0.5 * np.log(2.0 - np.exp(2.0 * t)), INF),
        ustar=lambda t: np.exp(2 * t) / (2.0 - np.exp(2 * t)),
        t_in=(-3.0, -0.5, 0.0, 0.2, 0.34),
        t_out=(0.35, 1.0),
        f0=0.5 * LOG2,
        slope=0.5 * LOG2,
    )


def _skew_js_ref(beta=0.5, normalize=False):
    b = float(beta)
    if normalize and b == 0.0:  # u log u - u + 1
        return Ref(
            f=lambda l: np.exp(l) * l - np.expm1(l),
            fp=lambda l: l,
            h=np.exp,
            conj=np.expm1,
            ustar=np.exp,
            t_in=(-3.0, 0.0, 2.0),
            f0=1.0,
            slope=INF,
        )
    if normalize and b == 1.0:  # u - 1 - log u
        return Ref(
            f=lambda l: np.expm1(l) - l,
            fp=lambda l: -np.expm1(-l),
            h=_ones,
            conj=lambda t: np.where(t < 1, -np.log1p(-t), INF),
            ustar=lambda t: 1.0 / (1.0 - t),
            t_in=(-3.0, 0.0, 0.9),
            t_out=(1.0, 2.0),
            f0=INF,
            slope=1.0,
        )
    k = b * (1.0 - b)
    c = 1.0 / k if normalize else 1.0  # normalised form: everything / (b (1 - b))
    log_m = lambda l: np.log1p(b * np.expm1(l))  # m = b u + 1 - b
    edge_raw = -b * math.log(b)

    def conj_raw(t):
        inside = t < edge_raw
        ts = np.where(inside, t, edge_raw - 1.0)
        return np.where(inside, -(1 - b) * np.log((1 - b * np.exp(ts / b)) / (1 - b)), INF)

    def ustar_raw(t):
        s = np.exp(t / b)
        return s * (1 - b) / (1 - b * s)

    edge = edge_raw * c
    return Ref(
        f=lambda l: c * (b * np.exp(l) * l - np.exp(log_m(l)) * log_m(l)),
        fp=lambda l: c * b * (l - log_m(l)),
        h=lambda l: c * k * np.exp(l - log_m(l)),
        conj=lambda t: c * conj_raw(t / c),  # (c f)*(t) = c f*(t / c)
        ustar=lambda t: ustar_raw(t / c),
        t_in=(edge - 3.0, edge - 1.0, edge - 0.05),
        t_out=(edge + 0.05, edge + 1.0),
        f0=-c * (1 - b) * math.log1p(-b),
        slope=c * edge_raw,
    )


def _hellinger_ref():
    return Ref(
        f=lambda l: (np.exp(0.5 * l) - 1.0) ** 2,
        fp=lambda l: 1.0 - np.exp(-0.5 * l),
        h=lambda l: 0.5 * np.exp(0.5 * l),
        conj=lambda t: np.where(t < 1, t / (1.0 - t), INF),
        ustar=lambda t: 1.0 / (1.0 - t) ** 2,
        t_in=(-5.0, -1.0, 0.0, 0.5, 0.9),
        t_out=(1.0, 2.0),
        f0=1.0,
        slope=1.0,
    )


def _tv_ref():
    return Ref(
        f=lambda l: 0.5 * np.abs(np.exp(l) - 1.0),
        fp=lambda l: 0.5 * np.sign(np.exp(l) - 1.0),
        h=np.zeros_like,
        conj=lambda t: np.where(t <= 0.5, np.maximum(t, -0.5), INF),
        ustar=_ones,  # for |t| < 1/2 the maximiser is u = 1
        t_in=(-0.4, 0.0, 0.3),
        t_flat=(-2.0, -0.7),
        t_edge=(0.5,),
        t_out=(0.51, 1.0),
        f0=0.5,
        slope=0.5,
    )


def _pearson_ref():
    return Ref(
        f=lambda l: (np.exp(l) - 1.0) ** 2,
        fp=lambda l: 2.0 * (np.exp(l) - 1.0),
        h=lambda l: 2.0 * np.exp(2 * l),
        conj=lambda t: np.where(t >= -2, t + t * t / 4, -1.0),
        ustar=lambda t: 1.0 + t / 2,
        t_in=(-1.5, 0.0, 2.0, 10.0),
        t_flat=(-5.0, -2.5),
        t_edge=(-2.0,),
        f0=1.0,
        slope=INF,
    )


def _neyman_ref():
    return Ref(
        f=lambda l: (np.exp(l) - 1.0) ** 2 / np.exp(l),
        fp=lambda l: 1.0 - np.exp(-2 * l),
        h=lambda l: 2.0 * np.exp(-l),
        conj=lambda t: np.where(t <= 1, 2.0 - 2.0 * np.sqrt(1.0 - t), INF),
        ustar=lambda t: 1.0 / np.sqrt(1.0 - t),
        t_in=(-10.0, -1.0, 0.0, 0.5, 0.99),
        t_edge=(1.0,),
        t_out=(1.01, 3.0),
        f0=INF,
        slope=1.0,
    )


def _jeffreys_ref():
    def w(t):
        return special.lambertw(np.exp(1.0 - t)).real

    return Ref(
        f=lambda l: (np.exp(l) - 1.0) * l,
        fp=lambda l: l + 1.0 - np.exp(-l),
        h=lambda l: np.exp(l) + 1.0,
        conj=lambda t: w(t) + 1.0 / w(t) + t - 2.0,
        ustar=lambda t: 1.0 / w(t),
        t_in=(-10.0, -1.0, 0.0, 1.0, 5.0, 20.0),
        f0=INF,
        slope=INF,
    )


def _triangular_ref():
    def conj(t):
        tc = np.clip(t, -3.0, 1.0)
        return np.where(t > 1, INF, np.where(t < -3, -1.0, 4.0 - tc - 4.0 * np.sqrt(1.0 - tc)))

    return Ref(
        f=lambda l: (np.exp(l) - 1.0) ** 2 / (np.exp(l) + 1.0),
        fp=lambda l: 1.0 - 4.0 / (np.exp(l) + 1.0) ** 2,
        h=lambda l: 8.0 * np.exp(2 * l) / (np.exp(l) + 1.0) ** 3,
        conj=conj,
        ustar=lambda t: 2.0 / np.sqrt(1.0 - t) - 1.0,
        t_in=(-2.0, 0.0, 0.9),
        t_flat=(-5.0,),
        t_edge=(-3.0, 1.0),
        t_out=(1.01, 2.0),
        f0=1.0,
        slope=1.0,
    )


def _alpha_ref(alpha=0.5):
    a = float(alpha)
    if a == 1.0:  # u log u - u + 1
        return _skew_js_ref(0.0, normalize=True)
    if a == 0.0:  # u - 1 - log u
        return _skew_js_ref(1.0, normalize=True)
    e = a - 1.0
    if a < 0.5:  # [(u^a - 1)/a - (u - 1)] / (a - 1)
        f = lambda l: (np.expm1(a * l) / a - np.expm1(l)) / e
    else:  # [u (u^(a-1) - 1)/(a - 1) - (u - 1)] / a
        f = lambda l: (np.exp(l) * np.expm1(e * l) / e - np.expm1(l)) / a
    tau = -1.0 / e  # where s = 1 + (a - 1) t vanishes

    def conj(t):
        s = 1.0 + e * t
        inner = np.expm1(a / e * np.log1p(np.where(s > 0, e * t, 0.0))) / a
        at_edge = -1.0 / a if (a > 1 or a < 0) else INF  # s = 0
        beyond = -1.0 / a if a > 1 else INF  # s < 0
        return np.where(s > 0, inner, np.where(s == 0, at_edge, beyond))

    common = dict(
        f=f,
        fp=lambda l: np.expm1(e * l) / e,
        h=lambda l: np.exp(a * l),
        conj=conj,
        ustar=lambda t: np.exp(np.log1p(e * t) / e),
        f0=1.0 / a if a > 0 else INF,
        slope=1.0 / (1.0 - a) if a < 1 else INF,
    )
    if a > 1:
        return Ref(t_in=(tau + 0.1, 0.0, 2.0), t_flat=(tau - 1.0,), t_edge=(tau,), **common)
    if a < 0:
        return Ref(
            t_in=(tau - 5.0, tau - 1.0, tau - 0.1), t_edge=(tau,), t_out=(tau + 0.5,), **common
        )
    if tau > 10.0:  # alpha close to 1: the edge is far away
        return Ref(t_in=(-3.0, 0.0, 2.0), t_out=(tau + 0.5,), **common)
    return Ref(t_in=(tau - 5.0, tau - 1.0, tau - 0.1), t_out=(tau, tau + 0.5), **common)


def _gan_ref():
    return Ref(
        f=lambda l: np.exp(l) * l - (np.exp(l) + 1) * (np.log1p(np.exp(l)) - LOG2),
        fp=lambda l: LOG2 + l - np.log1p(np.exp(l)),
        h=lambda l: np.exp(l) / (np.exp(l) + 1.0),
        conj=lambda t: np.where(t < LOG2, -np.log(2.0 - np.exp(t)), INF),
        ustar=lambda t: np.exp(t) / (2.0 - np.exp(t)),
        t_in=(-3.0, -1.0, 0.0, 0.5, 0.69),
        t_out=(0.7, 2.0),
        f0=LOG2,
        slope=LOG2,
    )


def _skew_kl_ref(lam=0.1):
    lam = float(lam)
    if lam == 0.0:
        return _kl_ref()
    log_m = lambda l: np.log1p(lam * np.expm1(l))  # m = lam u + 1 - lam
    edge = -math.log(lam)

    def rho(t):  # the root of log(rho) - lam rho = t - 1 on the principal branch
        x = np.maximum(-lam * np.exp(np.minimum(t, edge) - 1.0), -1.0 / math.e)
        return -special.lambertw(x).real / lam

    return Ref(
        f=lambda l: np.exp(l) * (l - log_m(l)),
        fp=lambda l: l - log_m(l) + 1.0 - lam * np.exp(l - log_m(l)),
        h=lambda l: (1 - lam) ** 2 * np.exp(l - 2.0 * log_m(l)),
        conj=lambda t: np.where(t <= edge, (1.0 - lam) * rho(t), INF),
        ustar=lambda t: (1.0 - lam) * rho(t) / (1.0 - lam * rho(t)),
        t_in=(edge - 5.0, edge - 1.0, edge - 0.1),
        t_edge=(edge,),
        t_out=(edge + 0.01, edge + 1.0),
        f0=0.0,
        slope=edge,
    )


def _skew_reverse_kl_ref(lam=0.1):
    lam = float(lam)
    if lam == 0.0:
        return _reverse_kl_ref()
    log_m = lambda l: np.log1p((1 - lam) * np.expm1(l))  # m = lam + (1 - lam) u
    edge = -(1.0 - lam) / lam

    def conj(t):
        tn = np.where(t < 0, t, -1.0)
        mid = -1.0 - lam * tn / (1 - lam) + math.log1p(-lam) - np.log(-tn)
        return np.where(t >= 0, INF, np.where(t < edge, math.log(lam), mid))

    return Ref(
        f=lambda l: -log_m(l),
        fp=lambda l: -(1 - lam) * np.exp(-log_m(l)),
        h=lambda l: (1 - lam) ** 2 * np.exp(2.0 * (l - log_m(l))),
        conj=conj,
        ustar=lambda t: -1.0 / t - lam / (1.0 - lam),
        t_in=(0.9 * edge, 0.5 * edge, 0.1 * edge),
        t_flat=(edge - 1.0,),
        t_edge=(edge,),
        t_out=(0.0, 1.0),
        f0=-math.log(lam),
        slope=0.0,
    )


REFERENCES = {
    "kl": _kl_ref,
    "reverse_kl": _reverse_kl_ref,
    "js": _js_ref,
    "skew_js": _skew_js_ref,
    "squared_hellinger": _hellinger_ref,
    "total_variation": _tv_ref,
    "pearson": _pearson_ref,
    "neyman": _neyman_ref,
    "jeffreys": _jeffreys_ref,
    "triangular": _triangular_ref,
    "alpha": _alpha_ref,
    "gan": _gan_ref,
    "skew_kl": _skew_kl_ref,
    "skew_reverse_kl": _skew_reverse_kl_ref,
}


def reference(name, **params) -> Ref:
    ref = REFERENCES[name](**params)
    wrap = {k: np_fn(getattr(ref, k)) for k in ("f", "fp", "h", "conj", "ustar")}
    return Ref(**{**ref.__dict__, **wrap})


def f_of_u(name: str, **params):
    """``(f, f(0+), f'(inf))`` with ``f`` a numpy function of ``u > 0`` (the divergence tests'
    view of the same reference)."""
    ref = reference(name, **params)
    return (lambda u: ref.f(np.log(np.asarray(u, np.float64)))), ref.f0, ref.slope
