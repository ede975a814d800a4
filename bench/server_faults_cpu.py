"""The server under a hostile but fair client (issue 21's measurements), CPU, a real `ingot serve`.

    python bench/server_faults_cpu.py --out bench/results [--engine smollm2] [--requests 5000]

Records: bad inputs tried and how they were answered (4xx / 5xx / hang / connection reset), raw
ones included (a 1 MB header, a head and a body that stall, bodies over the limit); the worst
/health latency while a 10 MB prompt is processed (the server takes bodies up to 16 MiB here, so
the prompt is tokenized, not refused) and while a 20 MB body is refused; engine throughput of one
request with and without the most stop strings the default caps allow; the RSS growth of the server
and its engine-core process per 1,000 requests over N mixed requests (after every KV block has been
written once: see touch_kv_pool); and, with 20 open streams, how soon after SIGTERM /health answers
503 and the seconds from SIGTERM to exit. Also: what /metrics counted of the bad inputs (the 431, 408
and 400 the HTTP layer answers itself included), and the KServe gRPC service's answers to a message
and metadata over the caps and to a unary call whose message stalls.
The server runs with --read-timeout 5 so that the stalled cases answer within seconds. Run it with
OMP_NUM_THREADS=1 on a shared machine: torch's spinning threads, two processes to two cores, made
decode 40x slower.
Writes DATE-cpu-server-faults[-TAG].json, never over an earlier record.
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
import tempfile
import threading
import time
from pathlib import Path

import httpx
from benchlib import record_header, write_record

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FLAGS = ["--max-queue", "64", "--max-body-bytes", str(16 << 20), "--read-timeout", "5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(engine: str, log: Path) -> tuple[subprocess.Popen, str, int]:
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "INGOT_API_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "ingot.cli", "serve", engine, "--port", str(port),
                                "--grpc-port", str(grpc_port), "--served-model-name", "m", *FLAGS,
                                "--log-level", "warning"],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url, grpc_port
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


def raw_requests() -> list[tuple[str, bytes]]:
    """(name, bytes sent as they are): what a JSON client cannot send."""
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    post = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + auth
    kserve_rows = json.dumps({"text_input": ["hi"] * 500, "max_tokens": 1}).encode()
    return [("1 MB header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"),
            ("head that stalls", post + b"Content-Type: application/json\r\n"),
            ("body that stalls", post + b"Content-Length: 100\r\n\r\n{"),
            ("20 MB body to /tokenize", b"POST /tokenize HTTP/1.1\r\nHost: x\r\n" + auth
             + b"Content-Length: 20000000\r\n\r\n" + b"x" * 20_000_000),
            ("KServe generate with 500 rows", b"POST /v2/models/m/generate HTTP/1.1\r\nHost: x\r\n" + auth
             + b"Content-Length: %d\r\n\r\n%s" % (len(kserve_rows), kserve_rows))]


def raw_status(url: str, payload: bytes) -> str:
    """The status code answered to payload, or "hangs" (nothing in 60 s), or "resets"."""
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(payload)
            answer = sock.recv(4096)
    except TimeoutError:
        return "hangs"
    except ConnectionError:
        return "resets"
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "resets"


def counted_statuses(url: str) -> dict[str, float]:
    """ingot_http_requests_total summed by status, from /metrics (its own requests left out)."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", headers=AUTH, timeout=60).text.splitlines():
        if line.startswith("ingot_http_requests_total{") and 'route="/metrics"' not in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def try_bad_inputs(url: str) -> dict:
    before = counted_statuses(url)
    counts = {"tried": 0, "4xx": 0, "5xx": 0, "2xx": 0, "hangs": 0, "resets": 0}
    statuses = []
    for route, body in bad_bodies():
        try:
            status = str(httpx.post(f"{url}/v1/{route}", content=body, timeout=60,
                                    headers={**AUTH, "content-type": "application/json"}).status_code)
        except httpx.TimeoutException:
            status = "hangs"
        statuses.append(status)
    raw = {name: raw_status(url, payload) for name, payload in raw_requests()}
    for status in statuses + list(raw.values()):
        counts["tried"] += 1
        key = f"{status[0]}xx" if status.isdigit() else status
        counts[key] = counts.get(key, 0) + 1
    time.sleep(1)  # the stalled cases' answers are counted as they go out
    after = counted_statuses(url)
    counted = {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}
    return {**counts, "raw": raw, "counted_in_metrics": counted}


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def grpc_stalled_call(port: int) -> dict:
    """A unary ModelInfer whose message stalls after 8 of its 100 bytes (HTTP/2 by hand: grpcio's client
    cannot stall): seconds until the server ends the call, and the grpc-status it sends."""
    def literal(name: bytes, value: bytes) -> bytes:  # HPACK, literal without indexing
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    headers = b"".join(literal(n, v) for n, v in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
        (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"authorization", f"Bearer {KEY}".encode())])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b"") + _h2_frame(1, 4, 1, headers)
                     + _h2_frame(0, 0, 1, (100).to_bytes(5, "big") + b"\x00" * 3))
        seen = b""
        while b"grpc-status" not in seen:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
    status = seen.split(b"grpc-status", 1)[1][1:2].decode() if b"grpc-status" in seen else None
    return {"seconds": time.monotonic() - started, "grpc_status": status}


def grpc_limits(port: int) -> dict:
    """The KServe gRPC service's answers beyond the caps the HTTP flags set."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    metadata = [("authorization", f"Bearer {KEY}")]
    answers = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name, call in [
            ("20 MB message", lambda: stub.ModelInfer(service_pb2.ModelInferRequest(
                model_name="m", raw_input_contents=[b"x" * 20_000_000]), metadata=metadata, timeout=60)),
            ("1 MB metadata", lambda: stub.ServerLive(service_pb2.ServerLiveRequest(),
                                                      metadata=[("x-big", "a" * 1_000_000)], timeout=60))]:
            try:
                call()
                answers[name] = "OK"
            except grpc.RpcError as exc:
                answers[name] = exc.code().name
    return {**answers, "message that stalls": grpc_stalled_call(port)}


def health_during(url: str, body: dict) -> dict:
    answer = {}
    content = json.dumps(body).encode()  # here, not in the thread: serializing holds this process's GIL

    def big() -> None:
        started = time.monotonic()
        answer["status"] = httpx.post(f"{url}/v1/completions", content=content, timeout=300,
                                      headers={**AUTH, "content-type": "application/json"}).status_code
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


def process_tree(pid: int) -> list[int]:
    """pid and its descendants: the server and its engine-core process."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [p for child in children for p in process_tree(int(child))]


def rss_of_tree(pid: int) -> dict[int, int]:
    return {p: rss_bytes(p) for p in process_tree(pid)}


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
            samples.append(rss_of_tree(pid))
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
    samples.append(rss_of_tree(pid))
    client.close()
    start, end = (sum(sample.values()) for sample in samples)
    per_process = {("server" if p == pid else f"child {p}"): {
        "rss_start_bytes": samples[0][p], "rss_end_bytes": samples[1].get(p, 0),
        "rss_growth_bytes_per_1000": (samples[1].get(p, 0) - samples[0][p]) * 1000 / count} for p in samples[0]}
    return {"requests": count, "kv_pool_warmup_requests": pool_warmup, "after_warmup_requests": warm,
            "rss_start_bytes": start, "rss_end_bytes": end, "rss_growth_bytes_per_1000": (end - start) * 1000 / count,
            "processes": per_process}


def stop_string_cost(url: str) -> dict:
    """Output tok/s of one request of 16 samples, without stop strings and with the most the default
    caps allow (16 of 1,024 characters, never met): matching used to cost O(stop length) per token."""
    stops = [chr(0x2500 + i) * 1024 for i in range(16)]

    def tokens_per_s(extra: dict) -> float:
        body = {"model": "m", "prompt": "Once upon a time", "max_tokens": 64, "n": 16, "ignore_eos": True,
                "temperature": 1.0, "seed": 0, **extra}
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=600)
        assert response.status_code == 200, response.text
        return response.json()["usage"]["completion_tokens"] / (time.monotonic() - started)

    tokens_per_s({})  # warm-up
    plain, stopped = tokens_per_s({}), tokens_per_s({"stop": stops})
    return {"samples": 16, "max_tokens": 64, "stop_strings": len(stops), "stop_string_chars": 1024,
            "tok_s_without_stops": plain, "tok_s_with_stops": stopped}


def engine_queue(client: httpx.Client) -> dict[str, float]:
    """Sequences running and waiting in the engine, from /metrics (summed over the models served)."""
    counts = {"running": 0.0, "waiting": 0.0}
    for line in client.get("/metrics").text.splitlines():
        for kind in counts:
            if line.startswith(f"ingot_num_requests_{kind}"):
                counts[kind] += float(line.rsplit(" ", 1)[1])
    return counts


def sigterm_with_streams(process: subprocess.Popen, url: str, streams: int = 20) -> dict:
    """20 streams open (the engine runs as many as its max_batch_size allows, the rest wait in its
    queue), then SIGTERM: seconds to exit, and how many streams ended with [DONE]."""
    client = httpx.Client(base_url=url, headers=AUTH, timeout=120)
    open_streams = []
    for i in range(streams):  # send returns once the answer's headers have come
        response = client.send(client.build_request("POST", "/v1/completions", json={
            "model": "m", "prompt": f"long {i}", "max_tokens": 900, "stream": True, "ignore_eos": True}), stream=True)
        assert response.status_code == 200, response.read()
        open_streams.append(response.iter_lines())
    deadline = time.monotonic() + 120
    while sum((queue := engine_queue(client)).values()) < streams and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    health = httpx.get(f"{url}/health", timeout=60)  # the first request after the signal, on a new connection
    health_s = time.monotonic() - started
    ended_properly = 0
    for lines in open_streams:
        rest = [line for line in lines if line.startswith("data:")]
        ended_properly += bool(rest) and rest[-1] == "data: [DONE]"
    code = process.wait(timeout=120)
    return {"open_streams": streams, "running_at_sigterm": queue["running"], "waiting_at_sigterm": queue["waiting"],
            "first_health_after_sigterm": {"status": health.status_code, "answered_after_s": health_s},
            "seconds_to_exit": time.monotonic() - started, "exit_code": code, "streams_ended_with_done": ended_properly}


def measured(what, *args) -> dict:
    """what(*args), or the error that stopped it: one phase failing keeps the others' figures."""
    try:
        return what(*args)
    except Exception as exc:  # noqa: BLE001 - recorded, not hidden
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", default="smollm2")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--tag", default=None, help="DATE-cpu-server-faults-TAG.json: keeps a record of the day")
    args = parser.parse_args()
    header = record_header()
    path = args.out / f"{header['date'][:10]}-cpu-server-faults{'-' + args.tag if args.tag else ''}.json"
    if path.exists():
        parser.error(f"{path} exists: records are kept; give another --tag")
    log = Path(tempfile.mkdtemp(prefix="server-faults-")) / "server.log"  # beside the records it would be kept
    print(f"server log: {log}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    process, url, grpc_port = start(args.engine, log)
    try:
        record = {**header, "model": args.engine, "server": f"ingot serve {' '.join(FLAGS)} (INGOT_API_KEY)",
                  "shutdown_timeout_s": 5.0,
                  "bad_inputs": measured(try_bad_inputs, url),
                  "grpc_limits": measured(grpc_limits, grpc_port),
                  "health_during_10mb_prompt": measured(health_during, url, {"model": "m", "prompt": "x" * 10_000_000,
                                                                             "max_tokens": 1}),
                  "health_during_20mb_body": measured(health_during, url, {"model": "m", "prompt": "x" * 20_000_000,
                                                                           "max_tokens": 1}),
                  "stop_strings": measured(stop_string_cost, url),
                  "rss": measured(rss_growth, url, process.pid, args.requests),
                  "sigterm": measured(sigterm_with_streams, process, url)}
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    record["log_tracebacks"] = text.count("Traceback")
    write_record(path, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
