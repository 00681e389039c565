# Shared by every recipe: sourced with the recipe's arguments, never run by itself.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/_common.sh" "$@"
#
# Reads the environment (each with a default):
#   PYTHON       interpreter with gnreg installed (the checkout's .venv/bin/python, where the
#                README installs it, when that exists; else python3)
#   DATA_DIR     TFDS data_dir, or the folder root for imagenet_folder
#                ($TFDS_DATA_DIR, else $HOME/tensorflow_datasets)
#   EXTRA_ARGS   more flags appended verbatim, split on whitespace (none)
#   DISTRIBUTED  1: one process of a multi-host job that JAX finds by itself, as on a TPU
#                pod (tpu_pod.sh sets it) (unset)
#   COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID
#                multi-host runs where JAX cannot find the other processes itself (unset)
# and takes the arguments
#   --dry-run    print the command, run nothing
#   -h, --help   print the recipe's header comment
# passing every other argument (e.g. --config.batch_size=512) to the trainer after EXTRA_ARGS,
# so that the last setting of a field wins.

set -euo pipefail

GNREG_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DATA_DIR="${DATA_DIR:-${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
DRY_RUN=0
ARGS=()

# Settings of the device and the compiler that change a run: shown in front of the printed
# command whenever they are exported, so that the printed line reproduces the run.
GNREG_DEVICE_ENV=(
  JAX_PLATFORMS CUDA_VISIBLE_DEVICES TPU_VISIBLE_CHIPS XLA_PYTHON_CLIENT_MEM_FRACTION
  XLA_PYTHON_CLIENT_PREALLOCATE XLA_FLAGS JAX_COMPILATION_CACHE_DIR
)

gnreg_die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# The header comment of the running recipe, without its shebang and '# ' prefixes.
gnreg_usage() {
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

gnreg_parse_args() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) gnreg_usage; exit 0 ;;
      *) ARGS+=("$arg") ;;
    esac
  done
}

# A path inside the repository as the trainer should see it: relative when the current
# directory is the repository root (short, copyable commands), absolute otherwise.
gnreg_path() {
  if [[ "$PWD" -ef "$GNREG_REPO" ]]; then
    echo "$1"
  else
    echo "$GNREG_REPO/$1"
  fi
}

# The interpreter gnreg runs in: $PYTHON, else the checkout's .venv (the README installs gnreg
# there without activating it), else python3.
gnreg_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$GNREG_REPO/.venv/bin/python" ]]; then
    gnreg_path .venv/bin/python
  else
    echo python3
  fi
}

# Stops in one line unless $PYTHON can import gnreg and what its trainer needs: a missing
# package would otherwise end the run in an ImportError traceback. The trainer's packages are
# gnreg.commands' list, read without importing gnreg (which would need them).
gnreg_require_python() {
  local missing
  missing="$("$PYTHON" - 2>/dev/null <<'PY'
import importlib.util as u
import os
gnreg = u.find_spec("gnreg")
missing = [] if u.find_spec("jax") else ["jax"]
if gnreg is None:
  missing.insert(0, "gnreg")
else:
  spec = u.spec_from_file_location(
    "gnreg_commands", os.path.join(gnreg.submodule_search_locations[0], "commands.py")
  )
  commands = u.module_from_spec(spec)
  spec.loader.exec_module(commands)
  missing += commands.missing_train_modules()
print(" ".join(missing))
PY
)" || gnreg_die "PYTHON: '$PYTHON' does not run here; set PYTHON to the interpreter that has gnreg"
  if [[ -n "$missing" ]]; then
    gnreg_die "PYTHON: '$PYTHON' cannot import ${missing// /, }; install gnreg into it \
(pip install -e '.[train]'), or set PYTHON to the interpreter that has it, e.g. .venv/bin/python"
  fi
}

# One word for a POSIX shell: as it is when it holds no special character, else in single
# quotes (which Python's shlex.split reads too, unlike bash's printf %q).
gnreg_quote() {
  local safe='^[-A-Za-z0-9_./:=,+@%]+$'
  if [[ "$1" =~ $safe ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command on one line, each word quoted, preceded by the exported device settings:
# the line can be pasted back into a shell.
gnreg_print() {
  local var word words=()
  for var in "${GNREG_DEVICE_ENV[@]}"; do
    if printenv "$var" >/dev/null; then
      words+=("$var=$(gnreg_quote "$(printenv "$var")")")
    fi
  done
  for word in "$@"; do
    words+=("$(gnreg_quote "$word")")
  done
  echo "${words[*]}"
}

# Fills GNREG_CMD with the trainer command: MODULE CONFIG WORKDIR [FLAG ...], where the flags
# are the recipe's own; then the data directory, the multi-host flags, EXTRA_ARGS and the
# recipe's arguments follow.
gnreg_command() {
  local module="$1" config="$2" workdir="$3"
  shift 3
  local extra=()
  read -r -a extra <<<"$EXTRA_ARGS"
  GNREG_CMD=("$PYTHON" -m "$module" "--config=$config" "--workdir=$workdir" "$@"
    "--config.data.data_dir=$DATA_DIR")
  if [[ "${DISTRIBUTED:-}" == 1 ]]; then
    GNREG_CMD+=(--distributed)
  fi
  if [[ -n "${COORDINATOR_ADDRESS:-}" ]]; then
    GNREG_CMD+=("--coordinator_address=$COORDINATOR_ADDRESS")
  fi
  if [[ -n "${NUM_PROCESSES:-}" ]]; then
    GNREG_CMD+=("--num_processes=$NUM_PROCESSES")
  fi
  if [[ -n "${PROCESS_ID:-}" ]]; then
    GNREG_CMD+=("--process_id=$PROCESS_ID")
  fi
  GNREG_CMD+=(${extra[@]+"${extra[@]}"} ${ARGS[@]+"${ARGS[@]}"})
}

# Prints GNREG_CMD and, unless --dry-run, replaces the shell with it (signals such as SIGTERM
# then reach the trainer, which saves a checkpoint before it exits); a PYTHON that cannot run
# gnreg stops it first, in one line.
gnreg_exec() {
  if ((!DRY_RUN)) && [[ "${GNREG_CMD[0]}" == "$PYTHON" ]]; then
    gnreg_require_python
  fi
  gnreg_print "${GNREG_CMD[@]}"
  if ((DRY_RUN)); then
    exit 0
  fi
  exec "${GNREG_CMD[@]}"
}

# One experiment: gnreg_train CONFIG WORKDIR [FLAG ...], CONFIG relative to the repository.
gnreg_train() {
  local config="$1" workdir="$2"
  shift 2
  gnreg_command gnreg.main "$(gnreg_path "$config")" "$workdir" "$@"
  gnreg_exec
}

# The path of the recipe that a launcher (gpu_host.sh, tpu_pod.sh) is asked to run, given as
# NAME, NAME.sh or a path to it, relative to the repository.
gnreg_recipe() {
  local name available
  name="$(basename "${1:-}" .sh)"
  available="$(cd "$GNREG_REPO/recipes" && ls -- *.sh | sed -e '/^_/d' -e '/^gpu_host\./d' \
    -e '/^tpu_pod\./d' -e 's/\.sh$//' | paste -sd' ' -)"
  if [[ -z "$name" || " $available " != *" $name "* ]]; then
    gnreg_die "RECIPE: expected one of: $available; got '${1:-}'"
  fi
  echo "recipes/$name.sh"
}

gnreg_parse_args "$@"
PYTHON="$(gnreg_python)"
