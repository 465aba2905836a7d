"""Analysis tools built on divergences and kernels: representation similarity (CKA, RSA), the
Markov-categorical measures of language models (entropy / NLL decomposition, information surplus,
spectral alignment) and provenance tracing of reasoning distillation (teacher / student / shared /
boosted actions, teacher-guided data selection)."""

from fdiv.analysis import markov, provenance, similarity
from fdiv.analysis.markov import *  # noqa: F403 -- the public functions, listed once there
from fdiv.analysis.provenance import *  # noqa: F403
from fdiv.analysis.similarity import *  # noqa: F403

__all__ = [
    "markov",
    "provenance",
    "similarity",
    *markov.__all__,
    *provenance.__all__,
    *similarity.__all__,
]
