"""The model repository's layout, version policies and shared memory plan, on CPU without engines
(a version folder only needs an engine.json to be listed; nothing here loads one)."""

from __future__ import annotations

import json

import pytest

from ingot.errors import ConfigError
from ingot.serve.memory_plan import DeviceBudget, Demand, Footprint, plan
from ingot.serve.repository import KVRequest, Repository, RepositoryError, SingleEngine, VersionPolicy

MiB, GiB = 1 << 20, 1 << 30


def _model(root, name: str, versions=(1,), config: dict | None = None, engines=True):
    for version in versions:
        folder = root / name / str(version)
        folder.mkdir(parents=True)
        if engines:
            (folder / "engine.json").write_text("{}")
    if config is not None:
        (root / name / "model_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("policy", "want"), [
    (None, ["3"]),
    ({"latest": {"num_versions": 2}}, ["2", "3"]),
    ({"latest": {}}, ["3"]),
    ({"all": {}}, ["1", "2", "3"]),
    ({"specific": {"versions": [3, 1]}}, ["1", "3"]),
])
def test_version_policies(tmp_path, policy, want):
    _model(tmp_path, "m", versions=(1, 2, 3), config=None if policy is None else {"version_policy": policy})
    (tmp_path / "m" / "07").mkdir()  # a leading zero: not a version (Triton's rule)
    (tmp_path / "m" / "draft").mkdir()
    entry = Repository(tmp_path).read("m")
    assert list(entry.versions) == want and entry.versions[want[0]] == tmp_path / "m" / want[0]


def test_latest_skips_older_versions_without_engines(tmp_path):
    _model(tmp_path, "m", versions=(1,), engines=False)
    _model(tmp_path, "m2", versions=(2,))
    (tmp_path / "m2" / "1").mkdir()  # older and empty: latest 1 never reads it
    assert list(Repository(tmp_path).read("m2").versions) == ["2"]
    assert VersionPolicy("latest", num_versions=5).select([4, 1]) == [1, 4]


def test_kv_request_from_config_or_the_servers_default(tmp_path):
    _model(tmp_path, "a", config={"kv_cache_fraction": 0.25})
    _model(tmp_path, "b", config={"kv_cache_bytes": 4096, "name": "b"})
    _model(tmp_path, "c")
    entries = {e.name: e for e in Repository(tmp_path, default_kv=KVRequest(bytes=123)).read_all()}
    assert entries["a"].kv == KVRequest(fraction=0.25) and entries["b"].kv == KVRequest(bytes=4096)
    assert entries["c"].kv == KVRequest(bytes=123)


@pytest.mark.parametrize(("layout", "message"), [
    (lambda root: None, "holds no model folders; put each engine at DIR/NAME/VERSION/engine.json"),
    (lambda root: (root / "m").mkdir(), "m holds no version folders: put its engine in"),
    (lambda root: _model(root, "m", engines=False), "has no engine.json: write an engine there with `ingot build"),
    (lambda root: (root / "m").mkdir() or (root / "m" / "engine.json").write_text("{}"),
     "is an engine, not a model folder: move it into"),
    (lambda root: _model(root, "m", config={"version_policy": {"specific": {"versions": [4]}}}),
     "version_policy.specific.versions names [4], but"),
    (lambda root: _model(root, "m", config={"version_policy": {"newest": {}}}), "is not a policy; give one of"),
    (lambda root: _model(root, "m", config={"version_policy": {"latest": {"num_versions": 0}}}),
     "num_versions=0 must be an integer >= 1"),
    (lambda root: _model(root, "m", config={"kv_cache_fraction": 1.5}), "kv_cache_fraction=1.5 must be a number in"),
    (lambda root: _model(root, "m", config={"kv_cache_fraction": 0.1, "kv_cache_bytes": 9}), "not both"),
    (lambda root: _model(root, "m", config={"max_batch_size": 8}), "unknown keys ['max_batch_size']; allowed"),
    (lambda root: _model(root, "m", config={"name": "other"}), "differs from its folder's name 'm'"),
    (lambda root: _model(root, "m") or (root / "m" / "model_config.json").write_text("{oops"), "cannot read it as"),
])
def test_bad_layouts_name_the_path_and_the_fix(tmp_path, layout, message):
    layout(tmp_path)
    with pytest.raises(RepositoryError) as error:
        Repository(tmp_path).read_all()
    assert message in str(error.value) and str(tmp_path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_repository_and_unknown_model(tmp_path):
    with pytest.raises(RepositoryError, match="no such directory; give the folder that holds one folder per model"):
        Repository(tmp_path / "nope")
    _model(tmp_path, "m")
    with pytest.raises(RepositoryError, match=r"failed to load 'x': .* does not exist; the repository's models "
                                              r"are \['m'\]"):
        Repository(tmp_path).read("x")
    with pytest.raises(RepositoryError, match="serves only 'tiny'"):
        SingleEngine("tiny", tmp_path).read("x")


CPU = DeviceBudget("cpu", total_bytes=10 * GiB, fraction=0.5)  # 5 GiB usable
CUDA = DeviceBudget("cuda", total_bytes=80 * GiB, fraction=0.9)


def _demand(key: str, kv: KVRequest = KVRequest(), fixed: int = GiB, kv_max: int = 100 * GiB, ranks: int = 1):
    return Demand(key, fixed, ranks, kv_min=MiB, kv_max=kv_max, kv=kv)


def test_plan_gives_explicit_figures_and_splits_the_rest_equally():
    footprints = plan([_demand("a/1", KVRequest(fraction=0.25)), _demand("b/1"), _demand("c/1")], CUDA, held=[])
    kv = {f.key: f.kv_bytes for f in footprints}
    assert kv["a/1"] == 20 * GiB
    left = int(0.9 * 80 * GiB) - 3 * GiB - 20 * GiB
    assert kv["b/1"] == kv["c/1"] == left // 2
    assert sum(f.total_bytes for f in footprints) <= CUDA.usable


def test_plan_caps_at_the_envelope_and_on_cpu_at_the_engines_default():
    (small,) = plan([_demand("a/1", KVRequest(bytes=8 * GiB), kv_max=3 * MiB)], CPU, held=[])
    assert small.kv_bytes == 3 * MiB  # more than every sequence of the envelope can use is never given
    (default,) = plan([_demand("b/1")], CPU, held=[])
    assert default.kv_bytes == GiB  # CPU: the engine's own 1 GiB default, not all of the host's RAM


def test_plan_refuses_what_does_not_fit_naming_the_figures():
    with pytest.raises(ConfigError) as error:
        plan([_demand("a/1", KVRequest(bytes=3 * GiB)), _demand("b/1", KVRequest(fraction=0.1))], CPU, held=[])
    message = str(error.value)
    assert "the models need 6.00 GiB" in message and "but 5.00 GiB is free of the server's" in message
    assert "5.00 GiB (0.5 x 10.00 GiB, the host's RAM; --gpu-memory-fraction)" in message
    assert "a/1 1.00 GiB + KV 3.00 GiB" in message and "raise --gpu-memory-fraction" in message
    held = [Footprint("x/1", 2 * GiB, GiB, 1)]
    with pytest.raises(ConfigError, match=r"need 2\.50 GiB .* but 2\.00 GiB is free .* after 3\.00 GiB held by 1"):
        plan([_demand("a/1", KVRequest(bytes=GiB + GiB // 2))], CPU, held=held)


def test_plan_refuses_a_kv_cache_smaller_than_one_sequence():
    with pytest.raises(ConfigError, match=r"a/1: its KV cache would get 512\.0 KiB \(kv_cache_bytes 524288\), less "
                                          r"than the 1\.0 MiB one sequence of its max_seq_len needs; raise its "
                                          "kv_cache_fraction / kv_cache_bytes"):
        plan([_demand("a/1", KVRequest(bytes=MiB // 2))], CUDA, held=[])
    with pytest.raises(ConfigError, match="b/1: its KV cache would get 0.0 KiB \\(a default share\\)"):
        plan([_demand("a/1", KVRequest(fraction=1.0)), _demand("b/1")], CUDA, held=[])


def test_a_served_model_reports_its_core_process_memory_and_budget():
    import os
    from types import SimpleNamespace

    from ingot.runtime.stats import EngineStats
    from ingot.serve.models import ServedModel

    llm = SimpleNamespace(core_pid=os.getpid(), stats=lambda: EngineStats(kv_blocks_total=7))
    sample = ServedModel("m", "2", llm, Footprint("m/2", GiB, MiB, ranks=2)).sample()
    assert (sample.model, sample.version, sample.stats.kv_blocks_total) == ("m", "2", 7)
    assert sample.gauges["ingot_model_resident_bytes"] > MiB  # this test process's own
    assert sample.gauges["ingot_model_memory_budget_bytes"] == GiB + 2 * MiB
    in_process = ServedModel("m", "1", SimpleNamespace(core_pid=None, stats=EngineStats)).sample()
    assert in_process.gauges == {}
