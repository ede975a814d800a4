"""The plan as a readable text report (the dict from make_plan in, a string out)."""

from __future__ import annotations

from typing import Any

_COLUMNS = (  # header, width, how to read it from a layout row
    ("layout", 14, lambda r: r["layout"]),
    ("GPUs", 4, lambda r: r["num_gpus"]),
    ("fits", 24, lambda r: r["status"]),
    ("weights", 8, lambda r: f"{r['memory_gb']['weights']:.1f}"),
    ("KV env", 7, lambda r: f"{r['memory_gb']['kv_envelope']:.1f}"),
    ("act+ws", 6, lambda r: f"{r['memory_gb']['activations']:.1f}"),
    ("ovh", 4, lambda r: f"{r['memory_gb']['overhead']:.1f}"),
    ("KV tokens", 10, lambda r: f"{r['kv_tokens']:,}"),
    ("max conc", 8, lambda r: f"{r['max_concurrency']:,}"),
    ("decode tok/s", 12, lambda r: _perf(r, "decode_tok_s", "{:,.0f}")),
    ("TPOT ms", 7, lambda r: _perf(r, "tpot_ms", "{:.1f}")),
    ("prefill tok/s", 13, lambda r: _perf(r, "prefill_tok_s", "{:,.0f}")),
    ("TTFT ms", 8, lambda r: _perf(r, "ttft_ms", "{:,.0f}")),
    ("output tok/s", 12, lambda r: _perf(r, "output_tok_s", "{:,.0f}")),
)


def _perf(row: dict[str, Any], key: str, fmt: str) -> str:
    return fmt.format(row["perf"][key]) if row["perf"] else "-"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    def line(cells):
        return "  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w)
                         for i, (c, (_, w, _)) in enumerate(zip(cells, _COLUMNS, strict=True)))
    out = [line(h for h, _, _ in _COLUMNS)]
    out += [line(get(r) for _, _, get in _COLUMNS) for r in rows]
    return out


def _header(plan: dict[str, Any]) -> list[str]:
    m, g, p, e = plan["model"], plan["gpu"], plan["precision"], plan["envelope"]
    active = f", {m['active_params_b']:.1f} B active ({m['experts_per_token']} of {m['experts']} experts)" \
        if m["moe"] else ""
    return [
        f"model     {m['name']} ({m['architecture']}): {m['params_b']:.1f} B params{active}",
        f"          weights {plan['weights_gb']:.1f} GB in {p['name']} ({p['about']}); "
        f"KV {m['kv_bytes_per_token']:,} bytes/token in {p['kv_cache_dtype']}" + (" (MLA latent)" if m["mla"] else ""),
        f"gpu       {g['name']}: {g['memory_gb']:.1f} GB, {g['bandwidth_gbs']:,.0f} GB/s, "
        f"dense TFLOPS {', '.join(f'{k} {v:,.0f}' for k, v in g['tflops_dense'].items())}, "
        f"{g['link'].upper()} {g['link_gbs']:,.0f} GB/s",
        f"envelope  ISL {e['isl']:,} + OSL {e['osl']:,} = {e['seq_len']:,} tokens/request, "
        f"{e['concurrency']} concurrent, max_num_tokens {e['max_num_tokens']:,}",
    ]


def _recommendation(plan: dict[str, Any]) -> list[str]:
    rec = plan["recommendation"]
    row = rec["layout"]
    if row is None:
        return ["", f"DOES NOT FIT: {rec['reason']}"]
    out = ["", f"recommended  {row['layout']} on {row['num_gpus']} GPU(s): {rec['reason']}"]
    gb = row["memory_gb"]
    out.append(f"memory/GPU   weights {gb['weights']:.1f} GB + KV for envelope {gb['kv_envelope']:.1f} GB "
               f"+ activations/workspace {gb['activations']:.1f} GB + runtime {gb['overhead']:.1f} GB "
               f"of {gb['capacity']:.1f} GB; KV pool {gb['kv_pool']:.1f} GB = {row['kv_tokens']:,} tokens "
               f"= {row['max_concurrency']:,} requests of {plan['envelope']['seq_len']:,}")
    perf = row["perf"]
    if perf:
        out.append(f"throughput   decode {perf['decode_tok_s']:,.0f} tok/s at {perf['concurrency']} concurrent "
                   f"({perf['decode_bound']}-bound, TPOT {perf['tpot_ms']:.1f} ms, of which TP/PP "
                   f"communication {perf['comm_ms_per_step']:.2f} ms); prefill {perf['prefill_tok_s']:,.0f} "
                   f"tok/s, TTFT {perf['ttft_ms']:,.0f} ms alone; offline {perf['output_tok_s']:,.0f} output tok/s")
    return out + _build(rec)


def _build(rec: dict[str, Any]) -> list[str]:
    """The command, or why there is none; then what to do first and where it builds less."""
    command = rec["build_command"] or "none: `ingot build` cannot build this plan yet (the note says why)"
    return ["", "build", f"  {command}"] + [f"  note: {n}" for n in rec["build_notes"]]


def _assumptions(plan: dict[str, Any]) -> list[str]:
    a = plan["assumptions"]
    return ["", "assumptions  decode streams weights+KV at "
            f"{a['decode_bw_efficiency']:.0%} of HBM bandwidth; matmuls at {a['matmul_efficiency']:.0%} of dense "
            f"peak; all-reduce at {a['link_efficiency']:.0%} of one-way link bandwidth + "
            f"{a['nvlink_latency_s'] * 1e6:.0f} us (NVLink) / {a['pcie_latency_s'] * 1e6:.0f} us (PCIe) per call; "
            f"{a['step_overhead_s'] * 1e3:.1f} ms host time per step; KV pool = {a['kv_memory_fraction']:.0%} of "
            f"free memory; {a['runtime_overhead_gib']:.1f} GiB runtime + {a['nccl_overhead_gib']:.1f} GiB NCCL per GPU"]


def render(plan: dict[str, Any]) -> str:
    lines = _header(plan)
    notes = plan["precision"]["notes"] + plan["warnings"]
    lines += [f"NOTE      {n}" for n in notes]
    lines += [""] + _table(plan["layouts"])
    lines += _recommendation(plan) + _assumptions(plan)
    return "\n".join(lines)
