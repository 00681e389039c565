#!/usr/bin/env bash
# WideResNet-28-10 on CIFAR-10: SGD-momentum, cosine decay, the gradient norm penalty
# (configs/cifar10_wrn.py).
#
#   recipes/cifar10_wrn.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_wrn28_10 by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_wrn.py "${WORKDIR:-runs/cifar10_wrn28_10}"
