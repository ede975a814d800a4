"""Issue 6, part 4: the planner's decode and throughput figures against bench/results/*.json.

Every result that records decode_tok_s or output_tok_s for a configuration the planner can
describe is compared; the error table is printed (also on a pass); each comparison must be
within bench_check.TOLERANCE (50% relative error). With no such results the test still runs
and says so. The machinery itself is checked on synthetic records below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingot.plan.bench_check import TOLERANCE, compare_results, format_table
from ingot.plan.planner import make_plan

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
# Where a record's model path (e.g. configs/llama-3.1-8b.json) may live: the repo, its shared/
# (in a session) or the shared/ copy beside the clone (in CI).
SEARCH_DIRS = (REPO, REPO / "shared", REPO.parent / "shared")


def test_planner_agrees_with_recorded_measurements(capsys):
    comparisons, skipped = compare_results(RESULTS, SEARCH_DIRS)
    table = format_table(comparisons, skipped)
    with capsys.disabled():
        print(f"\n{table}\n  ({len(comparisons)} comparisons from {RESULTS}, "
              f"{'present' if RESULTS.is_dir() else 'absent'})")
    bad = [c for c in comparisons if not c.ok]
    assert not bad, f"{len(bad)} planner figures outside +-{TOLERANCE:.0%}:\n{table}"


TINY_HF = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 1024,
           "intermediate_size": 2816, "num_attention_heads": 16, "num_hidden_layers": 8,
           "num_key_value_heads": 4, "torch_dtype": "bfloat16"}


def _record(tmp_path, name, **fields):
    record = {"device": "NVIDIA H100 80GB HBM3", "commit": "abc", "command": "ingot bench throughput",
              "date": "2026-11-01", "model": "llama-3.1-8b", "dtype": "bfloat16", "quant": None,
              "isl": 128, "osl": 128, "batch_size": 64, **fields}
    (tmp_path / name).write_text(json.dumps(record))


def test_comparison_machinery(tmp_path):
    predicted = make_plan("llama-3.1-8b", "h100-sxm", "bf16", isl=128, osl=128, concurrency=64, num_gpus=1)
    perf = predicted["layouts"][0]["perf"]
    _record(tmp_path, "close.json", decode_tok_s=perf["decode_tok_s"] * 1.1, output_tok_s=perf["output_tok_s"] * 0.9)
    _record(tmp_path, "far.json", decode_tok_s=perf["decode_tok_s"] / 3)
    _record(tmp_path, "cpu.json", device="cpu", decode_tok_s=12.0)
    _record(tmp_path, "latency.json", ttft_ms_p50=20.0)
    _record(tmp_path, "fp8-tp2.json", quant="fp8", tp=2, model="llama-3.1-70b", output_tok_s=1000.0)
    _record(tmp_path, "by-path.json", model="configs/tiny.json", decode_tok_s=100.0)
    _record(tmp_path, "unknown-model.json", model="configs/absent.json", decode_tok_s=100.0)
    (tmp_path / "broken.json").write_text("{")
    shared = tmp_path / "shared"  # a record names its model as BENCHMARKS.md does: configs/NAME.json
    (shared / "configs").mkdir(parents=True)
    (shared / "configs" / "tiny.json").write_text(json.dumps(TINY_HF))
    comparisons, skipped = compare_results(tmp_path, (shared,))
    by = {(c.file, c.figure): c for c in comparisons}
    assert by["close.json", "decode_tok_s"].ok and by["close.json", "output_tok_s"].ok
    assert by["close.json", "decode_tok_s"].rel_error == pytest.approx(1 / 1.1 - 1, abs=1e-3)
    assert not by["far.json", "decode_tok_s"].ok
    assert by["fp8-tp2.json", "output_tok_s"].layout == "TP2 PP1"
    assert by["fp8-tp2.json", "output_tok_s"].precision == "fp8"
    assert by["by-path.json", "decode_tok_s"].model == "tiny"
    reasons = dict(skipped)
    assert "unknown model 'configs/absent.json'" in reasons["unknown-model.json"]
    assert "not in the GPU table" in reasons["cpu.json"]
    assert "no decode_tok_s or output_tok_s" in reasons["latency.json"]
    assert "broken.json" in reasons
    table = format_table(comparisons, skipped)
    assert "out of tolerance" in table and "skipped cpu.json" in table


def test_no_results_says_so(tmp_path):
    comparisons, skipped = compare_results(tmp_path / "missing")
    assert comparisons == [] and skipped == []
    assert "nothing to compare yet" in format_table(comparisons, skipped)
