"""The seed methods as pure losses (arrays in, per-example values out): ``kd`` (classifier KD),
``diffusion`` (one-step diffusion distillation: f-distill / DMD, SIM and their critics)."""

from fdiv.losses import diffusion, kd

__all__ = ["diffusion", "kd"]
