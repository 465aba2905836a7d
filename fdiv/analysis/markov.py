r"""The measures of the Markov-categorical view of language modelling, exact on synthetic languages.

Y. Zhang, "A Markov Categorical Framework for Language Modeling" (arXiv 2507.19247) reads one
generation step as the composition ``context -> hidden state h -> next-token distribution q``
and studies (a) what NLL training learns about the data's own uncertainty, (b) the *information
surplus* of ``h`` over ``q`` about later tokens (the rationale of EAGLE-style drafting from the
hidden state), (c) the alignment of the representation with the spectrum of a *predictive
similarity* operator. On a language whose conditionals are known (``fdiv.data.language``:
:func:`~fdiv.data.language.prefix_conditionals`, :func:`~fdiv.data.language.prefix_joint`) each
is computed exactly. The paper's code is not public: the definitions below are our
reconstructions, each choice stated. ``c`` ranges over ``C`` contexts (prefixes), ``w_c = p(c)``,
``P[c, x] = p(x | c)`` over ``V`` tokens; all values in nats.

**Categorical entropy and the NLL decomposition.** For data conditionals ``p_c`` and a model's
``q_c``, averaged over contexts with the weights ``w`` (normalised to sum 1)::

    nll = sum_c w_c CE(p_c, q_c) = sum_c w_c H(p_c) + sum_c w_c KL(p_c || q_c) = data_entropy + kl

``data_entropy`` is the floor no model goes below (the data's aleatoric uncertainty), ``kl`` the
part training can remove; ``model_entropy = sum_c w_c H(q_c)`` tells an over- from an
under-confident model. Each term is computed on its own (the identity is a check, not a
definition); zero probabilities are exact (``0 log 0 = 0``, no epsilon).

**Information surplus.** For a representation ``r(C)`` of the context (a hidden state, the
next-token distribution), what it knows about the token after next ``X_{t+2}`` beyond the next
token ``X_{t+1}`` (which a drafter sees, having sampled it) is the conditional mutual information
``I(r(C); X_{t+2} | X_{t+1})``. The surplus of ``h`` over ``q = head(h)`` is::

    S = I(h(C); X_{t+2} | X_{t+1}) - I(q(C); X_{t+2} | X_{t+1})  >= 0

since ``q`` is a function of ``h``: by the chain rule ``I(h; B | A) = I(q; B | A) + I(h; B | A, q)``
(data processing, which holds conditionally on ``A = X_{t+1}`` as well).
Choices: the *surplus* is over ``q`` (not over nothing), and conditioned on the sampled
``X_{t+1}``. A representation of discrete contexts is a labelling (contexts with equal labels are
indistinguishable to it); :func:`exact_information_surplus` merges the joint ``p(c, a, b)`` by
label and applies :func:`conditional_mutual_information`. The data's *intrinsic* surplus takes
``h`` = the full context and ``q`` = the exact next-token distribution (:func:`row_labels`): it is
0 for every first-order Markov language (``X_{t+2}`` depends on the context only through
``X_{t+1}``), and also for an order-``k`` language whose next-token rows are all distinct (the
row then names the state, which is sufficient for the whole future); it is positive when
contexts share a next-token distribution but differ later (e.g. ``x_{t+1}`` drawn given ``x_{t-1}``
only). For a trained network ``h`` is continuous: :func:`probe_conditional_information` estimates
``I`` with a held-out probe, and the surplus estimate is the probe's cross-entropy from ``q``
features minus that from ``h`` features.

**Spectral alignment.** The predictive similarity operator is the normalised joint of context and
next token::

    A[c, x] = w_c P[c, x] / sqrt(w_c p(x)) = p(c, x) / sqrt(p(c) p(x)),   p(x) = sum_c w_c P[c, x]

Its singular values are ``<= 1``; the top one is exactly 1 with left vector ``sqrt(w)`` and right
vector ``sqrt(p(x))`` (the trivial, constant direction), removed before the SVD. ``K = A A^T``
is the context-context similarity ``sqrt(w_c w_c') sum_x p(x|c) p(x|c') / p(x)`` (the
symmetrised predictive kernel); its top non-trivial eigenvectors ``U_k`` (``[C, k]``, orthonormal
in the ``sqrt(w)``-weighted coordinates: the functions ``D_w^{-1/2} U_k`` are ``w``-orthonormal
and ``w``-centred) are the directions a representation aligned with the predictive structure
spans (the paper's spectral / CCA result, in our reading). :func:`spectral_alignment` maps
features ``H`` ``[C, d]`` to the same coordinates (rows times ``sqrt(w_c)``, centred under ``w``
by removing the ``sqrt(w)`` component: invariant to adding a constant to every row and, as a
subspace, to any invertible linear map of ``H``), orthonormalises them, and returns the cosines
of the principal angles to ``span(U_k)`` and the captured fraction ``||Q_H^T U_k||_F^2 / k`` in
``[0, 1]``. A uniformly random ``d``-dimensional subspace of the ``(C' - 1)``-dimensional centred
space (``C'`` contexts with ``w > 0``; e.g. ``H = D_w^{-1/2} G`` with Gaussian ``G``) captures
``d / (C' - 1)`` in expectation (``d <= C' - 1``): the chance level to compare with. Contexts with ``w_c = 0`` are
masked out (their rows of ``probs`` and ``features`` are ignored, whatever they hold).

Every function but :func:`row_labels` (numpy) is a pure, jit-able jnp function of its arrays
(``k`` and the keyword options static). Values are checked where they are concrete (traced ones
pass unchecked). float64 inputs compute in float64 (with ``jax_enable_x64``), (b)float16 in
float32. :func:`probe_conditional_information` needs optax (the ``experiments`` extra).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fdiv import _numerics as nx
from fdiv.divergences import divergence
from fdiv.losses.kd import entropy as _entropy

__all__ = [
    "Alignment",
    "Spectrum",
    "categorical_entropy",
    "conditional_mutual_information",
    "exact_information_surplus",
    "nll_decomposition",
    "predictive_similarity_spectrum",
    "probe_conditional_information",
    "row_labels",
    "spectral_alignment",
]


def _log(p: jax.Array) -> jax.Array:
    """``log p`` with ``log 0 = -inf`` exactly and a zero (not NaN) gradient there."""
    positive = p > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, p, 1.0)), -jnp.inf)


def _wsum(w: jax.Array, values: jax.Array) -> jax.Array:
    """``sum_c w_c values_c`` with ``0 * anything = 0`` (a context of weight 0 may be NaN / inf)."""
    return jnp.sum(nx.mul0(w, values))


def _weights(weights: ArrayLike, n: int, name: str = "weights") -> jax.Array:
    """``weights`` ``[n]``, checked (when concrete) to be finite, ``>= 0`` and not all 0."""
    w = jnp.asarray(weights)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}] (one per context), got {w.shape}")
    if nx.is_concrete(w):
        w_np = np.asarray(w, np.float64)
        if not (np.isfinite(w_np).all() and (w_np >= 0).all() and w_np.sum() > 0):
            raise ValueError(f"{name} must be finite, >= 0 and not all 0")
    return w


def _probs(probs: ArrayLike, name: str) -> jax.Array:
    p = jnp.asarray(probs)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"{name} must have shape [contexts, V], got {p.shape}")
    if nx.is_concrete(p) and (np.asarray(p) < 0).any():
        raise ValueError(f"{name} must be probabilities (>= 0)")
    return p


def _int_labels(labels: ArrayLike, n: int, name: str) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer labels of shape [{n}], got {labels.dtype}{list(labels.shape)}")  # fmt: skip
    if nx.is_concrete(labels) and not ((np.asarray(labels) >= 0).all() and (np.asarray(labels) < n).all()):  # fmt: skip
        raise ValueError(f"{name} must lie in [0, {n}) (segment ids of the contexts)")
    return labels


# ------------------------------------------------------------------------------------------------
# (a) Categorical entropy and the NLL decomposition.
# ------------------------------------------------------------------------------------------------


def categorical_entropy(logits: ArrayLike) -> jax.Array:
    """``H(softmax(logits)) = -sum_x p_x log p_x`` per context, ``[..., V] -> [...]``, nats.

    Log-probabilities are logits: pass ``log p`` for probabilities (``log 0 = -inf`` is exact,
    ``0 log 0 = 0``). A one-hot (deterministic) row has entropy exactly 0.
    """
    logits = jnp.asarray(logits)
    nx.check_logits("categorical_entropy", logits)
    return _entropy(logits.astype(nx.compute_dtype(logits)))


def nll_decomposition(
    data_probs: ArrayLike, model_logits: ArrayLike, weights: ArrayLike
) -> dict[str, jax.Array]:
    """The NLL of a model on exact data conditionals, split into data entropy and KL.

    With ``w`` normalised to sum 1, ``p_c`` the data's and ``q_c = softmax(model_logits_c)`` the
    model's next-token distribution::

        nll           = sum_c w_c CE(p_c, q_c) = -sum_c w_c sum_x p_c(x) log q_c(x)
        data_entropy  = sum_c w_c H(p_c)
        kl            = sum_c w_c KL(p_c || q_c)        (fdiv's KL: exact at zero probabilities)
        model_entropy = sum_c w_c H(q_c)

    ``nll = data_entropy + kl`` up to rounding (each is computed on its own). ``kl`` is finite
    where the model gives ``-inf`` logits only to tokens of data probability 0, ``+inf``
    otherwise. Contexts of weight 0 contribute exactly 0 (their rows may be anything).

    Args:
      data_probs: ``[N, V]`` data conditionals ``p(x | c)`` (each row normalised to sum 1).
      model_logits: ``[N, V]`` the model's logits (or log-probabilities) per context.
      weights: ``[N]`` context weights ``p(c)``, ``>= 0``.

    Returns:
      ``{"nll", "data_entropy", "kl", "model_entropy"}``: scalars.
    """
    p = _probs(data_probs, "data_probs")
    logits = jnp.asarray(model_logits)
    if logits.shape != p.shape:
        raise ValueError(f"model_logits must match data_probs {p.shape}, got {logits.shape}")
    nx.check_logits("nll_decomposition", logits)
    w = _weights(weights, p.shape[0])
    return _nll_decomposition(*nx.in_compute_dtype(p, logits, w))


@jax.jit
def _nll_decomposition(p: jax.Array, logits: jax.Array, w: jax.Array) -> dict[str, jax.Array]:
    p = p / jnp.sum(p, axis=-1, keepdims=True)
    w = w / jnp.sum(w)
    log_p = _log(p)
    log_q = jax.nn.log_softmax(logits, axis=-1)
    cross_entropy = -jnp.sum(nx.mul0(p, log_q), axis=-1)  # p = 0 terms are 0 even where q = 0
    return {
        "nll": _wsum(w, cross_entropy),
        "data_entropy": _wsum(w, categorical_entropy(log_p)),
        "kl": _wsum(w, divergence("kl", log_p, logits)),
        "model_entropy": _wsum(w, categorical_entropy(logits)),
    }


# ------------------------------------------------------------------------------------------------
# (b) Information surplus.
# ------------------------------------------------------------------------------------------------


def conditional_mutual_information(joint: ArrayLike) -> jax.Array:
    """``I(R; B | A)`` of a joint ``p(r, a, b)`` ``[R, A, B]`` (normalised by its sum), nats.

    Computed as ``sum_{r,a} p(r, a) KL(p(b | r, a) || p(b | a))`` with fdiv's KL on the
    log-joint as logits, so zero probabilities are exact: a cell of probability 0 contributes 0,
    and a pair ``(r, a)`` of probability 0 (whose conditional is undefined) contributes 0. The
    result is ``>= 0`` and 0 (to rounding) exactly when ``R`` and ``B`` are independent given ``A``.
    """
    return _cmi(_joint(joint, "joint", "[R, A, B]"))


def _joint(joint: ArrayLike, name: str, shape: str) -> jax.Array:
    joint = jnp.asarray(joint)
    if joint.ndim != 3 or 0 in joint.shape:
        raise ValueError(f"{name} must have shape {shape} (non-empty), got {joint.shape}")
    if nx.is_concrete(joint) and not (np.asarray(joint) >= 0).all():
        raise ValueError(f"{name} must be probabilities (>= 0)")
    (joint,) = nx.in_compute_dtype(joint)
    return joint


@jax.jit
def _cmi(joint: jax.Array) -> jax.Array:
    joint = joint / jnp.sum(joint)
    # softmax over b of log p(r, a, b) is p(b | r, a); of log p(a, b), p(b | a)
    kl = divergence("kl", _log(joint), _log(jnp.sum(joint, axis=0))[None])  # [R, A]
    return _wsum(jnp.sum(joint, axis=-1), kl)


def exact_information_surplus(
    joint_cab: ArrayLike, hidden_labels: ArrayLike, head_labels: ArrayLike
) -> dict[str, jax.Array]:
    """The information surplus ``I(h; X_{t+2} | X_{t+1}) - I(q; X_{t+2} | X_{t+1})``, exactly.

    ``h`` and ``q`` are discrete representations of the contexts given as labels: contexts with
    the same label are merged (``segment_sum`` of their rows of the joint) before
    :func:`conditional_mutual_information`. The surplus is ``>= 0`` when ``head_labels`` is a
    function of ``hidden_labels`` (``q = head(h)``; not checked). The data's intrinsic surplus is
    ``exact_information_surplus(joint, arange(C), row_labels(p(next | c)))``.

    Args:
      joint_cab: ``[C, A, B]`` ``p(context, x_{t+1}, x_{t+2})``
        (:func:`fdiv.data.language.prefix_joint`).
      hidden_labels, head_labels: ``[C]`` integers in ``[0, C)``, the value of each
        representation per context.

    Returns:
      ``{"hidden": I(h; X_{t+2} | X_{t+1}), "head": I(q; ...), "surplus": hidden - head}``.
    """
    joint = _joint(joint_cab, "joint_cab", "[C, A, B]")
    c = joint.shape[0]
    return _surplus(
        joint,
        _int_labels(hidden_labels, c, "hidden_labels"),
        _int_labels(head_labels, c, "head_labels"),
    )


@jax.jit
def _surplus(joint: jax.Array, hidden_labels: jax.Array, head_labels: jax.Array) -> dict[str, jax.Array]:  # fmt: skip
    def merged(labels):  # unused labels are zero rows, which contribute 0
        return jax.ops.segment_sum(joint, labels, num_segments=joint.shape[0])

    hidden, head = _cmi(merged(hidden_labels)), _cmi(merged(head_labels))
    return {"hidden": hidden, "head": head, "surplus": hidden - head}


def row_labels(x: ArrayLike, *, decimals: int = 12) -> np.ndarray:
    """Equal labels for equal rows: ``[C, ...] -> [C]`` int32 in ``[0, #distinct)`` (numpy).

    Rows are compared after rounding to ``decimals`` decimal places, so float noise does not split
    rows that are equal in exact arithmetic (e.g. two contexts whose next-token conditional is the
    same transition row). Two rows closer than the rounding grid may still straddle a rounding
    boundary; use fewer decimals for noisy (model) outputs. Labels follow the sorted order of the
    distinct rows. The labels of exact next-token conditionals give the representation ``q`` of
    :func:`exact_information_surplus`.
    """
    x = np.asarray(x, np.float64)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have shape [C, ...] with C >= 1, got {x.shape}")
    rounded = np.round(x.reshape(x.shape[0], -1), decimals) + 0.0  # + 0.0: -0.0 becomes 0.0
    _, inverse = np.unique(rounded, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _probe(train_x, train_next, train_target, test_x, test_next, test_target, l2, smoothing, *, num_classes, steps):  # fmt: skip
    import optax  # the experiments extra; the rest of the module needs only jax

    v = num_classes
    # standardised with the training statistics (a constant feature becomes 0): the L2 penalty
    # then does not depend on each feature's scale
    mean, std = jnp.mean(train_x, axis=0), jnp.std(train_x, axis=0)
    std = jnp.where(std > 0, std, 1.0)
    train_z, test_z = (train_x - mean) / std, (test_x - mean) / std

    def log_probs(params, z, nxt):
        weight, bias = params  # [V, d, V], [V, V]: one linear map per value of X_{t+1}
        logits = jnp.einsum("nd,ndv->nv", z, weight[nxt]) + bias[nxt]
        return jax.nn.log_softmax(logits, axis=-1)

    def cross_entropy(params, z, nxt, target):
        lp = jnp.take_along_axis(log_probs(params, z, nxt), target[:, None], axis=-1)
        return -jnp.mean(lp)

    def loss(params):  # the biases are not penalised: no features fits p(X_{t+2} | X_{t+1})
        return cross_entropy(params, train_z, train_next, train_target) + l2 * jnp.sum(jnp.square(params[0]))  # fmt: skip

    params = (jnp.zeros((v, train_z.shape[1], v), train_z.dtype), jnp.zeros((v, v), train_z.dtype))
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    probe_ce = cross_entropy(params, test_z, test_next, test_target)

    counts = jnp.zeros((v, v), train_z.dtype).at[train_next, train_target].add(1.0)
    smoothed = (counts + smoothing) / jnp.sum(counts + smoothing, axis=-1, keepdims=True)
    baseline_ce = -jnp.mean(jnp.log(smoothed[test_next, test_target]))
    return {"probe_ce": probe_ce, "baseline_ce": baseline_ce, "information": baseline_ce - probe_ce}


def probe_conditional_information(
    train_features: ArrayLike,
    train_next: ArrayLike,
    train_target: ArrayLike,
    test_features: ArrayLike,
    test_next: ArrayLike,
    test_target: ArrayLike,
    *,
    num_classes: int,
    l2: float = 1e-3,
    steps: int = 100,
    baseline_smoothing: float = 0.5,
) -> dict[str, jax.Array]:
    """A held-out probe estimate of ``I(features; X_{t+2} | X_{t+1})`` from samples, nats.

    The probe is a multinomial logistic regression of ``X_{t+2}`` on ``features x one-hot(X_{t+1})``:
    one linear map and bias per value ``a`` of ``X_{t+1}``, ``logits = W[a] z + b[a]``, so it
    conditions on ``X_{t+1}`` exactly. Features are standardised with the training mean and
    standard deviation. It minimises ``mean_train CE + l2 ||W||_F^2`` (biases unpenalised) by
    full-batch L-BFGS (optax, zoom line search) for a fixed number of ``steps`` from zero
    parameters: deterministic. The baseline is the held-out cross-entropy of the count estimate
    ``p(b | a) = (n_ab + s) / (n_a + s V)`` from the *training* pairs, add-``s`` smoothed
    (``s = baseline_smoothing``, Krichevsky-Trofimov 1/2 by default; the smoothing is only for
    this baseline, so that a pair unseen in training has a finite cost). Then::

        information = baseline_ce - probe_ce  ~  H(X_{t+2} | X_{t+1}) - H(X_{t+2} | X_{t+1}, features)

    an estimate that is biased low by the probe's misfit (a linear probe) and noisy by
    ``O(1/sqrt(n_test))``; near 0 (possibly slightly negative) for uninformative features. The
    surplus estimate of ``h`` over ``q`` is ``probe_ce(q features) - probe_ce(h features)``
    (the baseline cancels), on the same split.

    Args:
      train_features, test_features: ``[n, d]`` and ``[m, d]`` features of each context.
      train_next, test_next: ``[n]``, ``[m]`` the next token ``X_{t+1}`` in ``[0, num_classes)``.
      train_target, test_target: ``[n]``, ``[m]`` the token after, ``X_{t+2}``.
      num_classes: the vocabulary size ``V`` (of both tokens).
      l2: the weights' L2 penalty (``>= 0``); steps: L-BFGS iterations;
      baseline_smoothing: ``s > 0`` of the count baseline.

    Returns:
      ``{"probe_ce", "baseline_ce", "information"}``: scalars (nats per held-out example).
    """
    num_classes = nx.positive_int("num_classes", num_classes)
    steps = nx.positive_int("steps", steps)
    nx.check_hyperparameter("l2", l2, lambda x: x >= 0, ">= 0")
    nx.check_hyperparameter("baseline_smoothing", baseline_smoothing, lambda x: x > 0, "> 0")
    splits = {}
    for split, x, nxt, target in (
        ("train", train_features, train_next, train_target),
        ("test", test_features, test_next, test_target),
    ):
        x, nxt, target = jnp.asarray(x), jnp.asarray(nxt), jnp.asarray(target)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{split}_features must have shape [n, d] with n >= 1, got {x.shape}")
        for name, labels in (("next", nxt), ("target", target)):
            if labels.shape != (x.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
                raise ValueError(f"{split}_{name} must be integer tokens of shape [{x.shape[0]}], got {labels.dtype}{list(labels.shape)}")  # fmt: skip
            if nx.is_concrete(labels) and not ((np.asarray(labels) >= 0).all() and (np.asarray(labels) < num_classes).all()):  # fmt: skip
                raise ValueError(f"{split}_{name} must lie in [0, num_classes={num_classes})")
        splits[split] = (x, nxt.astype(jnp.int32), target.astype(jnp.int32))
    if splits["train"][0].shape[1] != splits["test"][0].shape[1]:
        raise ValueError(f"train and test features differ in width: {splits['train'][0].shape[1]} != {splits['test'][0].shape[1]}")  # fmt: skip
    train_x, test_x = nx.in_compute_dtype(splits["train"][0], splits["test"][0])
    return _probe(
        train_x, *splits["train"][1:], test_x, *splits["test"][1:],
        jnp.asarray(l2, train_x.dtype), jnp.asarray(baseline_smoothing, train_x.dtype),
        num_classes=num_classes, steps=steps,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# (c) Spectral alignment.
# ------------------------------------------------------------------------------------------------


class Spectrum(NamedTuple):
    """The top ``k`` non-trivial singular directions of the predictive similarity operator."""

    vectors: jax.Array  # [C, k] left singular vectors, orthonormal, orthogonal to sqrt(w)
    values: jax.Array  # [k] singular values in [0, 1], descending (eigenvalues of K: values^2)


class Alignment(NamedTuple):
    """How much of the predictive spectrum a representation spans (:func:`spectral_alignment`)."""

    cosines: jax.Array  # [min(C, d, k)] cosines of the principal angles, descending
    captured: jax.Array  # ||Q_H^T U_k||_F^2 / k in [0, 1]


def _check_k(k, c: int, v: int) -> int:
    k = nx.positive_int("k", k)
    if k > min(c, v) - 1:
        raise ValueError(f"k={k}: the operator of {c} contexts and {v} tokens has at most {min(c, v) - 1} non-trivial directions")  # fmt: skip
    return k


def _operator(p: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(A - sqrt(w) sqrt(p)^T, sqrt(w), support)``: the operator without its trivial part."""
    support = w > 0
    p = jnp.where(support[:, None], p, 0.0)  # rows of weight 0 are ignored, NaN included
    total = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(total > 0, total, 1.0)
    sqrt_w = jnp.sqrt(w / jnp.sum(w))
    marginal = jnp.sum(jnp.square(sqrt_w)[:, None] * p, axis=0)  # p(x)
    seen = marginal > 0
    inv_sqrt_marginal = jnp.where(seen, jax.lax.rsqrt(jnp.where(seen, marginal, 1.0)), 0.0)
    a = sqrt_w[:, None] * p * inv_sqrt_marginal[None, :]
    # A sqrt(p) = sqrt(w) and A^T sqrt(w) = sqrt(p): the singular pair of value 1, subtracted
    return a - sqrt_w[:, None] * jnp.sqrt(marginal)[None, :], sqrt_w, support


def predictive_similarity_spectrum(probs: ArrayLike, weights: ArrayLike, k: int) -> Spectrum:
    """The top ``k`` non-trivial left singular vectors and values of ``A[c, x] = p(c, x) /
    sqrt(p(c) p(x))`` (module docstring): the eigenvectors of the predictive similarity ``K = A
    A^T`` after its trivial ``sqrt(w)``.

    Args:
      probs: ``[C, V]`` next-token conditionals ``p(x | c)``.
      weights: ``[C]`` context probabilities ``p(c) >= 0`` (normalised); contexts of weight 0
        are masked (their rows of ``vectors`` are 0 for every non-zero singular value).
      k: ``1 <= k <= min(C, V) - 1``. Directions of singular value 0 are arbitrary, and those of
        a repeated singular value any basis of its space: ``span(U_k)`` is defined when
        ``values[k - 1] > values[k]``.

    Returns:
      :class:`Spectrum` ``(vectors [C, k], values [k])``.
    """
    p = _probs(probs, "probs")
    k = _check_k(k, *p.shape)
    return _spectrum(*nx.in_compute_dtype(p, _weights(weights, p.shape[0])), k)


@functools.partial(jax.jit, static_argnums=2)
def _spectrum(p: jax.Array, w: jax.Array, k: int) -> Spectrum:
    a, _, support = _operator(p, w)
    return _top(a, support, k)


def _top(a: jax.Array, support: jax.Array, k: int) -> Spectrum:
    u, s, _ = jnp.linalg.svd(a, full_matrices=False)
    # the rows of weight 0 are 0 in A; the SVD leaves rounding noise there, set to exact zeros
    return Spectrum(jnp.where(support[:, None], u[:, :k], 0.0), s[:k])


def spectral_alignment(
    features: ArrayLike,
    probs: ArrayLike,
    weights: ArrayLike,
    k: int,
    *,
    rtol: float | None = None,
) -> Alignment:
    """How well the span of a representation of the contexts matches the top-``k`` predictive
    similarity directions ``U_k`` (:func:`predictive_similarity_spectrum`).

    The features ``H`` ``[C, d]`` are weighted, ``sqrt(w_c) H_c``, centred under ``w`` (the
    ``sqrt(w)`` component removed) and orthonormalised by an SVD keeping the singular values above
    ``rtol * largest`` (default ``max(C, d) * eps``, as ``numpy.linalg.matrix_rank``) into ``Q_H``.

    Args:
      features: ``[C, d]`` a representation of each context (e.g. the hidden state at its end).
      probs: ``[C, V]`` next-token conditionals. weights: ``[C]`` ``p(c)``; contexts of weight 0
        are masked out (features, probs and all).
      k: the number of predictive directions, ``1 <= k <= min(C, V) - 1``.

    Returns:
      :class:`Alignment`: ``cosines`` ``[min(C, d, k)]`` of the principal angles between
      ``span(Q_H)`` and ``span(U_k)``, descending (those past the rank of ``H`` are 0), and
      ``captured = ||Q_H^T U_k||_F^2 / k = sum cosines^2 / k`` in ``[0, 1]`` (1 when ``H`` spans
      ``U_k``; ``d / (C' - 1)`` expected of a random subspace, module docstring).
    """
    p = _probs(probs, "probs")
    h = jnp.asarray(features)
    if h.ndim != 2 or h.shape[0] != p.shape[0] or h.shape[1] == 0:
        raise ValueError(f"features must have shape [{p.shape[0]}, d] (one row per context), got {h.shape}")  # fmt: skip
    k = _check_k(k, *p.shape)
    h, p, w = nx.in_compute_dtype(h, p, _weights(weights, p.shape[0]))
    if rtol is None:
        rtol = max(h.shape) * float(jnp.finfo(h.dtype).eps)
    return _alignment(h, p, w, k, rtol)


@functools.partial(jax.jit, static_argnums=3)
def _alignment(h: jax.Array, p: jax.Array, w: jax.Array, k: int, rtol) -> Alignment:
    a, sqrt_w, support = _operator(p, w)
    u_k = _top(a, support, k).vectors
    h = jnp.where(support[:, None], sqrt_w[:, None] * h, 0.0)
    h = h - sqrt_w[:, None] * (sqrt_w @ h)[None, :]  # centred under w
    q, s, _ = jnp.linalg.svd(h, full_matrices=False)
    q = q * (s > rtol * s[0])[None, :]  # a rank-deficient H keeps only its column space
    cosines = jnp.clip(jnp.linalg.svd(q.T @ u_k, compute_uv=False), 0.0, 1.0)
    return Alignment(cosines, jnp.sum(jnp.square(cosines)) / k)
