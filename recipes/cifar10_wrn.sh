#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization
# in Deep Learning" (ICML 2022),
# CIFAR-10, WideResNet-28-10 + GNP: the authors' recipes/wideresnet-cifar.sh on their WRN
# (WideResNet_28_10_GNP), SGD-Nesterov, 200 epochs (configs/cifar10_wrn.py).
#
#   recipes/cifar10_wrn.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_wrn28_10 by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_wrn.py "${WORKDIR:-runs/cifar10_wrn28_10}"
