"""`ingot serve --model-repository`: two models and two versions in one server process, through tritonclient
(HTTP and gRPC) and the OpenAI client; unload frees a model's memory while the other keeps serving, load
brings it back.

    repo/alpha/model_config.json   latest 2 versions, a 64 KiB KV cache each
    repo/alpha/1/                  empty: not selected by the policy, so never read
    repo/alpha/2/, repo/alpha/3/   tiny random engines, seeds 21 and 22
    repo/beta/1/                   the session's tiny serve engine (seed 11), no config: the default share
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.serve.conftest import free_port, start_server

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

ALPHA_KV_BYTES = 64 << 10
PROMPT = "Hello there"
SERVED = [("alpha", "2"), ("alpha", "3"), ("beta", "1")]


def _build(checkpoint_dir: Path, engine_dir: Path, seed: int) -> Path:
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig
    from tests.tiny_models import make_checkpoint

    make_checkpoint(checkpoint_dir, "LlamaForCausalLM", seed=seed)
    build_engine(str(checkpoint_dir), engine_dir,
                 BuildConfig(dtype="fp32", max_batch_size=4, max_input_len=32, max_seq_len=64, max_num_tokens=64,
                             tokens_per_block=8), device="cpu")
    return engine_dir


@pytest.fixture(scope="module")
def repo(serve_engine, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "alpha" / "1").mkdir(parents=True)
    (root / "alpha" / "model_config.json").write_text(json.dumps(
        {"version_policy": {"latest": {"num_versions": 2}}, "kv_cache_bytes": ALPHA_KV_BYTES}))
    for version, seed in (("2", 21), ("3", 22)):
        _build(tmp_path_factory.mktemp(f"ckpt-{seed}"), root / "alpha" / version, seed)
    (root / "beta").mkdir()
    (root / "beta" / "1").symlink_to(serve_engine, target_is_directory=True)
    (root / "NOTES.txt").write_text("files and dot-folders beside the models are not models")
    (root / ".cache").mkdir()
    return root


@pytest.fixture(scope="module")
def repo_server(repo, tmp_path_factory):
    grpc_port = free_port()
    srv = start_server(None, tmp_path_factory.mktemp("logs") / "repo.log", "--model-repository", str(repo),
                       "--grpc-port", str(grpc_port))
    srv.grpc_url = f"127.0.0.1:{grpc_port}"
    yield srv
    assert srv.stop(signal.SIGTERM) == 0, srv.log.read_text()


@pytest.fixture(scope="module")
def http_client(repo_server):
    return tritonclient_http.InferenceServerClient(repo_server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def grpc_client(repo_server):
    return tritonclient_grpc.InferenceServerClient(repo_server.grpc_url)


def _infer(client, module, name: str, version: str = "", max_tokens: int = 6) -> str:
    text = module.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=object))
    limit = module.InferInput("max_tokens", [1, 1], "INT32")
    limit.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    result = client.infer(name, [text, limit], model_version=version)
    value = result.as_numpy("text_output").reshape(-1)[0]
    return value if isinstance(value, str) else value.decode()


def _openai(server, model: str, max_tokens: int = 6) -> str:
    return server.client().completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens,
                                              temperature=0).choices[0].text


def test_each_name_and_version_reaches_its_own_engine(repo_server, http_client, grpc_client, repo):
    from ingot import LLM, SamplingParams

    texts = {(name, version): _infer(http_client, tritonclient_http, name, version) for name, version in SERVED}
    assert len(set(texts.values())) == 3, texts  # three seeds, three greedy answers
    for version in ("2", "3"):  # the two versions of one name: each answers as its own engine does
        reference = LLM(repo / "alpha" / version, device="cpu")
        want = reference.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0.0))[0].text
        assert texts[("alpha", version)] == want
    assert _infer(grpc_client, tritonclient_grpc, "alpha") == texts[("alpha", "3")]  # no version: the latest
    assert _openai(repo_server, "alpha") == texts[("alpha", "3")]
    assert _openai(repo_server, "alpha/2") == texts[("alpha", "2")]
    assert _openai(repo_server, "beta") == texts[("beta", "1")]
    unnamed = httpx.post(f"{repo_server.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
    assert unnamed.status_code == 400 and "serves 2 models" in unnamed.json()["error"]["message"]


def test_index_models_metadata_and_metrics(repo_server, http_client, grpc_client):
    index = {(m["name"], m.get("version")): m.get("state") for m in http_client.get_model_repository_index()}
    assert index == {(n, v): "READY" for n, v in SERVED}  # alpha/1 is not selected by latest 2
    grpc_index = grpc_client.get_model_repository_index().models
    assert sorted((m.name, m.version, m.state) for m in grpc_index) == [(n, v, "READY") for n, v in SERVED]
    assert [m.id for m in repo_server.client().models.list().data] == ["alpha", "alpha/2", "alpha/3", "beta"]
    assert http_client.get_model_metadata("alpha")["versions"] == ["2", "3"]
    assert http_client.is_model_ready("alpha", "2") and not http_client.is_model_ready("alpha", "1")
    assert "model_repository" in http_client.get_server_metadata()["extensions"]
    m = repo_server.metrics()
    # alpha's model_config.json sets its KV cache: 64 KiB of 3 KiB blocks (8 tokens x 2 layers x 2 heads x
    # 12 dims x K and V x 4 bytes), one of them the pool's null block
    assert m['ingot_kv_cache_blocks_total{model="alpha",version="2"}'] == ALPHA_KV_BYTES // 3072 - 1
    assert m['ingot_model_kv_cache_budget_bytes{model="alpha",version="3"}'] == ALPHA_KV_BYTES
    assert m['ingot_kv_cache_blocks_total{model="beta",version="1"}'] > 100  # beta: the default share
    assert m['ingot_model_resident_bytes{model="beta",version="1"}'] > 0


def test_unload_frees_memory_other_model_serves_load_brings_it_back(repo_server, http_client, grpc_client):
    before_text = _infer(http_client, tritonclient_http, "beta")
    resident = repo_server.metrics()['ingot_model_resident_bytes{model="beta",version="1"}']
    before = _tree_rss(repo_server.process.pid)
    http_client.unload_model("beta")
    freed = before - _tree_rss(repo_server.process.pid)
    assert freed > 0.8 * resident, (freed, resident)  # its engine core process is gone
    assert not any(k.startswith("ingot_model_resident_bytes{model=\"beta\"") for k in repo_server.metrics())
    states = {(m["name"], m["version"]): (m["state"], m["reason"]) for m in http_client.get_model_repository_index()}
    assert states[("beta", "1")] == ("UNAVAILABLE", "unloaded")

    with pytest.raises(InferenceServerException, match="not loaded.*load"):
        _infer(http_client, tritonclient_http, "beta")
    with pytest.raises(InferenceServerException, match="not loaded") as grpc_error:
        _infer(grpc_client, tritonclient_grpc, "beta")
    assert grpc_error.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(openai.NotFoundError, match="not loaded"):
        _openai(repo_server, "beta")
    assert _infer(grpc_client, tritonclient_grpc, "alpha", "2")  # the other model keeps serving
    assert httpx.get(f"{repo_server.url}/health").status_code == 200

    grpc_client.load_model("beta")
    assert http_client.is_model_ready("beta")
    assert _openai(repo_server, "beta") == before_text
    with pytest.raises(InferenceServerException, match="failed to load 'gamma'.*does not exist"):
        http_client.load_model("gamma")


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int((Path("/proc") / str(current) / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
        todo += children.get(current, [])
    return total


def test_bad_layout_is_one_line_naming_the_path_and_the_fix(tmp_path, capsys):
    from ingot.cli import main

    (tmp_path / "llama" / "1").mkdir(parents=True)  # a version folder with no engine in it
    assert main(["serve", "--model-repository", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ingot serve: error: ")
    assert f"{tmp_path / 'llama' / '1'} has no engine.json" in lines[0] and "ingot build MODEL -o" in lines[0]
