#!/usr/bin/env bash
# Runs a recipe on one host with several GPUs. The trainer puts one replica on every GPU it
# sees and splits each global batch evenly between them, so the batch size must be a multiple
# of the number of GPUs. The reproductions set config.batch_group_size (recipes/README.md), so
# they train the same algorithm on 1, 2 or 4 GPUs as on one; a group cannot span GPUs, so more
# GPUs than the batch has groups is refused in one line naming batch_group_size.
#
#   recipes/gpu_host.sh [--dry-run] RECIPE [recipe args]     e.g. recipes/gpu_host.sh cifar10_wrn
#
# GPUS                            the GPUs to use, comma-separated indices
#                                 ($CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists)
# XLA_PYTHON_CLIENT_MEM_FRACTION  the share of each GPU's memory JAX reserves (0.9, above JAX's
#                                 0.75: gnreg keeps TensorFlow, its input pipeline, off the GPUs)
# JAX_PLATFORMS                   cuda: stop with an error instead of training on the CPU when
#                                 JAX finds no usable GPU
# The recipe's own settings (DATA_DIR, WORKDIR, EXTRA_ARGS, ...) pass through. Several hosts:
# see recipes/README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
recipe="$(gnreg_recipe "${ARGS[0]:-}")"

gpus="${GPUS:-${CUDA_VISIBLE_DEVICES:-}}"
if [[ -z "$gpus" ]] && command -v nvidia-smi >/dev/null; then
  gpus="$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)"
fi
if [[ -n "$gpus" ]]; then
  export CUDA_VISIBLE_DEVICES="$gpus"
elif ((DRY_RUN)); then
  echo "# $(basename "$0"): no GPU listed by nvidia-smi; set GPUS=0,1,... to choose them" >&2
else
  gnreg_die "GPUS: nvidia-smi lists no GPU here; set GPUS=0,1,... to the GPU indices"
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"

dry_run=()
if ((DRY_RUN)); then
  dry_run=(--dry-run)
fi
exec bash "$GNREG_REPO/$recipe" ${dry_run[@]+"${dry_run[@]}"} "${ARGS[@]:1}"
