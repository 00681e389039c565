"""The data layer's configuration: defaults and validation of ``config.data``."""

from __future__ import annotations

import ml_collections

__all__ = [
  "DATASET_NAMES",
  "AUTOAUGMENT_POLICIES",
  "MIX_MODES",
  "default_config",
  "mixes",
  "validate_config",
  "resolve",
]

# Every dataset name the data layer serves; ``dataset_info`` lists them when given another.
DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagenet2012", "imagenet_folder")
AUTOAUGMENT_POLICIES = ("cifar10", "imagenet")
# Batch mixing's draws: one per example ('elem') or one for the whole batch ('batch').
MIX_MODES = ("elem", "batch")


def default_config() -> ml_collections.ConfigDict:
  """Returns the default ``config.data``; the trainer merges its overrides into it.

  >>> cfg = default_config()
  >>> cfg.name, cfg.augment, cfg.cutout
  ('digits', True, 0)
  """
  c = ml_collections.ConfigDict()
  # Dataset: 'digits' | 'cifar10' | 'cifar100' | 'imagenet2012' | 'imagenet_folder'.
  c.name = "digits"
  # TFDS data_dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets; for digits
  # $XDG_CACHE_HOME/gnreg/tfds, i.e. ~/.cache/gnreg/tfds); for imagenet_folder the folder root.
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Side of the square image after preprocessing (None: native; digits 8, cifar 32, imagenet 224).
  c.image_size = ml_collections.FieldReference(None, field_type=int)
  # Standard training augmentation: digits none (see crop_padding), cifar pad-crop + flip,
  # imagenet inception crop + flip. Evaluation never augments.
  c.augment = True
  # Pad-and-random-crop padding in pixels for digits/cifar (None: dataset default, digits 0,
  # cifar 4); digits with 1 gives the 1-pixel random shift.
  c.crop_padding = ml_collections.FieldReference(None, field_type=int)
  # AutoAugment policy applied in training after crop/flip: None | 'cifar10' | 'imagenet'.
  c.autoaugment = ml_collections.FieldReference(None, field_type=str)
  # Cutout square side in pixels, applied in training after normalisation and after batch
  # mixing, as the SAM and GNP code's mixup-then-cutout (0: off).
  c.cutout = 0
  # Batch mixing in training, after every per-example step: each process's batch is mixed in
  # pairs of rows (2k, 2k + 1).
  # 'elem': each row its own draws (timm's Mixup mode 'elem'); 'batch': one draw (weight, box,
  # whether to mix, which of the two) for the whole global batch (timm's 'batch', the Mixup of
  # the GNP and SAM authors' code).
  c.mix_mode = "elem"
  # Mixup's Beta(alpha, alpha) concentration (Zhang et al., 2018; 0: off).
  c.mixup_alpha = 0.0
  # CutMix's Beta(alpha, alpha) concentration (Yun et al., 2019; 0: off).
  c.cutmix_alpha = 0.0
  # Probability that an example (mix_mode 'batch': the batch) is mixed at all, when an alpha is
  # positive.
  c.mix_probability = 1.0
  # With both alphas positive: probability that a mixed example uses CutMix rather than Mixup.
  c.cutmix_switch_probability = 0.5
  # Shuffle buffer for datasets with more than 100_000 training examples (smaller: full buffer).
  c.shuffle_buffer = 10_000
  # Parallelism of the tf.data decode/augment map (None: tf.data.AUTOTUNE).
  c.num_parallel_calls = ml_collections.FieldReference(None, field_type=int)
  return c


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def mixes(cfg: ml_collections.ConfigDict) -> bool:
  """Whether training batches are mixed (Mixup or CutMix) under the resolved ``cfg``."""
  return (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) and cfg.mix_probability > 0


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` naming the first bad ``data.*`` field."""
  if cfg.get("name") not in DATASET_NAMES:
    raise ValueError(
      f"data.name: unknown dataset {cfg.get('name')!r}; valid names: {', '.join(DATASET_NAMES)}"
    )
  data_dir = cfg.get("data_dir")
  if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
    raise ValueError(f"data.data_dir: must be a non-empty str or None, got {data_dir!r}")
  if cfg.name == "imagenet_folder" and data_dir is None:
    raise ValueError(
      "data.data_dir: imagenet_folder needs the folder root (holding train/ and val/), got None"
    )
  image_size = cfg.get("image_size")
  if image_size is not None and (not _is_int(image_size) or image_size <= 0):
    raise ValueError(f"data.image_size: must be a positive int or None, got {image_size!r}")
  if not isinstance(cfg.get("augment"), bool):
    raise ValueError(f"data.augment: must be a bool, got {cfg.get('augment')!r}")
  crop_padding = cfg.get("crop_padding")
  if crop_padding is not None and (not _is_int(crop_padding) or crop_padding < 0):
    raise ValueError(f"data.crop_padding: must be an int >= 0 or None, got {crop_padding!r}")
  if cfg.get("autoaugment") not in (None, *AUTOAUGMENT_POLICIES):
    raise ValueError(
      f"data.autoaugment: must be None, 'cifar10' or 'imagenet', got {cfg.get('autoaugment')!r}"
    )
  cutout = cfg.get("cutout")
  if not _is_int(cutout) or cutout < 0:
    raise ValueError(f"data.cutout: must be an int >= 0 (0 = off), got {cutout!r}")
  for field in ("mixup_alpha", "cutmix_alpha"):
    alpha = cfg.get(field)
    if not _is_number(alpha) or not 0 <= alpha < float("inf"):
      raise ValueError(f"data.{field}: must be a finite number >= 0 (0 = off), got {alpha!r}")
  if cfg.get("mix_mode") not in MIX_MODES:
    raise ValueError(f"data.mix_mode: must be 'elem' or 'batch', got {cfg.get('mix_mode')!r}")
  for field in ("mix_probability", "cutmix_switch_probability"):
    probability = cfg.get(field)
    if not _is_number(probability) or not 0 <= probability <= 1:
      raise ValueError(f"data.{field}: must be a number in [0, 1], got {probability!r}")
  shuffle_buffer = cfg.get("shuffle_buffer")
  if not _is_int(shuffle_buffer) or shuffle_buffer <= 0:
    raise ValueError(f"data.shuffle_buffer: must be a positive int, got {shuffle_buffer!r}")
  npc = cfg.get("num_parallel_calls")
  if npc is not None and (not _is_int(npc) or npc <= 0):
    raise ValueError(f"data.num_parallel_calls: must be a positive int or None, got {npc!r}")


def resolve(config_data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``default_config()`` updated with ``config_data``, validated; unknown fields are errors."""
  merged = default_config().to_dict()
  given = config_data.to_dict() if hasattr(config_data, "to_dict") else dict(config_data)
  for key, value in given.items():
    if key not in merged:
      raise ValueError(f"data.{key}: unknown field; valid fields: {', '.join(sorted(merged))}")
    merged[key] = value
  # Rebuilt from a plain dict so that validate_config, not ConfigDict's type locking, judges
  # the values and its errors name the field.
  cfg = ml_collections.ConfigDict(merged)
  validate_config(cfg)
  return cfg
