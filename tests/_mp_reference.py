"""Textbook generators in mpmath: the tests' and benchmarks' independent reference for fdiv.

``SPECS[(name, params)]`` is ``f(u)`` as its paper writes it (not fdiv's code), for every catalog
generator and several parameters of the parametric ones; ``mp_softmax`` is a softmax in mpmath.
"""

from __future__ import annotations

import mpmath as mp


def _alpha(a):
    if a == 1:
        return lambda u: u * mp.log(u) - u + 1
    if a == 0:
        return lambda u: u - 1 - mp.log(u)
    return lambda u: (u**a - a * u - (1 - a)) / (a * (a - 1))


def _skew_js(beta, normalize):
    if normalize and beta == 0:
        return _alpha(1)
    if normalize and beta == 1:
        return _alpha(0)
    k = beta * (1 - beta) if normalize else 1

    def f(u):
        m = beta * u + 1 - beta
        return (beta * u * mp.log(u) - m * mp.log(m)) / k

    return f


# (name, params) -> textbook f(u) in mpmath.
SPECS = {
    ("kl", ()): lambda u: u * mp.log(u),
    ("reverse_kl", ()): lambda u: -mp.log(u),
    ("js", ()): lambda u: (u * mp.log(u) - (u + 1) * mp.log((u + 1) / 2)) / 2,
    ("squared_hellinger", ()): lambda u: (mp.sqrt(u) - 1) ** 2,
    ("total_variation", ()): lambda u: abs(u - 1) / 2,
    ("pearson", ()): lambda u: (u - 1) ** 2,
    ("neyman", ()): lambda u: (u - 1) ** 2 / u,
    ("jeffreys", ()): lambda u: (u - 1) * mp.log(u),
    ("triangular", ()): lambda u: (u - 1) ** 2 / (u + 1),
    ("gan", ()): lambda u: u * mp.log(u) - (u + 1) * mp.log(u + 1) + (u + 1) * mp.log(2),
}
for _a in (-1.0, 0.0, 0.3, 0.5, 1.0, 1.5, 2.0):
    SPECS[("alpha", (("alpha", _a),))] = _alpha(mp.mpf(_a))
for _b, _n in ((0.5, False), (0.1, False), (0.0, True), (0.3, True), (1.0, True)):
    SPECS[("skew_js", (("beta", _b), ("normalize", _n)))] = _skew_js(mp.mpf(_b), _n)
for _lam in (0.0, 0.1, 0.3):
    lam = mp.mpf(_lam)
    SPECS[("skew_kl", (("lam", _lam),))] = lambda u, lam=lam: u * mp.log(u / (lam * u + 1 - lam))
    SPECS[("skew_reverse_kl", (("lam", _lam),))] = lambda u, lam=lam: -mp.log(lam + (1 - lam) * u)


def mp_softmax(x):
    x = [mp.mpf(v) for v in x]
    top = max(x)
    e = [mp.exp(v - top) if v != -mp.inf else mp.mpf(0) for v in x]
    s = mp.fsum(e)
    return [v / s for v in e]
