#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization
# in Deep Learning" (ICML 2022),
# CIFAR-10, ResNet-50 + GNP: the authors' recipes/resnet-cifar.sh on their CIFAR ResNet-50
# (ResNet50_GNP), SGD-Nesterov, 200 epochs (configs/cifar10_resnet.py).
#
#   recipes/cifar10_resnet.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_resnet50 by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_resnet.py "${WORKDIR:-runs/cifar10_resnet50}"
