"""Tests of ``fdiv.models``: registry, shapes, parameter counts, forward passes, batch norm, init.

Parameter counts are compared with formulas written here from the architecture descriptions
(conv kernels k^d * c_in * c_out, BN scale + bias 2c, Dense (d_in + 1) * d_out), and the MLP,
1-D CNN and ResNet stem/BN computations are checked against numpy / ``lax.conv`` references. To
keep the file fast, ResNets run on 8x8 / 16x16 inputs with a batch of 2 to 4, and the big ResNets
are only traced (``jax.eval_shape``), never run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

__import__("flax")

from fdiv import models  # noqa: E402

# Flax accepts any PRNG implementation; "rbg" keys compile their random-normal kernels several
# times faster than the default threefry on CPU, which dominates this file's run time.
KEY = jax.random.key(0, impl="rbg")
EXPECTED_NAMES = ["cnn", "mlp", "resnet8", "resnet20", "resnet32", "resnet56", "resnet110"]


def _x(shape, batch=4, seed=1, offset=0.0):
    """A float32 input [batch, *shape] (numpy-generated: no compilation per shape)."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((batch, *shape)) + offset, jnp.float32)


def _abstract_init(module, shape):
    """Shapes of ``module.init`` on a [1, *shape] input, without running it."""
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    return jax.eval_shape(lambda x: module.init(KEY, x, train=False), x)


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


@pytest.fixture(scope="module")
def resnet8():
    """(module, x [4, 8, 8, 3], variables): one ResNet-8 init shared by the ResNet tests."""
    module = models.get("resnet8", num_classes=5)
    x = _x((8, 8, 3))
    return module, x, module.init(KEY, x, train=False)


# --------------------------------------------------------------------------------------------
# registry and argument checks


def test_names():
    assert models.names() == EXPECTED_NAMES


def test_get_returns_configured_modules():
    assert isinstance(models.get("mlp", num_classes=3), models.MLP)
    assert isinstance(models.get("cnn", num_classes=3, batch_norm=True), models.CNN)
    for depth in (8, 20, 32, 56, 110):
        m = models.get(f"resnet{depth}", num_classes=100, width=2)
        assert isinstance(m, models.CIFARResNet)
        assert (m.depth, m.num_classes, m.width) == (depth, 100, 2)
        assert m.blocks_per_stage == (depth - 2) // 6
    assert models.get("resnet20", num_classes=10, name="teacher").name == "teacher"
    # sequences become (hashable) tuples
    assert models.get("mlp", num_classes=3, hidden=[4, 5]).hidden == (4, 5)
    assert models.get("cnn", num_classes=3, channels=[4]).channels == (4,)


def test_get_unknown_name_lists_names():
    with pytest.raises(ValueError, match="unknown model 'resnet18'") as info:
        models.get("resnet18", num_classes=10)
    for name in EXPECTED_NAMES:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    "name, kwargs, exc, field",
    [
        ("mlp", {"widths": (3,)}, TypeError, "widths"),
        ("cnn", {"hidden_size": 3}, TypeError, "hidden_size"),
        ("resnet20", {"depth": 32}, ValueError, "depth"),
        ("resnet8", {"width": 0}, ValueError, "width"),
        ("resnet8", {"base_channels": 2.5}, ValueError, "base_channels"),
        ("mlp", {"hidden": (8, 0)}, ValueError, "hidden"),
        ("mlp", {"hidden": 8}, ValueError, "hidden"),
        ("mlp", {"activation": "swishy"}, ValueError, "activation"),
        ("cnn", {"channels": ()}, ValueError, "channels"),
        ("cnn", {"hidden": -1}, ValueError, "hidden"),
        ("cnn", {"pool": "min"}, ValueError, "pool"),
        ("cnn", {"readout": "gap"}, ValueError, "readout"),
        ("cnn", {"batch_norm": "yes"}, ValueError, "batch_norm"),
    ],
)
def test_get_bad_kwargs_name_the_field(name, kwargs, exc, field):
    with pytest.raises(exc, match=field):
        models.get(name, num_classes=10, **kwargs)


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, True, None])
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_bad_num_classes(name, num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        models.get(name, num_classes=num_classes)


def test_num_classes_is_required_keyword():
    with pytest.raises(TypeError):
        models.get("mlp")
    with pytest.raises(TypeError):
        models.get("mlp", 10)


@pytest.mark.parametrize("depth", [0, 6, 9, 21, 22])
def test_resnet_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match="depth"):
        models.CIFARResNet(num_classes=10, depth=depth)


def test_train_is_required():
    module = models.get("mlp", num_classes=5)
    x = _x((8, 8, 1))
    with pytest.raises(TypeError):
        module.init(KEY, x)
    variables = module.init(KEY, x, train=False)
    with pytest.raises(TypeError):
        module.apply(variables, x)


def test_cnn_needs_a_channel_axis():
    with pytest.raises(ValueError, match="channel"):
        models.get("cnn", num_classes=3).init(KEY, _x((40,)), train=False)


# --------------------------------------------------------------------------------------------
# shapes and dtypes

# the CNN variant with batch norm used throughout (same shapes everywhere: compiled once)
CNN_BN = {"batch_norm": True, "pool": "avg", "readout": "mean"}
SHAPE_CASES = [
    ("mlp", {}, (8, 8, 1)),
    ("mlp", {"hidden": (16,), "activation": "gelu"}, (40, 1)),
    ("mlp", {"hidden": ()}, (7,)),
    ("cnn", {}, (8, 8, 1)),
    ("cnn", {}, (40, 1)),
    ("cnn", {}, (32, 32, 3)),
    ("cnn", CNN_BN, (8, 8, 1)),
    ("resnet20", {}, (8, 8, 3)),  # same layer shapes as the resnet8 fixture: cheap
]


def _check_outputs(module, variables, x, num_classes):
    batch = x.shape[0]
    logits = module.apply(variables, x, train=False)
    assert logits.shape == (batch, num_classes)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))

    assert models.has_batch_norm(module) == ("batch_stats" in variables)
    assert models.has_batch_norm(variables) == ("batch_stats" in variables)
    if models.has_batch_norm(module):
        logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
        assert set(updates) == {"batch_stats"}
        shapes = jax.tree_util.tree_map(jnp.shape, variables["batch_stats"])
        assert jax.tree_util.tree_map(jnp.shape, updates["batch_stats"]) == shapes
    else:
        assert set(variables) == {"params"}
        logits = module.apply(variables, x, train=True)
    assert logits.shape == (batch, num_classes)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name, kwargs, shape", SHAPE_CASES)
def test_output_shapes_and_dtypes(name, kwargs, shape):
    module = models.get(name, num_classes=5, **kwargs)
    x = _x(shape)
    _check_outputs(module, module.init(KEY, x, train=False), x, 5)


def test_resnet8_output_shapes_and_dtypes(resnet8):
    module, x, variables = resnet8
    _check_outputs(module, variables, x, 5)


def test_cnn_three_spatial_dims():
    """[B, D, H, W, C] input (traced only: 3-D convolutions are slow to compile on CPU)."""
    module = models.get("cnn", num_classes=7, channels=(4, 4, 4), batch_norm=True)
    x = jax.ShapeDtypeStruct((2, 3, 5, 9, 2), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(KEY, x, train=False), x)
    assert variables["params"]["Conv_0"]["kernel"].shape == (3, 3, 3, 2, 4)
    # 9 -> 4 -> 2 in the last dim; 5 -> 2 in the middle one; 3 never pooled
    assert variables["params"]["Dense_0"]["kernel"].shape == (3 * 2 * 2 * 4, 128)
    logits = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
    assert (logits.shape, logits.dtype) == ((2, 7), jnp.float32)


def test_has_batch_norm():
    assert not models.has_batch_norm(models.get("mlp", num_classes=2))
    assert not models.has_batch_norm(models.get("cnn", num_classes=2))
    assert models.has_batch_norm(models.get("cnn", num_classes=2, batch_norm=True))
    for name in EXPECTED_NAMES[2:]:
        assert models.has_batch_norm(models.get(name, num_classes=2))
    with pytest.raises(TypeError, match="variables"):
        models.has_batch_norm(object())


def test_resnet_stage_shapes_and_projections():
    """16 / 32 / 64 channels at full / half / quarter resolution; projections only at stage starts."""
    module = models.get("resnet20", num_classes=10)
    variables = _abstract_init(module, (16, 16, 3))
    params = variables["params"]
    expected_blocks = {f"stage{s}_block{b}" for s in (1, 2, 3) for b in (1, 2, 3)}
    assert set(params) == expected_blocks | {"stem_conv", "stem_bn", "head"}
    with_proj = {k for k in expected_blocks if "proj_conv" in params[k]}
    assert with_proj == {"stage2_block1", "stage3_block1"}
    assert params["stage2_block1"]["proj_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert params["stage3_block1"]["proj_conv"]["kernel"].shape == (1, 1, 32, 64)
    assert params["head"]["kernel"].shape == (64, 10)

    # spatial sizes of the stage outputs, for an even and an odd input size
    for size, expected in [(16, (16, 8, 4)), (7, (7, 4, 2))]:
        x = jnp.zeros((1, size, size, 3))

        def run(x):
            return module.init_with_output(
                KEY, x, train=False, capture_intermediates=True, mutable=True
            )

        _, state = jax.eval_shape(run, x)
        inter = state["intermediates"]
        for stage, (hw, c) in enumerate(zip(expected, (16, 32, 64), strict=True), start=1):
            out = inter[f"stage{stage}_block3"]["__call__"][0]
            assert out.shape == (1, hw, hw, c)


def test_resnet_on_sequences():
    """The ResNets also take [B, L, C] inputs (1-D convolutions); traced only."""
    module = models.get("resnet8", num_classes=5)
    variables = _abstract_init(module, (40, 1))
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 1, 16)
    assert models.param_count(variables) == resnet_count(8, 5, in_channels=1, kernel=3)
    x = jax.ShapeDtypeStruct((2, 40, 1), jnp.float32)
    logits = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, x)
    assert (logits.shape, logits.dtype) == ((2, 5), jnp.float32)


def test_cnn_pooling_rule_via_flatten_size():
    """Pool by 2 only in spatial dims of size >= 4 (so none drops below 2); flatten after."""
    cases = {
        (8, 8, 1): 2 * 2,  # 8 -> 4 -> 2
        (40, 1): 10,  # 40 -> 20 -> 10
        (32, 32, 3): 8 * 8,  # 32 -> 16 -> 8
        (3, 3, 1): 3 * 3,  # too small: never pooled
        (5, 1): 2,  # 5 -> 2, then 2 stays
        (9, 3, 2): 2 * 3,  # 9 -> 4 -> 2 in one dim, 3 stays
    }
    for shape, n_positions in cases.items():
        variables = _abstract_init(models.get("cnn", num_classes=4), shape)
        assert variables["params"]["Dense_0"]["kernel"].shape == (n_positions * 64, 128), shape
        mean_variables = _abstract_init(models.get("cnn", num_classes=4, readout="mean"), shape)
        assert mean_variables["params"]["Dense_0"]["kernel"].shape == (64, 128)


# --------------------------------------------------------------------------------------------
# parameter counts against hand formulas


def mlp_count(d_in, hidden, num_classes):
    widths = [d_in, *hidden, num_classes]
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def cnn_count(shape, channels, hidden, num_classes, flat_positions, batch_norm=False):
    *spatial, c_in = shape
    k = 3 ** len(spatial)
    total = 0
    for c in channels:
        total += k * c_in * c + (2 * c if batch_norm else c)  # kernel + (BN scale/bias | bias)
        c_in = c
    return total + (flat_positions * c_in + 1) * hidden + (hidden + 1) * num_classes


def resnet_count(depth, num_classes, base=16, in_channels=3, kernel=3 * 3):
    """CIFAR ResNet (option B) parameters, written out layer by layer."""
    n = (depth - 2) // 6
    conv3 = lambda cin, cout: kernel * cin * cout
    bn = lambda c: 2 * c
    total = conv3(in_channels, base) + bn(base)  # stem
    c_in = base
    for c in (base, 2 * base, 4 * base):
        for _ in range(n):
            total += conv3(c_in, c) + bn(c) + conv3(c, c) + bn(c)
            if c_in != c:  # projection shortcut: 1x1 conv + BN
                total += c_in * c + bn(c)
            c_in = c
    return total + c_in * num_classes + num_classes  # final Dense


@pytest.mark.parametrize("hidden", [(256, 256), (), (7,), (5, 6, 7)])
def test_mlp_param_count(hidden):
    module = models.get("mlp", num_classes=10, hidden=hidden)
    variables = _abstract_init(module, (64,))
    assert models.param_count(variables["params"]) == mlp_count(64, hidden, 10)
    assert models.param_count(variables) == mlp_count(64, hidden, 10)
    # flattening: an (8, 8, 1) image has the same count as 64 inputs
    assert models.param_count(_abstract_init(module, (8, 8, 1))) == mlp_count(64, hidden, 10)


def test_mlp_default_param_count():
    assert mlp_count(64, (256, 256), 10) == 85_002
    module = models.get("mlp", num_classes=10)
    assert models.param_count(_abstract_init(module, (64,))) == 85_002


@pytest.mark.parametrize(
    "shape, positions", [((8, 8, 1), 4), ((40, 1), 10), ((32, 32, 3), 64), ((3, 3, 1), 9)]
)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_cnn_param_count(shape, positions, batch_norm):
    module = models.get("cnn", num_classes=10, batch_norm=batch_norm)
    variables = _abstract_init(module, shape)
    expected = cnn_count(shape, (32, 64), 128, 10, positions, batch_norm=batch_norm)
    assert models.param_count(variables["params"]) == expected
    if batch_norm:  # running mean + var per channel, not counted as parameters
        assert models.param_count(variables["batch_stats"]) == 2 * (32 + 64)
        assert models.param_count(variables) == expected


def test_resnet20_cifar10_param_count():
    """He et al.'s ResNet-20 for CIFAR-10 has ~0.27M parameters."""
    by_hand = (
        (27 * 16 + 32)  # stem: 3x3x3x16 conv + BN
        + 3 * 2 * (9 * 16 * 16 + 32)  # stage 1: 3 blocks of two 3x3x16x16 convs + BN
        + (9 * 16 * 32 + 64) + (9 * 32 * 32 + 64) + (16 * 32 + 64)  # stage 2, block 1 + proj
        + 2 * 2 * (9 * 32 * 32 + 64)  # stage 2, blocks 2-3
        + (9 * 32 * 64 + 128) + (9 * 64 * 64 + 128) + (32 * 64 + 128)  # stage 3, block 1 + proj
        + 2 * 2 * (9 * 64 * 64 + 128)  # stage 3, blocks 2-3
        + 64 * 10 + 10  # Dense
    )  # fmt: skip
    assert by_hand == resnet_count(20, 10) == 272_474
    variables = _abstract_init(models.get("resnet20", num_classes=10), (32, 32, 3))
    assert models.param_count(variables["params"]) == by_hand
    assert models.param_count(variables) == by_hand  # batch_stats are not parameters
    n_bn_channels = 16 + 3 * 2 * 16 + (3 * 2 + 1) * 32 + (3 * 2 + 1) * 64
    assert models.param_count(variables["batch_stats"]) == 2 * n_bn_channels


@pytest.mark.parametrize(
    "name, num_classes", [("resnet8", 10), ("resnet8", 100), ("resnet20", 100), ("resnet56", 100)]
)
def test_resnet_param_counts(name, num_classes):
    depth = int(name.removeprefix("resnet"))
    variables = _abstract_init(models.get(name, num_classes=num_classes), (8, 8, 3))
    assert models.param_count(variables["params"]) == resnet_count(depth, num_classes)


def test_resnet_width_and_base_channels():
    for kwargs, base in [({"width": 2}, 32), ({"base_channels": 8}, 8), ({"width": 3, "base_channels": 4}, 12)]:  # fmt: skip
        variables = _abstract_init(models.get("resnet8", num_classes=10, **kwargs), (8, 8, 3))
        assert models.param_count(variables["params"]) == resnet_count(8, 10, base=base)
        assert variables["params"]["head"]["kernel"].shape == (4 * base, 10)


# --------------------------------------------------------------------------------------------
# forward passes against numpy references


@pytest.mark.parametrize(
    "activation, np_act", [("relu", lambda z: np.maximum(z, 0)), ("tanh", np.tanh)]
)
def test_mlp_forward_matches_numpy(activation, np_act):
    module = models.get("mlp", num_classes=5, activation=activation)
    x = _x((8, 8, 1))
    variables = module.init(KEY, x, train=False)
    p = _np(variables["params"])
    h = np.asarray(x, np.float64).reshape(4, 64)
    for i in range(2):
        h = np_act(h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"])
    expected = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    np.testing.assert_allclose(
        module.apply(variables, x, train=False), expected, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        module.apply(variables, x, train=True), expected, rtol=1e-4, atol=1e-5
    )


def test_mlp_accepts_callable_activation():
    module = models.get("mlp", num_classes=5, hidden=(256,), activation=jnp.sin)
    x = _x((8, 8, 1))
    variables = module.init(KEY, x, train=False)
    p = _np(variables["params"])
    h = np.asarray(x, np.float64).reshape(4, 64)
    expected = np.sin(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    expected = expected @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(
        module.apply(variables, x, train=False), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_cnn_1d_forward_matches_numpy(pool):
    """(40, 1) sequence: conv3 SAME + relu + pool2, twice; flatten (position-major); 2 Dense."""
    module = models.get("cnn", num_classes=5, pool=pool)
    x = _x((40, 1))
    variables = module.init(KEY, x, train=False)
    p = _np(variables["params"])

    def conv_same(h, kernel, bias):  # h [B, L, Cin], kernel [3, Cin, Cout]
        padded = np.pad(h, ((0, 0), (1, 1), (0, 0)))
        length = h.shape[1]
        return sum(padded[:, k : k + length] @ kernel[k] for k in range(3)) + bias

    h = np.asarray(x, np.float64)
    for i in range(2):
        h = np.maximum(conv_same(h, p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"]), 0)
        b, length, c = h.shape
        pairs = h.reshape(b, length // 2, 2, c)
        h = pairs.max(axis=2) if pool == "max" else pairs.mean(axis=2)
    assert h.shape == (4, 10, 64)
    h = np.maximum(h.reshape(4, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    expected = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(
        module.apply(variables, x, train=False), expected, rtol=1e-4, atol=1e-5
    )


# --------------------------------------------------------------------------------------------
# batch norm


def _bn_case(request, resnet8):
    if request.param == "resnet8":
        return resnet8
    module = models.get("cnn", num_classes=5, **CNN_BN)
    x = _x((8, 8, 1))
    return module, x, module.init(KEY, x, train=False)


@pytest.fixture(params=["resnet8", "cnn"])
def bn_case(request, resnet8):
    return _bn_case(request, resnet8)


def test_batch_norm_train_updates_and_eval_uses_running_stats(bn_case):
    module, x, variables = bn_case
    shape = x.shape[1:]
    x = x + 1.0  # a non-zero mean, so that every running mean moves
    stats0 = _np(variables["batch_stats"])
    for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(stats0):
        expected = 0.0 if leaf_path[-1].key == "mean" else 1.0
        np.testing.assert_array_equal(leaf, np.full_like(leaf, expected))

    # train=True: batch statistics, and every running mean / var moves
    _, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    stats1 = _np(updates["batch_stats"])
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), stats0, stats1)
    assert all(jax.tree_util.tree_leaves(changed))
    # the input variables are untouched; train=True without mutable is an error
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables["batch_stats"], stats0)
    with pytest.raises(Exception, match="batch_stats"):
        module.apply(variables, x, train=True)

    variables = {**variables, **updates}
    for step in range(2):  # a few more steps on other batches so the statistics are not trivial
        xb = _x(shape, seed=7 + step, offset=0.5)
        _, updates = module.apply(variables, xb, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}

    # eval: deterministic, no state change, and per-example (independent of the batch)
    batch = _x(shape, seed=3)
    out = module.apply(variables, batch, train=False)
    np.testing.assert_array_equal(out, module.apply(variables, batch, train=False))
    alone = module.apply(variables, batch[:1], train=False)
    np.testing.assert_allclose(alone[0], out[0], rtol=1e-5, atol=1e-5)
    other = jnp.concatenate([batch[:1], 3.0 * _x(shape, batch=3, seed=9)])
    np.testing.assert_allclose(
        module.apply(variables, other, train=False)[0], out[0], rtol=1e-5, atol=1e-5
    )
    _, eval_updates = module.apply(variables, batch, train=False, mutable=["batch_stats"])
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, eval_updates["batch_stats"], variables["batch_stats"]
    )

    # train mode normalises with batch statistics, so example 0 depends on its companions
    train_batch, _ = module.apply(variables, batch, train=True, mutable=["batch_stats"])
    train_other, _ = module.apply(variables, other, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_batch[0], train_other[0], atol=1e-3)


def test_resnet_stem_conv_and_batch_norm_against_lax(resnet8):
    """Stem: 3x3 conv with padding 1 (lax reference); BN momentum 0.9, eps 1e-5, biased var."""
    module, x, variables = resnet8
    x = x + 0.3
    kernel = variables["params"]["stem_conv"]["kernel"]
    y = lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )  # fmt: skip
    y = np.asarray(y, np.float64)

    _, state = module.apply(
        variables,
        x,
        train=True,
        capture_intermediates=True,
        mutable=["batch_stats", "intermediates"],
    )
    inter, stem = state["intermediates"], state["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(inter["stem_conv"]["__call__"][0], y, rtol=1e-4, atol=1e-4)
    mu, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    np.testing.assert_allclose(stem["mean"], 0.1 * mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stem["var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-5)
    train_bn = (y - mu) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(inter["stem_bn"]["__call__"][0], train_bn, rtol=1e-3, atol=1e-3)

    # eval: normalise with the running statistics and epsilon 1e-5
    variables = {**variables, "batch_stats": state["batch_stats"]}
    _, state = module.apply(
        variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    eval_bn = (y - np.asarray(stem["mean"])) / np.sqrt(np.asarray(stem["var"]) + 1e-5)
    np.testing.assert_allclose(
        state["intermediates"]["stem_bn"]["__call__"][0], eval_bn, rtol=1e-4, atol=1e-4
    )


# --------------------------------------------------------------------------------------------
# initialisation


def _convs(params, prefix=()):
    for key, value in params.items():
        if "conv" in key and "kernel" in value:
            yield (*prefix, key), value
        elif isinstance(value, dict):
            yield from _convs(value, (*prefix, key))


def test_resnet_init_kaiming_normal_fan_out(resnet8):
    """Conv kernels ~ N(0, 2 / fan_out) untruncated, no conv biases; BN scale 1, bias 0."""
    params = _np(resnet8[2]["params"])
    standardised = []
    for path, conv in _convs(params):
        assert set(conv) == {"kernel"}, path  # no bias before BN
        kernel = conv["kernel"]
        fan_out = int(np.prod(kernel.shape[:-2])) * kernel.shape[-1]
        z = kernel / np.sqrt(2.0 / fan_out)
        if z.size >= 9000:
            assert abs(z.std() - 1) < 0.05, path
        standardised.append(z.ravel())
    assert len(standardised) == 1 + 2 * 3 + 2  # stem, 2 convs per block, 2 projections
    z = np.concatenate(standardised)
    assert z.size == 432 + 2 * 2304 + 4608 + 9216 + 512 + 18432 + 36864 + 2048
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    # untruncated normal: P(|z| > 2) = 4.55%, P(|z| > 3) = 0.27% (truncation at 2 would give 0)
    assert 0.041 < np.mean(np.abs(z) > 2) < 0.050
    assert np.mean(np.abs(z) > 3) > 0.001
    for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [k.key for k in leaf_path]
        if any("bn" in k for k in keys):
            np.testing.assert_array_equal(leaf, 1.0 if keys[-1] == "scale" else 0.0)


def test_basic_block_zero_init_residual():
    x = _x((8, 8, 16))
    for zero in (False, True):
        block = models.BasicBlock(features=16, zero_init_residual=zero)
        params = _np(block.init(KEY, x, train=False)["params"])
        assert set(params) == {"conv1", "bn1", "conv2", "bn2"}  # identity shortcut
        np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
        np.testing.assert_array_equal(params["bn2"]["scale"], 0.0 if zero else 1.0)
    # with a zero last BN scale the block starts as relu(x + 0) = relu(x)
    out = block.apply(block.init(KEY, x, train=False), x, train=False)
    np.testing.assert_allclose(out, np.maximum(np.asarray(x), 0), rtol=1e-6, atol=1e-6)
    # the flag reaches every block of a ResNet
    module = models.get("resnet8", num_classes=10, zero_init_residual=True)
    assert module.zero_init_residual
    assert models.get("resnet8", num_classes=10).zero_init_residual is False


# --------------------------------------------------------------------------------------------
# jit


@pytest.fixture(params=["mlp", "cnn", "resnet8"])
def jit_case(request, resnet8):
    if request.param == "resnet8":
        return resnet8
    kwargs = CNN_BN if request.param == "cnn" else {}
    module = models.get(request.param, num_classes=5, **kwargs)
    x = _x((8, 8, 1))
    return module, x, module.init(KEY, x, train=False)


def test_jit(jit_case):
    module, x, variables = jit_case
    if not isinstance(module, models.CIFARResNet):  # (a jitted ResNet init is slow to compile)
        jitted = jax.jit(functools.partial(module.init, train=False))(KEY, x)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), jitted, variables
        )
    apply = jax.jit(module.apply, static_argnames=("train", "mutable"))
    np.testing.assert_allclose(
        apply(variables, x, train=False), module.apply(variables, x, train=False), rtol=1e-5, atol=1e-5
    )  # fmt: skip
    if not models.has_batch_norm(module):
        return
    out, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    ref_out, ref_updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), updates, ref_updates
    )


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_jit_grad(name):
    module = models.get(name, num_classes=5, **(CNN_BN if name == "cnn" else {}))
    x = _x((8, 8, 1))
    variables = module.init(KEY, x, train=False)

    def loss(params, batch_stats):
        v = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        if batch_stats:
            logits, _ = module.apply(v, x, train=True, mutable=["batch_stats"])
        else:
            logits = module.apply(v, x, train=True)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])

    grads = jax.jit(jax.grad(loss))(variables["params"], variables.get("batch_stats"))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))


# --------------------------------------------------------------------------------------------
# layer features (for CKA / RSA)


def test_layer_features_are_the_activations_after_each_hidden_layer():
    """MLP: each hidden layer's relu(x W + b) written out in numpy, then the logits; CNN and ResNet:
    one entry per recorded block, flattened."""
    mlp = models.get("mlp", num_classes=3, hidden=(5, 4))
    x = np.random.default_rng(0).normal(size=(6, 2, 3)).astype(np.float32)
    variables = mlp.init(KEY, x, train=False)
    features = models.layer_features(mlp, variables, x)
    p = variables["params"]
    h = x.reshape(6, -1).astype(np.float64)
    for layer, feature in zip(("Dense_0", "Dense_1"), features[:2], strict=True):
        h = np.maximum(h @ np.asarray(p[layer]["kernel"]) + np.asarray(p[layer]["bias"]), 0.0)
        np.testing.assert_allclose(feature, h, rtol=1e-5, atol=1e-6)
    logits = h @ np.asarray(p["Dense_2"]["kernel"]) + np.asarray(p["Dense_2"]["bias"])
    np.testing.assert_allclose(features[2], logits, rtol=1e-5, atol=1e-6)
    # sow is inert in a plain apply: no extra collection, same logits
    np.testing.assert_array_equal(mlp.apply(variables, x, train=False), features[2])

    for name, kwargs, shape, dims in [
        ("cnn", {"channels": (4, 6), "hidden": 7}, (2, 12, 1), [6 * 4, 3 * 6, 7, 3]),
        ("resnet8", {}, (2, 8, 8, 1), [8 * 8 * 16, 4 * 4 * 32, 2 * 2 * 64, 64, 3]),
    ]:
        module = models.get(name, num_classes=3, **kwargs)
        variables = _abstract_init(module, shape[1:])  # traced only: shapes are the point here
        features = jax.eval_shape(
            functools.partial(models.layer_features, module), variables, jnp.ones(shape)
        )
        assert [f.shape for f in features] == [(2, d) for d in dims], name


def test_transformer_records_the_state_its_head_reads():
    """``sown_features`` of the causal transformer: ``[B, T + 1, dim]`` final hidden states, and
    the logits are exactly the head's affine map of them."""
    module = models.CausalTransformer(num_actions=3, vocab_size=3, max_len=4, dim=8, num_heads=2)
    context, tokens = jnp.zeros((2,), jnp.int32), jnp.array([[0, 1, 2, 1], [2, 2, 0, 1]])
    variables = module.init(KEY, context, tokens)
    logits, (hidden,) = models.sown_features(module, variables, context, tokens)
    assert hidden.shape == (2, 5, 8)
    head = variables["params"]["head"]
    expected = np.asarray(hidden, np.float64) @ np.asarray(head["kernel"]) + np.asarray(
        head["bias"]
    )
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_transformer_hidden_only_feeds_a_bias_free_head():
    """``head_bias=False``: ``logits = hidden_only @ kernel`` (numpy), the form the fused head
    takes; ``hidden_only`` equals the sown state either way."""
    module = models.CausalTransformer(
        num_actions=5, vocab_size=5, max_len=4, dim=8, num_heads=2, head_bias=False
    )
    context, tokens = jnp.zeros((2,), jnp.int32), jnp.array([[0, 1, 4, 1], [2, 3, 0, 1]])
    variables = module.init(KEY, context, tokens)
    assert set(variables["params"]["head"]) == {"kernel"}
    hidden = module.apply(variables, context, tokens, hidden_only=True)
    logits, (sown,) = models.sown_features(module, variables, context, tokens)
    np.testing.assert_array_equal(hidden, sown)
    kernel = np.asarray(variables["params"]["head"]["kernel"])
    np.testing.assert_allclose(
        logits, np.asarray(hidden, np.float64) @ kernel, rtol=1e-5, atol=1e-6
    )
