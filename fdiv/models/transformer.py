"""A tiny causal transformer over short token sequences, conditioned on one context token."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fdiv.models._common import check_positive_int, sow_features


class CausalTransformer(nn.Module, kw_only=True):
    """Pre-LayerNorm causal transformer: ``(context [B], tokens [B, T]) -> logits [B, T + 1, A]``.

    Position 0 holds the context (a prompt id, 0 for unconditional tasks), position ``t + 1`` the
    token ``tokens[:, t]``; ``logits[:, t]`` is the next-action distribution (or the soft Q-values,
    for SequenceMatch) at the state made of the context and ``tokens[:, :t]``. So one call on a
    complete sequence gives every per-token log-probability (teacher forcing) and one call on a
    padded prefix gives the next action at any position: padding after the prefix is never seen
    by the causal mask.

    Attributes:
      num_actions: ``A``, the output size (the vocabulary, plus one for a backspace action).
      vocab_size: input token ids are in ``[0, vocab_size)``.
      num_contexts: context ids are in ``[0, num_contexts)``.
      max_len: the longest ``tokens`` accepted (``T <= max_len``).
      dim, num_heads, num_layers, mlp_ratio: width, heads, depth, MLP expansion.
      head_bias: whether the output head has a bias. Without one, ``logits = h @ kernel`` with
        ``h = apply(..., hidden_only=True)`` and ``kernel = params["head"]["kernel"]`` ``[dim, A]``,
        the form :func:`fdiv.fused.fused_linear_divergence` takes (``weight = kernel.T``).
    """

    num_actions: int
    vocab_size: int
    num_contexts: int = 1
    max_len: int = 8
    dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    mlp_ratio: int = 4
    head_bias: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in ("num_actions", "vocab_size", "num_contexts", "max_len", "dim", "num_heads"):
            check_positive_int(owner, field, getattr(self, field))
        check_positive_int(owner, "mlp_ratio", self.mlp_ratio)
        if self.num_layers < 0:
            raise ValueError(f"{owner}: num_layers must be >= 0, got {self.num_layers}")
        if self.dim % self.num_heads:
            raise ValueError(
                f"{owner}: dim={self.dim} is not divisible by num_heads={self.num_heads}"
            )
        super().__post_init__()

    @property
    def has_batch_norm(self) -> bool:
        return False

    @nn.compact
    def __call__(
        self,
        context: jax.Array,
        tokens: jax.Array,
        *,
        train: bool = False,
        hidden_only: bool = False,
    ) -> jax.Array:
        """Logits ``[B, T + 1, A]``; with ``hidden_only`` the final (normalised) hidden states
        ``[B, T + 1, dim]`` the head reads, so a fused head never materialises the logits."""
        del train  # no dropout: the experiments are small and exactly measured
        batch, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"tokens have length {length} > max_len={self.max_len}")
        init = nn.initializers.normal(0.02)
        ctx = nn.Embed(self.num_contexts, self.dim, embedding_init=init, name="context")(context)
        tok = nn.Embed(self.vocab_size, self.dim, embedding_init=init, name="token")(tokens)
        pos = self.param("position", init, (self.max_len + 1, self.dim))
        x = jnp.concatenate([ctx[:, None], tok], axis=1) + pos[: length + 1]
        mask = nn.make_causal_mask(jnp.ones((batch, length + 1), jnp.int32))
        for i in range(self.num_layers):
            h = nn.LayerNorm(name=f"ln_attn_{i}")(x)
            x = x + nn.MultiHeadDotProductAttention(
                num_heads=self.num_heads, kernel_init=init, name=f"attn_{i}"
            )(h, h, mask=mask)
            h = nn.LayerNorm(name=f"ln_mlp_{i}")(x)
            h = nn.Dense(self.mlp_ratio * self.dim, kernel_init=init, name=f"mlp_in_{i}")(h)
            x = x + nn.Dense(self.dim, kernel_init=init, name=f"mlp_out_{i}")(nn.gelu(h))
        x = nn.LayerNorm(name="ln_final")(x)
        sow_features(self, x)  # the state the head reads: [B, T + 1, dim]
        if hidden_only and not self.is_initializing():
            return x
        head = nn.Dense(self.num_actions, use_bias=self.head_bias, kernel_init=init, name="head")
        return head(x)
