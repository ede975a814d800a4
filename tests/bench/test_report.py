"""`ingot bench report`: records of each kind -> one HTML page of PNG charts and their tables."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest

from ingot.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = {"device": "NVIDIA H200", "commit": "abc123", "command": "ingot bench ...", "model": "LlamaForCausalLM",
          "dtype": "bf16", "quant": None, "copy_tbps": 4.2, "matmul_tflops": 790.0}


def _latency(batch: int, tok_s: float, ratio: float, date: str = "2026-12-01") -> dict:
    return {**HEADER, "benchmark": "latency", "date": date, "isl": 128, "osl": 128, "batch_size": batch,
            "decode_tok_s": tok_s, "ttft_ms": 20.5, "tpot_ms": round(1000 / tok_s, 3),
            "decode_floor_tok_s": round(tok_s / ratio, 1), "decode_floor_ratio": ratio}


def _throughput(isl: int, osl: int, tok_s: float, peer: dict | None = None, published: list | None = None) -> dict:
    return {**HEADER, "benchmark": "throughput", "date": "2026-12-01", "isl": isl, "osl": osl, "num_requests": 1000,
            "output_tok_s": tok_s, "preemptions": 0, "recomputed_tokens": 0, "compute_ceiling_tok_s": tok_s * 2,
            "compute_ceiling_ratio": 0.5, "peer": peer, "published": published or []}


def _serve(rate: float, tok_s: float, ttft_p99: float) -> dict:
    stats = lambda p50, p99: {"mean": p50, "p50": p50, "p99": p99}  # noqa: E731
    return {**HEADER, "benchmark": "serve", "date": "2026-12-01", "isl": 128, "osl": 128, "num_requests": 200,
            "request_rate": rate, "output_tok_s": tok_s, "ttft_ms": stats(31.5, ttft_p99),
            "tpot_ms": stats(6.25, 9.75), "itl_ms": stats(6.0, 9.0), "e2e_ms": stats(830.0, 990.0)}


def _write_records(directory: Path) -> None:
    records = {
        "lat-b1.json": _latency(1, 202.7, 0.855),
        "lat-b8-old.json": _latency(8, 1111.0, 0.5, date="2026-11-30"),
        "lat-b8.json": {**_latency(8, 182.5, 0.612), "decode_tok_s_total": 1460.0},
        "tput-128-128.json": _throughput(128, 128, 11747.1, peer={"name": "transformers", "output_tok_s": 1571.2},
                                         published=[{"source": "TensorRT-LLM docs", "hardware": "H100",
                                                     "precision": "fp8", "output_tok_s": 28837}]),
        "tput-2048-128.json": _throughput(2048, 128, 3321.5, peer={"name": "transformers",
                                                                   "generate_batch": {"output_tok_s": 402.5}}),
        "serve-4.json": _serve(4.0, 512.5, 77.25),
        "serve-inf.json": _serve(float("inf"), 2048.5, 412.75),
        "serve-inf-c8.json": {**_serve("inf", 1024.5, 300.0), "max_concurrency": 8},  # how `bench serve` spells inf
    }
    for name, record in records.items():
        (directory / name).write_text(json.dumps(record))  # inf is written as Infinity, which json reads back
    (directory / "old-shape.json").write_text(json.dumps({"device": "NVIDIA H200", "before": {"decode_tok_s": 1}}))
    (directory / "broken.json").write_text('{"benchmark": "latency", ')


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_draws_every_kind_and_lists_what_it_skipped(tmp_path, capsys):
    _write_records(tmp_path)
    out = tmp_path / "report.html"
    assert main(["bench", "report", str(tmp_path), "-o", str(out)]) == 0
    page = out.read_text()
    images = _images(page)
    assert len(images) == 4  # latency, throughput, serve latency, serve throughput
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    for value in ("202.7", "182.5", "1460", "0.612", "11747.1", "1571.2", "28837", "402.5", "3321.5", "77.25", "2048.5",
                  "9.75", "inf", "2048/128"):
        assert f"<td>{value}</td>" in page, value
    for label in ("peer: transformers (NVIDIA H200)", "peer: transformers, generate_batch (NVIDIA H200)",
                  "published: TensorRT-LLM docs, H100, fp8"):
        assert f"<td>{label}</td>" in page
    for name in ("lat-b1.json", "lat-b8.json", "tput-128-128.json", "serve-inf.json", "serve-inf-c8.json"):
        assert f"<td>{name}</td>" in page
    assert "<td>1111</td>" not in page and "newer record gives the same point: lat-b8-old.json" in page
    skipped = page.split("Skipped files", 1)[1]
    assert "old-shape.json" in skipped and 'no "benchmark" key' in skipped
    assert "broken.json" in skipped and "not valid JSON" in skipped
    assert "<td>NVIDIA H200 · LlamaForCausalLM · bf16 · 128/128 · concurrency 8</td>" in page  # its own series
    assert "4 chart(s) from 8 record(s); 2 file(s) skipped" in capsys.readouterr().out


def test_report_draws_only_the_kinds_it_has(tmp_path):
    (tmp_path / "lat.json").write_text(json.dumps(_latency(1, 100.0, 0.5)))
    (tmp_path / "bad-rate.json").write_text(json.dumps({**_serve(1.0, 10.0, 5.0), "request_rate": "fast"}))
    out = tmp_path / "r.html"
    assert main(["bench", "report", str(tmp_path / "lat.json"), str(tmp_path / "bad-rate.json"), "-o", str(out)]) == 0
    page = out.read_text()
    assert len(_images(page)) == 1 and "Latency" in page and "Offline throughput" not in page
    assert "bad-rate.json" in page and "without a number in request_rate" in page


def test_report_over_the_repository_records_does_not_crash(tmp_path):
    out = tmp_path / "report.html"
    assert main(["bench", "report", str(RESULTS), "-o", str(out)]) == 0
    page = out.read_text()
    for path in RESULTS.glob("*.json"):
        assert path.name in page  # drawn (named in a table) or listed as skipped
    assert all(image.startswith(PNG_SIGNATURE) for image in _images(page))


def test_missing_path_is_a_one_line_error(tmp_path, capsys):
    assert main(["bench", "report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    (tmp_path / "lat.json").write_text(json.dumps(_latency(1, 100.0, 0.5)))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main(["bench", "report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'ingot[report]'" in err
    assert not (tmp_path / "r.html").exists()


def test_png_dir_holds_each_chart_as_a_file(tmp_path):
    (tmp_path / "lat.json").write_text(json.dumps(_latency(1, 100.0, 0.5)))
    pngs = tmp_path / "charts"
    assert main(["bench", "report", str(tmp_path / "lat.json"), "-o", str(tmp_path / "r.html"),
                 "--png-dir", str(pngs)]) == 0
    files = list(pngs.glob("*.png"))
    assert [f.name for f in files] == ["latency-decode-speed-against-batch-size.png"]
    assert files[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
