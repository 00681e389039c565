#!/usr/bin/env bash
# Reproduces Zhao, Zhang & Hu, "When Will Gradient Regularization Be Harmful?" (ICML 2024),
# CIFAR-10, ViT-S, column Adam + GR: gradient regularisation from the first step under
# the learning-rate warmup, the case that hurts (configs/cifar10_vit.py:variant=no_warmup).
#
#   recipes/cifar10_vit_gr.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_gr by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=no_warmup "${WORKDIR:-runs/cifar10_vit_s_gr}"
