#!/usr/bin/env bash
# ResNet-50 on ImageNet at batch 1024: SGD-momentum, warmup and cosine decay, the gradient
# norm penalty, bfloat16 (configs/imagenet_resnet.py). For a local copy with one folder per
# class: DATA_DIR=/data/imagenet EXTRA_ARGS=--config.data.name=imagenet_folder.
#
#   recipes/imagenet_resnet.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/imagenet_resnet50 by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/imagenet_resnet.py "${WORKDIR:-runs/imagenet_resnet50}"
