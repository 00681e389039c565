"""CaiT, Class-Attention in Image Transformers (Touvron et al. 2021, arXiv:2103.17239).

A ViT whose patch tokens (with learned position embeddings, no class token) go through
``depth`` self-attention blocks with LayerScale and talking-heads attention; the class token
enters only afterwards, in ``class_attention_depth`` (2) class-attention blocks that update the
class token alone. The blocks are

    x = x + DropPath(diag(g1) TalkingHeadsAttention(LN(x)));  x = x + DropPath(diag(g2) MLP(LN(x)))
    z = [cls, x];  cls = cls + diag(g1') ClassAttention(LN(z));  cls = cls + diag(g2') MLP(LN(cls))

LayerScale's per-channel gains ``g`` start at ``init_scale`` (the paper: 0.1 up to depth 18,
1e-5 at depth 24, 1e-6 deeper; the released XXS-36 uses 1e-5). Talking-heads attention mixes
the heads' attention logits with a learned ``H x H`` map before the softmax and the
probabilities with another after it (Shazeer et al. 2020). Class attention uses the class
token as the only query against ``[cls, x]``.

The table (``embed_dim``/``num_heads``: XXS 192/4, XS 288/6, S 384/8, M 768/16, the number
being the depth): ``CaiT_XXS12``, ``CaiT_XXS24`` (12.0M parameters at 224x224 and 1000 classes),
``CaiT_XXS36`` (17.3M), ``CaiT_XS12``, ``CaiT_XS24`` (26.6M), ``CaiT_S12``, ``CaiT_S24`` (46.9M),
``CaiT_S36``, ``CaiT_M24``, ``CaiT_M36``, ``CaiT_M48``.

``patch_size=None`` picks 16 for inputs of at least 128 pixels a side (14x14 tokens at 224) and
4 below (8x8 tokens at 32x32, the GNP authors' CIFAR setting).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = ["VARIANTS", "CaiT"]

# Touvron et al. 2021, Table 1: name -> (embed_dim, depth, num_heads, init_scale), with the
# released models' LayerScale init where there is one (deit repository), the paper's rule (0.1
# up to depth 18) for the 12-block ones.
_SIZES = {
  "XXS12": (192, 12, 4, 0.1),
  "XXS24": (192, 24, 4, 1e-5),
  "XXS36": (192, 36, 4, 1e-5),
  "XS12": (288, 12, 6, 0.1),
  "XS24": (288, 24, 6, 1e-5),
  "S12": (384, 12, 8, 0.1),
  "S24": (384, 24, 8, 1e-5),
  "S36": (384, 36, 8, 1e-6),
  "M24": (768, 24, 16, 1e-5),
  "M36": (768, 36, 16, 1e-6),
  "M48": (768, 48, 16, 1e-6),
}
VARIANTS: dict[str, dict[str, Any]] = {
  f"CaiT_{size}": {"embed_dim": dim, "depth": depth, "num_heads": heads, "init_scale": scale}
  for size, (dim, depth, heads, scale) in _SIZES.items()
}

_TRUNC_NORMAL = nn.initializers.truncated_normal(0.02)


def _layer_norm(dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype)


def _dense(features: int, dtype: Any, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, kernel_init=_TRUNC_NORMAL, dtype=dtype, name=name)


class _Mlp(nn.Module):
  hidden: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    dim = x.shape[-1]
    x = nn.gelu(_dense(self.hidden, self.dtype)(x), approximate=False)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = _dense(dim, self.dtype)(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class _TalkingHeadsAttention(nn.Module):
  """Self-attention whose logits and weights are mixed across heads by learned H x H maps."""

  num_heads: int
  attention_dropout_rate: float
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = _dense(3 * dim, self.dtype, "qkv")(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    logits = jnp.einsum("bhqd,bhkd->bqkh", q * head_dim**-0.5, k)
    logits = _dense(self.num_heads, self.dtype, "proj_l")(logits).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=2).astype(self.dtype)
    weights = _dense(self.num_heads, self.dtype, "proj_w")(weights)
    weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
    out = jnp.einsum("bqkh,bhkd->bqhd", weights, v).reshape(batch, tokens, dim)
    out = _dense(dim, self.dtype, "proj")(out)
    return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class _ClassAttention(nn.Module):
  """Attention with the class token (position 0) as the only query; returns its update."""

  num_heads: int
  attention_dropout_rate: float
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    q = _dense(dim, self.dtype, "q")(x[:, :1]).reshape(batch, self.num_heads, head_dim)
    k = _dense(dim, self.dtype, "k")(x).reshape(batch, tokens, self.num_heads, head_dim)
    v = _dense(dim, self.dtype, "v")(x).reshape(batch, tokens, self.num_heads, head_dim)
    logits = jnp.einsum("bhd,bkhd->bhk", q * head_dim**-0.5, k).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
    out = jnp.einsum("bhk,bkhd->bhd", weights, v).reshape(batch, 1, dim)
    out = _dense(dim, self.dtype, "proj")(out)
    return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class _LayerScaleBlock(nn.Module):
  """Pre-norm residual block whose branches are scaled per channel by learned LayerScale gains.

  With ``class_attention`` it takes ``(cls, x)`` and returns the updated ``cls``; otherwise it is
  a self-attention block on ``x``.
  """

  num_heads: int
  mlp_ratio: float
  init_scale: float
  class_attention: bool
  dropout_rate: float
  attention_dropout_rate: float
  drop_path_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, cls: jax.Array | None = None) -> jax.Array:
    dim = x.shape[-1]
    gain = lambda name: self.param(name, nn.initializers.constant(self.init_scale), (dim,))
    attention = _ClassAttention if self.class_attention else _TalkingHeadsAttention
    attention = attention(
      self.num_heads, self.attention_dropout_rate, self.dropout_rate, self.dtype
    )
    if self.class_attention:
      y = _layer_norm(self.dtype)(jnp.concatenate([cls, x], axis=1))
      x = cls
    else:
      y = _layer_norm(self.dtype)(x)
    y = gain("gamma_1").astype(self.dtype) * attention(y, train=train)
    x = x + layers.drop_path(y, self.drop_path_rate, train=train)
    y = _layer_norm(self.dtype)(x)
    y = _Mlp(int(dim * self.mlp_ratio), self.dropout_rate, self.dtype)(y, train=train)
    y = gain("gamma_2").astype(self.dtype) * y
    return x + layers.drop_path(y, self.drop_path_rate, train=train)


class CaiT(nn.Module):
  """CaiT classifier: self-attention stack on patches, then class-attention stack on a class token.

  Attributes:
    num_classes: number of logits.
    embed_dim: token width.
    depth: self-attention blocks.
    num_heads: attention heads (both kinds of block).
    init_scale: initial LayerScale gain.
    class_attention_depth: class-attention blocks (2 in the paper).
    patch_size: side of the embedded patches; ``None`` picks from the input (see module doc).
    mlp_ratio: MLP hidden width over ``embed_dim``.
    dropout_rate: dropout after embeddings, attention projections and MLP layers.
    attention_dropout_rate: dropout on attention weights.
    drop_path_rate: stochastic depth (rng ``'drop_path'``) of every self-attention block
      (constant over depth, as in the paper; the class-attention blocks have none).
    dtype: computation dtype; parameters and logits are float32.
  """

  num_classes: int
  embed_dim: int = 192
  depth: int = 24
  num_heads: int = 4
  init_scale: float = 1e-5
  class_attention_depth: int = 2
  patch_size: int | None = None
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if self.embed_dim % self.num_heads:
      raise ValueError(
        f"CaiT: num_heads must divide embed_dim={self.embed_dim}, got {self.num_heads}"
      )
    for field in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
      layers.check_rate("CaiT", field, getattr(self, field))
    super().__post_init__()

  def patch_size_for(self, height: int, width: int) -> int:
    """The patch side used for ``height`` x ``width`` inputs."""
    patch = self.patch_size
    if patch is None:
      patch = 16 if min(height, width) >= 128 else 4
    if patch < 1 or height % patch or width % patch:
      raise ValueError(
        f"CaiT: patch_size must divide the input sides {height}x{width}, got {patch}"
      )
    return patch

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    batch, height, width, _ = images.shape
    patch = self.patch_size_for(height, width)
    x = jnp.asarray(images, self.dtype)
    x = nn.Conv(
      self.embed_dim, (patch, patch), strides=(patch, patch), padding="VALID", dtype=self.dtype
    )(x)
    x = x.reshape(batch, -1, self.embed_dim)
    position = self.param("pos_embed", _TRUNC_NORMAL, (1,) + x.shape[1:])
    x = x + position.astype(self.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block = lambda class_attention, drop_path_rate: _LayerScaleBlock(
      num_heads=self.num_heads,
      mlp_ratio=self.mlp_ratio,
      init_scale=self.init_scale,
      class_attention=class_attention,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      drop_path_rate=drop_path_rate,
      dtype=self.dtype,
    )
    for _ in range(self.depth):
      x = block(False, self.drop_path_rate)(x, train=train)
    cls = self.param("cls_token", _TRUNC_NORMAL, (1, 1, self.embed_dim))
    cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.embed_dim))
    for _ in range(self.class_attention_depth):
      cls = block(True, 0.0)(x, train=train, cls=cls)
    cls = _layer_norm(self.dtype)(cls[:, 0])
    return layers.classifier_head(cls, self.num_classes, kernel_init=_TRUNC_NORMAL)


register_variants(CaiT, VARIANTS)
