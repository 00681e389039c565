#!/usr/bin/env bash
# PyramidNet-272 (alpha 200) with ShakeDrop on CIFAR-10 for 1800 epochs with AutoAugment
# and Cutout, SGD-momentum and the gradient norm penalty (configs/cifar10_shake.py:variant=shakedrop).
#
#   recipes/cifar10_pyramidnet_shakedrop.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_pyramidnet272_shakedrop by default;
# DATA_DIR, PYTHON, EXTRA_ARGS and the rest: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_shake.py:variant=shakedrop "${WORKDIR:-runs/cifar10_pyramidnet272_shakedrop}"
