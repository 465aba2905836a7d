"""The seed methods as pure losses (arrays in, per-example values out): ``kd`` (classifier KD),
``diffusion`` (one-step diffusion distillation: f-distill / DMD, SIM and their critics),
``preference`` (f-DPO), ``policy`` (f-DPG, DPH-RL, group-relative policy gradient),
``sequence`` (SequenceMatch with a backspace action) and ``dkm`` (deep kernel machines: the
Gaussian-KL objective of the Bayesian representation-learning limit)."""

from fdiv.losses import diffusion, dkm, kd, policy, preference, sequence

__all__ = ["diffusion", "dkm", "kd", "policy", "preference", "sequence"]
