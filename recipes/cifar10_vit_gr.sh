#!/usr/bin/env bash
# ViT-S on CIFAR-10 with Adam and gradient regularisation from the first step, no GR
# warmup: the case that Zhao, Zhang & Hu (ICML 2024) show can hurt (configs/cifar10_vit.py:variant=no_warmup).
#
#   recipes/cifar10_vit_gr.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_vit_s_gr by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_vit.py:variant=no_warmup "${WORKDIR:-runs/cifar10_vit_s_gr}"
