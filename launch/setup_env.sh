#!/usr/bin/env bash
# Set up didiff_jax on this machine: the embedded Fashion-MNIST data (Debian package, when apt is
# available) and a virtual environment in .venv with the package and the chosen extra.
#
#   bash launch/setup_env.sh [EXTRA] [--venv DIR] [--python PY]
#
#   EXTRA    test | cuda (NVIDIA GPUs, CUDA 12) | tpu (Cloud TPU VMs) | tensorboard | torch |
#            none: CPU                                                        [EXTRA]
#   --venv   the virtual environment, relative to the repository root       [VENV, .venv]
#   --python the Python that creates it (>= 3.11)                           [PYTHON, python3]
# (each setting also from the environment variable in brackets)
set -euo pipefail

EXTRA="${EXTRA:-}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --venv) VENV="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    -*) echo "setup_env.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) EXTRA="$1"; shift ;;
  esac
done
case "$EXTRA" in
  "" | test | cuda | tpu | tensorboard | torch) ;;
  *) echo "setup_env.sh: unknown extra '$EXTRA' (test, cuda, tpu, tensorboard, torch)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null && [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  SUDO=""
  [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist; }
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [[ -n "$EXTRA" ]]; then
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRA]"
else
  "$VENV/bin/python" -m pip install -q -e .
fi
echo "didiff_jax installed in $VENV${EXTRA:+ with [$EXTRA]}"
