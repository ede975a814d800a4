"""Where the API key comes from (flag, file, environment) and how it is compared (issue 21)."""

from __future__ import annotations

import pytest

from ingot.commands.serve import resolve_api_key
from ingot.errors import ConfigError
from ingot.serve.app import Gate, ServerState


def test_key_from_flag_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("INGOT_API_KEY", "from-env")
    assert resolve_api_key("from-flag", None) == "from-flag"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n# comment lines after the key are ignored\n")
    assert resolve_api_key(None, str(key_file)) == "from-file"
    assert resolve_api_key(None, None) == "from-env"
    monkeypatch.delenv("INGOT_API_KEY")
    assert resolve_api_key(None, None) is None
    with pytest.raises(ConfigError, match="not both"):
        resolve_api_key("a", str(key_file))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="the first line is empty"):
        resolve_api_key(None, str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="cannot read it"):
        resolve_api_key(None, str(tmp_path / "missing"))


@pytest.mark.parametrize("key", ["ascii-key", "clé-secrète-🔑"])
def test_keys_are_compared_as_utf8_bytes(key):
    gate = Gate(app=None, state=ServerState(models=None, api_key=key))
    scope = lambda header: {"headers": [(b"authorization", header)]}  # noqa: E731
    assert gate._authorized(scope(b"Bearer " + key.encode("utf-8")))
    if not key.isascii():
        assert not gate._authorized(scope(b"Bearer " + key.encode("latin-1", "replace")))
    assert not gate._authorized(scope(b"Bearer wrong"))
    assert not gate._authorized({"headers": []})


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_the_key_unless_metrics_public(public):
    import asyncio

    async def app(scope, receive, send):  # stands for /metrics: reached only past the key check
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    def status(path: str) -> int:
        sent = []

        async def send(message):
            sent.append(message)
        gate = Gate(app, ServerState(models=None, api_key="k", metrics_public=public))
        asyncio.run(gate({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send))
        return sent[0]["status"]

    assert status("/metrics") == (200 if public else 401)
    assert status("/v1/models") == 401, "--metrics-public opens /metrics only"
