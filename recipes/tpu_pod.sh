#!/usr/bin/env bash
# Runs a recipe on every worker of a Cloud TPU VM pod slice at once (gcloud ssh --worker=all).
# Each worker runs the recipe's ordinary command with --distributed (DISTRIBUTED=1): the
# trainer calls jax.distributed.initialize(), which finds the pod's other workers from the TPU
# metadata.
#
#   TPU_NAME=my-v4-64 ZONE=us-central2-b recipes/tpu_pod.sh [--dry-run] RECIPE [recipe args]
#
# TPU_NAME  the TPU VM (required)
# ZONE      its zone; PROJECT, its project (gcloud's configured defaults when unset)
# REPO_DIR  this repository on every worker, absolute or relative to the home (gnreg); gnreg
#           must be installed there for PYTHON on every worker
# The recipe's settings that are set here (DATA_DIR, WORKDIR, PYTHON, EXTRA_ARGS, CONFIG,
# SWEEP_DIR, MAX_NORMS, SCHEDULES, RERUN) are passed on to the workers. Every worker must see
# the same DATA_DIR and WORKDIR: DATA_DIR can be a gs:// path (TFDS reads it), WORKDIR must be a
# directory every worker mounts at the same path (a Filestore NFS share, or a bucket mounted
# with gcsfuse). --dry-run prints the gcloud command only.
# The reproductions set config.batch_group_size (recipes/README.md): a slice trains the same
# algorithm as one host as long as each device holds at least one group; beyond, the run is
# refused in one line naming batch_group_size.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
recipe="$(gnreg_recipe "${ARGS[0]:-}")"
if [[ -z "${TPU_NAME:-}" ]]; then
  gnreg_die "TPU_NAME: required, the name of the TPU VM (gcloud compute tpus tpu-vm list)"
fi

remote=("cd" "$(gnreg_quote "${REPO_DIR:-gnreg}")" "&&" "DISTRIBUTED=1")
for var in DATA_DIR WORKDIR PYTHON EXTRA_ARGS CONFIG SWEEP_DIR MAX_NORMS SCHEDULES RERUN; do
  if printenv "$var" >/dev/null; then
    remote+=("$var=$(gnreg_quote "$(printenv "$var")")")
  fi
done
remote+=(bash "$recipe")
for arg in "${ARGS[@]:1}"; do
  remote+=("$(gnreg_quote "$arg")")
done

GNREG_CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME")
if [[ -n "${ZONE:-}" ]]; then
  GNREG_CMD+=("--zone=$ZONE")
fi
if [[ -n "${PROJECT:-}" ]]; then
  GNREG_CMD+=("--project=$PROJECT")
fi
GNREG_CMD+=(--worker=all "--command=${remote[*]}")
gnreg_exec
