#!/usr/bin/env bash
# ResNet-18 on CIFAR-10: SGD-momentum, cosine decay, the gradient norm penalty
# (configs/cifar10_resnet.py; Zhao, Zhang & Hu, ICML 2022).
#
#   recipes/cifar10_resnet.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_resnet18 by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_resnet.py "${WORKDIR:-runs/cifar10_resnet18}"
