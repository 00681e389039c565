#!/usr/bin/env bash
# The clip-and-schedule study: trains one base config under every pair of global-norm
# clipping threshold and learning-rate schedule, one workdir per pair, then prints the final
# test error of every pair as one table (scripts/summarize.py) and draws it as a heatmap.
#
#   recipes/clip_schedule_sweep.sh [--dry-run] [--config.<field>=<value> ...]
#
# CONFIG     the base config (configs/cifar10_resnet.py)
# SWEEP_DIR  where the pairs train (runs/clip_schedule): clip.max_norm X and schedule.name S
#            in $SWEEP_DIR/clip{X}_{S}; the table is also drawn to $SWEEP_DIR/summary.png
# MAX_NORMS  the clip.max_norm values ("0.1 0.5 1 2 5")
# SCHEDULES  the schedule.name values ("step exponential cyclic"); their settings
#            (decay_epochs, epoch_decay_factor, cycle_epochs, ...) come from CONFIG
# RERUN=1    also runs the pairs whose workdir holds final_metrics.json (skipped otherwise)
# DATA_DIR, PYTHON, EXTRA_ARGS and the rest: recipes/README.md; flags given to this script
# apply to every pair. A failed pair does not stop the sweep; an interrupted one (Ctrl-C,
# SIGTERM) does, and running the same command again resumes it.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
config="${CONFIG:-$(gnreg_path configs/cifar10_resnet.py)}"
sweep_dir="${SWEEP_DIR:-runs/clip_schedule}"
read -r -a max_norms <<<"${MAX_NORMS:-0.1 0.5 1 2 5}"
read -r -a schedules <<<"${SCHEDULES:-step exponential cyclic}"

if ((!DRY_RUN)); then
  gnreg_require_python
fi
failed=()
for max_norm in "${max_norms[@]}"; do
  for schedule in "${schedules[@]}"; do
    workdir="$sweep_dir/clip${max_norm}_${schedule}"
    if [[ -e "$workdir/final_metrics.json" && "${RERUN:-0}" != 1 ]]; then
      echo "# $workdir has finished: skipped (RERUN=1 trains it again)"
      continue
    fi
    gnreg_command gnreg.main "$config" "$workdir" --config.clip.name=global_norm \
      "--config.clip.max_norm=$max_norm" "--config.schedule.name=$schedule"
    gnreg_print "${GNREG_CMD[@]}"
    if ((DRY_RUN)); then
      continue
    fi
    status=0
    "${GNREG_CMD[@]}" || status=$?
    if ((status >= 128)); then  # The trainer saved a checkpoint on a signal: stop here.
      echo "$(basename "$0"): interrupted in $workdir; run the same command to resume" >&2
      exit "$status"
    elif ((status != 0)); then
      failed+=("$workdir")
    fi
  done
done

summarize=("$PYTHON" "$(gnreg_path scripts/summarize.py)" "$sweep_dir"
  --png "$sweep_dir/summary.png")
gnreg_print "${summarize[@]}"
if ((DRY_RUN)); then
  exit 0
fi
"${summarize[@]}"
if ((${#failed[@]})); then
  echo "$(basename "$0"): ${#failed[@]} run(s) failed: ${failed[*]}" >&2
  exit 1
fi
