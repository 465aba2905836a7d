"""Property checks for generators, divergences and losses, for your own ``f`` and loss as much as
for the catalog.

Each ``check_*`` raises ``AssertionError`` with a message naming the property, the generator (or
function) and the worst point, and returns ``None`` when the property holds. :func:`check_generator`
runs all the generator checks. They evaluate in float64 (``jax.enable_x64``) on grids of ``log u``
so that tolerances can be tight. Derivatives are checked with ``jax.test_util.check_grads``
(forward and reverse mode up to order 2, so ``custom_jvp`` rules are exercised in forward mode and
differentiated again for Hessian-vector products), structure and finiteness with chex
assertions::

    g = fdiv.generators.from_function(lambda u: (u - 1) ** 4 / 12)
    fdiv.testing.check_generator(g)
    fdiv.testing.check_loss_grads(my_loss, student_logits, teacher_logits)  # float args, order 2
    fdiv.testing.check_outputs(my_loss, student_logits, teacher_logits, shape=(batch,))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads
from jax.typing import ArrayLike

from fdiv import divergences
from fdiv import generators as gen

__all__ = [
    "default_log_grid",
    "check_normalized",
    "check_convex",
    "check_derivatives",
    "check_fenchel_young",
    "check_dual",
    "check_divergence_grads",
    "check_generator",
    "check_loss_grads",
    "check_outputs",
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


# ------------------------------------------------------------------------------------------------
# Derivatives (jax.test_util.check_grads) and structure (chex) of any function of arrays.
# ------------------------------------------------------------------------------------------------

_MODES = ("fwd", "rev")


def _name(fn) -> str:
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _is_float_tree(x) -> bool:
    leaves = jax.tree.leaves(x)
    return bool(leaves) and all(jnp.issubdtype(jnp.result_type(v), jnp.floating) for v in leaves)


def _argnums(fn_name: str, args, argnums) -> tuple[int, ...]:
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(args) if _is_float_tree(a))
    elif isinstance(argnums, int):
        argnums = (argnums,)
    argnums = tuple(argnums)
    if not argnums:
        raise ValueError(f"{fn_name}: no floating-point argument to differentiate")
    for i in argnums:
        if not 0 <= i < len(args) or not _is_float_tree(args[i]):
            raise ValueError(
                f"{fn_name}: argument {i} is not a (pytree of) floating-point array(s)"
            )
    return argnums


def _partial_in(fn, args, argnums):
    """``fn`` as a function of ``args[argnums]`` only, the other arguments held fixed."""

    def of(*diff):
        full = list(args)
        for i, a in zip(argnums, diff, strict=True):
            full[i] = a
        return fn(*full)

    return of


def _assert_finite(what: str, tree) -> None:
    try:
        chex.assert_tree_all_finite(tree)
    except AssertionError as err:
        raise AssertionError(f"{what} is not finite: {err}") from None


def _check_derivatives(what: str, fn, args: tuple, *, order, modes, eps, rtol, atol) -> None:
    """Finite values and first derivatives, then ``check_grads`` with errors naming ``what``.

    ``check_grads`` compares with ``numpy.testing.assert_allclose``, which takes NaN to equal NaN,
    so a NaN value or gradient would pass it: finiteness is asserted first.
    """
    modes = tuple(modes)
    if not modes or not set(modes) <= set(_MODES):
        raise ValueError(f"modes must be a non-empty subset of {_MODES}, got {modes}")
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    try:
        out = fn(*args)
        _assert_finite(f"{what}: the value", out)
        if "rev" in modes:
            _, pullback = jax.vjp(fn, *args)
            _assert_finite(
                f"{what}: the reverse-mode gradient (jax.vjp)",
                pullback(jax.tree.map(jnp.ones_like, out)),
            )
        if "fwd" in modes:
            _, tangent = jax.jvp(fn, args, jax.tree.map(jnp.ones_like, args))
            _assert_finite(f"{what}: the forward-mode derivative (jax.jvp)", tangent)
        check_grads(fn, args, order=int(order), modes=modes, eps=eps, rtol=rtol, atol=atol)
    except AssertionError as err:
        if str(err).startswith(what):
            raise
        detail = str(err).strip().replace("\n", "\n    ")
        raise AssertionError(
            f"{what}: derivatives (order {order}, modes {modes}) do not match central finite "
            f"differences (jax.test_util.check_grads; 'JVP of VJP' = forward mode of the "
            f"reverse-mode gradient, ...):\n    {detail}"
        ) from None
    except Exception as err:  # e.g. forward mode of a custom_vjp, a rule that cannot be traced
        raise AssertionError(
            f"{what}: differentiating (order {order}, modes {modes}) raised "
            f"{type(err).__name__}: {err}"
        ) from err


def check_divergence_grads(
    divergence: str | gen.Generator,
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    *,
    where: ArrayLike | None = None,
    order: int = 2,
    modes: Sequence[str] = _MODES,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-7,
) -> None:
    """Derivatives of ``fdiv.divergence`` w.r.t. both logits against central finite differences.

    ``jax.test_util.check_grads(D, (p_logits, q_logits), order, modes)`` for the per-row
    ``D(a, b) = fdiv.divergence(g, a, b, where=where)`` (logits ``[..., V]``, ``D`` of shape
    ``[...]``): every derivative up to ``order`` in each mode of ``modes`` -- ``"fwd"``
    (``jax.jvp``), ``"rev"`` (``jax.vjp``) and, at order 2, each mode of each (JVP of JVP, VJP of
    JVP, JVP of VJP, VJP of VJP) -- projected on a random direction and compared with central
    differences of step ``eps`` (``|ad - fd| <= atol + rtol |fd|``, both tolerances multiplied by
    the output's size as ``check_grads`` does). The divergence's gradient is
    a ``custom_jvp`` rule, so this checks the rule in forward mode and the rule's own derivatives
    (Hessian-vector products), not only ``jax.grad``. The value and the first derivatives must also
    be finite.

    Runs in float64. Use finite logits (a finite difference at ``-inf`` is meaningless); remove
    classes with ``where`` instead. A generator with a kink (total variation at ``p = q``) needs
    logits away from it.

    Raises:
      AssertionError: naming the generator, the failing derivative (e.g. ``VJP of JVP``) and the
        values, or the exception a transformation raised.
    """
    g = gen.resolve(divergence)
    what = f"divergence({g!r}{'' if where is None else ', where=...'})"
    with jax.enable_x64(True):
        p = jnp.asarray(p_logits, jnp.float64)
        q = jnp.asarray(q_logits, jnp.float64)
        mask = None if where is None else jnp.asarray(where, bool)

        def fn(a, b):
            return divergences.divergence(g, a, b, where=mask)

        _check_derivatives(
            what, fn, (p, q), order=order, modes=modes, eps=eps, rtol=rtol, atol=atol
        )


def check_loss_grads(
    loss_fn: Callable[..., Any],
    *args: Any,
    argnums: int | Sequence[int] | None = None,
    order: int = 2,
    modes: Sequence[str] = _MODES,
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-7,
) -> None:
    """Derivatives of your own loss against central finite differences, in float64.

    ``loss_fn(*args)`` is any pure JAX function of arrays (or pytrees of arrays, e.g. a params
    dict), usually returning a scalar (per-example ``[B]`` outputs, or a pytree, work too). Its
    derivatives w.r.t. ``args[argnums]`` are checked with ``jax.test_util.check_grads`` up to
    ``order`` in each of ``modes`` (``"fwd"``, ``"rev"``; at order 2 forward over reverse etc., so
    a ``custom_jvp`` / ``custom_vjp`` inside the loss is exercised in every mode it supports, and
    a mode it does not support fails the check), along one random direction, with
    ``|ad - fd| <= atol + rtol |fd|`` (tolerances times the output's size, as ``check_grads``
    does); the value and first derivatives must be finite.

    ``argnums`` defaults to every argument whose leaves are all floating point, so integer labels
    and boolean masks are held fixed. Leave out arguments the loss holds under
    ``jax.lax.stop_gradient`` (a detached teacher): finite differences see through it, autodiff
    does not. Hyperparameters go in a closure (``functools.partial(loss, tau=2.0)``).

    Floating arguments are cast to float64 and the loss runs under ``jax.enable_x64``; a loss that
    casts to float32 inside is checked at float32 precision (loosen ``rtol`` / ``atol`` to ~1e-3).

    Raises:
      AssertionError: naming the loss and the failing derivative (e.g. ``JVP tangent``).
      ValueError: no floating argument to differentiate, or a bad ``argnums`` / ``order`` /
        ``modes``.
    """
    name = _name(loss_fn)
    with jax.enable_x64(True):
        args = tuple(
            jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), a) if _is_float_tree(a) else a
            for a in args
        )
        nums = _argnums(f"check_loss_grads({name})", args, argnums)
        fn = _partial_in(loss_fn, args, nums)
        what = f"{name} (w.r.t. arguments {list(nums)})"
        diff = tuple(args[i] for i in nums)
        _check_derivatives(what, fn, diff, order=order, modes=modes, eps=eps, rtol=rtol, atol=atol)


def check_outputs(
    fn: Callable[..., Any],
    *args: Any,
    shape: Sequence[int | None] | None = None,
    dtype: Any = None,
    jit: bool = True,
    grads: bool = True,
    argnums: int | Sequence[int] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> Any:
    """Structural checks of ``fn(*args)`` with chex, in the arguments' own dtypes; returns the output.

    - every leaf of the output is finite (``chex.assert_tree_all_finite``);
    - each leaf has shape ``shape`` (``chex.assert_shape``; ``None`` matches any size) and dtype
      ``dtype`` (``chex.assert_type``), when given;
    - ``jit``: ``jax.jit(fn)`` gives the same tree with the same shapes and dtypes
      (``chex.assert_trees_all_equal_shapes_and_dtypes``) and values within ``rtol`` / ``atol``
      (``chex.assert_trees_all_close``);
    - ``grads``: ``jax.grad`` of the sum of every output w.r.t. ``args[argnums]`` (default: every
      all-floating argument) is finite and has each argument's tree, shapes and dtypes.

    ``args`` are arrays or pytrees of arrays (integer labels and masks are traced like the rest
    under ``jit``); put non-array configuration in a closure.

    Raises:
      AssertionError: naming ``fn`` and the failed property.
      ValueError: ``grads`` with no floating-point argument, or a bad ``argnums``.
    """
    name = _name(fn)
    out = fn(*args)
    _assert_finite(f"{name}: the output", out)
    leaves = jax.tree.leaves(out)
    try:
        if shape is not None:
            chex.assert_shape(leaves, tuple(shape))
        if dtype is not None:
            chex.assert_type(leaves, dtype)
    except AssertionError as err:
        raise AssertionError(f"{name}: output shape / dtype: {err}") from None
    if jit:
        jitted = jax.jit(fn)(*args)
        try:
            chex.assert_trees_all_equal_shapes_and_dtypes(out, jitted)
            chex.assert_trees_all_close(out, jitted, rtol=rtol, atol=atol)
        except AssertionError as err:
            raise AssertionError(f"{name}: jax.jit changes the output: {err}") from None
    if grads:
        nums = _argnums(f"check_outputs({name})", args, argnums)
        of = _partial_in(fn, args, nums)
        total = lambda *diff: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(of(*diff)))
        diff = tuple(args[i] for i in nums)
        g = jax.grad(total, argnums=tuple(range(len(nums))))(*diff)
        _assert_finite(f"{name}: the gradient w.r.t. arguments {list(nums)}", g)
        try:
            chex.assert_trees_all_equal_shapes_and_dtypes(
                g, tuple(jax.tree.map(jnp.asarray, d) for d in diff)
            )
        except AssertionError as err:
            raise AssertionError(
                f"{name}: gradient structure differs from the arguments': {err}"
            ) from None
    return out


def check_generator(
    g: gen.Generator, log_u: ArrayLike | None = None, *, grad_order: int = 2
) -> None:
    """All generator properties: ``f(1) = 0``, convexity, derivatives, Fenchel-Young, dual, and
    :func:`check_divergence_grads` (forward and reverse mode up to ``grad_order``) of the
    categorical divergence on a small random pair of logits ``[2, 5]``.

    The order-2 derivative check compiles every derivative program of the divergence: ~10-40 s of
    CPU, the bulk of this function's time; ``grad_order=1`` is several times faster.
    """
    check_normalized(g)
    check_convex(g, log_u)
    check_derivatives(g, log_u)
    check_fenchel_young(g, log_u)
    check_dual(g, log_u)
    rng = np.random.default_rng(1)
    check_divergence_grads(g, rng.normal(size=(2, 5)), rng.normal(size=(2, 5)), order=grad_order)
