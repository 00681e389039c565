"""The sections of ``scripts/benchmark.py``, one module each, and what they share.

=================  =============================================================================
``common``         settings, the project's bounds, timing, report rows and table, hardware
``workload``       what is timed: a Flax train step on synthetic images, the tuners' MLP on digits
``transforms``     section 1: the step time of each transform, gnp and its variants against SGD
``trainer``        section 2: the trainer's step against a hand-written one; the input pipeline
``memory``         section 3: gnp's compiled memory against the plain step's
``lr_finder``      section 4: ``find_lr`` against autolrtuner (Keras) and a one-rate-at-a-time loop
``autotune``       section 4: PID autotune, all trials batched against one after another
``compile_time``   section 5: the compile time of the plain step per model
=================  =============================================================================

``scripts/accelerator_check.py`` runs the same workloads and timing on an accelerator.
"""

import os

# Before TensorFlow (imported by gnreg.data) and tqdm (autolrtuner's progress bar) start.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")
