#!/usr/bin/env bash
# Issue 15's accelerator figures: one run of at most 8 minutes on one GPU (or TPU chip).
#
#   scripts/accelerator_check.sh [--out accelerator_check.json]
#   scripts/accelerator_check.sh --cpu --out /tmp/check.json   # tiny models, any machine
#
# Needs gnreg with its training extra and an accelerator build of jax, e.g.
#   pip install -e '.[train]' 'jax[cuda12]'
# Prints each figure next to its target and writes the JSON report (rewritten after each
# section, so a run stopped at the limit still leaves the sections it finished).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
if [[ -z ${PYTHON:-} && -x .venv/bin/python ]]; then
  python=.venv/bin/python
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# Ten seconds past the script's own 8-minute budget: stop, keeping the report written so far.
exec timeout --signal=INT 490 "$python" scripts/accelerator_check.py "$@"
