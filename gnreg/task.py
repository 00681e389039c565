"""The learning task a config describes: its model, its loss, and a run's checked pieces.

Below both the trainer (:mod:`gnreg.train`) and the tuners on a config
(:mod:`gnreg.tune`), so that they train the same model on the same loss, and the
one place where a run is validated and built (:func:`prepare`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gnreg import configuration, data, models, optimizers

__all__ = [
  "Task",
  "build_model",
  "cross_entropy",
  "init_variables",
  "l2_penalty",
  "make_loss_fn",
  "mix_targets",
  "prepare",
  "topk_correct",
  "untuned_fields",
]


def cross_entropy(
  logits: jax.Array,
  labels: jax.Array,
  label_smoothing: float,
  mix_labels: jax.Array | None = None,
  mix_weights: jax.Array | None = None,
) -> jax.Array:
  """Per-example cross-entropy against (optionally smoothed) one-hot labels.

  With ``mix_labels`` (a Mixup/CutMix batch, see ``gnreg.data.train_iterator``) the target is
  ``(1 - mix_weights) onehot(labels) + mix_weights onehot(mix_labels)``, then smoothed.
  """
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if mix_labels is not None:
    weights = mix_weights[:, None]
    targets = (1 - weights) * targets + weights * jax.nn.one_hot(mix_labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def l2_penalty(params: Any, kernels_only: bool) -> jax.Array:
  """``0.5 * sum ||w||^2``, over the kernels alone if asked (see ``optimizers.kernels_only``)."""
  mask = optimizers.kernels_only(params) if kernels_only else jax.tree.map(lambda _: True, params)
  leaves = [w for w, on in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True) if on]
  return 0.5 * sum(jnp.sum(jnp.square(w.astype(jnp.float32))) for w in leaves)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the ``k`` largest logits, per example."""
  top = jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def build_model(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> nn.Module:
  """The configured model, checked against the input shape by tracing (no compile).

  Raises ``ConfigError`` naming ``data.image_size`` when the images cannot go
  through the model, so that the mistake surfaces before any work.
  """
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  overrides = {k: v for k, v in config.model.items() if k != "name"}
  model = models.create(config.model.name, num_classes=info.num_classes, dtype=dtype, **overrides)
  dummy = jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)
  try:
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), dummy)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, dummy)
    failure = None if logits.shape == (1, info.num_classes) else f"logits {logits.shape}"
  except Exception as e:  # Shape errors surface as several exception types.
    failure = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
  if failure is not None:
    raise configuration.ConfigError(
      f"data.image_size: {info.image_shape[0]}x{info.image_shape[1]} images do not fit "
      f"{config.model.name} ({failure}); use larger images or a smaller patch/stride"
    )
  return model


def init_variables(
  model: nn.Module, config: ml_collections.ConfigDict, info: data.DatasetInfo
) -> dict:
  """The model's initial variables from ``config.seed``."""
  dummy = jnp.zeros((1, *info.image_shape), jnp.float32)
  return model.init(jax.random.PRNGKey(config.seed), dummy, train=False)


def make_loss_fn(model: nn.Module, config: ml_collections.ConfigDict):
  """``loss_fn(params, batch_stats, images, labels, rngs, *, true_gradient=False,``
  ``mix_labels=None, mix_weights=None) -> (loss, (logits, new batch_stats))``.

  The training loss: cross-entropy (label-smoothed if ``config.label_smoothing``) plus the
  coupled L2 penalty ``config.l2_regularization * l2_penalty(params)``, with the model in
  train mode. Only those three fields of ``config`` are read. ``rngs`` holds the streams of
  ``gnreg.models.RNG_STREAMS``; ``true_gradient`` (a bool or a traced boolean) reaches
  shake-regularised models only (the trainer passes :func:`gnreg.next_update_penalised`).
  A mixed batch's ``mix_labels`` and ``mix_weights`` (``**mix_targets(batch)``) mix the
  targets.
  """
  shake = isinstance(model, models.ShakeRegularized)

  def loss_fn(
    params,
    batch_stats,
    images,
    labels,
    rngs,
    *,
    true_gradient: bool | jax.Array = False,
    mix_labels=None,
    mix_weights=None,
  ):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    options = {"true_gradient": true_gradient} if shake else {}
    logits, new_vars = model.apply(
      variables, images, train=True, mutable=["batch_stats"], rngs=rngs, **options
    )
    loss = jnp.mean(cross_entropy(logits, labels, config.label_smoothing, mix_labels, mix_weights))
    if config.l2_regularization:
      loss += config.l2_regularization * l2_penalty(params, config.regularize_kernels_only)
    return loss, (logits, new_vars.get("batch_stats", {}))

  return loss_fn


# A Mixup/CutMix batch's extra columns (see ``gnreg.data.train_iterator``).
MIX_KEYS = ("mix_label", "mix_weight")


def mix_targets(batch: dict) -> dict[str, Any]:
  """``loss_fn``'s ``mix_labels``/``mix_weights`` from a mixed ``batch``; ``{}`` for others."""
  if MIX_KEYS[0] not in batch:
    return {}
  return {"mix_labels": batch["mix_label"], "mix_weights": batch["mix_weight"]}


def untuned_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The switches of ``config`` that ask a tuner to choose values before training."""
  fields = ("lr_finder.enabled",) if config.lr_finder.enabled else ()
  if config.pid.enabled and config.pid.autotune:
    fields += ("pid.autotune",)
  return fields


class Task(NamedTuple):
  """A run's config, validated once, with what it was checked against.

  ``untuned`` names the config switches whose tuner has not run yet
  (``gnreg.tune.apply_tuning`` runs them and returns the task with ``()``).
  """

  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  model: nn.Module
  untuned: tuple[str, ...]


def prepare(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> Task:
  """Validates ``config`` (fields, dataset, model against its images) and builds its model.

  Raises ``ValueError`` (``ConfigError``, or ``DatasetNotFoundError``) naming the first
  field that cannot run, before any work. ``num_devices`` defaults to every device.
  """
  configuration.validate(
    config, num_devices=jax.device_count() if num_devices is None else num_devices
  )
  # The fields are sound: now the checks that need TensorFlow (the dataset) and the model.
  info = data.dataset_info(config.data)
  configuration.check_against_data(config, info)
  return Task(config, info, build_model(config, info), untuned_fields(config))
