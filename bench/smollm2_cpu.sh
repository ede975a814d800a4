#!/usr/bin/env bash
# SmolLM2-135M-Instruct (the embedded preset, real weights), fp32, this CPU: records written by `ingot bench`.
#
#   bench/smollm2_cpu.sh OUT_DIR
#
# Writes OUT_DIR/latency-b1-128-128.json (transformers as the peer, random weights at the same shapes)
# and OUT_DIR/throughput-128-128-256.json. CPU figures move with the machine's load: say what else ran.
set -euo pipefail
out=$1
mkdir -p "$out"
engine=${INGOT_BENCH_ENGINE:-/tmp/ingot-engines/smollm2-cpu}
ingot() { python -m ingot.cli "$@"; }
ingot build smollm2 -o "$engine" --device cpu --max-seq-len 1024 --max-input-len 512 --max-batch-size 64
ingot bench latency "$engine" --device cpu --isl 128 --osl 128 --repeats 3 --peer transformers \
  --json "$out/latency-b1-128-128.json"
ingot bench throughput "$engine" --device cpu --isl 128 --osl 128 --num-requests 256 \
  --json "$out/throughput-128-128-256.json"
