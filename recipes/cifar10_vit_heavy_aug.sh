#!/usr/bin/env bash
# The authors' recipes/vit_cifar_heavy.sh for Zhao, Zhang & Hu, "When Will Gradient
# Regularization Be Harmful?" (ICML 2024): ViT-S on CIFAR-10 with GR and Mixup, 1200 epochs,
# their replacement for the paper's heavy augmentation, so not a table row
# (configs/cifar10_vit.py:variant=heavy_aug).
#
#   recipes/cifar10_vit_heavy_aug.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_heavy_aug by default. DATA_DIR, PYTHON, EXTRA_ARGS, the rest,
# and every difference from the authors' run: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=heavy_aug "${WORKDIR:-runs/cifar10_vit_s_heavy_aug}"
