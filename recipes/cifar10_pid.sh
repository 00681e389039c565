#!/usr/bin/env bash
# ResNet-18 on CIFAR-10 with the PID regulator setting the learning rate from the gradient
# norm instead of a schedule: it steers SGD-momentum's rate within [1e-4, 0.1] towards a
# gradient norm of pid.target_norm (configs/cifar10_resnet.py:pid,model=ResNet18). Add
# --config.pid.autotune=True to tune kp, ki and kd on the first epoch before training.
#
#   recipes/cifar10_pid.sh [--dry-run] [--config.<field>=<value> ...]
#
# WORKDIR=runs/cifar10_resnet18_pid by default; DATA_DIR, PYTHON, EXTRA_ARGS and the rest:
# recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
gnreg_train configs/cifar10_resnet.py:pid,model=ResNet18 "${WORKDIR:-runs/cifar10_resnet18_pid}"
