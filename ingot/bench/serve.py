"""`ingot bench serve`: the online benchmark, against any OpenAI-compatible server.

    ingot bench serve --url http://127.0.0.1:8000 --model NAME [--dataset synthetic|FILE.jsonl]
                      [--num-prompts N] [--request-rate R | --max-concurrency C] [--isl 128 --osl 128]
                      [--json OUT]

Each request streams from /v1/completions. Per request, with t0 the moment it was sent:
    TTFT = first token chunk - t0       E2E = last chunk - t0        ITL = gaps between token chunks
    TPOT = (E2E - TTFT) / (output tokens - 1)
Output tokens come from the usage of the final chunk (stream_options.include_usage), or, from a
server that sends none, from the number of token chunks. A token chunk is one with a choice that
holds text (possibly empty: a token that decodes to nothing yet) or a finish reason, so a request
whose tokens all decode to no text still completes. Arrivals are Poisson at --request-rate
(inf: all at once), optionally capped at --max-concurrency requests in flight (a closed loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field

from ingot.bench.datasets import BenchRequest, load_jsonl, random_text, synthetic
from ingot.errors import ConfigError

PROBE_WORDS = 8  # short enough for any engine's max_input_len
METRICS = ("ttft", "tpot", "itl", "e2e")


def register(sub) -> None:
    p = sub.add_parser("serve", help="online benchmark of an OpenAI-compatible server: TTFT, TPOT, ITL, E2E")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (with or without /v1)")
    p.add_argument("--model", default=None, help="model name to send (default: the server's first model)")
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--dataset", default="synthetic", help="'synthetic' or a JSONL file of {prompt, max_tokens}")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--isl", type=int, default=128, help="synthetic: input length in (the server's) tokens")
    p.add_argument("--osl", type=int, default=128, help="output tokens per request (JSONL: when a line has none)")
    p.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson arrivals (default inf)")
    p.add_argument("--max-concurrency", type=int, default=None, help="at most this many requests in flight")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="do not send ignore_eos=true (for servers that refuse the extension; outputs may end early)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the record as JSON")
    p.add_argument("--engine", default=None, metavar="DIR",
                   help="the served engine's directory, when it is on this machine: the record then holds its "
                        "summary, this card's ceilings (measured before the run) and the compute-ceiling ratio")
    p.set_defaults(func=run)


@dataclass
class RequestResult:
    ok: bool = False
    error: str = ""
    prompt_tokens: int | None = None
    output_tokens: int = 0
    ttft: float | None = None
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    record = _start_record(args)
    summary = asyncio.run(_bench(args))
    record.update(summary)
    if args.engine and summary["completed"]:
        from ingot.bench.record import add_compute_ceiling

        add_compute_ceiling(record, _engine_spec(args), summary.pop("_lengths"))
    record.pop("_lengths", None)
    print(format_table(record))
    if args.json_out:
        from ingot.bench.record import write

        write(record, args.json_out)
    return 0 if summary["completed"] else 1


def _start_record(args: argparse.Namespace) -> dict:
    """The record's header; with --engine, the engine summary and the ceilings of the card it runs on."""
    from ingot.bench import record

    config = {k: v for k, v in vars(args).items() if k not in ("func", "api_key", "argv", "json_out")}
    config["request_rate"] = str(args.request_rate)
    if not args.engine:
        return {**record.header("unknown (the server's; pass --engine DIR on its machine)", getattr(args, "argv", None)),
                "benchmark": "serve", "config": config}
    from ingot.bench.ceilings import measure_ceilings

    spec = _engine_spec(args)
    device = "cuda" if spec.target.kind == "cuda" else "cpu"
    return {**record.header(record.device_name(device), getattr(args, "argv", None)), "benchmark": "serve",
            "config": config, "engine": record.engine_summary(spec, args.engine), "dtype": spec.dtype,
            "quant": spec.quant.method, **measure_ceilings(device, spec.dtype, fp8=spec.quant.method.startswith("fp8"))}


def _engine_spec(args: argparse.Namespace):
    from ingot.engine_format import read_spec

    return read_spec(args.engine)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("num_prompts", "isl", "osl"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.request_rate > 0:
        raise ConfigError(f"--request-rate must be > 0 (inf for all at once), got {args.request_rate}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


async def _bench(args: argparse.Namespace) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.max_concurrency or args.num_prompts, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=_base_url(args.url), headers=headers, limits=limits,
                                 timeout=httpx.Timeout(args.timeout, connect=30.0)) as client:
        model = args.model or await _first_model(client)
        requests = await _make_requests(client, model, args)
        started = time.perf_counter()
        results = await _drive(client, model, requests, args)
        duration = time.perf_counter() - started
    summary = summarize(results, duration)
    return {**summary, "model": model, "num_requests": args.num_prompts, "isl": args.isl, "osl": args.osl,
            "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
            "max_concurrency": args.max_concurrency,
            "_lengths": [(r.prompt_tokens or 0, r.output_tokens) for r in results if r.ok]}


async def _first_model(client) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def _make_requests(client, model: str, args) -> list[BenchRequest]:
    if args.dataset != "synthetic":
        return load_jsonl(args.dataset, args.num_prompts, args.osl)
    tokens_per_word = await calibrate(client, model, args.seed)
    num_words = max(1, round(args.isl / tokens_per_word))
    return synthetic(args.num_prompts, num_words, args.osl, args.seed)


async def calibrate(client, model: str, seed: int) -> float:
    """Tokens per synthetic word on this server's tokenizer, from the usage of one tiny request."""
    prompt = random_text(PROBE_WORDS, random.Random(seed + 1))
    response = await client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1})
    if response.status_code != 200:
        raise ConfigError(f"the probe request failed with HTTP {response.status_code}: {response.text[:300]}")
    prompt_tokens = (response.json().get("usage") or {}).get("prompt_tokens")
    if not prompt_tokens:
        print("ingot bench serve: the server reports no usage; assuming one token per word", file=sys.stderr)
        return 1.0
    return prompt_tokens / PROBE_WORDS


async def _drive(client, model: str, requests: list[BenchRequest], args) -> list[RequestResult]:
    """Send requests with Poisson gaps at --request-rate, at most --max-concurrency at once."""
    rng = random.Random(args.seed)
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

    async def send(request: BenchRequest) -> RequestResult:
        body = {"model": model, "prompt": request.prompt, "max_tokens": request.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": args.temperature}
        if args.ignore_eos:
            body["ignore_eos"] = True
        if limit is None:
            return await stream_one(client, body)
        async with limit:
            return await stream_one(client, body)

    tasks = []
    for i, request in enumerate(requests):
        tasks.append(asyncio.create_task(send(request)))
        if math.isfinite(args.request_rate) and i + 1 < len(requests):
            await asyncio.sleep(rng.expovariate(args.request_rate))
    return list(await asyncio.gather(*tasks))


async def stream_one(client, body: dict) -> RequestResult:
    """One streamed completion, timed chunk by chunk."""
    result = RequestResult()
    start = last = time.perf_counter()
    chunks = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
                return result
            async for line in response.aiter_lines():
                data = line[5:].strip() if line.startswith("data:") else ""
                if not data or data == "[DONE]":
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message", chunk["error"]))
                    return result
                now = time.perf_counter()
                # a chunk with choices carries tokens even when they decode to no text (a special
                # token, half of a UTF-8 character): it counts, as in vLLM's benchmark client
                if any("text" in c or c.get("finish_reason") for c in chunk.get("choices") or []):
                    chunks += 1
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    result.output_tokens = chunk["usage"].get("completion_tokens") or 0
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, not the end of the run
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e = last - start
    result.output_tokens = result.output_tokens or chunks
    result.ok = result.ttft is not None
    result.error = "" if result.ok else "no token came back"
    return result


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _stats_ms(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    ms = [v * 1000 for v in values]
    return {"mean": sum(ms) / len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99)}


def summarize(results: list[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    prompt_tokens = sum(r.prompt_tokens or 0 for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    values = {"ttft": [r.ttft for r in done], "tpot": [r.tpot for r in done if r.tpot is not None],
              "itl": [gap for r in done for gap in r.itl], "e2e": [r.e2e for r in done]}
    return {
        "completed": len(done), "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:10],
        "duration_s": duration,
        "total_input_tokens": prompt_tokens, "total_output_tokens": output_tokens,
        "mean_input_tokens": prompt_tokens / len(done) if done else None,
        "mean_output_tokens": output_tokens / len(done) if done else None,
        "request_throughput": len(done) / duration, "output_tok_s": output_tokens / duration,
        "total_token_throughput": (prompt_tokens + output_tokens) / duration,
        **{f"{name}_ms": _stats_ms(values[name]) for name in METRICS},
    }


def format_table(s: dict) -> str:
    def num(value, digits=2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [f"{' Serving benchmark ':=^60}",
             f"{'Model:':<40}{s['model']}",
             f"{'Successful requests:':<40}{s['completed']}",
             f"{'Failed requests:':<40}{s['failed']}",
             f"{'Benchmark duration (s):':<40}{num(s['duration_s'])}",
             f"{'Total input tokens:':<40}{s['total_input_tokens']}",
             f"{'Total output tokens:':<40}{s['total_output_tokens']}",
             f"{'Request throughput (req/s):':<40}{num(s['request_throughput'])}",
             f"{'Output token throughput (tok/s):':<40}{num(s['output_tok_s'])}",
             f"{'Total token throughput (tok/s):':<40}{num(s['total_token_throughput'])}"]
    titles = {"ttft": "Time to first token", "tpot": "Time per output token (excl. 1st)",
              "itl": "Inter-token latency", "e2e": "End-to-end latency"}
    for name in METRICS:
        lines.append(f"{' ' + titles[name] + ' ':-^60}")
        for stat, label in (("mean", "Mean"), ("p50", "Median"), ("p90", "P90"), ("p99", "P99")):
            lines.append(f"{f'{label} {name.upper()} (ms):':<40}{num(s[f'{name}_ms'][stat])}")
    for error in s["errors"]:
        lines.append(f"error: {error}")
    return "\n".join(lines + ["=" * 60])
