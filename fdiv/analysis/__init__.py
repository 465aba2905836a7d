"""Analysis tools built on divergences and kernels: representation similarity (CKA, RSA)."""

from fdiv.analysis import similarity
from fdiv.analysis.similarity import (
    cka,
    hsic,
    linear_cka,
    linear_gram,
    minibatch_cka,
    rbf_cka,
    rbf_gram,
    rdm,
    rsa,
)

__all__ = [
    "cka",
    "hsic",
    "linear_cka",
    "linear_gram",
    "minibatch_cka",
    "rbf_cka",
    "rbf_gram",
    "rdm",
    "rsa",
    "similarity",
]
