#!/usr/bin/env bash
# N processes of `vlx train` on this machine, over loopback, each with D simulated CPU devices:
# the multi-host code path (jax.distributed, gloo collectives, per-process data) on one box.
#
#   launch/local.sh [-n PROCESSES] [-d DEVICES] [-p PORT] -- --config configs/demo.py \
#       --workdir runs/local [--config.KEY=VALUE ...]
#
# Process 0 prints to the terminal; the others log to $LOG_DIR/process_<i>.log (default: a
# fresh temporary directory). Ctrl-C stops all of them (each saves a checkpoint first).
# Anything already in XLA_FLAGS is kept.
set -euo pipefail

processes=2
devices=4
port=12355
while getopts "n:d:p:" opt; do
  case "$opt" in
    n) processes=$OPTARG ;;
    d) devices=$OPTARG ;;
    p) port=$OPTARG ;;
    *) echo "usage: $0 [-n PROCESSES] [-d DEVICES] [-p PORT] -- VLX_TRAIN_ARGS..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift

log_dir=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$log_dir"
echo "local.sh: $processes processes x $devices CPU devices; logs of processes 1.. in $log_dir" >&2

export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
export JAX_PLATFORMS=cpu
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < processes; i++)); do
  cmd=(vlx train "$@" --coordinator "127.0.0.1:$port" --num_processes "$processes" --process_id "$i")
  if ((i == 0)); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
