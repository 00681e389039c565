"""Input pipelines: TFDS and image folders through ``tf.data``, deterministic and multi-host.

The public API the trainer uses::

  info = data.dataset_info(config.data)
  train = data.train_iterator(config.data, global_batch_size=G, seed=s, start_step=k,
                              process_index=p, process_count=P)
  evals = data.eval_iterator(config.data, global_batch_size=G, process_index=p, process_count=P)
  data.steps_per_epoch(info, G)

``data.default_config()`` documents every ``config.data`` field. TensorFlow is pinned to the CPU
here, at import, so it never takes GPU memory from JAX. Nothing is ever downloaded: a dataset
missing from ``data.data_dir`` raises ``DatasetNotFoundError`` with the command to prepare it,
and ``digits`` is built offline from scikit-learn.
"""

import os

# oneDNN's fused kernels can change float results with thread timing; the input pipeline
# must give the same images on every run. An explicit setting by the user wins.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  # TF's devices were initialised before this import; its GPUs can no longer be hidden.
  pass

from gnreg.data.config import DATASET_NAMES, default_config  # noqa: E402
from gnreg.data.pipeline import (  # noqa: E402
    DatasetInfo,
    dataset_info,
    eval_iterator,
    steps_per_epoch,
    train_iterator,
)
from gnreg.data.sources import DatasetNotFoundError  # noqa: E402

__all__ = [
    'DATASET_NAMES',
    'DatasetInfo',
    'DatasetNotFoundError',
    'dataset_info',
    'default_config',
    'eval_iterator',
    'steps_per_epoch',
    'train_iterator',
]
