"""Small Flax Linen classifiers for knowledge-distillation experiments.

Every model maps a channels-last float input ``[B, *input_shape]`` to logits ``[B, num_classes]``
and takes a keyword-only ``train: bool`` in ``__call__`` (required, also for models without batch
norm, so that callers are uniform)::

    from fdiv import models

    module = models.get("resnet20", num_classes=10)
    variables = module.init(key, x, train=False)
    logits = module.apply(variables, x, train=False)
    # models with batch norm (models.has_batch_norm(module), i.e. "batch_stats" in variables):
    logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {**variables, **updates}

Layer-wise representations (for CKA / RSA, :mod:`fdiv.analysis`): :func:`layer_features` returns
every hidden layer's output after its activation (MLP: each hidden layer; CNN: each conv block after
pooling and the dense hidden layer; ResNet: each stage and the pooled features) followed by the
logits, each flattened to ``[B, D_l]``.

Registry names (:func:`names`): ``"mlp"`` (:class:`MLP`), ``"cnn"`` (:class:`CNN`) and the CIFAR
ResNets ``"resnet8"``, ``"resnet20"``, ``"resnet32"``, ``"resnet56"``, ``"resnet110"``
(:class:`CIFARResNet` with that depth). The classes can also be constructed directly; all their
fields are keyword-only.

Diffusion denoisers live in a separate registry, since they take ``(x, sigma)`` and return a
denoised ``x`` rather than logits (:func:`denoiser_names`, :func:`get_denoiser`)::

    module = models.get_denoiser("score_mlp", sigma_data=0.5)
    denoised = module.apply(variables, x, sigma, train=False)

``"score_mlp"`` (:class:`ScoreMLP`) and ``"score_cnn"`` (:class:`ScoreCNN`), EDM-preconditioned.

Sequence models: :class:`CausalTransformer` maps ``(context [B], tokens [B, T])`` to next-action
logits ``[B, T + 1, A]``; :mod:`fdiv.models.sampling` samples from any such model (with or
without a backspace action) and enumerates its exact sequence distribution::

    module = models.CausalTransformer(num_actions=4, vocab_size=4, max_len=5)
    logits = module.apply(variables, context, tokens)

Requires flax (the ``experiments`` extra); ``fdiv`` itself does not import this subpackage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fdiv.models import sampling
from fdiv.models._common import ACTIVATIONS, BN_EPSILON, BN_MOMENTUM, FEATURES_COLLECTION
from fdiv.models.cnn import CNN
from fdiv.models.mlp import MLP
from fdiv.models.resnet import BasicBlock, CIFARResNet
from fdiv.models.score import ScoreCNN, ScoreMLP, score_from_denoiser
from fdiv.models.transformer import CausalTransformer

__all__ = [
    "ACTIVATIONS",
    "BN_EPSILON",
    "BN_MOMENTUM",
    "CNN",
    "MLP",
    "BasicBlock",
    "CIFARResNet",
    "CausalTransformer",
    "ScoreCNN",
    "ScoreMLP",
    "denoiser_names",
    "get",
    "get_denoiser",
    "has_batch_norm",
    "layer_features",
    "names",
    "param_count",
    "sampling",
    "score_from_denoiser",
    "sown_features",
]

# name -> (class, fields fixed by the name)
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "mlp": (MLP, {}),
    "cnn": (CNN, {}),
    **{f"resnet{d}": (CIFARResNet, {"depth": d}) for d in (8, 20, 32, 56, 110)},
}

# Diffusion denoisers ``D(x, sigma)``: a separate registry (no num_classes), see get_denoiser.
_DENOISERS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "score_mlp": (ScoreMLP, {}),
    "score_cnn": (ScoreCNN, {}),
}


def _natural_key(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    return head, int(name[len(head) :] or -1)


def names() -> list[str]:
    """Registry names accepted by :func:`get`, sorted naturally (``resnet8`` before ``resnet20``)."""
    return sorted(_REGISTRY, key=_natural_key)


def _fields(cls: type[nn.Module]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "num_classes")]


def denoiser_names() -> list[str]:
    """Registry names accepted by :func:`get_denoiser`, sorted."""
    return sorted(_DENOISERS)


def _build(name: str, cls: type[nn.Module], fixed: dict[str, Any], kwargs, **extra) -> nn.Module:
    clash = sorted(set(kwargs) & set(fixed))
    if clash:
        raise ValueError(
            f"model {name!r} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; "
            f"use {cls.__name__}(...) directly for other values"
        )
    allowed = _fields(cls)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        accepted = [k for k in allowed if k not in fixed]
        raise TypeError(
            f"model {name!r} got unexpected keyword argument(s) {unknown}; accepted: {accepted}"
        )
    return cls(**extra, **fixed, **kwargs)


def get(name: str, /, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """The registered model ``name`` with ``num_classes`` outputs; ``kwargs`` go to its class.

    ``name`` is positional-only, so ``name="teacher"`` reaches the flax module's own ``name``.
    Raises ValueError for an unknown name (the message lists :func:`names`; a denoiser name is
    pointed to :func:`get_denoiser`), for a keyword that the name already fixes (``depth`` of
    ``"resnetN"``) and for invalid values (the message names the field); TypeError, naming it, for
    a keyword the class does not have.
    """
    if isinstance(name, str) and name in _DENOISERS:
        raise ValueError(
            f"{name!r} is a diffusion denoiser, not a classifier: use "
            f"fdiv.models.get_denoiser({name!r}, ...) (no num_classes)"
        )
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {names()}")
    cls, fixed = _REGISTRY[name]
    return _build(name, cls, fixed, kwargs, num_classes=num_classes)


def get_denoiser(name: str, /, **kwargs: Any) -> nn.Module:
    """The registered diffusion denoiser ``name`` (:func:`denoiser_names`); ``kwargs`` go to its
    class (e.g. ``hidden``/``channels``, ``sigma_data``, ``embed_dim``, flax's ``name``).

    The module is called as ``module.apply(variables, x, sigma, train=False)`` and returns the
    denoised ``x``. Errors as in :func:`get`.
    """
    if not isinstance(name, str) or name not in _DENOISERS:
        raise ValueError(f"unknown denoiser {name!r}; known denoisers: {denoiser_names()}")
    cls, fixed = _DENOISERS[name]
    return _build(name, cls, fixed, kwargs)


def has_batch_norm(module_or_variables: nn.Module | Mapping[str, Any]) -> bool:
    """Whether a model has batch norm, i.e. needs ``mutable=["batch_stats"]`` when ``train=True``.

    Accepts a model of this package (reads its ``has_batch_norm`` property, no init needed) or the
    ``variables`` returned by ``module.init`` (then it is ``"batch_stats" in variables``, which
    works for any flax module).
    """
    if isinstance(module_or_variables, Mapping):
        return "batch_stats" in module_or_variables
    flag = getattr(module_or_variables, "has_batch_norm", None)
    if isinstance(flag, bool):
        return flag
    raise TypeError(
        f"has_batch_norm: {type(module_or_variables).__name__} is not an fdiv.models model; "
        "pass its variables instead ('batch_stats' in variables)"
    )


def layer_features(module: nn.Module, variables: Mapping[str, Any], inputs: jax.Array) -> list:
    """Every hidden layer's representation and the logits of a classifier, in eval mode.

    Returns ``[h_1, ..., h_L, logits]``, each ``[B, D_l]`` (spatial feature maps flattened), where
    ``h_l`` is what the model recorded with ``sow_features`` (after the activation; see the module
    docstring for which layers each model records). The apply is ``train=False``, so batch norm
    uses its running averages and nothing is updated.
    """
    logits, hidden = sown_features(module, variables, inputs, train=False)
    return [h.reshape(h.shape[0], -1) for h in (*hidden, logits)]


def sown_features(module: nn.Module, variables: Mapping[str, Any], *args, **kwargs):
    """``(output, [features...])``: ``module.apply(variables, *args, **kwargs)`` and the
    representations it recorded with ``sow_features``, unflattened, in call order (for sequence
    models, e.g. :class:`CausalTransformer`'s final hidden states ``[B, T + 1, dim]``)."""
    output, state = module.apply(dict(variables), *args, mutable=[FEATURES_COLLECTION], **kwargs)
    return output, _collect_features(state.get(FEATURES_COLLECTION, {}))


def _collect_features(tree: Mapping[str, Any]) -> list:
    """The ``features`` tuples of a sown collection in call order (the module's own first, then
    its submodules' in the order flax recorded them)."""
    out = list(tree.get("features", ()))
    for name, sub in tree.items():
        if name != "features" and isinstance(sub, Mapping):
            out.extend(_collect_features(sub))
    return out


def param_count(params: Any) -> int:
    """Number of scalars in a parameter pytree (``variables["params"]``).

    A full ``variables`` mapping (one with a top-level ``"params"`` collection) is also accepted;
    then only its ``"params"`` collection is counted, never ``batch_stats``.
    """
    if isinstance(params, Mapping) and "params" in params:
        params = params["params"]
    return int(sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params)))
