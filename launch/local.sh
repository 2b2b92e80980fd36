#!/usr/bin/env bash
# Run didiff_jax as N processes on this machine, joined by jax.distributed through a loopback
# coordinator: the code path of a TPU pod or a GPU cluster (one program per process, a global
# mesh over every process's devices, per-process input, orbax checkpoints written by all),
# runnable on any laptop. On CPU the processes talk through gloo.
#
#   bash launch/local.sh N [options] -- <python -m didiff_jax.main arguments>
#
#   bash launch/local.sh 2 --devices-per-process 2 -- \
#       --config configs/fashion_mnist_didirn.py:smoke --workdir runs/local2
#
# Options (each also read from the environment variable in brackets):
#   N                          number of processes                              [NUM_PROCESSES]
#   --devices-per-process D    fake CPU devices per process (XLA flag), 0: keep the platform's
#                              own (e.g. for JAX_PLATFORMS=cuda)               [DEVICES_PER_PROCESS, 1]
#   --port P                   coordinator port on 127.0.0.1 (default: a free one)       [PORT]
#   --logdir DIR               logs of processes 1..N-1 (process 0 writes to this terminal)
#                                                                  [LOGDIR, $TMPDIR/didiff_local_<port>]
#   --python PY                the Python that has didiff_jax installed         [PYTHON, python3]
#   JAX_PLATFORMS (environment only, default cpu), DIDIFF_HEARTBEAT_TIMEOUT (seconds a silent
#   process is given before the others stop; default 100) pass through to every process.
#
# If one process fails, the others are stopped and this script exits with its exit code;
# SIGINT/SIGTERM are passed on to all processes (SIGTERM: they save a checkpoint and stop).
set -euo pipefail

usage() {  # the comment block at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

NUM_PROCESSES="${NUM_PROCESSES:-}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-1}"
PORT="${PORT:-}"
LOGDIR="${LOGDIR:-}"
PYTHON="${PYTHON:-python3}"

positional=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --devices-per-process) DEVICES_PER_PROCESS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --logdir) LOGDIR="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --) shift; break ;;
    -*) echo "local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
if [[ ${#positional[@]} -gt 1 ]]; then
  echo "local.sh: unexpected arguments ${positional[*]:1}; put the didiff_jax.main arguments" \
    "after --" >&2
  exit 2
fi
[[ ${#positional[@]} -eq 1 ]] && NUM_PROCESSES="${positional[0]}"

if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: the number of processes N must be a positive integer, got '${NUM_PROCESSES}'" \
    "(see --help)" >&2
  exit 2
fi
if ! [[ "$DEVICES_PER_PROCESS" =~ ^[0-9]+$ ]]; then
  echo "local.sh: --devices-per-process must be an integer >= 0, got '$DEVICES_PER_PROCESS'" >&2
  exit 2
fi
if [[ $# -eq 0 ]]; then
  echo "local.sh: no didiff_jax.main arguments after -- (see --help)" >&2
  exit 2
fi
if [[ -z "$PORT" ]]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
LOGDIR="${LOGDIR:-${TMPDIR:-/tmp}/didiff_local_${PORT}}"
mkdir -p "$LOGDIR"

export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
xla_flags="${XLA_FLAGS:-}"
if [[ "$DEVICES_PER_PROCESS" -gt 0 ]]; then
  xla_flags="$xla_flags --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    [[ -n "$pid" ]] && kill "-$1" "$pid" 2>/dev/null || true
  done
}
trap 'stop_all TERM' TERM
trap 'stop_all INT' INT

echo "local.sh: $NUM_PROCESSES processes x ${DEVICES_PER_PROCESS} devices ($JAX_PLATFORMS)," \
  "coordinator 127.0.0.1:$PORT; logs of processes 1-$((NUM_PROCESSES - 1)) in $LOGDIR" >&2
launch() {  # one process; exec, so that its pid is the one in $!
  exec env XLA_FLAGS="${xla_flags# }" DIDIFF_COORDINATOR="127.0.0.1:$PORT" \
    DIDIFF_NUM_PROCESSES="$NUM_PROCESSES" DIDIFF_PROCESS_ID="$1" \
    "$PYTHON" -m didiff_jax.main "${@:2}"
}
for ((i = 0; i < NUM_PROCESSES; i++)); do
  if ((i == 0)); then
    launch "$i" "$@" &
  else
    launch "$i" "$@" > "$LOGDIR/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

# Wait for all; the first failure stops the others.
remaining=$NUM_PROCESSES
while ((remaining > 0)); do
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    [[ -z "$pid" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    pids[i]=""
    remaining=$((remaining - 1))
    if ((rc != 0)); then
      echo "local.sh: process $i exited with status $rc; stopping the others" \
        "(log: $([[ $i -eq 0 ]] && echo above || echo "$LOGDIR/process_$i.log"))" >&2
      stop_all TERM
      sleep 5
      stop_all KILL
      wait || true
      exit "$rc"
    fi
  done
  ((remaining > 0)) && sleep 0.5
done
echo "local.sh: all $NUM_PROCESSES processes finished" >&2
