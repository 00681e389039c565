"""PyramidNet (Han et al. 2017, arXiv:1610.02915), optionally with ShakeDrop (Yamada et al. 2019).

PyramidNet widens the network a little at every residual block instead of doubling it at each
stage: block ``k`` of ``N = 3 n`` has ``D_k = 16 + k alpha / N`` bottleneck channels (``4 D_k``
outputs), for a total depth of ``9 n + 2``. Blocks are BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-
conv1x1-BN (no ReLU at the end), and the shortcut is parameter-free: average pooling to
downsample, zero channels appended to match the width.

ShakeDrop multiplies the residual branch ``F(x)`` by a per-example random coefficient:
forward ``b + alpha - b alpha`` and backward ``b + beta - b beta``, with ``b ~ Bernoulli(p_l)``,
``alpha ~ U[-1, 1]``, ``beta ~ U[0, 1]``. The survival probability decays linearly with depth,
``p_l = 1 - (l / N) (1 - p_N)`` with ``p_N = 0.5``. At evaluation ``F(x)`` is scaled by the
expectation of the forward coefficient, ``p_l + (1 - p_l) E[alpha]`` (``= p_l``).

The table's names are the GNP authors'; with the paper's integer widths (``D_k`` truncated) they
match the counts of Han et al. Table 4 at 10 classes (CIFAR-10): ``PyramidNet_164_48`` (1.7M),
``PyramidNet_164_270`` (27.0M), ``PyramidNet_200_240`` (26.6M), ``PyramidNet_272_200`` (26.0M);
ShakeDrop adds no parameters. The ``*_GNP`` names are the GNP authors' networks: ``D_k`` rounded
to the nearest integer, and no BN after the stem convolution in the plain (not ShakeDrop) ones:
26,210,810 parameters for ``PyramidNet_272_200_GNP``.

ShakeDrop's coefficients come from the ``'shake'`` rng stream and depend only on the key, so two
applies with the same ``rngs`` draw the same ones. ``true_gradient=True`` (a keyword of the call)
uses the forward coefficient in the backward pass as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = ["VARIANTS", "shake_drop", "survival_probs", "block_widths", "PyramidNet"]

# Han et al. 2017, Table 4 (bottleneck): name -> (depth 9n + 2, widening alpha); the ShakeDrop
# networks are Yamada et al. 2019's.
_SIZES = {
  "164_48": (164, 48),
  "164_270": (164, 270),
  "200_240": (200, 240),
  "272_200": (272, 200),
  "164_48_ShakeDrop": (164, 48),
  "272_200_ShakeDrop": (272, 200),
}
VARIANTS: dict[str, dict[str, Any]] = {
  f"PyramidNet_{size}{gnp}": {
    "depth": depth,
    "alpha": alpha,
    "shakedrop": size.endswith("ShakeDrop"),
    **({"width_rounding": "round", "stem_bn": size.endswith("ShakeDrop")} if gnp else {}),
  }
  for gnp in ("", "_GNP")
  for size, (depth, alpha) in _SIZES.items()
}
_ROUNDINGS = ("floor", "round")


def shake_drop(
  x: jax.Array,
  rng: jax.Array | None,
  survival_prob: float,
  *,
  alpha_range: Sequence[float] = (-1.0, 1.0),
  beta_range: Sequence[float] = (0.0, 1.0),
  train: bool = True,
  true_gradient: bool | jax.Array = False,
) -> jax.Array:
  """Scales ``x`` by ShakeDrop's random coefficient (Yamada et al. 2019, Eq. 9).

  Per example (leading axis) it draws ``b ~ Bernoulli(survival_prob)``, ``alpha ~ U(alpha_range)``
  and ``beta ~ U(beta_range)`` from three parts of ``rng``; the value is ``(b + alpha - b alpha) x``
  and the gradient ``(b + beta - b beta) g`` (``alpha`` in place of ``beta`` when
  ``true_gradient``, a bool or a traced boolean scalar). The forward coefficient depends only
  on ``rng``, never on ``true_gradient``.
  With ``train=False`` it returns ``E[b + alpha - b alpha] x = (p + (1 - p) E[alpha]) x`` and
  ``rng`` may be ``None``.

  >>> import jax.numpy as jnp
  >>> shake_drop(jnp.ones(2), None, 0.75, train=False)
  Array([0.75, 0.75], dtype=float32)
  """
  if not 0.0 <= survival_prob <= 1.0:
    raise ValueError(f"shake_drop: survival_prob must be in [0, 1], got {survival_prob}")
  alpha_lo, alpha_hi = alpha_range
  if not train:
    expected_alpha = 0.5 * (alpha_lo + alpha_hi)
    return x * (survival_prob + (1.0 - survival_prob) * expected_alpha)
  if rng is None:
    raise ValueError("shake_drop: rng must be a PRNG key when train=True, got None")
  beta_lo, beta_hi = beta_range
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  gate_key, alpha_key, beta_key = jax.random.split(rng, 3)
  gate = jax.random.bernoulli(gate_key, survival_prob, shape).astype(jnp.float32)
  alpha = jax.random.uniform(alpha_key, shape, jnp.float32, alpha_lo, alpha_hi)
  forward = x * (gate + alpha - gate * alpha).astype(x.dtype)
  if true_gradient is True:
    return forward
  beta = jax.random.uniform(beta_key, shape, jnp.float32, beta_lo, beta_hi)
  # A traced true_gradient (the trainer's per-step choice) selects the backward coefficient.
  beta = jnp.where(true_gradient, alpha, beta)
  backward = x * (gate + beta - gate * beta).astype(x.dtype)
  # Exact forward value (an exact zero is added), gradient through `backward`, all AD modes.
  return jax.lax.stop_gradient(forward) + (backward - jax.lax.stop_gradient(backward))


def survival_probs(num_blocks: int, final_survival_prob: float = 0.5) -> list[float]:
  """The linear-decay rule ``p_l = 1 - (l / L) (1 - p_L)`` for blocks ``l = 1..L``.

  >>> survival_probs(4)
  [0.875, 0.75, 0.625, 0.5]
  """
  decay = 1.0 - final_survival_prob
  return [1.0 - (block / num_blocks) * decay for block in range(1, num_blocks + 1)]


def _shortcut(x: jax.Array, channels: int, stride: int) -> jax.Array:
  """Parameter-free shortcut: ``stride x stride`` average pooling, then zero-padded channels."""
  if stride != 1:
    x = nn.avg_pool(x, (stride, stride), (stride, stride))
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, channels - x.shape[-1])))


def block_widths(depth: int, alpha: float, rounding: str) -> list[int]:
  """``D_k`` for the ``3 (depth - 2) / 9`` blocks, truncated (``'floor'``) or ``'round'``-ed.

  The rounded widths accumulate ``alpha / N`` block by block, as the GNP authors' code does, so
  that they are the same integers.

  >>> block_widths(11, 12, "floor"), block_widths(11, 12, "round")
  ([20, 24, 28], [20, 24, 28])
  """
  num_blocks = 3 * ((depth - 2) // 9)
  if rounding == "floor":
    return [int(16 + (k + 1) * alpha / num_blocks) for k in range(num_blocks)]
  widths, width = [], 16.0
  for _ in range(num_blocks):
    width += alpha / num_blocks
    widths.append(int(round(width)))
  return widths


class _Bottleneck(nn.Module):
  """PyramidNet bottleneck block, with ShakeDrop on the branch when ``survival_prob`` is set."""

  channels: int
  stride: int
  survival_prob: float | None = None
  alpha_range: tuple[float, float] = (-1.0, 1.0)
  beta_range: tuple[float, float] = (0.0, 1.0)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, true_gradient: bool) -> jax.Array:
    y = layers.batch_norm(train, dtype=self.dtype)(x)
    y = layers.conv(self.channels, 1, 1, dtype=self.dtype)(y)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype)(y))
    y = layers.conv(self.channels, 3, self.stride, dtype=self.dtype)(y)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype)(y))
    y = layers.conv(4 * self.channels, 1, 1, dtype=self.dtype)(y)
    y = layers.batch_norm(train, dtype=self.dtype)(y)
    if self.survival_prob is not None:
      y = shake_drop(
        y,
        self.make_rng("shake") if train else None,
        self.survival_prob,
        alpha_range=self.alpha_range,
        beta_range=self.beta_range,
        train=train,
        true_gradient=true_gradient,
      )
    return _shortcut(x, 4 * self.channels, self.stride) + y


class PyramidNet(layers.ShakeRegularized):
  """Bottleneck PyramidNet for 32x32 inputs (Han et al. 2017), optionally with ShakeDrop.

  A 3x3 conv with 16 filters (and BN); three stages of ``n = (depth - 2) / 9`` bottleneck blocks
  (the first block of stages 2 and 3 has stride 2) whose width grows by ``alpha / 3n`` per
  block; BN, ReLU, global average pooling, dense.

  Attributes:
    num_classes: number of logits.
    depth: ``9 n + 2`` layers.
    alpha: total widening over the network.
    shakedrop: apply ShakeDrop to every residual branch.
    final_survival_prob: ShakeDrop's ``p_L`` (survival probability of the last block).
    shakedrop_alpha: the range of ShakeDrop's forward coefficient ``alpha``.
    shakedrop_beta: the range of ShakeDrop's backward coefficient ``beta``.
    width_rounding: ``'floor'`` (the paper) or ``'round'`` (the GNP authors) for ``D_k``.
    stem_bn: a BN after the stem convolution.
    dtype: computation dtype; parameters and logits are float32.
  """

  num_classes: int
  depth: int = 272
  alpha: float = 200
  shakedrop: bool = False
  final_survival_prob: float = 0.5
  shakedrop_alpha: tuple[float, float] = (-1.0, 1.0)
  shakedrop_beta: tuple[float, float] = (0.0, 1.0)
  width_rounding: str = "floor"
  stem_bn: bool = True
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if self.depth < 11 or (self.depth - 2) % 9:
      raise ValueError(
        f"PyramidNet: depth must be 9n + 2 with n >= 1 (bottleneck blocks), got {self.depth}"
      )
    if not 0.0 <= self.final_survival_prob <= 1.0:
      raise ValueError(
        f"PyramidNet: final_survival_prob must be in [0, 1], got {self.final_survival_prob}"
      )
    if self.width_rounding not in _ROUNDINGS:
      raise ValueError(
        f"PyramidNet: width_rounding must be one of {_ROUNDINGS}, got {self.width_rounding!r}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, true_gradient: bool = False) -> jax.Array:
    widths = block_widths(self.depth, self.alpha, self.width_rounding)
    blocks_per_stage = len(widths) // 3
    probs = survival_probs(len(widths), self.final_survival_prob)
    x = jnp.asarray(images, self.dtype)
    x = layers.conv(16, 3, 1, dtype=self.dtype)(x)
    if self.stem_bn:
      x = layers.batch_norm(train, dtype=self.dtype)(x)
    for k, width in enumerate(widths):
      stage, index = divmod(k, blocks_per_stage)
      x = _Bottleneck(
        channels=width,
        stride=2 if stage > 0 and index == 0 else 1,
        survival_prob=probs[k] if self.shakedrop else None,
        alpha_range=tuple(self.shakedrop_alpha),
        beta_range=tuple(self.shakedrop_beta),
        dtype=self.dtype,
      )(x, train=train, true_gradient=true_gradient)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype)(x))
    x = jnp.mean(x, axis=(1, 2))
    return layers.classifier_head(x, self.num_classes, kernel_init=layers.linear_kernel_init)


register_variants(PyramidNet, VARIANTS)
