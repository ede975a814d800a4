"""Properties every plan keeps, over random presets, GPUs, precisions and envelopes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.plan.command import buildable_architectures
from ingot.plan.gpus import GPUS
from ingot.plan.planner import make_plan
from ingot.plan.precisions import KV_DTYPES, PRECISIONS
from ingot.plan.presets import PRESETS

plans = st.fixed_dictionaries({
    "model": st.sampled_from(sorted(PRESETS)),
    "gpu": st.sampled_from(sorted(GPUS)),
    "precision": st.sampled_from(sorted(PRECISIONS)),
    "kv_cache_dtype": st.sampled_from(sorted(KV_DTYPES)),
    "isl": st.integers(1, 65536),
    "osl": st.integers(1, 8192),
    "concurrency": st.integers(1, 512),
    "num_gpus": st.sampled_from([None, 1, 2, 4, 8]),
})


@settings(max_examples=60, deadline=None)
@given(plans)
def test_plan_invariants(kwargs):
    plan = make_plan(**kwargs)
    env = plan["envelope"]
    for row in plan["layouts"]:
        gb = row["memory_gb"]
        assert row["tp"] * row["pp"] == row["num_gpus"]
        if row["fits"]:  # fits means the whole envelope's KV is inside the pool
            assert row["fits_weights"] and gb["kv_envelope"] <= gb["kv_pool"] + 0.01
            assert row["max_concurrency"] >= env["concurrency"]
        assert row["max_concurrency"] * env["seq_len"] <= row["kv_tokens"]
        if row["perf"]:
            p = row["perf"]
            assert 1 <= p["concurrency"] <= env["concurrency"]
            assert p["decode_tok_s"] > 0 and p["prefill_tok_s"] > 0 and p["output_tok_s"] > 0
            assert p["output_tok_s"] <= p["decode_tok_s"] * 1.0001  # prefill only adds time
    rec = plan["recommendation"]
    if rec["layout"] is None:  # nothing fits: no command and nothing to say about one
        assert rec["build_command"] is None and rec["build_notes"] == []
    elif plan["model"]["architecture"] not in buildable_architectures():  # one note, nothing else
        assert rec["build_command"] is None and len(rec["build_notes"]) == 1
        assert f"`ingot build` does not build {plan['model']['architecture']} yet" in rec["build_notes"][0]
    elif rec["build_command"] is None:  # ingot build cannot say the layout yet: a note says which flags
        assert rec["layout"]["num_gpus"] > 1 and "`ingot build` does not offer" in rec["build_notes"][0]
    assert plan["fits"] == any(r["fits"] for r in plan["layouts"])


@settings(max_examples=30, deadline=None)
@given(plans)
def test_smaller_weights_never_fit_worse(kwargs):
    """Same layouts, fewer bytes per weight: never less KV room."""
    wide = make_plan(**{**kwargs, "precision": "bf16", "num_gpus": kwargs["num_gpus"] or 1})
    narrow = make_plan(**{**kwargs, "precision": "fp8", "num_gpus": kwargs["num_gpus"] or 1})
    for a, b in zip(wide["layouts"], narrow["layouts"], strict=True):
        assert a["layout"] == b["layout"] and b["kv_tokens"] >= a["kv_tokens"]


def test_planner_imports_nothing_heavy():
    """Importing the planner and making plans (one with a command, one the registry refuses) loads
    no torch and no model code; the registry package ingot.models (a dict of names) is allowed."""
    import subprocess
    import sys

    code = ("import sys, ingot.plan.cli, ingot.plan.web, ingot.plan.bench_check, ingot.commands.build; "
            "from ingot.plan import make_plan; make_plan('llama-3.1-8b', 'h100'); make_plan('mixtral-8x7b', 'h100'); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'triton') "
            "or m.startswith(('ingot.runtime', 'ingot.models.', 'ingot.llm', 'ingot.layers'))]; "
            "print(heavy); sys.exit(bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
