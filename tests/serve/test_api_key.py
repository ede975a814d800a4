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
