"""fdiv: f-divergences in JAX.

Generators (``fdiv.generators``), divergences between categoricals given logits and between
Gaussians, Monte Carlo / importance-weighted / variational estimators, and property-checking
helpers for your own generators (``fdiv.testing``); the seed methods as pure losses
(``fdiv.losses``), classifier metrics (``fdiv.metrics``), log-domain Sinkhorn (``fdiv.transport``),
representation similarity (``fdiv.analysis``: CKA, RSA).
Models, data, the trainer and the figures (``fdiv.models``, ``fdiv.data``, ``fdiv.train``,
``fdiv.plots``) need the ``experiments`` extra and are imported on their own. Argument order is always ``(P, Q)``.
"""

from fdiv import analysis, fused, generators, losses, metrics, testing, transport
from fdiv.divergences import (
    DivergenceTerms,
    divergence,
    divergence_terms,
    gaussian_kl,
    gaussian_kl_diag,
    importance_weighted_divergence,
    monte_carlo_divergence,
    variational_lower_bound,
)
from fdiv.generators import Generator

__version__ = "0.1.0"

__all__ = [
    "DivergenceTerms",
    "Generator",
    "analysis",
    "divergence",
    "divergence_terms",
    "gaussian_kl",
    "gaussian_kl_diag",
    "fused",
    "generators",
    "losses",
    "metrics",
    "transport",
    "testing",
    "importance_weighted_divergence",
    "monte_carlo_divergence",
    "variational_lower_bound",
]
