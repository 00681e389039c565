#!/usr/bin/env bash
# ViT-S (patch 4) on CIFAR-10 with Adam and no gradient regularisation: the baseline of
# Zhao, Zhang & Hu, ICML 2024 (configs/cifar10_vit.py:variant=basic).
#
#   recipes/cifar10_vit_basic.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_basic by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=basic "${WORKDIR:-runs/cifar10_vit_s_basic}"
