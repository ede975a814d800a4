"""/metrics in the Prometheus text exposition format (version 0.0.4), written by hand: three
small types cover what the server reports, and the engine's own counters come from EngineStats.

Counters and histograms are touched only on the event loop thread, so they need no lock;
EngineStats is an immutable snapshot that comes with every step of the engine core (core_records.py).
"""

from __future__ import annotations

import bisect
from collections import defaultdict

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels)
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value)) if isinstance(value, float) else str(value)


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        return lines + [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{_number(float(bound))}"}} {cumulative}')
        return lines + [f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {self.count}"]


def _gauge(name: str, help: str, value: float, kind: str = "gauge") -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]


class ServerMetrics:
    """What the HTTP layer measures; render() adds the engine's snapshot."""

    def __init__(self) -> None:
        self.http_requests = Counter("ingot_http_requests_total", "HTTP requests answered, by route and status code.")
        self.finished = Counter("ingot_request_finished_total", "Generated sequences finished, by finish reason.")
        self.ttft = Histogram("ingot_time_to_first_token_seconds", "Time from request arrival to its first token.",
                              TTFT_BUCKETS)
        self.tpot = Histogram("ingot_time_per_output_token_seconds",
                              "Mean time between output tokens after the first, per sequence.", TPOT_BUCKETS)
        self.e2e = Histogram("ingot_e2e_request_latency_seconds", "Time from request arrival to its last token.",
                             E2E_BUCKETS)
        self.in_flight = 0

    def observe_sequence(self, ttft: float | None, e2e: float, num_tokens: int, finish_reason: str) -> None:
        """One finished sample (a choice): its latencies and how it ended."""
        self.finished.inc(reason=finish_reason)
        if ttft is None:
            return
        self.ttft.observe(ttft)
        self.e2e.observe(e2e)
        if num_tokens > 1:
            self.tpot.observe((e2e - ttft) / (num_tokens - 1))

    def render(self, stats) -> str:
        lines = []
        for metric in (self.http_requests, self.finished, self.ttft, self.tpot, self.e2e):
            lines += metric.render()
        lines += _gauge("ingot_requests_in_flight", "HTTP generation requests being served now.", self.in_flight)
        lines += _engine_lines(stats)
        return "\n".join(lines) + "\n"


def _engine_lines(stats) -> list[str]:
    rows = (
        ("ingot_num_requests_running", "Sequences admitted to the batch and holding KV blocks.", stats.running,
         "gauge"),
        ("ingot_num_requests_waiting", "Sequences queued for admission (preempted ones included).", stats.waiting,
         "gauge"),
        ("ingot_kv_cache_usage_ratio", "Fraction of KV cache blocks in use (0 to 1).", stats.kv_usage, "gauge"),
        ("ingot_kv_cache_blocks_used", "KV cache blocks referenced by requests.", stats.kv_blocks_used, "gauge"),
        ("ingot_kv_cache_blocks_total", "Usable KV cache blocks.", stats.kv_blocks_total, "gauge"),
        ("ingot_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / tokens looked up.",
         stats.prefix_cache_hit_rate, "gauge"),
        ("ingot_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
         stats.prefix_cache_queries, "counter"),
        ("ingot_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", stats.prefix_cache_hits,
         "counter"),
        ("ingot_prompt_tokens_total", "Prompt tokens received by the engine.", stats.prompt_tokens_total, "counter"),
        ("ingot_generation_tokens_total", "Tokens generated by the engine.", stats.generation_tokens_total,
         "counter"),
        ("ingot_num_preemptions_total", "Requests preempted to free KV blocks.", stats.preempted_total, "counter"),
        ("ingot_computed_tokens_total", "Token positions the model computed (prompt, decode, verified drafts).",
         stats.computed_tokens_total, "counter"),
        ("ingot_recomputed_tokens_total", "Computed token positions whose KV a preemption had dropped.",
         stats.recomputed_tokens_total, "counter"),
        ("ingot_engine_steps_total", "Engine steps run.", stats.num_steps, "counter"),
        ("ingot_spec_decode_draft_tokens_total", "Speculative draft tokens verified.", stats.draft_tokens_total,
         "counter"),
        ("ingot_spec_decode_accepted_tokens_total", "Speculative draft tokens accepted.",
         stats.accepted_draft_tokens_total, "counter"),
        ("ingot_spec_decode_verify_steps_total", "Request-steps that verified at least one draft token.",
         stats.verify_steps_total, "counter"),
        ("ingot_spec_decode_acceptance_rate", "Accepted / verified draft tokens since start.",
         stats.draft_acceptance_rate, "gauge"),
        ("ingot_spec_decode_mean_accepted_length", "Tokens a request gets per step that verifies drafts.",
         stats.mean_accepted_length, "gauge"),
        ("ingot_spec_decode_draft_seconds_total", "Time spent proposing draft tokens.", stats.draft_seconds_total,
         "counter"),
    )
    lines = []
    for name, help, value, kind in rows:
        lines += _gauge(name, help, value, kind)
    return lines
