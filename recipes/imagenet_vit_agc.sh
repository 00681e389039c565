#!/usr/bin/env bash
# ViT-B/16, a BatchNorm-free network, on ImageNet at batch 4096 with adaptive gradient
# clipping (NFNets' AGC, lambda 0.01, head unclipped) and AdamW (configs/imagenet_vit_agc.py).
#
#   recipes/imagenet_vit_agc.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/imagenet_vit_b16_agc by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/imagenet_vit_agc.py "${WORKDIR:-runs/imagenet_vit_b16_agc}"
