#!/usr/bin/env bash
# Set up didiff_jax on this machine: the embedded Fashion-MNIST data (Debian package, when apt is
# available) and a virtual environment in .venv with the package and the chosen extra.
#
#   bash launch/setup_env.sh [EXTRA]     EXTRA: test | cuda | tpu | (none: CPU)
#
# Environment: VENV (default .venv), PYTHON (default python3).
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
EXTRA="${1:-}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
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
