#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization
# in Deep Learning" (ICML 2022),
# ImageNet, VGG-16-BN + GNP: the authors' recipes/vggbn-imagenet.sh, batch 256, 100 epochs
# (configs/imagenet_vgg.py).
#
#   recipes/imagenet_vgg.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/imagenet_vgg16bn by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/imagenet_vgg.py "${WORKDIR:-runs/imagenet_vgg16bn}"
