"""What the sections time: a Flax train step on a fixed synthetic batch (sections 1, 2, 3 and
5, and the accelerator check), and the tuners' MLP on scikit-learn's ``digits`` (section 4)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gnreg import models, task


def build_model(
  model: str | Callable[..., nn.Module], num_classes: int, dtype: Any = jnp.float32
) -> nn.Module:
  """A ``gnreg.models`` name or a callable, built; given ``dtype`` unless it is float32."""
  extra = {} if jnp.dtype(dtype) == jnp.float32 else {"dtype": dtype}
  if isinstance(model, str):
    return models.create(model, num_classes=num_classes, **extra)
  return model(num_classes=num_classes, **extra)


def synthetic_batch(
  image_shape: Sequence[int], num_classes: int, batch_size: int, seed: int = 0
) -> dict[str, jax.Array]:
  """A fixed batch of standard-normal images and uniform labels."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {
    "image": jax.random.normal(k1, (batch_size, *image_shape), jnp.float32),
    "label": jax.random.randint(k2, (batch_size,), 0, num_classes, jnp.int32),
  }


RNGS = models.rng_streams(jax.random.PRNGKey(1))


def make_loss(model: nn.Module, config: Any = None):
  """``loss(params, batch_stats, batch) -> (loss, new batch_stats)``: the trainer's loss.

  ``gnreg.task.make_loss_fn`` on ``config`` (cross-entropy, label smoothing, L2); ``None``:
  plain cross-entropy, for the transform comparisons.
  """
  if config is None:
    config = ml_collections.ConfigDict(
      {"label_smoothing": 0.0, "l2_regularization": 0.0, "regularize_kernels_only": False}
    )
  loss_fn = task.make_loss_fn(model, config)

  def loss(params, batch_stats, batch):
    value, (_, new_stats) = loss_fn(params, batch_stats, batch["image"], batch["label"], RNGS)
    return value, new_stats

  return loss


def make_step(model: nn.Module, tx: optax.GradientTransformation):
  """The section-1 step: ``(params, batch_stats, opt_state), batch -> same``.

  ``grad_fn`` is the gradient on the same batch at other parameters (gnp's second pass,
  BatchNorm statistics of that pass discarded); other transforms ignore it.
  """
  loss = make_loss(model)

  def step(state, batch):
    params, batch_stats, opt_state = state
    (_, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params, batch_stats, batch)
    grad_fn = lambda p: jax.grad(loss, has_aux=True)(p, batch_stats, batch)[0]
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), new_stats, opt_state

  return step


def init_variables(model: nn.Module, image_shape: Sequence[int]) -> dict[str, Any]:
  variables = model.init(
    jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.float32), train=False
  )
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def compiled_cost(compiled) -> dict[str, float]:
  """XLA's cost analysis of a compiled step: flops and bytes accessed."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device program.
    analysis = analysis[0] if analysis else {}
  analysis = analysis or {}
  text = compiled.as_text() or ""
  entry = text[text.find("\nENTRY") :] if "\nENTRY" in text else ""
  return {
    "flops": float(analysis.get("flops", 0.0)),
    "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    # Each fusion is one kernel launch on a GPU and one loop nest on a CPU.
    "entry_fusions": entry.count(" fusion("),
  }


def compiled_memory(compiled) -> dict[str, int] | None:
  """XLA's ``memory_analysis()`` of a compiled step, with the total it occupies; None where
  the backend has none."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  fields = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
  )
  out = {f: int(getattr(stats, f, 0) or 0) for f in fields}
  out["total_bytes"] = (
    out["argument_size_in_bytes"]
    + out["output_size_in_bytes"]
    + out["temp_size_in_bytes"]
    - out["alias_size_in_bytes"]
  )
  return out


# ---------------------------------------------------------------------------------------------
# Section 4's workload: the MLP of autolrtuner's comparison.


class MLP(nn.Module):
  """64-128-10 with ReLU: the Keras model of the comparison, in Flax."""

  @nn.compact
  def __call__(self, x):
    hidden = nn.relu(nn.Dense(128, name="hidden")(x))
    return nn.Dense(10, name="out")(hidden)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits

  digits = load_digits()
  return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def mlp_loss(params, batch):
  logits = MLP().apply({"params": params}, batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
