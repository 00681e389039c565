#!/usr/bin/env bash
# ViT-B/32 on ImageNet with GSAM at batch 4096 (configs/imagenet_vit_gsam.py): big_vision's
# GSAM run (configs/proj/gsam/vit_i1k_gsam_no_aug.py, Zhuang et al., ICLR 2022), Adam at 3e-3,
# linear decay to 1%, radius 0.6 to 0.1, alpha 0.6; its differences: recipes/README.md.
#
#   recipes/imagenet_vit_gsam.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/imagenet_vit_b32_gsam by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/imagenet_vit_gsam.py "${WORKDIR:-runs/imagenet_vit_b32_gsam}"
