#!/usr/bin/env bash
# Shake-Shake 26 2x96d (WideResNet_2_96_ShakeShake) on CIFAR-10 for 1800 epochs with
# AutoAugment and Cutout, SGD-momentum and the gradient norm penalty (configs/cifar10_shake.py:variant=shake_shake).
#
#   recipes/cifar10_shake_shake.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_shake_shake_26_2x96d by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_shake.py:variant=shake_shake "${WORKDIR:-runs/cifar10_shake_shake_26_2x96d}"
