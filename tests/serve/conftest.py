"""A real `ingot serve` subprocess on a free loopback port, and the official openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
MAX_INPUT_LEN = 64
MAX_SEQ_LEN = 4096
STARTUP_TIMEOUT_S = 120
GUARDED_LIMITS = {"--max-body-bytes": 65536, "--max-header-bytes": 16384, "--max-prompts-per-request": 2,
                  "--max-sequences-per-request": 8, "--max-stop-strings": 4, "--max-stop-string-chars": 64}


@dataclass
class Server:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    engine_dir: Path
    log: Path
    model: str

    def client(self, api_key: str = API_KEY, **kwargs):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def async_client(self, api_key: str = API_KEY, **kwargs):
        import openai

        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics under its full text, and each labelled name's sum under the bare name
        (the engine's rows are labelled model and version: one server's sum is its one model's value)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}).text
        samples, sums = {}, {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
                if "{" in key:
                    bare = key.split("{", 1)[0]
                    sums[bare] = sums.get(bare, 0.0) + float(value)
        return {**sums, **samples}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine_dir: Path | None, log: Path, *extra: str, model: str = "tiny") -> Server:
    """engine_dir None: the models come from extra (--model-repository DIR)."""
    port = free_port()
    # One torch thread: the tiny model gains nothing from more, and CI has two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    target = [] if engine_dir is None else [str(engine_dir), "--served-model-name", model]
    cmd = [sys.executable, "-m", "ingot.cli", "serve", *target, "--port", str(port), "--log-level", "warning",
           *extra]
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    server = Server(process, f"http://127.0.0.1:{port}", engine_dir, log, model)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ingot serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"ingot serve did not answer /health in {STARTUP_TIMEOUT_S}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Llama with a long context, so that a stream can run for many seconds."""
    from tests.tiny_models import make_checkpoint

    checkpoint = tmp_path_factory.mktemp("serve-ckpt")
    make_checkpoint(checkpoint, "LlamaForCausalLM", seed=11, max_position_embeddings=MAX_SEQ_LEN)
    return checkpoint


def build_serve_engine(checkpoint: Path, directory: Path, tp: int = 1) -> Path:
    """Room for many concurrent requests; prompts stay short (max_input_len 64)."""
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, ParallelConfig

    build_engine(str(checkpoint), directory,
                 BuildConfig(dtype="fp32", max_batch_size=32, max_input_len=MAX_INPUT_LEN, max_seq_len=MAX_SEQ_LEN,
                             max_num_tokens=512, tokens_per_block=8), device="cpu", parallel=ParallelConfig(tp=tp))
    return directory


@pytest.fixture(scope="session")
def serve_engine(serve_checkpoint, tmp_path_factory) -> Path:
    return build_serve_engine(serve_checkpoint, tmp_path_factory.mktemp("serve-engines") / "tiny")


@pytest.fixture(scope="session")
def serve_engine_tp2(serve_checkpoint, tmp_path_factory) -> Path:
    """The same model split over two tensor-parallel ranks (two processes, gloo)."""
    return build_serve_engine(serve_checkpoint, tmp_path_factory.mktemp("serve-engines") / "tiny-tp2", tp=2)


@pytest.fixture(scope="session")
def reference(serve_engine):
    """The same engine in the test process: what the server must answer for greedy requests."""
    from ingot import LLM

    return LLM(serve_engine, device="cpu")


@pytest.fixture(scope="session")
def server(serve_engine, tmp_path_factory):
    """The shared server: no API key, no queue limit; gRPC (KServe v2) at srv.grpc_url. Every module
    that needs no special flags uses this one: each start costs seconds of CI's two cores."""
    grpc_port = free_port()
    srv = start_server(serve_engine, tmp_path_factory.mktemp("logs") / "server.log", "--grpc-port", str(grpc_port))
    srv.grpc_url = f"127.0.0.1:{grpc_port}"
    yield srv
    assert srv.stop(signal.SIGTERM) == 0, srv.log.read_text()


@pytest.fixture(scope="session")
def guarded_server(serve_engine, tmp_path_factory):
    """With --api-key, a queue of 2, caps lower than the defaults (GUARDED_LIMITS), and gRPC (KServe v2)
    at srv.grpc_url."""
    grpc_port = free_port()
    limits = [arg for name, value in GUARDED_LIMITS.items() for arg in (name, str(value))]
    srv = start_server(serve_engine, tmp_path_factory.mktemp("logs") / "guarded.log",
                       "--api-key", API_KEY, "--max-queue", "2", *limits, "--grpc-port", str(grpc_port))
    srv.grpc_url = f"127.0.0.1:{grpc_port}"
    yield srv
    assert srv.stop(signal.SIGINT) == 0, srv.log.read_text()


@pytest.fixture(scope="session")
def smol_server(smollm2_engine, tmp_path_factory):
    """The real SmolLM2 behind `ingot serve` (shared by the server and lm-eval tests)."""
    server = start_server(smollm2_engine, tmp_path_factory.mktemp("logs") / "smollm2.log", model="smollm2")
    yield server
    assert server.stop() == 0, server.log.read_text()
