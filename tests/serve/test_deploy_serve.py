"""`ingot serve CHECKPOINT` (NIM-style): the first start builds the chosen profile into the cache,
the second reuses it. Two real server processes on the tiny checkpoint."""

from __future__ import annotations

import re

import httpx

from tests.serve.conftest import start_server


def test_serving_a_checkpoint_builds_once_then_reuses_the_cache(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = tiny_checkpoint[0]
    times, engine_json = [], None
    for run in ("first", "second"):
        log = tmp_path / f"{run}.log"
        server = start_server(checkpoint, log, "--device", "cpu")
        try:
            # start_server returned once /health said 200: the engine is loaded, so ready is too.
            assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
            text = log.read_text()
            engines = list((tmp_path / "cache" / "deploy").glob("*/engine.json"))
            assert len(engines) == 1  # one cache entry for both starts
            if run == "first":
                assert "profile fp32-tp1pp1-b8-i256-s512 (the default envelope, and it fits)" in text
                assert "reading the checkpoint" in text and "done in" in text and "reusing" not in text
                times.append(float(re.search(r"built cached engine .* in ([\d.]+) s", text).group(1)))
                engine_json = engines[0]
                mtime = engine_json.stat().st_mtime_ns
            else:
                assert "reusing cached engine" in text and "building" not in text
                times.append(float(re.search(r"reusing cached engine .* found in ([\d.]+) s", text).group(1)))
                assert engine_json.stat().st_mtime_ns == mtime
        finally:
            assert server.stop() == 0
    # Both figures include fingerprinting the checkpoint; the first adds the whole build.
    assert times[1] < times[0], times
