#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "When Will Gradient Regularization Be Harmful?" (ICML 2024),
# CIFAR-10, ViT-S, column Adam + GR + zero-GR-warmup: no penalty during the learning-rate
# warmup; the authors' recipes/vit-cifar-basic-grwarmup.sh (configs/cifar10_vit.py:variant=zero).
#
#   recipes/cifar10_vit_gr_zero.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_gr_zero by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=zero "${WORKDIR:-runs/cifar10_vit_s_gr_zero}"
