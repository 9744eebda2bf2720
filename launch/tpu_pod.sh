#!/usr/bin/env bash
# A TPU pod slice (an existing TPU VM with several workers): copy this checkout to every
# worker, install it, then run the same `vlx train` on all workers at once.
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- --config configs/siglip_b16.py --workdir gs://bucket/runs/s16
#
# jax.distributed.initialize() detects the slice's workers by itself. The workdir should be a
# bucket (gs://...) or another path every worker sees. PROJECT defaults to gcloud's configured
# project.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE -- VLX_TRAIN_ARGS..." >&2
  exit 2
fi
tpu=$1
zone=$2
shift 2
[[ "${1:-}" == "--" ]] && shift
project_args=()
[[ -n "${PROJECT:-}" ]] && project_args=(--project "$PROJECT")

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${project_args[@]}" --worker=all \
    --command "$1"
}

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
archive=$tmp/vlx.tar.gz
# The working tree as git sees it: tracked and new files, not ignored ones (a .venv/ of several
# GB, runs/, caches); without git, everything but those.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$root" ls-files -z --cached --others --exclude-standard |
    tar -C "$root" --null --ignore-failed-read -T - -czf "$archive"
else
  tar -C "$root" --exclude=.git --exclude=.venv --exclude=runs --exclude=__pycache__ \
    -czf "$archive" .
fi
gcloud compute tpus tpu-vm scp "$archive" "$tpu:~/vlx.tar.gz" --zone "$zone" \
  "${project_args[@]}" --worker=all
ssh_all 'mkdir -p ~/vlx && tar -C ~/vlx -xzf ~/vlx.tar.gz &&
  python3 -m venv ~/vlx-venv && ~/vlx-venv/bin/pip install -q -U pip &&
  ~/vlx-venv/bin/pip install -q "jax[tpu]" -e ~/vlx'

# Overlap collectives with compute on TPU (libtpu reads LIBTPU_INIT_ARGS, not XLA_FLAGS).
libtpu_args="--xla_tpu_enable_async_collective_fusion=true"
libtpu_args+=" --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true"
libtpu_args+=" --xla_tpu_enable_async_collective_fusion_multiple_steps=true"
libtpu_args+=" --xla_tpu_overlap_compute_collective_tc=true"
libtpu_args+=" --xla_enable_async_all_gather=true"

args=$(printf '%q ' "$@")
ssh_all "cd ~/vlx && LIBTPU_INIT_ARGS='$libtpu_args' ~/vlx-venv/bin/vlx train $args"
