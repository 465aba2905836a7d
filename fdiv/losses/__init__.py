"""The seed methods as pure losses (arrays in, per-example values out): ``kd`` (classifier KD),
``diffusion`` (one-step diffusion distillation: f-distill / DMD, SIM and their critics),
``preference`` (f-DPO), ``policy`` (f-DPG, DPH-RL, group-relative policy gradient) and
``sequence`` (SequenceMatch with a backspace action)."""

from fdiv.losses import diffusion, kd, policy, preference, sequence

__all__ = ["diffusion", "kd", "policy", "preference", "sequence"]
