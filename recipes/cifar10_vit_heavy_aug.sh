#!/usr/bin/env bash
# ViT-S on CIFAR-10 with Adam, zero-warmup gradient regularisation and heavy augmentation:
# AutoAugment (CIFAR-10 policy) and Cutout 16 on top of crop and flip
# (configs/cifar10_vit.py:variant=zero,heavy_aug).
#
#   recipes/cifar10_vit_heavy_aug.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_gr_zero_heavy_aug by default;
# DATA_DIR, PYTHON, EXTRA_ARGS and the rest: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=zero,heavy_aug \
  "${WORKDIR:-runs/cifar10_vit_s_gr_zero_heavy_aug}"
