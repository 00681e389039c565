"""Where examples come from: prepared TFDS datasets and a local ImageNet-style image folder.

A source yields *undecoded* records ``{'ref': tf.string, 'label': tf.int32, 'id': tf.int64}``
so a pipeline can shuffle and filter them cheaply and decode only the examples it keeps:
``load(ref)`` turns a ref into the encoded image bytes (identity for TFDS, a file read for the
folder source). ``id`` is the example's position in the split's canonical order: for TFDS the
order of the prepared record files (shard by shard), for the folder source the sorted
``(class, file name)`` order. It does not change from epoch to epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

try:  # TensorFlow only feeds data: the accelerators' memory is JAX's.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:
  # TF's devices were initialised before this import; its GPUs can no longer be hidden.
  pass

import tensorflow_datasets as tfds  # noqa: E402

from gnreg.data import digits as digits_lib  # noqa: E402

__all__ = [
  "DatasetNotFoundError",
  "Source",
  "tfds_data_dir",
  "shuffled_order",
  "process_shards",
  "folder_classes",
  "get_source",
]


class DatasetNotFoundError(ValueError):
  """A dataset is not present in the data directory; nothing is ever downloaded."""


# Datasets read through TFDS: (train split, test split, preprocessing family, mean, std).
# Means and standard deviations are per channel in [0, 1], over the training split.
_TFDS = {
  "digits": ("train", "test", "small", (0.30550,), (0.37587,)),
  "cifar10": ("train", "test", "small", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  "cifar100": ("train", "test", "small", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
  "imagenet2012": ("train", "validation", "imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_IMAGENET_MEAN_STD = _TFDS["imagenet2012"][3:]
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset: its sizes and how to read its undecoded records.

  ``family`` picks the preprocessing: ``'small'`` (fixed-size images decoded whole: digits,
  CIFAR) or ``'imagenet'`` (variable-size RGB images, crop fused with the JPEG decode).
  ``native_shape`` is ``(H, W, C)`` for 'small' and ``(None, None, 3)`` for 'imagenet'.
  """

  name: str
  num_classes: int
  num_train: int
  num_test: int
  family: str
  native_shape: tuple
  mean: tuple
  std: tuple
  flip: bool
  records: Callable[..., tf.data.Dataset]
  load: Callable[[tf.Tensor], tf.Tensor]


def tfds_data_dir(name: str, data_dir: str | None) -> str:
  """The directory searched for TFDS dataset ``name`` when ``data.data_dir`` is ``data_dir``."""
  if data_dir is None and name == "digits":
    return digits_lib.default_data_dir()
  path = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
  if "://" in path:  # gs:// and the other filesystems that TFDS reads through tf.io.gfile.
    return path
  return os.path.abspath(os.path.expanduser(path))


def _not_prepared(name: str, root: str) -> DatasetNotFoundError:
  build = f"tfds build {name} --data_dir={root}"
  if name == "imagenet2012":
    build += " --manual_dir=<folder with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar>"
  return DatasetNotFoundError(
    f"data.data_dir: dataset {name!r} is not prepared in {root} (searched "
    f"{os.path.join(root, name)}); prepare it on a machine with internet with: {build}"
  )


def _tfds_builder(name: str, root: str) -> tfds.core.DatasetBuilder:
  if name == "digits":
    return digits_lib.prepare(root)
  # Checked before tfds.builder so a missing dataset never reaches code that could download.
  if not tf.io.gfile.isdir(os.path.join(root, name)):
    raise _not_prepared(name, root)
  builder = tfds.builder(name, data_dir=root)
  if not builder.is_prepared():
    raise _not_prepared(name, root)
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise DatasetNotFoundError(
      f"data.data_dir: dataset {name!r} in {root} is stored as {builder.info.file_format.value}"
      f"; gnreg reads tfrecord: rebuild it with: tfds build {name} --data_dir={root} "
      "--file_format=tfrecord"
    )
  return builder


def shuffled_order(n: int, seed: tf.Tensor) -> tf.Tensor:
  """A uniformly random permutation of ``range(n)`` from stateless ops (int32 ``[n]``)."""
  return tf.argsort(tf.random.stateless_uniform([n], seed=seed))


def process_shards(
  shard_lengths: list[int], process_index: int, process_count: int
) -> list[tuple[int, int, int]]:
  """``(shard, skip, take)`` for the records of one process's share of a split.

  Process ``p`` of ``P`` owns the records ``[p N / P, (p + 1) N / P)`` of the split's
  canonical order (``N`` records in all): the whole shards inside that range, and the
  overlapping part of the shards at its ends, as ``skip`` records then ``take`` records.

  >>> process_shards([10, 10, 10], 0, 2)
  [(0, 0, 10), (1, 0, 5)]
  >>> process_shards([10, 10, 10], 1, 2)
  [(1, 5, 5), (2, 0, 10)]
  """
  total = sum(shard_lengths)
  begin = process_index * total // process_count
  end = (process_index + 1) * total // process_count
  pieces, offset = [], 0
  for shard, length in enumerate(shard_lengths):
    lo, hi = max(begin, offset), min(end, offset + length)
    if lo < hi:
      pieces.append((shard, lo - offset, hi - lo))
    offset += length
  return pieces


def _tfds_records(
  builder, split: str, file_seed: tf.Tensor | None, process: tuple[int, int] = (0, 1)
) -> tf.data.Dataset:
  """Undecoded records of ``split``, read straight from its TFRecord shards.

  The shards are read in order (the canonical order) when ``file_seed`` is None, else in a
  ``file_seed``-permuted order, interleaving 16 at a time. ``process = (p, P)`` reads only
  process ``p``'s share of the records (see :func:`process_shards`), from only the shard
  files that hold it. TFDS's own ``as_dataset`` is not used because it takes its file-shuffle
  seed as a Python int, fixed when the pipeline is built, while here each epoch's seed is a
  tensor inside one pipeline that spans all epochs.
  """
  info = builder.info.splits[split]
  paths = [os.fspath(p) for p in info.filepaths]
  offsets = np.concatenate([[0], np.cumsum(info.shard_lengths)[:-1]]).astype(np.int64)
  pieces = process_shards(list(info.shard_lengths), *process)
  columns = (
    tf.constant([paths[i] for i, _, _ in pieces]),
    tf.constant([offsets[i] for i, _, _ in pieces], tf.int64),
    tf.constant([skip for _, skip, _ in pieces], tf.int64),
    tf.constant([take for _, _, take in pieces], tf.int64),
  )
  files = tf.data.Dataset.from_tensor_slices(columns)
  cycle = 1
  if file_seed is not None and len(pieces) > 1:
    order = shuffled_order(len(pieces), file_seed)
    files = tf.data.Dataset.from_tensor_slices(tuple(tf.gather(c, order) for c in columns))
    cycle = min(16, len(pieces))

  @tf.autograph.experimental.do_not_convert
  def read(path, offset, skip, take):
    # Rank of the record in the split when the shards are read in order: its stable id.
    records = tf.data.TFRecordDataset(path).enumerate().skip(skip).take(take)
    return records.map(tf.autograph.experimental.do_not_convert(lambda j, s: (offset + j, s)))

  if cycle == 1:
    records = files.interleave(read, cycle_length=1)
  else:
    records = files.interleave(
      read,
      cycle_length=cycle,
      block_length=16,
      deterministic=True,
      num_parallel_calls=tf.data.AUTOTUNE,
    )
  features = builder.info.features

  def parse(example_id, serialized):
    ex = features.deserialize_example(serialized, decoders={"image": tfds.decode.SkipDecoding()})
    return {"ref": ex["image"], "label": tf.cast(ex["label"], tf.int32), "id": example_id}

  return records.map(
    tf.autograph.experimental.do_not_convert(parse), num_parallel_calls=tf.data.AUTOTUNE
  )


def _tfds_source(name: str, data_dir: str | None) -> Source:
  train_split, test_split, family, mean, std = _TFDS[name]
  builder = _tfds_builder(name, tfds_data_dir(name, data_dir))
  image = builder.info.features["image"]
  native = tuple(image.shape) if family == "small" else (None, None, 3)

  def records(
    split: str, file_seed: tf.Tensor | None = None, process: tuple[int, int] = (0, 1)
  ) -> tf.data.Dataset:
    return _tfds_records(
      builder, train_split if split == "train" else test_split, file_seed, process
    )

  return Source(
    name=name,
    num_classes=builder.info.features["label"].num_classes,
    num_train=builder.info.splits[train_split].num_examples,
    num_test=builder.info.splits[test_split].num_examples,
    family=family,
    native_shape=native,
    mean=mean,
    std=std,
    flip=name != "digits",
    records=records,
    load=lambda ref: ref,
  )


@functools.lru_cache(maxsize=8)
def _list_folder(root: str, split: str, classes: tuple[str, ...]) -> tuple[tuple, tuple]:
  """Sorted ``(paths, labels)`` of the images under ``root/split/<class>/``."""
  paths, labels = [], []
  split_dir = os.path.join(root, split)
  for label, cls in enumerate(classes):
    cls_dir = os.path.join(split_dir, cls)
    if not os.path.isdir(cls_dir):
      continue
    names = sorted(f for f in os.listdir(cls_dir) if f.lower().endswith(_IMAGE_EXTENSIONS))
    paths.extend(os.path.join(cls_dir, f) for f in names)
    labels.extend([label] * len(names))
  return tuple(paths), tuple(labels)


def folder_classes(root: str) -> tuple[str, ...]:
  """The class names of an image folder: the sorted sub-folders of ``root/train``."""
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise DatasetNotFoundError(
      f"data.data_dir: imagenet_folder has no train/ folder in {root} (searched {train_dir}); "
      "lay it out as <data_dir>/train/<class>/*.JPEG and <data_dir>/val/<class>/*.JPEG"
    )
  return tuple(
    sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
  )


def _folder_source(data_dir: str) -> Source:
  root = os.path.abspath(os.path.expanduser(data_dir))
  classes = folder_classes(root)
  train_paths, _ = _list_folder(root, "train", classes)
  if not train_paths:
    raise DatasetNotFoundError(
      f"data.data_dir: imagenet_folder found no images under {os.path.join(root, 'train')} "
      f"(extensions {', '.join(_IMAGE_EXTENSIONS)}); lay it out as "
      "<data_dir>/train/<class>/*.JPEG and <data_dir>/val/<class>/*.JPEG"
    )
  val_paths, _ = _list_folder(root, "val", classes)
  if not val_paths:  # Found now, not at the first evaluation hours into the run.
    raise DatasetNotFoundError(
      f"data.data_dir: imagenet_folder has no images in {os.path.join(root, 'val')}; "
      "evaluation needs <data_dir>/val/<class>/*.JPEG with the class folders of train/"
    )

  tensors = {}

  def records(split: str, file_seed: tf.Tensor | None = None) -> tf.data.Dataset:
    del file_seed  # Records are paths: the pipeline shuffles them all at once.
    split = "train" if split == "train" else "val"
    if split not in tensors:
      paths, labels = _list_folder(root, split, classes)
      # Made eagerly once, so a pipeline function captures them instead of embedding constants.
      tensors[split] = {
        "ref": tf.constant(paths, tf.string),
        "label": tf.constant(labels, tf.int32),
        "id": tf.range(len(paths), dtype=tf.int64),
      }
    return tf.data.Dataset.from_tensor_slices(tensors[split])

  mean, std = _IMAGENET_MEAN_STD
  return Source(
    name="imagenet_folder",
    num_classes=len(classes),
    num_train=len(train_paths),
    num_test=len(val_paths),
    family="imagenet",
    native_shape=(None, None, 3),
    mean=mean,
    std=std,
    flip=True,
    records=records,
    load=tf.io.read_file,
  )


def get_source(name: str, data_dir: str | None) -> Source:
  """The source for validated ``data.name`` and ``data.data_dir``; prepares digits if needed."""
  if name == "imagenet_folder":
    return _folder_source(data_dir)
  return _tfds_source(name, data_dir)
