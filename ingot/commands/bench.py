"""`ingot bench throughput|latency|serve`: offline benchmarks of an engine, and the online one
against any OpenAI-compatible server. Each sub-verb lives in ingot/bench/."""

from __future__ import annotations

import importlib

_SUBVERBS = ("ingot.bench.offline", "ingot.bench.serve")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: throughput / latency (offline), serve (online)")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="KIND")
    for name in _SUBVERBS:
        importlib.import_module(name).register(sub)
