"""The seed methods as pure losses (logits in, per-example values out): ``kd`` (classifier KD)."""

from fdiv.losses import kd

__all__ = ["kd"]
