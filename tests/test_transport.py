"""Tests for ``fdiv.transport``: log-domain Sinkhorn, its transport cost, the L1 cost matrix.

Expected values come from sources independent of the code under test:

- ``np_sinkhorn``: a plain numpy float64 Sinkhorn in the probability domain (scaling vectors
  ``u = a / (K v)``, ``v = b / (K^T u)`` with ``K = exp(-C / eps)`` formed explicitly);
- the marginal constraints themselves (row / column sums of the plan);
- exact assignments from ``scipy.optimize.linear_sum_assignment``, confirmed by brute force over
  all permutations (the zero-temperature limit of the entropic plan);
- central finite differences in float64 (``jax.test_util.check_grads``);
- a numpy broadcast for the L1 cost.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.test_util import check_grads

from fdiv import transport


def np_sinkhorn(cost, a, b, eps, num_iters, return_scalings=False):
    """Probability-domain Sinkhorn in float64: v = 1, then (u = a / K v, v = b / K^T u) repeated."""
    k = np.exp(-np.asarray(cost, np.float64) / eps)
    v = np.ones(k.shape[1])
    for _ in range(num_iters):
        u = a / (k @ v)
        v = b / (k.T @ u)
    plan = u[:, None] * k * v[None, :]
    return (plan, u, v) if return_scalings else plan


def random_marginal(rng, size, total):
    w = rng.uniform(0.2, 1.0, size)
    return total * w / w.sum()


def _wrap(use_jit):
    return (lambda f: jax.jit(f)) if use_jit else (lambda f: f)


@pytest.fixture(params=[False, True], ids=["nojit", "jit"])
def maybe_jit(request):
    return _wrap(request.param)


# Eager (no-jit) calls compile every op on a busy CPU: a few cases each way keeps the file fast.
SHAPES_JIT = [((4, 4), False), ((5, 3), True), ((3, 6), True)]


# --------------------------------------------------------------------------------------------
# Against an independent reference


@pytest.mark.parametrize("shape, use_jit", SHAPES_JIT)
def test_matches_numpy_probability_domain(shape, use_jit):
    """Reference: np_sinkhorn with the same marginals, epsilon and iteration count (float64)."""
    rng = np.random.default_rng(0)
    n, m = shape
    cost = rng.uniform(0.0, 2.0, shape)
    a = random_marginal(rng, n, 1.0)
    b = random_marginal(rng, m, 1.0)
    with jax.enable_x64(True):
        fn = _wrap(use_jit)(
            lambda c, la, lb: transport.sinkhorn(c, epsilon=1.0, num_iters=7, log_a=la, log_b=lb)
        )
        out = fn(jnp.asarray(cost), jnp.log(a), jnp.log(b))
        assert out.plan.dtype == jnp.float64
        plan, u, v = np_sinkhorn(cost, a, b, 1.0, 7, return_scalings=True)
        np.testing.assert_allclose(out.plan, plan, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(out.log_u, np.log(u), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(out.log_v, np.log(v), rtol=1e-6, atol=1e-9)


def test_default_marginals_match_numpy(maybe_jit):
    """Defaults: a = 1 (rows sum to 1), b = n / m (columns sum to n / m). Reference: np_sinkhorn."""
    rng = np.random.default_rng(1)
    cost = rng.uniform(0.0, 1.0, (6, 4))
    with jax.enable_x64(True):
        out = maybe_jit(lambda c: transport.sinkhorn(c, epsilon=0.5, num_iters=20))(cost)
        want = np_sinkhorn(cost, np.ones(6), np.full(4, 6 / 4), 0.5, 20)
        np.testing.assert_allclose(out.plan, want, rtol=1e-6, atol=1e-12)


def test_one_sided_default_matches_mass():
    """Only log_a given: b is uniform with the same total mass (reference: np_sinkhorn)."""
    rng = np.random.default_rng(2)
    cost = rng.uniform(0.0, 1.0, (3, 5))
    a = random_marginal(rng, 3, 2.0)
    with jax.enable_x64(True):
        out = transport.sinkhorn(cost, epsilon=0.7, num_iters=9, log_a=np.log(a))
        want = np_sinkhorn(cost, a, np.full(5, 2.0 / 5), 0.7, 9)
        np.testing.assert_allclose(out.plan, want, rtol=1e-6, atol=1e-12)
        out = transport.sinkhorn(cost, epsilon=0.7, num_iters=9, log_b=np.log(np.full(5, 0.2)))
        want = np_sinkhorn(cost, np.full(3, 1 / 3), np.full(5, 0.2), 0.7, 9)
        np.testing.assert_allclose(out.plan, want, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Marginals


@pytest.mark.parametrize("shape, use_jit", [((7, 4), False), ((4, 9), True), ((6, 6), True)])
def test_marginals_converge_nonuniform(shape, use_jit):
    """After 500 iterations, rows sum to a and columns to b within 1e-5 (float32)."""
    rng = np.random.default_rng(3)
    n, m = shape
    cost = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    a = random_marginal(rng, n, 1.0)
    b = random_marginal(rng, m, 1.0)
    fn = _wrap(use_jit)(
        lambda c, la, lb: transport.sinkhorn(c, epsilon=0.1, num_iters=500, log_a=la, log_b=lb)
    )
    out = fn(cost, np.log(a).astype(np.float32), np.log(b).astype(np.float32))
    plan = np.asarray(out.plan, np.float64)
    np.testing.assert_allclose(plan.sum(1), a, atol=1e-5)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-5)
    assert float(out.row_error) == pytest.approx(np.abs(plan.sum(1) - a).max(), abs=1e-6)
    assert float(out.col_error) == pytest.approx(np.abs(plan.sum(0) - b).max(), abs=1e-6)
    assert float(out.row_error) < 1e-5 and float(out.col_error) < 1e-5


def test_square_default_is_doubly_stochastic():
    """SinKD setting: B x B cost, defaults give rows and columns each summing to 1."""
    rng = np.random.default_rng(4)
    cost = rng.uniform(0.0, 1.0, (8, 8)).astype(np.float32)
    out = transport.sinkhorn(cost, epsilon=0.1, num_iters=300)
    plan = np.asarray(out.plan, np.float64)
    np.testing.assert_allclose(plan.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(plan.sum(1), 1.0, atol=1e-5)
    assert (plan >= 0).all()


def test_columns_exact_after_few_iterations():
    """The last normalisation is the column one: columns exact even when rows are not yet."""
    rng = np.random.default_rng(5)
    cost = rng.uniform(0.0, 5.0, (6, 6))
    with jax.enable_x64(True):
        out = transport.sinkhorn(cost, epsilon=0.05, num_iters=1)
        plan = np.asarray(out.plan)
        np.testing.assert_allclose(plan.sum(0), 1.0, atol=1e-12)
        assert float(out.col_error) < 1e-12
        row_err = np.abs(plan.sum(1) - 1.0).max()
        assert row_err > 1e-3  # not converged after one iteration on this cost
        assert float(out.row_error) == pytest.approx(row_err, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Small epsilon: the zero-temperature limit


def _brute_force_assignment(cost):
    n = cost.shape[0]
    values = {p: sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n))}
    ranked = sorted(values, key=values.get)
    return ranked[0], values[ranked[0]], values[ranked[1]] - values[ranked[0]]


def test_small_epsilon_approaches_optimal_assignment():
    """The plan tends to the optimal permutation matrix (scipy + brute force) as epsilon -> 0."""
    rng = np.random.default_rng(0)
    cost = rng.uniform(0.0, 1.0, (4, 4))
    perm, best, gap = _brute_force_assignment(cost)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert tuple(cols[np.argsort(rows)]) == perm
    assert cost[rows, cols].sum() == pytest.approx(best)
    assert gap > 0.3  # a unique optimum with a margin (seed chosen for it)
    target = np.zeros((4, 4))
    target[np.arange(4), perm] = 1.0

    # Convergence slows as epsilon shrinks (roughly max|C| / epsilon iterations per digit).
    run = jax.jit(transport.sinkhorn, static_argnames=("epsilon", "num_iters"))
    with jax.enable_x64(True):
        dists, costs = [], []
        for eps in [0.3, 0.1, 0.03, 0.01]:
            out = run(cost, epsilon=eps, num_iters=20000)
            assert float(out.row_error) < 1e-4
            plan = np.asarray(out.plan)
            dists.append(np.abs(plan - target).max())
            costs.append(float((plan * cost).sum()))
        value = jax.jit(lambda c: transport.sinkhorn_cost(c, epsilon=0.01, num_iters=20000))(cost)
        assert float(value) == pytest.approx(costs[-1], rel=1e-12)
    assert all(d1 > d2 for d1, d2 in itertools.pairwise(dists)), dists
    assert all(c1 > c2 for c1, c2 in itertools.pairwise(costs)), costs
    assert dists[-1] < 1e-3
    assert all(c >= best - 1e-4 for c in costs)  # a (nearly) feasible plan cannot beat the optimum
    assert costs[-1] == pytest.approx(best, abs=1e-4)


def test_identity_cost_gives_identity_plan():
    """Cost 10 (1 - I): the optimum is the identity; at epsilon = 0.1 the plan is I to e^-100."""
    cost = 10.0 * (1.0 - np.eye(5, dtype=np.float32))
    out = transport.sinkhorn(cost, epsilon=0.1, num_iters=5)
    np.testing.assert_allclose(out.plan, np.eye(5), atol=1e-6)
    value = jax.jit(lambda c: transport.sinkhorn_cost(c, epsilon=0.1, num_iters=5))(cost)
    assert float(value) == pytest.approx(0.0, abs=1e-6)


def test_no_overflow_tiny_epsilon_large_costs(maybe_jit):
    """epsilon = 1e-3 with costs ~100 (cost / eps ~ 1e5): finite, a permutation, in float32."""
    rng = np.random.default_rng(7)
    base = rng.uniform(90.0, 110.0, (5, 5))
    perm = rng.permutation(5)
    base[np.arange(5), perm] -= 20.0  # make perm the unique optimum by a wide margin
    target = np.zeros((5, 5))
    target[np.arange(5), perm] = 1.0
    cost = base.astype(np.float32)
    out = maybe_jit(lambda c: transport.sinkhorn(c, epsilon=1e-3, num_iters=20))(cost)
    for field in out:
        assert np.isfinite(np.asarray(field)).all()
    # The scalings reproduce the plan through its defining formula (evaluated in float64).
    log_plan = (
        np.asarray(out.log_u, np.float64)[:, None]
        - np.asarray(cost, np.float64) / 1e-3
        + np.asarray(out.log_v, np.float64)[None, :]
    )
    np.testing.assert_allclose(np.exp(log_plan)[np.arange(5), perm], 1.0, atol=0.05)
    np.testing.assert_allclose(out.plan, target, atol=1e-5)
    value = maybe_jit(lambda c: transport.sinkhorn_cost(c, epsilon=1e-3, num_iters=20))(cost)
    want = float(np.asarray(cost, np.float64)[np.arange(5), perm].sum())
    assert float(value) == pytest.approx(want, rel=1e-5)
    grad = jax.jit(jax.grad(lambda c: transport.sinkhorn_cost(c, epsilon=1e-3, num_iters=20)))(cost)
    assert np.isfinite(np.asarray(grad)).all()


# --------------------------------------------------------------------------------------------
# Forbidden pairs (+inf costs)


def test_inf_cost_entries_zero_plan_finite_gradient(maybe_jit):
    """+inf entries: plan exactly 0 there, everything finite, zero gradient to those entries.

    Reference for the other entries: np_sinkhorn, whose K has exact zeros at +inf costs.
    """
    rng = np.random.default_rng(8)
    cost = rng.uniform(0.0, 1.0, (5, 4))
    cost[0, 1] = cost[2, 3] = cost[4, 0] = np.inf
    with jax.enable_x64(True):
        out = maybe_jit(lambda c: transport.sinkhorn(c, epsilon=0.5, num_iters=30))(cost)
        plan = np.asarray(out.plan)
        assert np.isfinite(plan).all()
        assert plan[0, 1] == plan[2, 3] == plan[4, 0] == 0.0
        want = np_sinkhorn(cost, np.ones(5), np.full(4, 5 / 4), 0.5, 30)
        np.testing.assert_allclose(plan, want, rtol=1e-6, atol=1e-12)

        loss = maybe_jit(lambda c: transport.sinkhorn_cost(c, epsilon=0.5, num_iters=30))
        value = loss(cost)
        finite = np.isfinite(cost)
        assert float(value) == pytest.approx((want[finite] * cost[finite]).sum(), rel=1e-6)
        grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(cost)))
        assert np.isfinite(grad).all()
        assert grad[0, 1] == grad[2, 3] == grad[4, 0] == 0.0

        # The gradient at the finite entries: central differences of np_sinkhorn's <P, C>.
        def ref(c):
            p = np_sinkhorn(c, np.ones(5), np.full(4, 5 / 4), 0.5, 30)
            return (p[finite] * c[finite]).sum()

        h = 1e-6
        for i, j in [(0, 0), (1, 2), (3, 3)]:
            e = np.zeros_like(cost)
            e[i, j] = h
            fd = (ref(cost + e) - ref(cost - e)) / (2 * h)
            assert grad[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_fully_forbidden_row_is_zero_not_nan():
    """A row whose costs are all +inf cannot carry mass: zero row, no NaN in value or gradient."""
    cost = np.array([[0.1, 0.5, np.inf], [np.inf, np.inf, np.inf], [0.3, 0.2, 0.4]], np.float32)
    out = transport.sinkhorn(cost, epsilon=0.2, num_iters=10)
    plan = np.asarray(out.plan)
    assert not np.isnan(plan).any()
    np.testing.assert_array_equal(plan[1], 0.0)
    assert np.asarray(out.log_u)[1] == -np.inf
    grad = jax.jit(jax.grad(lambda c: transport.sinkhorn_cost(c, epsilon=0.2, num_iters=10)))(cost)
    assert np.isfinite(np.asarray(grad)).all()


def test_zero_mass_row():
    """log_a = -inf for a row: that row of the plan is exactly 0; others match np_sinkhorn."""
    rng = np.random.default_rng(9)
    cost = rng.uniform(0.0, 1.0, (4, 3))
    a = np.array([0.5, 0.0, 0.25, 0.25])
    b = np.full(3, 1 / 3)
    with jax.enable_x64(True):
        with np.errstate(divide="ignore"):
            log_a = np.log(a)
        out = transport.sinkhorn(cost, epsilon=0.3, num_iters=25, log_a=log_a, log_b=np.log(b))
        plan = np.asarray(out.plan)
        np.testing.assert_array_equal(plan[1], 0.0)
        np.testing.assert_allclose(plan, np_sinkhorn(cost, a, b, 0.3, 25), rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Gradients


def test_gradient_finite_differences():
    """check_grads: reverse and forward mode against central differences, float64."""
    rng = np.random.default_rng(10)
    with jax.enable_x64(True):
        cost = jnp.asarray(rng.uniform(0.0, 1.0, (4, 3)))
        f = jax.jit(lambda c: transport.sinkhorn_cost(c, epsilon=0.3, num_iters=15))
        check_grads(f, (cost,), order=1, modes=["rev", "fwd"], eps=1e-5, atol=1e-6, rtol=1e-6)
        g = jax.jit(lambda c: transport.sinkhorn(c, epsilon=0.3, num_iters=15).plan)
        check_grads(g, (cost,), order=1, modes=["rev"], eps=1e-5, atol=1e-6, rtol=1e-6)


def test_gradient_through_l1_cost_and_jit():
    """SinKD pipeline: probabilities -> l1_cost -> sinkhorn_cost; jit grad equals no-jit grad and FD."""
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        teacher = jnp.asarray(rng.dirichlet(np.ones(5), size=4))
        logits = jnp.asarray(rng.normal(size=(4, 5)))

        def loss(z):
            student = jax.nn.softmax(z, axis=-1)
            return transport.sinkhorn_cost(
                transport.l1_cost(student, teacher), epsilon=0.2, num_iters=10
            )

        g1 = jax.grad(loss)(logits)
        g2 = jax.jit(jax.grad(loss))(logits)
        np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)
        check_grads(
            jax.jit(loss), (logits,), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-5
        )


# --------------------------------------------------------------------------------------------
# Batch dimensions, dtypes, arguments


def test_batch_dims_match_per_problem():
    """[2, 3, n, m] cost = independent problems, each as np_sinkhorn; marginals broadcast."""
    rng = np.random.default_rng(12)
    cost = rng.uniform(0.0, 1.0, (2, 3, 4, 5))
    a = random_marginal(rng, 4, 1.0)
    b = rng.uniform(0.2, 1.0, (2, 3, 5))
    b /= b.sum(-1, keepdims=True)
    with jax.enable_x64(True):
        fn = jax.jit(
            lambda c, la, lb: transport.sinkhorn(c, epsilon=0.4, num_iters=12, log_a=la, log_b=lb)
        )
        out = fn(cost, np.log(a), np.log(b))  # log_a [n] broadcasts over the batch
        assert out.plan.shape == (2, 3, 4, 5)
        assert out.log_u.shape == (2, 3, 4) and out.log_v.shape == (2, 3, 5)
        assert out.row_error.shape == out.col_error.shape == (2, 3)
        values = jax.jit(
            lambda c, la, lb: transport.sinkhorn_cost(
                c, epsilon=0.4, num_iters=12, log_a=la, log_b=lb
            )
        )(cost, np.log(a), np.log(b))
        assert values.shape == (2, 3)
        for i in range(2):
            for j in range(3):
                want = np_sinkhorn(cost[i, j], a, b[i, j], 0.4, 12)
                np.testing.assert_allclose(out.plan[i, j], want, rtol=1e-6, atol=1e-12)
                assert float(values[i, j]) == pytest.approx((want * cost[i, j]).sum(), rel=1e-9)


def test_vmap_equals_batch():
    rng = np.random.default_rng(13)
    cost = jnp.asarray(rng.uniform(0.0, 1.0, (3, 4, 4)), jnp.float32)
    batched = jax.jit(lambda c: transport.sinkhorn_cost(c, epsilon=0.1, num_iters=20))(cost)
    mapped = jax.jit(jax.vmap(lambda c: transport.sinkhorn_cost(c, epsilon=0.1, num_iters=20)))(
        cost
    )
    np.testing.assert_allclose(batched, mapped, rtol=1e-6)


def test_bfloat16_computes_in_float32():
    """bfloat16 cost: computed and returned in float32, equal to the float32 result on the rounded
    cost (the package's dtype rule)."""
    rng = np.random.default_rng(14)
    cost = jnp.asarray(rng.uniform(0.0, 1.0, (4, 4)), jnp.bfloat16)
    out = transport.sinkhorn(cost, epsilon=0.1, num_iters=50)
    ref = transport.sinkhorn(cost.astype(jnp.float32), epsilon=0.1, num_iters=50)
    assert out.plan.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out.plan), np.asarray(ref.plan))


def test_traced_epsilon_under_jit():
    """epsilon may be traced (annealing): same result as the static value."""
    cost = np.random.default_rng(15).uniform(0.0, 1.0, (3, 4)).astype(np.float32)
    f = jax.jit(lambda c, e: transport.sinkhorn_cost(c, epsilon=e, num_iters=10))
    assert float(f(cost, 0.2)) == pytest.approx(
        float(transport.sinkhorn_cost(cost, epsilon=0.2, num_iters=10)), rel=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"num_iters": 0}, "num_iters"),
        ({"num_iters": 2.5}, "num_iters"),
        ({"num_iters": True}, "num_iters"),
        ({"log_a": np.zeros(5)}, "log_a"),
        ({"log_b": np.zeros((2, 4))}, "log_b"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        transport.sinkhorn(np.zeros((3, 4)), **kwargs)
    with pytest.raises(ValueError, match=match):
        transport.sinkhorn_cost(np.zeros((3, 4)), **kwargs)


def test_bad_cost_shape_raises():
    with pytest.raises(ValueError, match="cost"):
        transport.sinkhorn(np.zeros(3))


# --------------------------------------------------------------------------------------------
# l1_cost


def test_l1_cost_matches_numpy(maybe_jit):
    rng = np.random.default_rng(16)
    x = rng.normal(size=(4, 6))
    y = rng.normal(size=(3, 6))
    want = np.array([[np.abs(xi - yj).sum() for yj in y] for xi in x])
    with jax.enable_x64(True):
        got = maybe_jit(transport.l1_cost)(x, y)
        assert got.shape == (4, 3)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    got32 = maybe_jit(transport.l1_cost)(x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(got32, want, rtol=1e-5)
    # Batched: [2, n, d] with [2, m, d].
    xb = rng.normal(size=(2, 4, 6))
    yb = rng.normal(size=(2, 3, 6))
    wantb = np.abs(xb[:, :, None, :] - yb[:, None, :, :]).sum(-1)
    np.testing.assert_allclose(transport.l1_cost(xb, yb), wantb, rtol=1e-5)


def test_l1_cost_bad_shapes():
    with pytest.raises(ValueError, match="last dimension"):
        transport.l1_cost(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="shapes"):
        transport.l1_cost(np.zeros(3), np.zeros((3, 3)))
