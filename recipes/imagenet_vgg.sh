#!/usr/bin/env bash
# VGG-16 with batch norm (VGG16BN) on ImageNet at batch 1024: SGD-momentum, warmup and cosine
# decay, the gradient norm penalty, bfloat16 (configs/imagenet_vgg.py).
#
#   recipes/imagenet_vgg.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/imagenet_vgg16bn by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/imagenet_vgg.py "${WORKDIR:-runs/imagenet_vgg16bn}"
