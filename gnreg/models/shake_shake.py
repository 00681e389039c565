"""Wide ResNet with Shake-Shake regularisation (Gastaldi 2017, arXiv:1705.07485).

A Shake-Shake block has two residual branches ``a`` and ``b`` and mixes them with a random
per-image coefficient: the forward pass computes ``alpha a + (1 - alpha) b`` with
``alpha ~ U[0, 1]``, the backward pass propagates the gradient as if the mix had been
``beta a + (1 - beta) b`` with an independent ``beta ~ U[0, 1]`` ("Shake-Shake-Image"). At
evaluation both are replaced by their expectation, ``(a + b) / 2``.

The table's ``WideResNet_2_96_ShakeShake`` (the GNP authors' name) is the paper's CIFAR-10
"Shake-Shake 26 2x96d" (26 layers, 2 branches, 96 filters in the first stage; 26.2M parameters).

Coefficients come from the ``'shake'`` rng stream and are a pure function of the key, so two
applies with the same ``rngs`` (the GNP trainer's two passes, at the parameters and at the
perturbed parameters) draw the same forward coefficients. ``true_gradient=True`` (a keyword of
the call, the SAM and GNP authors' switch) makes the backward pass use the forward coefficient
too, so the gradient is the true gradient of the computed function.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = ["VARIANTS", "shake_shake", "WideResNetShakeShake"]

# Gastaldi 2017, Table 1 (CIFAR-10, "26 2x96d"): blocks per stage, width factor of 16 channels.
VARIANTS: dict[str, dict[str, Any]] = {
  "WideResNet_2_96_ShakeShake": {"blocks_per_group": 4, "channel_multiplier": 6},
}


def shake_shake(
  a: jax.Array,
  b: jax.Array,
  rng: jax.Array | None,
  *,
  train: bool = True,
  true_gradient: bool | jax.Array = False,
) -> jax.Array:
  """Mixes two branches with Shake-Shake: forward ``alpha a + (1-alpha) b``, backward with ``beta``.

  ``alpha`` and ``beta`` are drawn independently from ``U[0, 1]``, one per example (leading axis),
  from two halves of ``rng``; the forward value depends on ``rng`` only through ``alpha``, so it is
  the same whatever ``true_gradient`` is. The gradient flows as ``d/da = beta``,
  ``d/db = 1 - beta`` (``alpha`` when ``true_gradient``, a bool or a traced boolean scalar).
  The value is exactly the forward mix:
  ``stop_gradient(forward) + (backward - stop_gradient(backward))`` adds an exact zero, and unlike
  a ``custom_vjp`` it stays differentiable in every mode (GNP may take Hessian-vector products).
  With ``train=False`` it returns the expectation ``(a + b) / 2`` and ``rng`` may be ``None``.

  >>> import jax, jax.numpy as jnp
  >>> shake_shake(jnp.ones(2), jnp.zeros(2), None, train=False)
  Array([0.5, 0.5], dtype=float32)
  """
  if not train:
    return 0.5 * (a + b)
  if rng is None:
    raise ValueError("shake_shake: rng must be a PRNG key when train=True, got None")
  shape = (a.shape[0],) + (1,) * (a.ndim - 1)
  forward_key, backward_key = jax.random.split(rng)
  alpha = jax.random.uniform(forward_key, shape, jnp.float32).astype(a.dtype)
  forward = alpha * a + (1 - alpha) * b
  if true_gradient is True:
    return forward
  beta = jax.random.uniform(backward_key, shape, jnp.float32).astype(a.dtype)
  # A traced true_gradient (the trainer's per-step choice) selects the backward coefficient.
  beta = jnp.where(true_gradient, alpha, beta)
  backward = beta * a + (1 - beta) * b
  return jax.lax.stop_gradient(forward) + (backward - jax.lax.stop_gradient(backward))


class _Shortcut(nn.Module):
  """Gastaldi's projection shortcut: ReLU, then two strided 1x1 convs on offset grids,
  concatenated, then BN.

  The ReLU is the one each residual branch starts with (the block's input is a sum, not yet
  rectified), as in Gastaldi's code. The second path samples the pixel grid shifted by one, so
  together the two paths see every input position that a stride-2 pooling would drop.
  """

  channels: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.shape[-1] == self.channels and self.stride == 1:
      return x
    s = self.stride
    x = nn.relu(x)
    path1 = x[:, ::s, ::s, :]
    shifted = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))[:, 1:, 1:, :]
    path2 = shifted[:, ::s, ::s, :]
    path1 = layers.conv(self.channels // 2, 1, 1, dtype=self.dtype)(path1)
    path2 = layers.conv(self.channels - self.channels // 2, 1, 1, dtype=self.dtype)(path2)
    return layers.batch_norm(train, dtype=self.dtype)(jnp.concatenate([path1, path2], axis=-1))


class _ShakeShakeBlock(nn.Module):
  """Two branches ReLU-conv3x3-BN-ReLU-conv3x3-BN, mixed by ``shake_shake``, plus the shortcut."""

  channels: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, true_gradient: bool) -> jax.Array:
    branches = []
    for _ in range(2):
      y = nn.relu(x)
      y = layers.conv(self.channels, 3, self.stride, dtype=self.dtype)(y)
      y = nn.relu(layers.batch_norm(train, dtype=self.dtype)(y))
      y = layers.conv(self.channels, 3, 1, dtype=self.dtype)(y)
      branches.append(layers.batch_norm(train, dtype=self.dtype)(y))
    rng = self.make_rng("shake") if train else None
    mixed = shake_shake(*branches, rng, train=train, true_gradient=true_gradient)
    return _Shortcut(self.channels, self.stride, self.dtype)(x, train=train) + mixed


class WideResNetShakeShake(layers.ShakeRegularized):
  """Shake-Shake ResNet for CIFAR (Gastaldi 2017): depth ``6 blocks_per_group + 2``.

  A 3x3 conv with 16 filters and BN, three stages of ``blocks_per_group`` Shake-Shake blocks with
  ``16 k``, ``32 k`` and ``64 k`` filters (``k = channel_multiplier``; the first block of stages
  2 and 3 has stride 2), then ReLU, global average pooling and a dense layer.

  Attributes:
    num_classes: number of logits.
    blocks_per_group: residual blocks per stage (4 for the 26-layer network).
    channel_multiplier: width factor ``k`` (6 gives the "2x96d" network).
    dtype: computation dtype; parameters and logits are float32.
  """

  num_classes: int
  blocks_per_group: int = 4
  channel_multiplier: int = 6
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    for field in ("blocks_per_group", "channel_multiplier"):
      if getattr(self, field) < 1:
        raise ValueError(f"WideResNetShakeShake: {field} must be >= 1, got {getattr(self, field)}")
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, true_gradient: bool = False) -> jax.Array:
    x = jnp.asarray(images, self.dtype)
    x = layers.conv(16, 3, 1, dtype=self.dtype)(x)
    x = layers.batch_norm(train, dtype=self.dtype)(x)
    for stage in range(3):
      channels = 16 * self.channel_multiplier * 2**stage
      for block in range(self.blocks_per_group):
        stride = 2 if stage > 0 and block == 0 else 1
        x = _ShakeShakeBlock(channels, stride, self.dtype)(
          x, train=train, true_gradient=true_gradient
        )
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return layers.classifier_head(x, self.num_classes, kernel_init=layers.linear_kernel_init)


register_variants(WideResNetShakeShake, VARIANTS)
