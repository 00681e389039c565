"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

The image is cut into ``patch_size`` x ``patch_size`` patches, each linearly embedded to
``hidden_size`` (a strided conv); a learned class token is prepended and a learned position
embedding added. ``depth`` pre-LN encoder blocks follow,

  ``x = x + droppath(dropout(MHA(LN(x))))``,  ``x = x + droppath(MLP(LN(x)))``,

with a GELU MLP of width ``mlp_dim``; a final LN, and a linear classifier on the class token.
The classifier starts at zero, as in big_vision, so initial logits are 0 and the initial loss
is log(num_classes) whatever the features.

The position embedding has one row per token of the input the model is initialised on, so
``patch_size=4`` on 32x32 images gives 8 * 8 + 1 rows; apply the model at that resolution.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gnreg.models.registry import register

# Dosovitskiy et al. 2021 Table 1 (B, L) and Touvron et al. 2021 ("DeiT") Table 1 (Ti, S):
# token width, encoder blocks, MLP width (4x the token width), attention heads (64 dims each).
VIT_VARIANTS: dict[str, dict[str, int]] = {
  "Ti": {"hidden_size": 192, "depth": 12, "mlp_dim": 768, "num_heads": 3},
  "S": {"hidden_size": 384, "depth": 12, "mlp_dim": 1536, "num_heads": 6},
  "B": {"hidden_size": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12},
  "L": {"hidden_size": 1024, "depth": 24, "mlp_dim": 4096, "num_heads": 16},
}
DEFAULT_PATCH_SIZE = 16

# As in the reference ViT and big_vision: Glorot-uniform weights for the attention and MLP
# projections, and MLP biases near (not exactly) zero.
_xavier = nn.initializers.xavier_uniform()
_mlp_bias_init = nn.initializers.normal(stddev=1e-6)


class EncoderBlock(nn.Module):
  """One pre-LN transformer block; ``drop_path`` is its stochastic-depth rate."""

  num_heads: int
  mlp_dim: int
  dropout: float
  drop_path: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    # Stochastic depth (Huang et al. 2016): drop a whole residual branch per example, i.e.
    # dropout with one mask entry per example, broadcast over tokens and channels.
    drop_branch = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), name="drop_path")
    y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=self.dtype,
      kernel_init=_xavier,
      # Softmax over bfloat16 scores loses small attention weights; float32 costs little here.
      force_fp32_for_softmax=True,
      name="attention",
    )(y, y)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    x = x + drop_branch(y, deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
    y = nn.Dense(
      self.mlp_dim, dtype=self.dtype, kernel_init=_xavier, bias_init=_mlp_bias_init, name="mlp1"
    )(y)
    y = nn.Dropout(self.dropout)(nn.gelu(y), deterministic=not train)
    y = nn.Dense(
      x.shape[-1], dtype=self.dtype, kernel_init=_xavier, bias_init=_mlp_bias_init, name="mlp2"
    )(y)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    return x + drop_branch(y, deterministic=not train)


class ViT(nn.Module):
  """ViT with a class token; ``dropout`` and ``stochastic_depth`` use the rng ``'dropout'``.

  Block ``i`` of ``depth`` drops its residual branches with probability
  ``stochastic_depth * i / (depth - 1)``, the linear rule of Huang et al. 2016 used by DeiT.
  Computation runs in ``dtype``; parameters are float32 and logits are float32.

  >>> import jax, jax.numpy as jnp
  >>> from gnreg.models import create
  >>> model = create("ViT_S16", num_classes=10, patch_size=4)
  >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  >>> variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  >>> variables["params"]["pos_embedding"].shape
  (1, 65, 384)
  """

  num_classes: int
  hidden_size: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int = DEFAULT_PATCH_SIZE
  dropout: float = 0.0
  stochastic_depth: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if self.patch_size < 1:
      raise ValueError(f"ViT: patch_size must be >= 1, got {self.patch_size}")
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f"ViT: hidden_size must be divisible by num_heads={self.num_heads}, got {self.hidden_size}"
      )
    for arg, value in (("dropout", self.dropout), ("stochastic_depth", self.stochastic_depth)):
      if not 0.0 <= value < 1.0:
        raise ValueError(f"ViT: {arg} must be in [0, 1), got {value}")
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
      self.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embedding"
    )(images.astype(self.dtype))
    batch = x.shape[0]
    x = jnp.reshape(x, (batch, -1, self.hidden_size))
    cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, self.hidden_size))
    x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), x], axis=1)
    # One row per token (class token included, as in the paper), sized from this input.
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, *x.shape[1:]))
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    for i in range(self.depth):
      rate = self.stochastic_depth * i / max(self.depth - 1, 1)
      x = EncoderBlock(
        self.num_heads, self.mlp_dim, self.dropout, rate, self.dtype, name=f"encoder_block{i}"
      )(x, train)
    x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
    # Zero-initialised (big_vision's head_zeroinit) and in float32 to keep the logits out of
    # bfloat16.
    return nn.Dense(
      self.num_classes,
      dtype=jnp.float32,
      kernel_init=nn.initializers.zeros_init(),
      name="head",
    )(x[:, 0].astype(jnp.float32))


for _variant, _config in VIT_VARIANTS.items():
  register(f"ViT_{_variant}{DEFAULT_PATCH_SIZE}", patch_size=DEFAULT_PATCH_SIZE, **_config)(ViT)
