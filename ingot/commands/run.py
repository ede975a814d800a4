"""`ingot run ENGINE "prompt"` / `--chat "question"`: generate, streaming to the terminal."""

from __future__ import annotations

import argparse
import sys

from ingot.commands.common import engine_or_build


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="generate from an engine (no server), streaming to the terminal")
    p.add_argument("engine", help="engine directory (or a checkpoint / preset, built into the cache first)")
    p.add_argument("prompt", nargs="?", help="plain prompt, continued as text")
    p.add_argument("--chat", metavar="MESSAGE", help="ask as a chat user message, with the model's chat template")
    p.add_argument("--system", help="system message for --chat")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--device", default=None)
    p.add_argument("--draft-engine", default=None, metavar="DIR",
                   help="the draft model's engine, for a target built with --speculative draft_target")
    p.add_argument("--skip-verify", action="store_true",
                   help="load the weights without checking their checksums (trusted engines, faster start)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ingot.errors import RequestError
    from ingot.llm import LLM
    from ingot.sampling_params import SamplingParams

    if args.skip_verify:
        from ingot.envs import set_skip_verify

        set_skip_verify()
    if (args.prompt is None) == (args.chat is None):
        raise RequestError("give either a PROMPT or --chat MESSAGE (exactly one)")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                            seed=args.seed, stop=args.stop)
    llm = LLM(engine_or_build(args.engine, args.device), device=args.device, draft_engine=args.draft_engine)
    prompt = args.prompt
    if args.chat is not None:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        prompt = llm.tokenizer.encode_chat(messages + [{"role": "user", "content": args.chat}])
    for output in llm.stream(prompt, params):
        sys.stdout.write(output.outputs[0].delta_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
