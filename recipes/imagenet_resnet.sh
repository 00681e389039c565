#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization
# in Deep Learning" (ICML 2022),
# ImageNet, ResNet-50 + GNP: the authors' recipes/resnet-imagenet.sh, batch 512, 100 epochs
# (configs/imagenet_resnet.py). For a local copy with one folder per class:
# DATA_DIR=/data/imagenet EXTRA_ARGS=--config.data.name=imagenet_folder.
#
#   recipes/imagenet_resnet.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/imagenet_resnet50 by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/imagenet_resnet.py "${WORKDIR:-runs/imagenet_resnet50}"
