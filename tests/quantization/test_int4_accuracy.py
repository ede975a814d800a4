"""INT4 on real weights: SmolLM2-135M-Instruct at group size 128, calibrated on the first part of
Hamlet and scored on a later part (never the same tokens): AWQ and GPTQ each keep the perplexity
closer to the unquantized model's than round-to-nearest does. Prints the table."""

from __future__ import annotations

import pytest

from ingot.builder.build import build_engine
from ingot.config import BuildConfig, QuantConfig
from ingot.eval.perplexity import engine_perplexity
from ingot.llm import LLM
from tests.helpers_data import hamlet_path

pytestmark = pytest.mark.slow
BUILD = BuildConfig(dtype="fp32", max_seq_len=512, max_input_len=512, max_batch_size=16)


def test_awq_and_gptq_beat_round_to_nearest_on_smollm2(smollm2_engine, tmp_path):
    text = hamlet_path().read_text(encoding="utf-8")
    calib = tmp_path / "calib.md"
    calib.write_text(text[:60_000], encoding="utf-8")
    held_out = text[150_000:156_000]
    table = {"none": _perplexity(smollm2_engine, held_out)}
    for method in ("int4_rtn", "int4_awq", "int4_gptq"):
        params = {"group_size": 128, "calib_data": str(calib), "calib_size": 8, "calib_seq_len": 256}
        engine_dir = tmp_path / method
        build_engine("smollm2", engine_dir, BUILD, device="cpu",
                     quant=QuantConfig(method, params if method != "int4_rtn" else {"group_size": 128}))
        table[method] = _perplexity(engine_dir, held_out)
    print("\nSmolLM2-135M-Instruct, Hamlet (held out), window 512 stride 256, fp32 activations")
    for method, ppl in table.items():
        print(f"  {method:<10} {ppl:8.3f}  {ppl / table['none'] - 1:+7.2%}")
    assert table["int4_awq"] < table["int4_rtn"] and table["int4_gptq"] < table["int4_rtn"], table
    assert table["none"] < min(table[m] for m in ("int4_rtn", "int4_awq", "int4_gptq")), table


def _perplexity(engine_dir, text: str) -> float:
    llm = LLM(engine_dir, device="cpu")
    return engine_perplexity(llm, llm.tokenizer.encode(text), 512, 256, use_progress=False).perplexity
