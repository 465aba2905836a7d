"""Analysis tools built on divergences and kernels: representation similarity (CKA, RSA) and the
Markov-categorical measures of language models (entropy / NLL decomposition, information surplus,
spectral alignment)."""

from fdiv.analysis import markov, similarity
from fdiv.analysis.markov import *  # noqa: F403 -- the public functions, listed once there
from fdiv.analysis.similarity import *  # noqa: F403

__all__ = ["markov", "similarity", *markov.__all__, *similarity.__all__]
