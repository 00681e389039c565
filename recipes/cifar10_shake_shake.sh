#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization
# in Deep Learning" (ICML 2022),
# CIFAR-10, Shake-Shake 26 2x96d + GNP: the authors' recipes/wideresnet-ss-cifar.sh,
# 1800 epochs, crop and flip (configs/cifar10_shake.py:variant=shake_shake).
#
#   recipes/cifar10_shake_shake.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_shake_shake_26_2x96d by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_shake.py:variant=shake_shake \
  "${WORKDIR:-runs/cifar10_shake_shake_26_2x96d}"
