#!/usr/bin/env bash
# Set up didiff_jax on this machine: the embedded Fashion-MNIST data (Debian package, when apt is
# available) and a virtual environment in .venv with the package and the chosen extra.
#
#   bash launch/setup_env.sh [EXTRA] [--venv DIR] [--python PY]
#
#   EXTRA    test | cuda (NVIDIA GPUs, CUDA 12) | tpu (Cloud TPU VMs) | tensorboard | torch |
#            corruptions (Fashion-MNIST-C for the :uncertainty variant) |
#            none: CPU                                                        [EXTRA]
#   --venv   the virtual environment, relative to the repository root       [VENV, .venv]
#   --python the Python that creates it (>= 3.11)                           [PYTHON]
#            default: Python 3.12 (else 3.13) from PATH or pyenv, where the newest JAX installs
#            (3.11 stops at jax 0.10.2); python3 when neither is there
# (each setting also from the environment variable in brackets)
set -euo pipefail

EXTRA="${EXTRA:-}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-}"
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
  "" | test | cuda | tpu | tensorboard | torch | corruptions) ;;
  *) echo "setup_env.sh: unknown extra '$EXTRA' (test, cuda, tpu, tensorboard, torch, corruptions)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

jax_python() {  # Python 3.12 (CI's), else 3.13, that runs, on PATH or in pyenv; else python3
  local v py
  for v in 3.12 3.13; do
    if command -v "python$v" >/dev/null && "python$v" -c "" 2>/dev/null; then echo "python$v"; return; fi
    if command -v pyenv >/dev/null; then
      py="$(pyenv root)/versions/$(pyenv versions --bare | grep -E "^$v\.[0-9]+$" | sort -V | tail -1)/bin/python$v"
      if [[ -x "$py" ]]; then echo "$py"; return; fi
    fi
  done
  echo python3
}
[[ -n "$PYTHON" ]] || PYTHON="$(jax_python)"

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
