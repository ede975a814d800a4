"""xgrammar vs llguidance, measured on the host: which grammar engine does ingot use?

    pip install llguidance  # the loser is no dependency of ingot; only this comparison needs it
    python bench/grammar_engines_cpu.py [--tokenizer smollm2] [--tokenizer qwen2.5-coder-0.5b] [--out bench/results]

For each tokenizer (a preset name or an engine directory holding tokenizer.json) and each of the
twenty schemas of tests/helpers_schemas.py, both engines are given the same work:

  compile     schema -> a grammar ready to mask (xgrammar: compile_json_schema, cache off;
              llguidance: grammar_from_json_schema + LLMatcher; llguidance builds its lexer
              lazily, so the first mask is timed too and reported as first_mask)
  mask, b=1   per token of the schema's instance (compact JSON, tokenized by the model's
              tokenizer, then EOS): fill one row of the packed bitmask, accept the token
  mask, b=64  64 matchers (the twenty schemas in turn, each at its own token), one batched
              fill of the (64, ceil(vocab/32)) bitmask per step with each library's parallel
              filler (and, as `serial`, the same rows filled one by one on the calling thread),
              then each matcher accepts its token

Both use compact separators and no free whitespace, as ingot asks of them. The tokenizer is
loaded once per library (not timed: done once per engine). Numbers are medians over schemas
(compile) or over steps (masks); the record keeps every schema's numbers.
Writes bench/results/DATE-cpu-grammar-engines.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import statistics
import sys
import time
from pathlib import Path

from benchlib import record_header, write_record

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.helpers_schemas import SCHEMAS  # noqa: E402

BATCH = 64


def tokenizer_dir(name: str) -> Path:
    if (Path(name) / "tokenizer.json").is_file():
        return Path(name)
    from ingot.config import BuildConfig
    from ingot.llm import ensure_engine

    return ensure_engine(name, BuildConfig(), "cpu")


def instance_tokens(tokenizer, instance) -> list[int]:
    return tokenizer.encode(json.dumps(instance, separators=(",", ":")), add_special_tokens=False)


class XGrammar:
    name = "xgrammar"

    def __init__(self, directory: Path, vocab_size: int, eos: list[int]) -> None:
        import tokenizers
        import xgrammar as xgr

        self.xgr = xgr
        backend = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        vocab = backend.get_vocab(with_added_tokens=True)
        encoded = [""] * vocab_size
        for token, i in vocab.items():
            if i < vocab_size:
                encoded[i] = token
        meta = xgr.TokenizerInfo._detect_metadata_from_hf(backend.to_str())
        self.info = xgr.TokenizerInfo(encoded, meta["vocab_type"], vocab_size=vocab_size, stop_token_ids=eos,
                                      add_prefix_space=meta["add_prefix_space"])
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher(max_threads=2)

    def compile(self, schema: dict):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matcher, bitmask, row: int) -> None:
        matcher.fill_next_token_bitmask(bitmask, row)

    def fill_batch(self, matchers, bitmask) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, matcher, token: int) -> bool:
        return matcher.accept_token(token)


class LLGuidance:
    name = "llguidance"

    def __init__(self, directory: Path, vocab_size: int, eos: list[int]) -> None:
        import llguidance
        import llguidance.torch

        self.ll, self.llt = llguidance, llguidance.torch
        text = (directory / "tokenizer.json").read_text()
        self.tokenizer = llguidance.LLTokenizer(text, n_vocab=vocab_size, eos_token=eos)
        self.executor = llguidance.LLExecutor(2)

    def compile(self, schema: dict):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False})
        matcher = self.ll.LLMatcher(self.tokenizer, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return grammar

    def matcher(self, compiled):
        return self.ll.LLMatcher(self.tokenizer, compiled)

    def fill(self, matcher, bitmask, row: int) -> None:
        self.llt.fill_next_token_bitmask(matcher, bitmask, row)

    def fill_batch(self, matchers, bitmask) -> None:
        self.llt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def accept(self, matcher, token: int) -> bool:
        return matcher.consume_token(token)


def allowed(bitmask, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)


def measure(engine, traces: list[list[int]]) -> dict:
    import torch

    vocab_words = (engine_vocab := engine.vocab_size) + 31 >> 5
    per_schema, compiled = [], []
    for (name, schema, _), trace in zip(SCHEMAS, traces):
        start = time.perf_counter()
        grammar = engine.compile(schema)
        compile_s = time.perf_counter() - start
        bitmask = torch.zeros((1, vocab_words), dtype=torch.int32)
        matcher = engine.matcher(grammar)
        start = time.perf_counter()
        engine.fill(matcher, bitmask, 0)
        first_mask_s = time.perf_counter() - start
        matcher = engine.matcher(grammar)
        times, ok = [], True
        for token in trace:
            start = time.perf_counter()
            engine.fill(matcher, bitmask, 0)
            times.append(time.perf_counter() - start)
            ok = ok and allowed(bitmask, 0, token) and engine.accept(matcher, token)
        compiled.append(grammar)
        per_schema.append({"schema": name, "compile_ms": compile_s * 1e3, "first_mask_ms": first_mask_s * 1e3,
                           "tokens": len(trace), "mask_b1_median_us": statistics.median(times) * 1e6,
                           "instance_accepted": ok})
    batch_times, serial_times = batch_steps(engine, compiled, traces, vocab_words)
    del engine_vocab
    return {
        "compile_ms_median": statistics.median(s["compile_ms"] for s in per_schema),
        "compile_ms_max": max(s["compile_ms"] for s in per_schema),
        "first_mask_ms_median": statistics.median(s["first_mask_ms"] for s in per_schema),
        "mask_b1_us_median": statistics.median(s["mask_b1_median_us"] for s in per_schema),
        "mask_b64_step_us_median": statistics.median(batch_times) * 1e6,
        "mask_b64_step_us_max": max(batch_times) * 1e6,
        "mask_b64_serial_step_us_median": statistics.median(serial_times) * 1e6,
        "all_instances_accepted": all(s["instance_accepted"] for s in per_schema),
        "per_schema": per_schema,
    }


def batch_steps(engine, compiled: list, traces: list[list[int]], vocab_words: int,
                ) -> tuple[list[float], list[float]]:
    """Seconds per step of one batched fill of 64 rows, and of the same 64 rows filled one by one
    on the calling thread; each row advances along its own trace and starts over (a fresh matcher)
    when it reaches the end."""
    import torch

    rows = [i % len(compiled) for i in range(BATCH)]
    matchers = [engine.matcher(compiled[k]) for k in rows]
    positions = [i % len(traces[k]) for i, k in enumerate(rows)]
    for matcher, k, pos in zip(matchers, rows, positions):  # stagger: rows at different points
        for token in traces[k][:pos]:
            engine.accept(matcher, token)
    bitmask = torch.zeros((BATCH, vocab_words), dtype=torch.int32)
    times, serial = [], []
    for _ in range(40):
        start = time.perf_counter()
        engine.fill_batch(matchers, bitmask)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i, matcher in enumerate(matchers):
            engine.fill(matcher, bitmask, i)
        serial.append(time.perf_counter() - start)
        for i, k in enumerate(rows):
            engine.accept(matchers[i], traces[k][positions[i]])
            positions[i] += 1
            if positions[i] == len(traces[k]):  # accepted EOS: a finished matcher has no next mask
                matchers[i], positions[i] = engine.matcher(compiled[k]), 0
    return times, serial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", action="append", help="preset name or engine directory (repeatable)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    import torch

    from ingot.engine_format import read_spec
    from ingot.tokenizer import Tokenizer

    torch.set_num_threads(2)
    record = {**record_header(), "benchmark": "grammar engines (JSON schema masks)",
              "schemas": len(SCHEMAS), "batch": BATCH, "library_threads": 2, "results": {}}
    record["versions"] = {lib: importlib.metadata.version(lib) for lib in ("xgrammar", "llguidance")}
    for name in args.tokenizer or ["smollm2"]:
        directory = tokenizer_dir(name)
        vocab_size = read_spec(directory).model.vocab_size
        tokenizer = Tokenizer.from_dir(directory)
        eos = list(tokenizer.eos_token_ids)
        traces = [instance_tokens(tokenizer, instance) + eos[:1] for _, _, instance in SCHEMAS]
        entry = {"directory": str(directory), "vocab_size": vocab_size}
        for cls in (XGrammar, LLGuidance):
            start = time.perf_counter()
            engine = cls(directory, vocab_size, eos)
            engine.vocab_size = vocab_size
            load_s = time.perf_counter() - start
            entry[cls.name] = {"tokenizer_load_ms": load_s * 1e3, **measure(engine, traces)}
        record["results"][name] = entry
    day = datetime.date.today().isoformat()
    write_record(Path(args.out) / f"{day}-cpu-grammar-engines.json", record)


if __name__ == "__main__":
    main()
