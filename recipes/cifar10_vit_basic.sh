#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "When Will Gradient Regularization Be Harmful?" (ICML 2024),
# CIFAR-10, ViT-S, column Adam (no gradient regularisation): the authors' ViT recipe with
# alpha 0 (configs/cifar10_vit.py:variant=basic).
#
#   recipes/cifar10_vit_basic.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_basic by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=basic "${WORKDIR:-runs/cifar10_vit_s_basic}"
