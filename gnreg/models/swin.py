"""Swin Transformer (Liu et al. 2021, arXiv:2103.14030).

The image is cut into ``patch_size`` x ``patch_size`` patches, linearly embedded (dimension
``C``) and processed by four stages of Swin blocks; between stages a patch-merging layer
concatenates each 2x2 group of tokens (``4C``), normalises and projects it to ``2C``. A block is

    x = x + DropPath(W-MSA(LN(x)));  x = x + DropPath(MLP(LN(x)))

where W-MSA is multi-head self-attention inside non-overlapping ``M`` x ``M`` windows, with a
learned relative position bias ``B[i - j]`` added to the logits ``q k^T / sqrt(d)``. Every second
block cyclically shifts the map by ``M // 2`` before partitioning (and masks attention between
tokens that the roll brought together), so information crosses window borders. As in the
reference code, a stage whose map is no larger than the window uses one window of the whole map
and no shift.

The table (ImageNet parameter counts at 224x224, 1000 classes): ``Swin_Tiny`` (C=96, depths
2-2-6-2, 28.3M), ``Swin_Small`` (C=96, 2-2-18-2, 49.6M), ``Swin_Base`` (C=128, 2-2-18-2, 87.8M).
The ``*_GNP`` names are the GNP authors' CIFAR Swins (their ``*_Patch4``): patch 4, window 4 and
attention dropout 0.1.

Geometry from the input size unless given: ``patch_size`` is 4 for inputs of at least 128
pixels a side and 2 below (so 32x32 gives a 16x16 token map, as in the GNP authors' CIFAR
configuration); ``window_size`` is 7 where every stage's map is a multiple of 7 (224 with patch
4: maps 56, 28, 14, 7), else 4 (32 with patch 2: maps 16, 8, 4 and 2, the last as one window),
else the largest size below 7 that tiles every stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = ["VARIANTS", "SwinTransformer"]

# Liu et al. 2021, Table 7: first-stage channels C, blocks and heads per stage.
_SIZES: dict[str, dict[str, Any]] = {
  "Tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
  "Small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
  "Base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}
_GNP = {"patch_size": 4, "window_size": 4, "attention_dropout_rate": 0.1}
VARIANTS: dict[str, dict[str, Any]] = {
  **{f"Swin_{size}": fields for size, fields in _SIZES.items()},
  **{f"Swin_{size}_GNP": {**fields, **_GNP} for size, fields in _SIZES.items()},
}

_TRUNC_NORMAL = nn.initializers.truncated_normal(0.02)


def _window_fits(resolutions: Sequence[tuple[int, int]], window: int) -> bool:
  for height, width in resolutions:
    size = min(window, height, width)
    if height % size or width % size:
      return False
  return True


def _window_partition(x: jax.Array, window: int) -> jax.Array:
  """(B, H, W, C) -> (B * num_windows, window * window, C)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _window_merge(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """Inverse of ``_window_partition``."""
  c = windows.shape[-1]
  x = windows.reshape(-1, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def _relative_position_index(window: int) -> np.ndarray:
  """(M*M, M*M) index into the ``(2M-1)^2`` bias table of the offset between two window tokens."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  offsets = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return offsets[..., 0] * (2 * window - 1) + offsets[..., 1]


def _shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """(num_windows, M*M, M*M) additive mask: -100 between tokens from different pre-roll regions."""
  regions = np.zeros((height, width), np.int32)
  label = 0
  for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      regions[rows, cols] = label
      label += 1
  regions = regions.reshape(height // window, window, width // window, window)
  regions = regions.transpose(0, 2, 1, 3).reshape(-1, window * window)
  different = regions[:, None, :] != regions[:, :, None]
  return np.where(different, -100.0, 0.0).astype(np.float32)


class _WindowAttention(nn.Module):
  """Multi-head self-attention within windows, with a relative position bias."""

  num_heads: int
  window: int
  attention_dropout_rate: float
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None, *, train: bool) -> jax.Array:
    batch_windows, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    dense = lambda features, name: nn.Dense(
      features, kernel_init=_TRUNC_NORMAL, dtype=self.dtype, name=name
    )
    qkv = dense(3 * dim, "qkv")(x).reshape(batch_windows, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim**-0.5, k).astype(jnp.float32)
    table = self.param(
      "relative_position_bias_table", _TRUNC_NORMAL, ((2 * self.window - 1) ** 2, self.num_heads)
    )
    index = _relative_position_index(self.window).reshape(-1)
    bias = table[index].reshape(tokens, tokens, self.num_heads).transpose(2, 0, 1)
    logits = logits + bias
    if mask is not None:
      num_windows = mask.shape[0]
      logits = logits.reshape(-1, num_windows, self.num_heads, tokens, tokens)
      logits = (logits + mask[None, :, None]).reshape(batch_windows, self.num_heads, tokens, tokens)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(batch_windows, tokens, dim)
    out = dense(dim, "proj")(out)
    return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class _SwinBlock(nn.Module):
  """(Shifted-)window attention and MLP, each pre-norm and residual with stochastic depth."""

  num_heads: int
  resolution: tuple[int, int]
  window: int
  shift: int
  mlp_ratio: float
  dropout_rate: float
  attention_dropout_rate: float
  drop_path_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    height, width = self.resolution
    batch, tokens, dim = x.shape
    y = nn.LayerNorm(dtype=self.dtype)(x).reshape(batch, height, width, dim)
    mask = None
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
      mask = _shift_mask(height, width, self.window, self.shift)
    y = _window_partition(y, self.window)
    y = _WindowAttention(
      self.num_heads, self.window, self.attention_dropout_rate, self.dropout_rate, self.dtype
    )(y, mask, train=train)
    y = _window_merge(y, self.window, height, width)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    x = x + layers.drop_path(y.reshape(batch, tokens, dim), self.drop_path_rate, train=train)

    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.Dense(int(dim * self.mlp_ratio), kernel_init=_TRUNC_NORMAL, dtype=self.dtype)(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = nn.Dense(dim, kernel_init=_TRUNC_NORMAL, dtype=self.dtype)(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + layers.drop_path(y, self.drop_path_rate, train=train)


class _PatchMerging(nn.Module):
  """2x2 token groups concatenated (4C), LayerNorm, bias-free projection to 2C."""

  resolution: tuple[int, int]
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    height, width = self.resolution
    batch, _, dim = x.shape
    x = x.reshape(batch, height, width, dim)
    # The reference code's order (rows first), so its checkpoints' kernels would line up.
    parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
    x = jnp.concatenate(parts, axis=-1).reshape(batch, -1, 4 * dim)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    return nn.Dense(2 * dim, use_bias=False, kernel_init=_TRUNC_NORMAL, dtype=self.dtype)(x)


class SwinTransformer(nn.Module):
  """Swin Transformer classifier; ``patch_size``/``window_size`` default from the input size.

  Attributes:
    num_classes: number of logits.
    embed_dim: channels ``C`` of the first stage (doubled at each later stage).
    depths: blocks per stage.
    num_heads: attention heads per stage.
    patch_size: side of the embedded patches; ``None`` picks from the input (see module doc).
    window_size: attention window side; ``None`` picks from the token map (see module doc).
    mlp_ratio: MLP hidden width over ``C``.
    dropout_rate: dropout after embeddings, attention projections and MLP layers.
    attention_dropout_rate: dropout on attention weights.
    drop_path_rate: stochastic depth (rng ``'drop_path'``), rising linearly from 0 to this over
      the blocks (the paper uses 0.2, 0.3 and 0.5 for T, S and B on ImageNet).
    dtype: computation dtype; parameters and logits are float32.
  """

  num_classes: int
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  patch_size: int | None = None
  window_size: int | None = None
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if len(self.depths) != len(self.num_heads):
      raise ValueError(
        f"SwinTransformer: depths and num_heads must have equal lengths, got "
        f"{tuple(self.depths)} and {tuple(self.num_heads)}"
      )
    for field in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
      layers.check_rate("SwinTransformer", field, getattr(self, field))
    super().__post_init__()

  def geometry(self, height: int, width: int) -> tuple[int, int]:
    """The ``(patch_size, window_size)`` used for ``height`` x ``width`` inputs."""
    patch = self.patch_size
    if patch is None:
      patch = 4 if min(height, width) >= 128 else 2
    downsampling = patch * 2 ** (len(self.depths) - 1)
    if patch < 1 or height % downsampling or width % downsampling:
      raise ValueError(
        f"SwinTransformer: patch_size={patch} with {len(self.depths)} stages needs input sides "
        f"divisible by {downsampling}, got {height}x{width}"
      )
    resolutions = [
      (height // patch // 2**i, width // patch // 2**i) for i in range(len(self.depths))
    ]
    window = self.window_size
    if window is None:
      window = next(w for w in (7, 4, 6, 5, 3, 2, 1) if _window_fits(resolutions, w))
    elif window < 1 or not _window_fits(resolutions, window):
      raise ValueError(
        f"SwinTransformer: window_size must tile every stage's token map {resolutions}, "
        f"got {window}"
      )
    return patch, window

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    batch, height, width, _ = images.shape
    patch, window = self.geometry(height, width)
    x = jnp.asarray(images, self.dtype)
    x = nn.Conv(
      self.embed_dim, (patch, patch), strides=(patch, patch), padding="VALID", dtype=self.dtype
    )(x)
    resolution = x.shape[1:3]
    x = x.reshape(batch, -1, self.embed_dim)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    block = 0
    for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
      stage_window = min(window, *resolution)
      for i in range(depth):
        # A map that fits in one window has nothing to shift across.
        shifted = i % 2 == 1 and min(resolution) > window
        x = _SwinBlock(
          num_heads=heads,
          resolution=tuple(resolution),
          window=stage_window,
          shift=stage_window // 2 if shifted else 0,
          mlp_ratio=self.mlp_ratio,
          dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          drop_path_rate=float(rates[block]),
          dtype=self.dtype,
        )(x, train=train)
        block += 1
      if stage < len(self.depths) - 1:
        x = _PatchMerging(tuple(resolution), self.dtype)(x)
        resolution = (resolution[0] // 2, resolution[1] // 2)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    x = jnp.mean(x, axis=1)
    return layers.classifier_head(x, self.num_classes, kernel_init=_TRUNC_NORMAL)


register_variants(SwinTransformer, VARIANTS)
