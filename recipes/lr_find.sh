#!/usr/bin/env bash
# The learning-rate finder (A. Wu's subsampled one-step loss differentials,
# gnreg.tuning.find_lr) on the model, data and optimizer of a training config; it writes the
# loss-differential curve and the suggested rates to the workdir and prints the override that
# trains with the chosen rate. The --config.lr_finder.* fields set the grid and the choice.
#
#   recipes/lr_find.sh [--dry-run] [--config.<field>=<value> ...]
#
# CONFIG=configs/cifar10_resnet.py and WORKDIR=runs/lr_find_<config name> by default;
# DATA_DIR, PYTHON, EXTRA_ARGS and the rest: recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
config="${CONFIG:-$(gnreg_path configs/cifar10_resnet.py)}"
unset COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID  # The finder runs in one process.
config_name="$(basename "${config%%:*}" .py)"
gnreg_command gnreg.lr_find "$config" "${WORKDIR:-runs/lr_find_$config_name}"
gnreg_exec
