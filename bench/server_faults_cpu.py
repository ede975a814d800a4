"""The server under a hostile but fair client (issue 21's measurements), CPU, a real `ingot serve`.

    python bench/server_faults_cpu.py --out bench/results [--engine smollm2] [--requests 5000]

Records: bad inputs tried and how they were answered (4xx / 500 / hang), the worst /health latency
while a 7 MB prompt is processed and while a 10 MB body is refused, the server's RSS growth per
1,000 requests over N mixed requests (after every KV block has been written once: see
touch_kv_pool), and the seconds from SIGTERM to exit with 20 open streams.
Writes DATE-cpu-server-faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from benchlib import record_header, write_record

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def start(engine: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INGOT_API_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "ingot.cli", "serve", engine, "--port", str(port),
                                "--served-model-name", "m", "--max-queue", "64", "--log-level", "warning"],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(log.read_text())


def bad_bodies() -> list[tuple[str, bytes]]:
    base = {"model": "m", "prompt": "hi hi hi hi", "max_tokens": 4}
    cases = [
        {**base, "repetition_penalty": 1e-300, "logprobs": 1}, {**base, "repetition_penalty": 1e-40},
        {**base, "temperature": -1}, {**base, "temperature": "hot"}, {**base, "top_p": 0}, {**base, "top_p": 2},
        {**base, "n": 0}, {**base, "n": 1000}, {**base, "max_tokens": -1}, {**base, "max_tokens": 10**9},
        {**base, "logprobs": 100}, {**base, "seed": 2**80}, {**base, "stop": [""]}, {**base, "stop": ["x"] * 100},
        {**base, "stop": ["y" * 10_000]}, {**base, "stop_token_ids": [10**9]}, {**base, "stop_token_ids": [-1]},
        {**base, "prompt": []}, {**base, "prompt": [[]]}, {**base, "prompt": [1, "a"]}, {**base, "prompt": [10**9]},
        {**base, "prompt": ["a"] * 500, "n": 128}, {**base, "logit_bias": {"1": 5}}, {**base, "suffix": "x"},
        {**base, "stream_options": {"include_usage": True}}, {**base, "model": "other"}, {"model": "m"},
        {**base, "best_of": 3}, {**base, "min_p": 5}, {**base, "top_k": -5}, {**base, "presence_penalty": 9},
    ]
    bodies = [("completions", json.dumps(c).encode()) for c in cases]
    bodies += [("completions", b'{"model": "m", "prompt": "hi", "temperature": NaN}'),
               ("completions", b'{"model": "m", "prompt": "hi", "top_p": Infinity}'),
               ("completions", b'{"prompt": "hi",'), ("completions", b"[1, 2]"), ("completions", b""),
               ("completions", b"\xff\xfe"), ("chat/completions", b'{"model": "m", "messages": []}'),
               ("chat/completions", b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}'),
               ("chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": 5}]}'),
               ("chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [1]}')]
    return bodies


def try_bad_inputs(url: str) -> dict:
    counts = {"tried": 0, "4xx": 0, "5xx": 0, "2xx": 0, "hangs": 0}
    for route, body in bad_bodies():
        counts["tried"] += 1
        try:
            status = httpx.post(f"{url}/v1/{route}", content=body, timeout=60,
                                headers={**AUTH, "content-type": "application/json"}).status_code
            counts[f"{status // 100}xx"] = counts.get(f"{status // 100}xx", 0) + 1
        except httpx.TimeoutException:
            counts["hangs"] += 1
    return counts


def health_during(url: str, body: dict) -> dict:
    answer = {}

    def big() -> None:
        started = time.monotonic()
        answer["status"] = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=300).status_code
        answer["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=big)
    worker.start()
    worst = 0.0
    while worker.is_alive():
        started = time.monotonic()
        httpx.get(f"{url}/health", timeout=60)
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.01)
    return {"status": answer["status"], "request_s": answer["seconds"], "worst_health_ms": worst * 1e3}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def touch_kv_pool(client: httpx.Client, rng: random.Random) -> int:
    """The KV pool is allocated uninitialised: its pages enter RSS as blocks are first written, which
    allocation order spreads over the whole pool. Distinct ~830-token prompts (no prefix reuse)
    until more blocks than the pool holds have been written, so later growth is the server's own."""
    metrics = client.get("/metrics").text
    blocks = int(float(next(line.split()[-1] for line in metrics.splitlines()
                            if line.startswith("ingot_kv_cache_blocks_total"))))
    requests = blocks * 16 // 800 * 12 // 10 + 2  # 16 tokens a block (the engine's default), 20% margin
    for i in range(requests):
        words = " ".join(f"w{rng.randrange(10**6)}" for _ in range(120))  # ~830 SmolLM2 tokens
        response = client.post("/v1/completions", json={"model": "m", "prompt": f"{i} {words}", "max_tokens": 1})
        assert response.status_code == 200, response.text
    return requests


def rss_growth(url: str, pid: int, count: int) -> dict:
    rng = random.Random(0)
    client = httpx.Client(base_url=url, headers=AUTH, timeout=120)
    pool_warmup = touch_kv_pool(client, rng)
    warm = 200
    samples = []
    for i in range(count + warm):
        if i == warm:
            samples.append((i, rss_bytes(pid)))
        kind = rng.random()
        if kind < 0.5:
            client.post("/v1/completions", json={"model": "m", "prompt": f"req {i}", "max_tokens": rng.randint(1, 8)})
        elif kind < 0.8:
            client.post("/v1/chat/completions", json={"model": "m", "max_tokens": rng.randint(1, 8),
                                                      "messages": [{"role": "user", "content": f"hello {i}"}]})
        elif kind < 0.9:
            with client.stream("POST", "/v1/completions", json={"model": "m", "prompt": "s", "max_tokens": 8,
                                                               "stream": True}) as response:
                for _ in response.iter_lines():
                    break  # leave mid-stream
        else:
            client.post("/v1/completions", json={"model": "m", "prompt": "x", "temperature": -1})
    samples.append((count + warm, rss_bytes(pid)))
    client.close()
    grown = samples[-1][1] - samples[0][1]
    return {"requests": count, "kv_pool_warmup_requests": pool_warmup, "after_warmup_requests": warm,
            "rss_start_bytes": samples[0][1],
            "rss_end_bytes": samples[-1][1], "rss_growth_bytes_per_1000": grown * 1000 / count}


def sigterm_with_streams(process: subprocess.Popen, url: str, streams: int = 20) -> dict:
    client = httpx.Client(base_url=url, headers=AUTH, timeout=120)
    open_streams = []
    for i in range(streams):
        response = client.send(client.build_request("POST", "/v1/completions", json={
            "model": "m", "prompt": f"long {i}", "max_tokens": 900, "stream": True, "ignore_eos": True}), stream=True)
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        open_streams.append((response, lines))
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    ended_properly = 0
    for _, lines in open_streams:
        rest = [line for line in lines if line.startswith("data:")]
        ended_properly += bool(rest) and rest[-1] == "data: [DONE]"
    code = process.wait(timeout=120)
    return {"open_streams": streams, "seconds_to_exit": time.monotonic() - started, "exit_code": code,
            "streams_ended_with_done": ended_properly}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", default="smollm2")
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    header = record_header()
    log = args.out / "server-faults.log"
    args.out.mkdir(parents=True, exist_ok=True)
    process, url = start(args.engine, log)
    try:
        record = {**header, "model": args.engine, "server": "ingot serve --max-queue 64 (INGOT_API_KEY)",
                  "shutdown_timeout_s": 5.0,
                  "bad_inputs": try_bad_inputs(url),
                  "health_during_7mb_prompt": health_during(url, {"model": "m", "prompt": "x" * 7_000_000,
                                                                  "max_tokens": 1}),
                  "health_during_10mb_body": health_during(url, {"model": "m", "prompt": "x" * 10_000_000,
                                                                 "max_tokens": 1}),
                  "rss": rss_growth(url, process.pid, args.requests),
                  "sigterm": sigterm_with_streams(process, url)}
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    record["log_tracebacks"] = text.count("Traceback")
    write_record(args.out / f"{header['date'][:10]}-cpu-server-faults.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
