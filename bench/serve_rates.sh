#!/usr/bin/env bash
# Online serving at several request rates up to saturation: one `ingot serve ENGINE`, then one
# `ingot bench serve --engine ENGINE --json` record per rate (TTFT, TPOT, ITL, E2E percentiles, output
# tok/s, the card's ceilings and the compute-ceiling ratio); `ingot bench report OUT_DIR` draws them.
#
#   bench/serve_rates.sh ENGINE OUT_DIR NUM_PROMPTS ISL OSL RATE [RATE ...]      (a RATE of inf: all at once)
#
# e.g. on the H200: bench/serve_rates.sh /tmp/ingot-engines/llama-3.1-8b-none OUT 1500 512 128 5 10 20 40 inf
# The engine needs a tokenizer (a dummy engine: build it with --tokenizer). Set INGOT_COMMIT where the tree
# has no git state.
set -euo pipefail
engine=$1 out=$2 num=$3 isl=$4 osl=$5; shift 5
mkdir -p "$out"
port=${INGOT_BENCH_PORT:-8123}
python -m ingot.cli serve "$engine" --port "$port" --skip-verify --log-level warning > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1800); do
  python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { echo "ingot serve exited:"; tail -20 "$out/server.log"; exit 1; }
  sleep 1
done
for rate in "$@"; do
  python -m ingot.cli bench serve --url "http://127.0.0.1:$port" --engine "$engine" --num-prompts "$num" \
    --isl "$isl" --osl "$osl" --request-rate "$rate" --json "$out/serve-$isl-$osl-rate-$rate.json"
done
