"""`ingot bench throughput|latency|serve|report`: offline benchmarks of an engine, the online one
against any OpenAI-compatible server, and charts of their records. Each sub-verb lives in ingot/bench/."""

from __future__ import annotations

import importlib

_SUBVERBS = ("ingot.bench.offline", "ingot.bench.serve", "ingot.bench.report")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: throughput / latency (offline), serve (online), "
                                            "report (charts of their records)")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="KIND")
    for name in _SUBVERBS:
        importlib.import_module(name).register(sub)
