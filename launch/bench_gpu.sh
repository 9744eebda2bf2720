#!/usr/bin/env bash
# The GPU rows of the README's performance table: vlx's train step against open_clip's on the
# same GPU, CLIP ViT-B/16 in bfloat16 (vlx: bf16 compute, f32 params; open_clip: amp_bf16).
#
#   launch/bench_gpu.sh [OUT_DIR]          # one JSON line per run, also in OUT_DIR/bench.jsonl
#
# Environment: BATCHES (default "256 512 768"), VLX_VARIANTS (default "unrolled"; also "scan",
# "xla", "dots"), OPEN_CLIP_VARIANTS (default "eager compile"), CONFIG, RUN_TIMEOUT (seconds
# per run). Each run is its own process with its own time limit, so one that runs out of
# memory is recorded as failed and the rest still run.
set -uo pipefail

out=${1:-bench-gpu}
mkdir -p "$out"
log="$out/bench.jsonl"
batches=${BATCHES-"256 512 768"}
vlx_variants=${VLX_VARIANTS-"unrolled"}
open_clip_variants=${OPEN_CLIP_VARIANTS-"eager compile"}
limit=${RUN_TIMEOUT:-300}
config=${CONFIG:-configs/clip_vit_b16.py}
python=${PYTHON:-python3}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

record() {  # NAME COMMAND...: runs COMMAND, appends its JSON line (or a failure) to the log
  local name=$1
  shift
  local line
  line=$(timeout "$limit" "$@" 2>"$out/$name.err" | tail -n 1)
  if [[ $line == \{* ]]; then
    echo "{\"run\": \"$name\", \"result\": $line}" | tee -a "$log"
  else
    echo "{\"run\": \"$name\", \"failed\": \"$(tail -n 1 "$out/$name.err" | tr -d '"\\')\"}" \
      | tee -a "$log"
  fi
}

for batch in $batches; do
  for variant in $vlx_variants; do
    # model.attention stays `auto`: cuDNN flash attention on A100/H100-class GPUs.
    args=(--config.batch_size="$batch" --config.model.dtype=bfloat16 --config.model.scan=false)
    case $variant in
      unrolled) ;;
      scan) args+=(--config.model.scan=true) ;;
      xla) args+=(--config.model.attention=xla) ;;
      dots) args+=(--config.model.remat=dots) ;;
      *) echo "unknown vlx variant $variant" >&2 && exit 2 ;;
    esac
    record "vlx-$variant-$batch" "$python" -m vlx.cli bench --config "$config" "${args[@]}"
  done
  for variant in $open_clip_variants; do
    args=(--model ViT-B-16 --batch-size "$batch" --device cuda --precision amp_bf16 --steps 10)
    case $variant in
      eager) ;;
      compile) args+=(--compile --warmup 3) ;;
      *) echo "unknown open_clip variant $variant" >&2 && exit 2 ;;
    esac
    record "open_clip-$variant-$batch" "$python" -m vlx.cli bench open_clip "${args[@]}"
  done
done
