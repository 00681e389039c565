#!/usr/bin/env bash
# ViT-S on CIFAR-10 with Adam and gradient regularisation under lambda-warmup: the
# penalty weight grows over the learning-rate warmup (configs/cifar10_vit.py:variant=lambda).
#
#   recipes/cifar10_vit_gr_lambda.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_gr_lambda by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=lambda "${WORKDIR:-runs/cifar10_vit_s_gr_lambda}"
