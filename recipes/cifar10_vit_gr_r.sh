#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "When Will Gradient Regularization Be Harmful?" (ICML 2024),
# CIFAR-10, ViT-S, Adam + GR with the r-warmup: the finite-difference radius grows over
# the learning-rate warmup (configs/cifar10_vit.py:variant=r).
#
#   recipes/cifar10_vit_gr_r.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_gr_r by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=r "${WORKDIR:-runs/cifar10_vit_s_gr_r}"
