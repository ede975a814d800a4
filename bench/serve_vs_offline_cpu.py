"""Offline vs served throughput of one engine on one workload (issue 10, item 4): how much of the
engine's speed `ingot serve` keeps when it is saturated.

    python bench/serve_vs_offline_cpu.py --out bench/results                        # the CPU proxy
    python bench/serve_vs_offline_cpu.py --engine DIR --num-requests 1500 --isl 512 --osl 128 \\
        --tag h200 --out bench/results                                               # e.g. 8B shape, H200

Every program runs in its own process: first `ingot bench throughput ENGINE` (offline: every
request submitted at once); then, for each server mode, `ingot serve ENGINE` driven by
`ingot bench serve --request-rate inf` with the same number of requests and lengths. The modes:
`default` (the server as it starts by default: since issue 10 its engine core runs in a process of
its own) and `in-process` (`--engine-in-process`: the core on a thread of the server's process,
sharing its GIL). The record holds each run's output tok/s, TTFT and TPOT, served / offline, the
engine steps the server ran (from /metrics), and the CPU seconds of the server's API process, of
its engine core (with any worker ranks) and of each client, read from /proc and wait4 (Linux): a
client that used a whole core for the run measured itself, not the server.

Arguments: --engine DIR (default: build the CPU proxy), --num-requests / --isl / --osl (default
400 / 32 / 64), --modes (default: default,in-process), --clients N (default 1: N `ingot bench serve`
processes, started together, share the requests; their tokens are added up over the longest
duration — one Python client streaming 1,500 requests can use a whole core and become the limit),
--layers (the proxy's depth, default 16), --tag (the record's device word, default cpu), --out.

The CPU proxy is a random Llama (hidden 72, --layers layers, fp32) with a 256-symbol byte-level
tokenizer, built into a temporary directory by `ingot build --load-format dummy --tokenizer`, run
with one torch thread per process. Every token decodes to text (no special tokens), so a request
never ends without text for the client to see.
Writes DATE-TAG-serve-vs-offline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import record_header, write_record

PROXY_CONFIG = dict(architectures=["LlamaForCausalLM"], hidden_size=72, intermediate_size=100, num_attention_heads=6,
                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, rms_norm_eps=1e-5,
                    rope_theta=10000.0, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default=None, help="an engine directory (default: build the CPU proxy)")
    p.add_argument("--num-requests", type=int, default=400)
    p.add_argument("--isl", type=int, default=32)
    p.add_argument("--osl", type=int, default=64)
    p.add_argument("--modes", default="default,in-process", help="server modes to measure: default, in-process")
    p.add_argument("--clients", type=int, default=1, help="`ingot bench serve` processes sharing the requests")
    p.add_argument("--layers", type=int, default=16, help="the CPU proxy's number of layers")
    p.add_argument("--tag", default="cpu", help="the device word in the record's name")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine
        if engine is None:
            engine = build_proxy(Path(tmp), args.layers)
            env.update(OMP_NUM_THREADS="1", INGOT_NUM_THREADS="1")  # one core each: the engine, the server, the client
        record = {**record_header(gpu_name()), "benchmark": "serve-vs-offline", "engine": engine,
                  "proxy": None if args.engine else {**PROXY_CONFIG, "num_hidden_layers": args.layers},
                  "workload": {"num_requests": args.num_requests, "isl": args.isl, "osl": args.osl},
                  "clients": args.clients}
        record["offline"] = offline(engine, args, env, Path(tmp))
        record["served"] = {mode: served(engine, args, env, Path(tmp), mode) for mode in args.modes.split(",")}
    for run in record["served"].values():
        run["served_over_offline"] = round(run["output_tok_s"] / record["offline"]["output_tok_s"], 3)
    name = f"{time.strftime('%Y-%m-%d')}-{args.tag}-serve-vs-offline.json"
    write_record(Path(args.out) / name, record)


def gpu_name() -> str | None:
    """The GPU the engine runs on, for the record's device (None: the CPU, benchlib's default)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def build_proxy(tmp: Path, layers: int) -> str:
    """A random Llama of `layers` layers and a byte-level tokenizer whose 256 ids are all bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    config = tmp / "config.json"
    config.write_text(json.dumps({**PROXY_CONFIG, "num_hidden_layers": layers}))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(tmp / "tokenizer.json"))
    engine = tmp / "proxy-engine"
    subprocess.run([sys.executable, "-m", "ingot.cli", "build", str(config), "-o", str(engine), "--load-format",
                    "dummy", "--tokenizer", str(tmp / "tokenizer.json"), "--dtype", "fp32", "--device", "cpu",
                    "--max-batch-size", "256", "--max-input-len", "128", "--max-seq-len", "256",
                    "--max-num-tokens", "2048", "--tokens-per-block", "16"], check=True)
    return str(engine)


def offline(engine: str, args, env: dict, tmp: Path) -> dict:
    out = tmp / "offline.json"
    cpu = run_timed([sys.executable, "-m", "ingot.cli", "bench", "throughput", engine, "--isl", str(args.isl),
                     "--osl", str(args.osl), "--num-requests", str(args.num_requests), "--skip-verify",
                     "--json", str(out)], env)
    result = json.loads(out.read_text())
    keep = ("output_tok_s", "elapsed_s", "input_tokens", "output_tokens", "steps", "peak_running", "preemptions")
    return {**{k: result.get(k) for k in keep}, "process_cpu_s_with_start_up": cpu}


def served(engine: str, args, env: dict, tmp: Path, mode: str) -> dict:
    port = free_port()
    extra = {"default": [], "in-process": ["--engine-in-process"]}[mode]
    log = tmp / f"server-{mode}.log"
    server = subprocess.Popen([sys.executable, "-m", "ingot.cli", "serve", engine, "--port", str(port),
                               "--log-level", "warning", "--skip-verify", *extra],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(server, port, log)
        before = {**server_cpu(server.pid), **engine_counters(port)}
        outs = [tmp / f"served-{mode}-{i}.json" for i in range(args.clients)]
        shares = [args.num_requests // args.clients + (i < args.num_requests % args.clients)
                  for i in range(args.clients)]
        clients = [subprocess.Popen([sys.executable, "-m", "ingot.cli", "bench", "serve", "--url",
                                     f"http://127.0.0.1:{port}", "--num-prompts", str(share), "--isl", str(args.isl),
                                     "--osl", str(args.osl), "--request-rate", "inf", "--seed", str(i),
                                     "--json", str(out)], env=env) for i, (share, out) in enumerate(zip(shares, outs))]
        client_cpu = [wait_cpu(client) for client in clients]
        after = {**server_cpu(server.pid), **engine_counters(port)}
    finally:
        server.terminate()
        server.wait(120)
    return {**combine([json.loads(out.read_text()) for out in outs]),
            "engine_steps": after["steps"] - before["steps"],
            "generated_tokens": after["generated"] - before["generated"],
            "cpu_s": {"api_process": round(after["api"] - before["api"], 2),
                      "engine_core": round(after["rest"] - before["rest"], 2), "clients": client_cpu},
            "server_exit_code": server.returncode}


def combine(results: list[dict]) -> dict:
    """One client's figures as they are; several clients' (started together) added up, over the longest
    duration, with each client's latencies kept apart."""
    tokens = sum(r["total_output_tokens"] for r in results)
    duration = max(r["duration_s"] for r in results)
    combined = {"output_tok_s": round(tokens / duration, 2), "duration_s": round(duration, 3),
                "completed": sum(r["completed"] for r in results), "failed": sum(r["failed"] for r in results),
                "errors": sorted({e for r in results for e in r["errors"]}), "total_output_tokens": tokens}
    latencies = [{k: r[k] for k in ("ttft_ms", "tpot_ms", "itl_ms")} for r in results]
    return {**combined, **(latencies[0] if len(results) == 1 else {"per_client": latencies})}


def engine_counters(port: int) -> dict:
    """Engine steps and generated tokens so far, from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        samples = dict(line.rsplit(" ", 1) for line in response.read().decode().splitlines()
                       if line and not line.startswith("#"))
    return {"steps": int(float(samples["ingot_engine_steps_total"])),
            "generated": int(float(samples["ingot_generation_tokens_total"]))}


def run_timed(cmd: list[str], env: dict) -> float:
    """Run cmd to its end; the CPU seconds (user + system) it and its children used."""
    process = subprocess.Popen(cmd, env=env)
    cpu = wait_cpu(process)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed with exit code {process.returncode}")
    return cpu


def wait_cpu(process: subprocess.Popen) -> float:
    """Wait for the process; the CPU seconds (user + system) it and its children used."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return round(usage.ru_utime + usage.ru_stime, 2)


def server_cpu(pid: int) -> dict:
    """CPU seconds so far of the server's own process and of every process under it (engine core, ranks)."""
    rest = sum(_cpu_seconds(child) for child in _descendants(pid))
    return {"api": _cpu_seconds(pid), "rest": rest}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _descendants(pid: int) -> list[int]:
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(server: subprocess.Popen, port: int, log: Path, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ingot serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"ingot serve did not answer /health within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


if __name__ == "__main__":
    main()
