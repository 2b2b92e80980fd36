#!/usr/bin/env bash
# A Cloud TPU VM slice for didiff_jax: create it, set up every worker, run the main job on all
# workers at once (one process per host; jax.distributed finds the slice by itself), delete it.
#
#   bash launch/tpu_vm.sh create
#   bash launch/tpu_vm.sh setup                 # this checkout's files + launch/setup_env.sh tpu
#   bash launch/tpu_vm.sh run -- --config configs/imagenet_didirn50.py \
#       --workdir gs://BUCKET/runs/didirn50 --config.data.data_dir=gs://BUCKET/tfds
#   bash launch/tpu_vm.sh ssh -- 'tail -n 5 didiff_jax/nohup.out'   # any command, every worker
#   bash launch/tpu_vm.sh delete
#
# Settings (flag, or the environment variable in brackets):
#   --name NAME              TPU VM name (required)                                  [TPU_NAME]
#   --zone ZONE              e.g. us-central2-b (required)                               [ZONE]
#   --project PROJECT        default: gcloud's configured project                     [PROJECT]
#   --accelerator-type TYPE  slice type, e.g. v4-32 (4 hosts), v5litepod-16   [ACCELERATOR_TYPE, v4-8]
#   --version VERSION        TPU software version                 [TPU_VERSION, tpu-ubuntu2204-base]
#   --spot                   a Spot (preemptible) slice; SIGTERM makes every process save  [SPOT=1]
#   --dir DIR                code folder on the workers, relative to home      [REMOTE_DIR, didiff_jax]
#   --dry-run                print the gcloud commands instead of running them          [DRY_RUN=1]
#
# On a slice of several hosts, --workdir (checkpoints) and the TFDS data_dir must be on storage
# every host reaches: gs:// paths go straight to orbax and TFDS. Only process 0 writes logs,
# metrics, plots and results.
set -euo pipefail

usage() {  # the comment block at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
REMOTE_DIR="${REMOTE_DIR:-didiff_jax}"
DRY_RUN="${DRY_RUN:-0}"

COMMAND=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name) TPU_NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator-type) ACCELERATOR_TYPE="$2"; shift 2 ;;
    --version) TPU_VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --dir) REMOTE_DIR="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    create | setup | run | ssh | delete)
      [[ -n "$COMMAND" ]] && { echo "tpu_vm.sh: two commands: $COMMAND and $1" >&2; exit 2; }
      COMMAND="$1"; shift ;;
    *) echo "tpu_vm.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$COMMAND" ]]; then
  echo "tpu_vm.sh: give a command: create, setup, run, ssh or delete (see --help)" >&2
  exit 2
fi
if [[ -z "$TPU_NAME" || -z "$ZONE" ]]; then
  echo "tpu_vm.sh: the TPU VM needs a name and a zone: --name NAME --zone ZONE" \
    "(or TPU_NAME, ZONE in the environment; see --help)" >&2
  exit 2
fi

common=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && common+=(--project "$PROJECT")

gcloud_tpu() {  # gcloud compute tpus tpu-vm ARGS..., or print it with --dry-run
  if [[ "$DRY_RUN" == 1 ]]; then
    printf 'gcloud compute tpus tpu-vm'
    printf ' %q' "$@"
    printf '\n'
  else
    gcloud compute tpus tpu-vm "$@"
  fi
}

on_all_workers() {  # run a shell command on every worker of the slice
  gcloud_tpu ssh "$TPU_NAME" "${common[@]}" --worker=all --command "$1"
}

cd "$(dirname "$0")/.."
case "$COMMAND" in
  create)
    extra=()
    [[ "$SPOT" == 1 ]] && extra+=(--spot)
    gcloud_tpu create "$TPU_NAME" "${common[@]}" --accelerator-type "$ACCELERATOR_TYPE" \
      --version "$TPU_VERSION" "${extra[@]}"
    ;;
  setup)
    # The tracked files of this checkout as they are now (uncommitted edits included).
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    tarball="$tmp/didiff_jax.tgz"
    git ls-files -z | tar --null -czf "$tarball" -T -
    gcloud_tpu scp "$tarball" "$TPU_NAME:didiff_jax.tgz" "${common[@]}" --worker=all
    on_all_workers "mkdir -p $(printf '%q' "$REMOTE_DIR") && tar -xzf didiff_jax.tgz -C $(printf '%q' "$REMOTE_DIR") && cd $(printf '%q' "$REMOTE_DIR") && bash launch/setup_env.sh tpu"
    ;;
  run)
    if [[ $# -eq 0 ]]; then
      echo "tpu_vm.sh: run needs the didiff_jax.main arguments after -- (see --help)" >&2
      exit 2
    fi
    if [[ " $* " != *" --workdir gs://"* && " $* " != *" --workdir=gs://"* ]]; then
      echo "tpu_vm.sh: warning: --workdir is not a gs:// path; on a slice of several hosts" \
        "every host must reach the checkpoints" >&2
    fi
    args="$(printf ' %q' "$@")"
    on_all_workers "cd $(printf '%q' "$REMOTE_DIR") && .venv/bin/python -m didiff_jax.main --distributed$args"
    ;;
  ssh)
    if [[ $# -eq 0 ]]; then
      echo "tpu_vm.sh: ssh needs a command after -- (see --help)" >&2
      exit 2
    fi
    on_all_workers "$*"
    ;;
  delete)
    gcloud_tpu delete "$TPU_NAME" "${common[@]}" --quiet
    ;;
esac
