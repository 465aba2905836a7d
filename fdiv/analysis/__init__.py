"""Analysis tools built on divergences and kernels: representation similarity (CKA, RSA)."""

from fdiv.analysis import similarity
from fdiv.analysis.similarity import *  # noqa: F403 -- the public functions, listed once there

__all__ = ["similarity", *similarity.__all__]
