"""Speculative decoding on real weights (CPU, fp32, batch 1, greedy): decode tok/s with and without
drafts, acceptance and mean accepted length, per kind of prompt.

    python bench/speculative_cpu.py --out bench/results [--osl 96] [--max-draft-len 4]

Two setups, each one engine whose requests opt out of speculation (SamplingParams(speculative=False))
for the baseline, so both runs share weights, envelope and threads:
    ngram          SmolLM2-135M-Instruct, prompt lookup
    draft_target   Qwen2.5-Coder-1.5B-Instruct drafted by Qwen2.5-Coder-0.5B-Instruct (same tokenizer)
Prompts (chat template): code edits, whose answers repeat the prompt's code (where prompt lookup
shines), and open prose, where it has little to find. Outputs with and without drafts must be
equal (recorded). Writes DATE-cpu-speculative-MODE.json per setup.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import record_header, write_record

CODE = '''def moving_average(values, window):
    result = []
    for i in range(len(values) - window + 1):
        total = 0
        for j in range(window):
            total += values[i + j]
        result.append(total / window)
    return result
'''
PROMPTS = {
    "code_edit": [f"Add type hints to this Python function and return the whole function:\n\n{CODE}",
                  f"Rename the variable `result` to `averages` in this function; show all of it:\n\n{CODE}"],
    "prose": ["Write a short paragraph about why the sea is salty.",
              "Describe a walk through a city at night in a few sentences."],
}


def decode(llm, prompt_ids: list[int], osl: int, speculative: bool) -> tuple[list[int], float]:
    from ingot import SamplingParams

    params = SamplingParams(max_tokens=osl, temperature=0.0, speculative=speculative)
    first = None
    for output in llm.stream(prompt_ids, params):
        first = first or time.perf_counter()
    tokens = output.outputs[0].token_ids
    return list(tokens), (len(tokens) - 1) / (time.perf_counter() - first)


def measure(llm, osl: int) -> dict:
    results = {}
    for kind, asks in PROMPTS.items():
        runs = []
        for ask in asks:
            prompt_ids = llm.tokenizer.encode_chat([{"role": "user", "content": ask}])
            plain_tokens, plain_tok_s = decode(llm, prompt_ids, osl, speculative=False)
            before = llm.engine.stats
            drafted_tokens, drafted_tok_s = decode(llm, prompt_ids, osl, speculative=True)
            after = llm.engine.stats
            drafts = after.draft_tokens_total - before.draft_tokens_total
            accepted = after.accepted_draft_tokens_total - before.accepted_draft_tokens_total
            steps = after.verify_steps_total - before.verify_steps_total
            runs.append({"prompt_tokens": len(prompt_ids), "plain_decode_tok_s": plain_tok_s,
                         "speculative_decode_tok_s": drafted_tok_s, "speedup": drafted_tok_s / plain_tok_s,
                         "acceptance_rate": accepted / max(drafts, 1),
                         "mean_accepted_length": 1 + accepted / max(steps, 1),
                         "output_equals_plain": drafted_tokens == plain_tokens})
            print(kind, runs[-1], flush=True)
        results[kind] = {"mean_speedup": sum(r["speedup"] for r in runs) / len(runs), "runs": runs}
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--osl", type=int, default=96)
    parser.add_argument("--max-draft-len", type=int, default=4)
    parser.add_argument("--setups", nargs="+", default=["ngram", "draft_target"])
    args = parser.parse_args()
    header = record_header()  # once, before anything runs: the commit of the code measured
    from ingot import LLM
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, SpeculativeConfig

    setups = {"ngram": ("smollm2", None), "draft_target": ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")}
    envelope = BuildConfig(dtype="fp32", max_batch_size=4, max_input_len=512, max_seq_len=1024, max_num_tokens=512)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.setups:
            target, draft = setups[mode]
            target_dir, draft_dir = Path(tmp) / f"{mode}-target", Path(tmp) / f"{mode}-draft"
            build_engine(target, target_dir, envelope, device="cpu",
                         speculative=SpeculativeConfig(mode, max_draft_len=args.max_draft_len))
            if draft is not None:
                build_engine(draft, draft_dir, envelope, device="cpu")
            llm = LLM(target_dir, device="cpu", draft_engine=draft_dir if draft else None)
            record = {**header, "model": target, "draft_model": draft, "dtype": "fp32", "batch_size": 1,
                      "osl": args.osl, "speculative": mode, "max_draft_len": args.max_draft_len,
                      "results": measure(llm, args.osl)}
            llm.engine.shutdown()
            del llm
            write_record(args.out / f"{header['date'][:10]}-cpu-speculative-{mode}.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
