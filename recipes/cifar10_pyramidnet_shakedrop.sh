#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization
# in Deep Learning" (ICML 2022),
# CIFAR-10, PyramidNet-272 (alpha 200) + ShakeDrop + GNP: the authors'
# recipes/pyramidnet-sd-cifar.sh, 1800 epochs, AutoAugment, Mixup and Cutout
# (configs/cifar10_shake.py:variant=shakedrop).
#
#   recipes/cifar10_pyramidnet_shakedrop.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_pyramidnet272_shakedrop by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_shake.py:variant=shakedrop \
  "${WORKDIR:-runs/cifar10_pyramidnet272_shakedrop}"
