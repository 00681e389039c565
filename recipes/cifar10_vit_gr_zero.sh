#!/usr/bin/env bash
# ViT-S on CIFAR-10 with Adam and gradient regularisation under zero-warmup: no
# penalty during the learning-rate warmup (configs/cifar10_vit.py:variant=zero).
#
#   recipes/cifar10_vit_gr_zero.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_gr_zero by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=zero "${WORKDIR:-runs/cifar10_vit_s_gr_zero}"
