"""Deterministic, resumable, multi-host input pipelines over ``tf.data``.

Training stream. Epoch ``e`` is the training split permuted with the stateless seed
``(shuffle_key(seed), e)`` and truncated to ``steps_per_epoch * G`` examples (each epoch's last
partial batch is dropped). Example ``j`` of epoch ``e`` has stream position
``i = e * steps_per_epoch * G + j`` and is row ``i % G`` of global batch ``i // G``. With ``P``
processes each global batch is cut into ``P`` contiguous chunks of ``L = G / P`` rows, and
process ``p`` keeps the records with ``(i % G) // L == p``; the filter runs on undecoded
records, so a host decodes and augments only its own examples. Every random choice made while
augmenting the example at position ``i`` comes from stateless ops seeded with
``(augment_key(seed), i)``: it does not depend on parallelism, on ``P``, or on where the run
started. ``start_step = e * steps_per_epoch + b`` starts the stream at epoch ``e`` and skips
``b * G`` undecoded records, which yields exactly the batches a run from step 0 would see from
there. All epochs live in one ``tf.data`` pipeline (``Dataset.range(e, ...).flat_map``), traced
once; every shuffle uses only stateless ops, so ``tf.random.set_seed`` has no effect on it.
Batch mixing (``data.mixup_alpha``, ``data.cutmix_alpha``) runs last, on each process's batch:
rows ``2k`` and ``2k + 1`` are mixed with each other, with draws seeded by
``(mix_key(seed), step)``, one per row of the global batch, each process taking its rows
(``data.mix_mode='elem'``), or one for the whole global batch (``'batch'``);
then Cutout, if on, blanks each example's square. Local batches have an even size, so pairs
never straddle two processes, and mixed batches keep all of the above (resume, and for splits
shuffled whole, independence from ``P``).

Shuffling. Training splits of at most ``FULL_SHUFFLE_MAX`` examples, and the image-folder
source (whose records are file paths), are permuted whole each epoch: an exact uniform
permutation; their undecoded records are cached in memory after the first epoch (CIFAR: about
130 MB of PNG bytes). Larger TFDS splits (ImageNet) are not read whole by every host: process
``p`` of ``P`` owns records ``[p N / P, (p + 1) N / P)`` of the canonical order, reads only the
shard files that hold them, in a per-epoch permuted order, 16 interleaved, permutes consecutive
windows of ``data.shuffle_buffer`` records (a window shuffle, not ``Dataset.shuffle``'s
streaming buffer) and batches its own ``L`` rows; each epoch is ``steps_per_epoch * L`` of
them. The order of such a split therefore depends on ``P``; everything above holds for it
per process, and ``start_step`` resumes it the same way.

Evaluation stream: the test split in its canonical order, padded with masked rows to
``ceil(N / G)`` full global batches, cut per process the same way; every test example appears
exactly once over all processes, with ``mask`` 1.0 on real rows and 0.0 on padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from gnreg.data import augment, sources
from gnreg.data import autoaugment as autoaugment_lib
from gnreg.data import config as config_lib

__all__ = [
  "FULL_SHUFFLE_MAX",
  "DatasetInfo",
  "dataset_info",
  "steps_per_epoch",
  "shuffle_windows",
  "train_iterator",
  "eval_iterator",
]

FULL_SHUFFLE_MAX = 100_000
# ImageNet-family images are resized to the size their models are defined at.
IMAGENET_SIZE = 224
_DEFAULT_CROP_PADDING = {"digits": 0, "cifar10": 4, "cifar100": 4}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a schedule need to know about a dataset.

  ``image_shape`` is ``(H, W, C)`` after preprocessing, i.e. of one ``batch['image'][k]``.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int


def _image_size(cfg, source: sources.Source) -> int:
  if cfg.image_size is not None:
    return cfg.image_size
  if source.family == "small":
    return source.native_shape[0]
  return IMAGENET_SIZE


def _image_shape(cfg, source: sources.Source) -> tuple[int, int, int]:
  size = _image_size(cfg, source)
  return (size, size, source.native_shape[2])


def dataset_info(config_data: ml_collections.ConfigDict) -> DatasetInfo:
  """Sizes and shapes of the dataset named by ``config_data``, without iterating it.

  Prepares ``digits`` if needed (offline). Raises ``ValueError`` for a bad ``data.*`` field
  (an unknown ``data.name`` lists the valid names) and ``DatasetNotFoundError`` when the dataset
  is not in ``data.data_dir``.
  """
  cfg = config_lib.resolve(config_data)
  source = sources.get_source(cfg.name, cfg.data_dir)
  return DatasetInfo(
    name=cfg.name,
    num_classes=source.num_classes,
    image_shape=_image_shape(cfg, source),
    num_train=source.num_train,
    num_test=source.num_test,
  )


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
  """``floor(num_train / global_batch_size)``: training drops each epoch's partial batch.

  >>> steps_per_epoch(DatasetInfo('digits', 10, (8, 8, 1), 1437, 360), 128)
  11
  """
  _check_positive("global_batch_size", global_batch_size)
  return info.num_train // global_batch_size


def _check_positive(name: str, value) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"data: {name} must be a positive int, got {value!r}")


def _check_processes(global_batch_size: int, process_index: int, process_count: int) -> int:
  _check_positive("global_batch_size", global_batch_size)
  _check_positive("process_count", process_count)
  if not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
    raise ValueError(
      f"data: process_index must be an int in [0, {process_count}), got {process_index!r}"
    )
  if global_batch_size % process_count:
    raise ValueError(
      f"data: global_batch_size must be divisible by process_count "
      f"{process_count}, got {global_batch_size}"
    )
  return global_batch_size // process_count


def _derive_seed(*words: int) -> int:
  """A 63-bit seed mixed from non-negative words (SplitMix via ``np.random.SeedSequence``)."""
  state = np.random.SeedSequence([w % 2**64 for w in words]).generate_state(2, np.uint32)
  return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


# Domain-separation tags so the shuffle key and the augmentation key never coincide.
_SHUFFLE_TAG, _AUGMENT_TAG, _MIX_TAG = 0x5F1E, 0xA06, 0x313


def _decode_small(source: sources.Source, encoded: tf.Tensor) -> tf.Tensor:
  h, w, c = source.native_shape
  image = tf.io.decode_image(encoded, channels=c, expand_animations=False)
  return tf.ensure_shape(image, [h, w, c])


def _example_seeds(seed: tf.Tensor) -> tuple[tf.Tensor, ...]:
  """Crop, flip, AutoAugment and Cutout seeds of the example seeded with ``seed``."""
  return tuple(tf.unstack(tf.random.experimental.stateless_split(seed, 4)))


def _train_preprocess(
  cfg, source: sources.Source, encoded: tf.Tensor, seed: tf.Tensor, *, cutout: bool = True
) -> tf.Tensor:
  """Decoded, augmented, normalised float32 image of one training example.

  ``cutout=False`` leaves Cutout to the caller (after batch mixing).
  """
  size = _image_size(cfg, source)
  crop_seed, flip_seed, aa_seed, cutout_seed = _example_seeds(seed)
  if source.family == "small":
    image = _decode_small(source, encoded)
    if size != source.native_shape[0]:
      image = augment.resize(image, size)
    if cfg.augment:
      padding = cfg.crop_padding
      if padding is None:
        padding = _DEFAULT_CROP_PADDING[source.name]
      image = augment.pad_and_random_crop(image, padding, crop_seed)
      if source.flip:
        image = augment.random_flip(image, flip_seed)
  elif cfg.augment:
    image = augment.imagenet_train_crop(encoded, size, crop_seed)
    image = augment.random_flip(image, flip_seed)
  else:
    image = augment.imagenet_eval_crop(encoded, size)
  if cfg.autoaugment is not None:
    image = autoaugment_lib.autoaugment(image, cfg.autoaugment, aa_seed)
  image = augment.normalize(image, source.mean, source.std)
  if cutout:
    image = augment.cutout(image, cfg.cutout, cutout_seed)
  return tf.ensure_shape(image, _image_shape(cfg, source))


def _eval_preprocess(cfg, source: sources.Source, encoded: tf.Tensor) -> tf.Tensor:
  size = _image_size(cfg, source)
  if source.family == "small":
    image = _decode_small(source, encoded)
    if size != source.native_shape[0]:
      image = augment.resize(image, size)
  else:
    image = augment.imagenet_eval_crop(encoded, size)
  image = augment.normalize(image, source.mean, source.std)
  return tf.ensure_shape(image, _image_shape(cfg, source))


def _options() -> tf.data.Options:
  options = tf.data.Options()
  # Order must not depend on thread timing: it is what makes the stream reproducible.
  options.deterministic = True
  # tf.data's autotuning model runs in a thread that sleeps longer and longer between its
  # optimisations, and releasing an iterator joins that thread: at the end of a smoke run the
  # train iterator's release waited 9 to 19 s in 10 of 20 runs (a run "finished" that did not
  # exit). Without the model, each AUTOTUNE parallelism is the core count, and the pipelines'
  # rates measured the same on the 2-core development host; the release takes milliseconds.
  options.autotune.enabled = False
  return options


def _parallel(cfg) -> int:
  return tf.data.AUTOTUNE if cfg.num_parallel_calls is None else cfg.num_parallel_calls


def shuffle_windows(records: tf.data.Dataset, window: int, seed: tf.Tensor) -> tf.data.Dataset:
  """Cuts ``records`` into consecutive windows of ``window`` and permutes each uniformly.

  With ``window >= len(records)`` this is an exact uniform permutation. Unlike
  ``Dataset.shuffle`` it uses only stateless ops, so the order is a function of ``seed`` alone,
  whatever ``tf.random.set_seed`` was called with.
  """

  @_no_autograph
  def permute(k, window_records):
    n = tf.shape(window_records["label"])[0]
    order = tf.argsort(
      tf.random.stateless_uniform([n], seed=tf.random.experimental.stateless_fold_in(seed, k))
    )
    return tf.data.Dataset.from_tensor_slices(
      {key: tf.gather(value, order) for key, value in window_records.items()}
    )

  # prefetch(1): the next window is read while this one is consumed, so the stream does not
  # stall for a whole window's read at each window boundary.
  return records.batch(window).prefetch(1).enumerate().flat_map(permute)


def _no_autograph(fn):
  return tf.autograph.experimental.do_not_convert(fn)


def _train_dataset(
  cfg,
  source: sources.Source,
  *,
  seed: int,
  start_step: int,
  global_batch_size: int,
  local_batch_size: int,
  process_index: int,
  steps: int,
) -> tf.data.Dataset:
  """One pipeline over all epochs from ``start_step`` on, for process ``process_index``."""
  g, local = global_batch_size, local_batch_size
  full = source.num_train <= FULL_SHUFFLE_MAX or source.name == "imagenet_folder"
  window = source.num_train if full else cfg.shuffle_buffer
  shuffle_key = tf.constant(_derive_seed(_SHUFFLE_TAG, seed), tf.int64)
  aug_key = tf.constant(_derive_seed(_AUGMENT_TAG, seed), tf.int64)
  # Its own key, so that turning mixing on leaves every other draw of the stream as it was.
  mix_key = tf.constant(_derive_seed(_MIX_TAG, seed), tf.int64)
  mixing = config_lib.mixes(cfg)
  height, width, _ = _image_shape(cfg, source)
  # Built once outside the epoch function, so large folder listings are captured, not copied,
  # and cached: epochs after the first permute records held in memory instead of re-reading.
  canonical = source.records("train").cache() if full else None
  # Full shuffles draw global batches and each process keeps its rows; larger splits are read
  # by each process from its own share of the shards, as its own stream of local batches.
  per_epoch = steps * (g if full else local)
  process_count = g // local

  @_no_autograph
  def epoch_records(epoch):
    epoch_seed = tf.stack([shuffle_key, epoch])
    file_seed, window_seed = tf.unstack(tf.random.experimental.stateless_split(epoch_seed, 2))
    if full:
      records = canonical
    else:
      records = source.records("train", file_seed=file_seed, process=(process_index, process_count))
      window_seed = tf.random.experimental.stateless_fold_in(window_seed, process_index)
    records = shuffle_windows(records, window, window_seed).take(per_epoch)
    # Positions are unique over epochs and processes: they seed each example's augmentation.
    first = epoch * steps * g + (0 if full else process_index * per_epoch)
    return records.enumerate().map(_no_autograph(lambda j, r: (first + j, r)))

  first_epoch, skip_batches = divmod(start_step, steps)
  stream = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  if full:
    # Epochs hold whole global batches, so position % G is the row within the global batch.
    stream = stream.skip(skip_batches * g)
    stream = stream.filter(_no_autograph(lambda i, r: (i % g) // local == process_index))
  else:
    stream = stream.skip(skip_batches * local)

  @_no_autograph
  def prepare(position, record):
    example_seed = tf.stack([aug_key, position])
    image = _train_preprocess(
      cfg, source, source.load(record["ref"]), example_seed, cutout=not mixing
    )
    example = {"image": image, "label": record["label"], "index": record["id"]}
    if mixing and cfg.cutout:
      # Cutout comes after mixing, as the SAM and GNP code's mixup-then-cutout: the square
      # stays blank instead of half-filled by the partner. Its square is the unmixed one.
      example["cutout_box"] = augment.cutout_box(
        height, width, cfg.cutout, _example_seeds(example_seed)[3]
      )
    return example

  per_batch = cfg.mix_mode == "batch"

  @_no_autograph
  def mix(step, batch):
    # One draw per row of the global batch ``step``, of which this process takes its rows, or
    # one for the whole batch: mixing repeats on resume and does not depend on the process count.
    own_weights, boxes = augment.sample_mix(
      tf.stack([mix_key, step]),
      1 if per_batch else g,
      height,
      width,
      mixup_alpha=cfg.mixup_alpha,
      cutmix_alpha=cfg.cutmix_alpha,
      probability=cfg.mix_probability,
      switch_probability=cfg.cutmix_switch_probability,
    )
    if per_batch:
      own_weights, boxes = tf.repeat(own_weights, local), tf.repeat(boxes, local, axis=0)
    else:
      rows = slice(process_index * local, (process_index + 1) * local)
      own_weights, boxes = own_weights[rows], boxes[rows]
    images, batch["mix_label"], batch["mix_weight"] = augment.mix_pairs(
      batch["image"], batch["label"], own_weights, boxes
    )
    if cfg.cutout:
      inside = augment.box_mask(batch.pop("cutout_box"), height, width)[..., None]
      images = tf.where(inside, tf.zeros_like(images), images)
    batch["image"] = images
    return batch

  ds = stream.map(prepare, num_parallel_calls=_parallel(cfg))
  ds = ds.batch(local, drop_remainder=True)
  if mixing:
    # Batch k of the stream is global step start_step + k, whichever the source path.
    ds = ds.enumerate(start=start_step).map(mix, num_parallel_calls=_parallel(cfg))
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


def train_iterator(
  config_data: ml_collections.ConfigDict,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator over this process's share of the training batches.

  Yields ``{'image': float32 [L, H, W, C], 'label': int32 [L], 'index': int64 [L]}`` with
  ``L = global_batch_size / process_count``. ``index`` is the example's dataset id: its
  position in the training split's canonical order (see ``gnreg.data.sources``), the same in
  every epoch, so per-example statistics can be keyed on it. For splits shuffled whole,
  concatenating the batches of processes ``0..P-1`` gives the 1-process batch; for larger
  splits each process streams its own share of the records (see the module docstring).
  ``start_step=k`` yields what a fresh iterator yields from its ``k``-th batch on.

  With ``data.mixup_alpha`` or ``data.cutmix_alpha`` positive, rows ``2k`` and ``2k + 1`` of
  each batch are mixed with each other (:func:`gnreg.data.augment.mix_pairs`) and the batch
  also has ``'mix_label': int32 [L]`` (the partner's label) and ``'mix_weight': float32 [L]``
  (its weight in the target; ``label`` has ``1 - mix_weight``). Pairs never straddle two
  processes, and every draw comes from the step and the row (``data.mix_mode='elem'``) or
  the step alone (``'batch'``), so the properties above hold for mixed batches too; ``L``
  must then be even.
  """
  cfg = config_lib.resolve(config_data)
  local = _check_processes(global_batch_size, process_index, process_count)
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
    raise ValueError(f"data: seed must be an int, got {seed!r}")
  if not isinstance(start_step, (int, np.integer)) or start_step < 0:
    raise ValueError(f"data: start_step must be an int >= 0, got {start_step!r}")
  if config_lib.mixes(cfg) and local % 2:
    raise ValueError(
      "data.mixup_alpha/data.cutmix_alpha: batch mixing pairs rows 2k and 2k + 1 of each "
      f"process's batch, so global_batch_size / process_count must be even, got {local}"
    )
  source = sources.get_source(cfg.name, cfg.data_dir)
  steps = source.num_train // global_batch_size
  if steps == 0:
    raise ValueError(
      f"data: global_batch_size must be <= the {source.num_train} training "
      f"examples of {cfg.name!r}, got {global_batch_size}"
    )
  ds = _train_dataset(
    cfg,
    source,
    seed=int(seed),
    start_step=int(start_step),
    global_batch_size=global_batch_size,
    local_batch_size=local,
    process_index=int(process_index),
    steps=steps,
  )
  return ds.as_numpy_iterator()


def eval_iterator(
  config_data: ml_collections.ConfigDict,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Finite iterator over this process's share of the test split, in canonical order.

  Yields ``ceil(num_test / global_batch_size)`` batches (the same count on every process)
  ``{'image': float32 [L, H, W, C], 'label': int32 [L], 'mask': float32 [L]}``; padding rows
  have zero image, label 0 and mask 0.0.
  """
  cfg = config_lib.resolve(config_data)
  local = _check_processes(global_batch_size, process_index, process_count)
  source = sources.get_source(cfg.name, cfg.data_dir)
  g, p = global_batch_size, int(process_index)
  records = source.records("test").enumerate()
  records = records.filter(_no_autograph(lambda i, r: (i % g) // local == p))
  ds = records.map(
    _no_autograph(
      lambda i, r: {
        "image": _eval_preprocess(cfg, source, source.load(r["ref"])),
        "label": r["label"],
      }
    ),
    num_parallel_calls=_parallel(cfg),
  )
  ds = ds.batch(local).prefetch(tf.data.AUTOTUNE).with_options(_options())
  num_batches = -(-source.num_test // g)
  return _eval_batches(ds, num_batches, local, _image_shape(cfg, source))


def _eval_batches(ds, num_batches, local, image_shape) -> Iterator[dict[str, np.ndarray]]:
  count = 0
  for batch in ds.as_numpy_iterator():
    yield _pad(batch["image"], batch["label"], local)
    count += 1
  # A process whose chunk of the last global batch is empty still takes part in that step.
  for _ in range(num_batches - count):
    yield _pad(np.zeros((0, *image_shape), np.float32), np.zeros((0,), np.int32), local)


def _pad(image: np.ndarray, label: np.ndarray, size: int) -> dict[str, np.ndarray]:
  n = image.shape[0]
  mask = np.zeros((size,), np.float32)
  mask[:n] = 1.0
  if n < size:
    image = np.concatenate([image, np.zeros((size - n, *image.shape[1:]), image.dtype)])
    label = np.concatenate([label, np.zeros((size - n,), label.dtype)])
  return {"image": image.astype(np.float32), "label": label.astype(np.int32), "mask": mask}
