"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

The image is cut into ``patch_size`` x ``patch_size`` patches, each linearly embedded to
``embed_dim`` (a strided conv); a learned class token is prepended and a learned position
embedding added. ``depth`` pre-LN encoder blocks follow,

  ``x = x + droppath(dropout(MHA(LN(x))))``,  ``x = x + droppath(MLP(LN(x)))``,

with a GELU MLP of width ``mlp_dim``; a final LN, and a linear classifier on the class token.
The classifier starts at zero, as in big_vision, so initial logits are 0 and the initial loss
is log(num_classes) whatever the features.

The position embedding has one row per token of the input the model is initialised on, so
``patch_size=4`` on 32x32 images gives 8 * 8 + 1 rows; apply the model at that resolution.
The ``*_GNP`` names are the GNP authors' CIFAR ViTs: patch 4, dropout and attention dropout
0.1; ``ViT_S16_GNP`` has 21,342,346 parameters at 32x32 and 10 classes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = ["DEFAULT_PATCH_SIZE", "VARIANTS", "EncoderBlock", "ViT"]

# Dosovitskiy et al. 2021 Table 1 (B, L) and Touvron et al. 2021 ("DeiT") Table 1 (Ti, S):
# token width, encoder blocks, MLP width (4x the token width), attention heads (64 dims each).
_SIZES: dict[str, dict[str, int]] = {
  "Ti": {"embed_dim": 192, "depth": 12, "mlp_dim": 768, "num_heads": 3},
  "S": {"embed_dim": 384, "depth": 12, "mlp_dim": 1536, "num_heads": 6},
  "B": {"embed_dim": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12},
  "L": {"embed_dim": 1024, "depth": 24, "mlp_dim": 4096, "num_heads": 16},
}
DEFAULT_PATCH_SIZE = 16
_GNP = {"patch_size": 4, "dropout_rate": 0.1, "attention_dropout_rate": 0.1}
VARIANTS: dict[str, dict[str, Any]] = {
  **{f"ViT_{v}{DEFAULT_PATCH_SIZE}": sizes for v, sizes in _SIZES.items()},
  **{f"ViT_{v}{DEFAULT_PATCH_SIZE}_GNP": {**sizes, **_GNP} for v, sizes in _SIZES.items()},
}

# As in the reference ViT and big_vision: Glorot-uniform weights for the attention and MLP
# projections, and MLP biases near (not exactly) zero.
_xavier = nn.initializers.xavier_uniform()
_mlp_bias_init = nn.initializers.normal(stddev=1e-6)


class EncoderBlock(nn.Module):
  """One pre-LN transformer block; ``drop_path_rate`` is its stochastic-depth rate."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float
  attention_dropout_rate: float
  drop_path_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=self.dtype,
      kernel_init=_xavier,
      dropout_rate=self.attention_dropout_rate,
      broadcast_dropout=False,
      # Softmax over bfloat16 scores loses small attention weights; float32 costs little here.
      force_fp32_for_softmax=True,
      name="attention",
    )(y, y, deterministic=not train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + layers.drop_path(y, self.drop_path_rate, train=train)
    y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
    y = nn.Dense(
      self.mlp_dim, dtype=self.dtype, kernel_init=_xavier, bias_init=_mlp_bias_init, name="mlp1"
    )(y)
    y = nn.Dropout(self.dropout_rate)(nn.gelu(y), deterministic=not train)
    y = nn.Dense(
      x.shape[-1], dtype=self.dtype, kernel_init=_xavier, bias_init=_mlp_bias_init, name="mlp2"
    )(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + layers.drop_path(y, self.drop_path_rate, train=train)


class ViT(nn.Module):
  """ViT with a class token.

  Attributes:
    num_classes: number of logits.
    embed_dim: token width.
    depth: encoder blocks.
    mlp_dim: hidden width of each block's MLP.
    num_heads: attention heads.
    patch_size: side of the embedded patches.
    dropout_rate: dropout after the embedding, attention and MLP layers (rng ``'dropout'``).
    attention_dropout_rate: dropout on the attention weights (rng ``'dropout'``).
    drop_path_rate: stochastic depth (rng ``'drop_path'``): block ``i`` of ``depth`` drops its
      residual branches with probability ``drop_path_rate * i / (depth - 1)``, the linear rule
      of Huang et al. 2016 used by DeiT.
    dtype: computation dtype; parameters and logits are float32.

  >>> import jax, jax.numpy as jnp
  >>> from gnreg.models import create
  >>> model = create("ViT_S16", num_classes=10, patch_size=4)
  >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  >>> variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  >>> variables["params"]["pos_embedding"].shape
  (1, 65, 384)
  """

  num_classes: int
  embed_dim: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int = DEFAULT_PATCH_SIZE
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if self.patch_size < 1:
      raise ValueError(f"ViT: patch_size must be >= 1, got {self.patch_size}")
    if self.embed_dim % self.num_heads:
      raise ValueError(
        f"ViT: embed_dim must be divisible by num_heads={self.num_heads}, got {self.embed_dim}"
      )
    for field in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
      layers.check_rate("ViT", field, getattr(self, field))
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    _, height, width, _ = images.shape
    if height % self.patch_size or width % self.patch_size:
      # A VALID strided conv would silently drop the border pixels.
      raise ValueError(
        f"ViT: image height and width must be multiples of patch_size={self.patch_size}, got "
        f"{height}x{width}"
      )
    p = self.patch_size
    x = nn.Conv(
      self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embedding"
    )(images.astype(self.dtype))
    batch = x.shape[0]
    x = jnp.reshape(x, (batch, -1, self.embed_dim))
    cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, self.embed_dim))
    x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), x], axis=1)
    # One row per token (class token included, as in the paper), sized from this input.
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, *x.shape[1:]))
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for i in range(self.depth):
      x = EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        self.dropout_rate,
        self.attention_dropout_rate,
        drop_path_rate=self.drop_path_rate * i / max(self.depth - 1, 1),
        dtype=self.dtype,
        name=f"encoder_block{i}",
      )(x, train=train)
    x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
    # Zero-initialised, as big_vision's head_zeroinit.
    return layers.classifier_head(
      x[:, 0], self.num_classes, kernel_init=nn.initializers.zeros_init()
    )


register_variants(ViT, VARIANTS)
