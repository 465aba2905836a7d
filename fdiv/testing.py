"""Property checks for generators and divergences, for your own ``f`` as much as for the catalog.

Each ``check_*`` raises ``AssertionError`` with a message naming the property, the generator and
the worst point, and returns ``None`` when the property holds. :func:`check_generator` runs all of
them. They evaluate in float64 (``jax.enable_x64``) on grids of ``log u`` so that tolerances can be
tight::

    g = fdiv.generators.from_function(lambda u: (u - 1) ** 4 / 12)
    fdiv.testing.check_generator(g)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fdiv import generators as gen
from fdiv.divergences import divergence

__all__ = [
    "default_log_grid",
    "check_normalized",
    "check_convex",
    "check_derivatives",
    "check_fenchel_young",
    "check_dual",
    "check_divergence_grads",
    "check_generator",
]


def default_log_grid(n: int = 80, bound: float = 6.0) -> np.ndarray:
    """``n`` points of ``log u`` evenly spaced in ``[-bound, bound]`` (``u`` from ~0.0025 to ~400);
    an even ``n`` leaves out ``u = 1``, where non-smooth generators (total variation) have a kink."""
    return np.linspace(-bound, bound, n)


def _grid(log_u):
    return default_log_grid() if log_u is None else np.asarray(log_u, np.float64)


def _fail(what: str, g, detail: str):
    raise AssertionError(f"{what} fails for generator {g!r}: {detail}")


def check_normalized(g: gen.Generator, *, atol: float = 1e-12) -> None:
    """``f(1) = 0``."""
    with jax.enable_x64(True):
        value = float(g.f(jnp.float64(0.0)))
    if not abs(value) <= atol:
        _fail("f(1) = 0", g, f"f(1) = {value}")


def check_convex(g: gen.Generator, log_u: ArrayLike | None = None, *, tol: float = 1e-9) -> None:
    """Midpoint convexity of ``f`` in ``u`` on all grid pairs, ``f'`` nondecreasing, ``h >= 0``."""
    grid = _grid(log_u)
    with jax.enable_x64(True):
        u = np.exp(grid)
        f = np.asarray(g.f(jnp.asarray(grid)))
        u1, u2 = np.meshgrid(u, u)
        f1, f2 = np.meshgrid(f, f)
        mid = np.asarray(g.f(jnp.log(jnp.asarray(0.5 * (u1 + u2)))))
        slack = mid - 0.5 * (f1 + f2)
        scale = 1.0 + np.abs(f1) + np.abs(f2)
        worst = np.unravel_index(np.argmax(slack / scale), slack.shape)
        if slack[worst] > tol * scale[worst]:
            _fail(
                "convexity",
                g,
                f"f((u1+u2)/2) - (f(u1)+f(u2))/2 = {slack[worst]:.3g} > 0 at "
                f"u1={u1[worst]:.4g}, u2={u2[worst]:.4g}",
            )
        fp = np.asarray(g.f_prime(jnp.asarray(grid)))
        drops = np.diff(fp) < -tol * (1.0 + np.abs(fp[1:]))
        if drops.any():
            i = int(np.argmax(drops))
            _fail(
                "f' nondecreasing",
                g,
                f"f'({u[i]:.4g}) = {fp[i]:.6g} > f'({u[i + 1]:.4g}) = {fp[i + 1]:.6g}",
            )
        h = np.asarray(g.weight(jnp.asarray(grid)))
        if (h < -tol).any():
            i = int(np.argmin(h))
            _fail("h(r) = r^2 f''(r) >= 0", g, f"h({u[i]:.4g}) = {h[i]:.6g}")


def check_derivatives(
    g: gen.Generator, log_u: ArrayLike | None = None, *, rtol: float = 1e-6, atol: float = 1e-9
) -> None:
    """``f_prime`` and ``weight`` against autodiff of ``f`` (as a function of ``u``)."""
    grid = _grid(log_u)
    with jax.enable_x64(True):
        u = jnp.exp(jnp.asarray(grid))
        f_of_u = lambda v: g.f(jnp.log(v))
        d1 = jax.vmap(jax.grad(f_of_u))(u)
        d2 = jax.vmap(jax.grad(jax.grad(f_of_u)))(u)
        fp = g.f_prime(jnp.asarray(grid))
        h = g.weight(jnp.asarray(grid))
        for what, got, want in (("f'", fp, d1), ("h = r^2 f''", h, u * u * d2)):
            got, want = np.asarray(got), np.asarray(want)
            err = np.abs(got - want) - (atol + rtol * np.abs(want))
            if (err > 0).any():
                i = int(np.argmax(err))
                _fail(
                    f"{what} matches autodiff",
                    g,
                    f"at u={float(u[i]):.4g}: {got[i]:.10g} vs {want[i]:.10g}",
                )


def check_fenchel_young(
    g: gen.Generator,
    log_u: ArrayLike | None = None,
    t: ArrayLike | None = None,
    *,
    tol: float = 1e-7,
) -> None:
    """``f(u) + f*(t) >= u t`` on all grid pairs, with equality at ``t = f'(u)``."""
    grid = _grid(log_u)
    with jax.enable_x64(True):
        u = np.exp(grid)
        f = np.asarray(g.f(jnp.asarray(grid)))
        fp = np.asarray(g.f_prime(jnp.asarray(grid)))
        ts = np.linspace(fp.min() - 1.0, fp.max() + 1.0, 61) if t is None else np.asarray(t, float)
        conj = np.asarray(g.conjugate(jnp.asarray(ts)))
        gap = f[:, None] + conj[None, :] - u[:, None] * ts[None, :]
        scale = 1.0 + np.abs(f[:, None]) + np.abs(u[:, None] * ts[None, :])
        if (gap < -tol * scale).any():
            i, j = np.unravel_index(np.argmin(gap / scale), gap.shape)
            _fail(
                "Fenchel-Young f(u) + f*(t) >= u t",
                g,
                f"gap {gap[i, j]:.3g} at u={u[i]:.4g}, t={ts[j]:.4g}",
            )
        at_slope = f + np.asarray(g.conjugate(jnp.asarray(fp))) - u * fp
        scale = 1.0 + np.abs(f) + np.abs(u * fp)
        if (np.abs(at_slope) > tol * 10 * scale).any():
            i = int(np.argmax(np.abs(at_slope) / scale))
            _fail(
                "Fenchel-Young equality at t = f'(u)", g, f"gap {at_slope[i]:.3g} at u={u[i]:.4g}"
            )


def check_dual(g: gen.Generator, log_u: ArrayLike | None = None, *, rtol: float = 1e-9) -> None:
    """``dual.f(v) = v f(1/v)`` and ``dual.dual == g`` (as functions)."""
    grid = _grid(log_u)
    with jax.enable_x64(True):
        lv = jnp.asarray(grid)
        got = np.asarray(g.dual.f(lv))
        want = np.exp(grid) * np.asarray(g.f(-lv))
        err = np.abs(got - want) - rtol * (1.0 + np.abs(want))
        if (err > 0).any():
            i = int(np.argmax(err))
            _fail(
                "dual f(v) = v f(1/v)",
                g,
                f"at v={np.exp(grid[i]):.4g}: {got[i]:.10g} vs {want[i]:.10g}",
            )
        back = np.asarray(g.dual.dual.f(lv))
        if not np.allclose(back, np.asarray(g.f(lv)), rtol=rtol, atol=rtol):
            _fail("dual of dual is f", g, "g.dual.dual.f differs from g.f")


def check_divergence_grads(
    name_or_generator: str | gen.Generator,
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    where: ArrayLike | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> None:
    """Gradient of ``fdiv.divergence`` (w.r.t. both logits) against central finite differences.

    Runs in float64. Use finite logits (a finite difference at ``-inf`` is meaningless); mask
    classes with ``where`` instead.
    """
    with jax.enable_x64(True):
        p = jnp.asarray(p_logits, jnp.float64)
        q = jnp.asarray(q_logits, jnp.float64)
        rng = np.random.default_rng(0)
        weights = jnp.asarray(rng.normal(size=jnp.broadcast_shapes(p.shape, q.shape)[:-1]))

        def loss(a, b):
            return jnp.sum(weights * divergence(name_or_generator, a, b, where=where))

        grads = jax.grad(loss, argnums=(0, 1))(p, q)
        for k, (x, grad) in enumerate(zip((p, q), grads, strict=True)):
            flat = np.asarray(x).ravel()
            fd = np.empty_like(flat)
            for i in range(flat.size):
                e = np.zeros_like(flat)
                e[i] = eps
                plus = [p, q]
                minus = [p, q]
                plus[k] = jnp.asarray((flat + e).reshape(x.shape))
                minus[k] = jnp.asarray((flat - e).reshape(x.shape))
                fd[i] = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
            got = np.asarray(grad).ravel()
            err = np.abs(got - fd) - (atol + rtol * np.abs(fd))
            if (err > 0).any():
                i = int(np.argmax(err))
                which = "p_logits" if k == 0 else "q_logits"
                raise AssertionError(
                    f"gradient of divergence({name_or_generator!r}) w.r.t. {which}[{i}]: "
                    f"autodiff {got[i]:.10g} vs finite differences {fd[i]:.10g}"
                )


def check_generator(g: gen.Generator, log_u: ArrayLike | None = None) -> None:
    """All generator properties: ``f(1) = 0``, convexity, derivatives, Fenchel-Young, dual, and the
    gradient of the categorical divergence on a small random pair."""
    check_normalized(g)
    check_convex(g, log_u)
    check_derivatives(g, log_u)
    check_fenchel_young(g, log_u)
    check_dual(g, log_u)
    rng = np.random.default_rng(1)
    check_divergence_grads(g, rng.normal(size=(2, 5)), rng.normal(size=(2, 5)))
