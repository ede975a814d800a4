"""`ingot eval perplexity ENGINE --text FILE`: how well an engine predicts a text; and
`ingot eval lm-eval-tasks`: where ingot's lm-evaluation-harness task definitions are."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ingot.commands.common import engine_or_build


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate an engine: perplexity of a text; lm-eval task definitions")
    verbs = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    ppl = verbs.add_parser("perplexity", help="token-level perplexity of a text, with sliding windows",
                           description="Perplexity of a text (sliding windows, every token but the first scored "
                                       "once). --compare runs transformers on the same tokens and windows.")
    ppl.add_argument("engine", help="engine directory (or a checkpoint / preset, built into the cache first)")
    ppl.add_argument("--text", required=True, help="a UTF-8 text file")
    ppl.add_argument("--window", type=int, default=None,
                     help="tokens per window (default: min(1024, the engine's max_input_len))")
    ppl.add_argument("--stride", type=int, default=None, help="tokens between window starts (default: window / 2)")
    ppl.add_argument("--compare", metavar="CHECKPOINT", default=None,
                     help="also run transformers on this checkpoint (folder, .gguf or preset) in the engine's dtype")
    ppl.add_argument("--output", default="perplexity.json", help="where to write the JSON result")
    ppl.add_argument("--device", default=None)
    ppl.set_defaults(func=run_perplexity)
    tasks = verbs.add_parser("lm-eval-tasks", help="print the folder of ingot's lm-evaluation-harness tasks "
                                                   "(for lm_eval --include_path)")
    tasks.set_defaults(func=run_tasks_path)


def read_text(path: str) -> str:
    from ingot.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--text {path}: no such file")
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError(f"--text {path} is empty: give a text to score")
    return text


def run_perplexity(args: argparse.Namespace) -> int:
    from ingot.eval.perplexity import DEFAULT_WINDOW, engine_perplexity
    from ingot.llm import LLM

    text = read_text(args.text)
    llm = LLM(engine_or_build(args.engine, args.device), device=args.device)
    if llm.tokenizer is None:
        from ingot.errors import ConfigError

        raise ConfigError(f"engine {args.engine} has no tokenizer (built with --load-format dummy): it cannot read a "
                          "text; rebuild it with --tokenizer DIR_OR_FILE")
    token_ids = llm.tokenizer.encode(text)
    window = args.window or min(DEFAULT_WINDOW, llm.engine.spec.build.max_input_len)
    stride = args.stride or max(window // 2, 1)
    ours = engine_perplexity(llm, token_ids, window, stride)
    dtype = llm.engine.spec.dtype
    result = {"engine": str(args.engine), "text": str(args.text), "dtype": dtype, "ingot": ours.to_dict()}
    print(f"ingot        perplexity {ours.perplexity:.4f} over {ours.num_scored:,} tokens "
          f"({ours.num_windows} windows of {window}, stride {stride}, {dtype})")
    if args.compare:
        result["transformers"] = _compare(args.compare, dtype, token_ids, window, stride, ours.perplexity)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


def _compare(checkpoint: str, dtype: str, token_ids: list[int], window: int, stride: int, ours: float) -> dict:
    import transformers

    from ingot.eval.reference import load_transformers_model, transformers_perplexity

    theirs = transformers_perplexity(load_transformers_model(checkpoint, dtype), token_ids, window, stride)
    relative = ours / theirs.perplexity - 1
    print(f"transformers perplexity {theirs.perplexity:.4f} ({checkpoint}, {dtype}); "
          f"ingot / transformers - 1 = {relative:+.4%}")
    return {**theirs.to_dict(), "checkpoint": checkpoint, "version": transformers.__version__,
            "relative_difference": relative}


def run_tasks_path(args: argparse.Namespace) -> int:
    import ingot.eval.lm_eval_tasks as tasks

    sys.stdout.write(f"{Path(tasks.__file__).parent}\n")
    return 0
