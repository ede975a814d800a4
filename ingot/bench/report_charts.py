"""The charts of `ingot bench report`: records in, Charts (a PNG and the table of what it plots) out.

    latency     decode tok/s of the whole batch against batch size, beside the floor the card's copy
                bandwidth allows; decode_floor_ratio (measured / floor) against batch size
    throughput  output tok/s per ISL/OSL as bars, each ingot bar annotated with compute_ceiling_ratio;
                the same run's peer beside it, figures published elsewhere as hatched bars
    serve       TTFT and TPOT (p50 solid, p99 dashed) against request rate; output tok/s against it

A series is one configuration: device, model, dtype/quant, and ISL/OSL where the lengths are not the
x axis. Reruns give one series the same x twice: the newest record (by `date`, then file name) is
drawn and the others are named under the chart, so no file is silently left out.

Figures are drawn on matplotlib's Agg canvas directly, never through pyplot: no GUI backend is
chosen and no global figure state is kept between reports.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ingot.bench.report import Record


@dataclass
class Chart:
    title: str
    png: bytes  # the chart as a PNG file
    columns: tuple[str, ...]
    rows: list[tuple]  # one per point drawn, the source file last
    note: str = ""


@dataclass
class Bar:
    value: float
    file: str
    ratio: float | None = None  # ingot bars: compute_ceiling_ratio


def draw_all(records: list[Record]) -> list[Chart]:
    charts = []
    for kind, draw in (("latency", latency_charts), ("throughput", throughput_charts), ("serve", serve_charts)):
        chosen = [r for r in records if r.kind == kind]
        if chosen:
            charts.extend(draw(chosen))
    return charts


# -- latency ---------------------------------------------------------------------------------


def latency_charts(records: list[Record]) -> list[Chart]:
    points, superseded = newest(records, lambda r: (series_name(r), r.data["batch_size"]))
    fig = Figure(figsize=(12, 4.5))
    tok_ax, ratio_ax = fig.subplots(1, 2)
    rows = []
    for i, (name, items) in enumerate(by_series(points).items()):
        color = f"C{i % 10}"
        tok_ax.plot([x for x, _ in items], [total_decode_tok_s(r) for _, r in items], marker="o", color=color,
                    label=name)
        for ax, field, style, label in ((tok_ax, "decode_floor_tok_s", ":", f"{name}, floor"),
                                        (ratio_ax, "decode_floor_ratio", "-", name)):
            line = [(x, y) for x, r in items if (y := number(r.data.get(field))) is not None]
            if line:
                ax.plot(*zip(*line), style, marker="o" if style == "-" else None, color=color, label=label)
        rows += [(name, x, r.data["decode_tok_s"], total_decode_tok_s(r), r.data.get("decode_floor_tok_s"),
                  r.data.get("decode_floor_ratio"), r.data.get("ttft_ms"), r.data.get("tpot_ms"), r.file)
                 for x, r in items]
    ratio_ax.axhline(1.0, color="grey", linestyle=":", label="the floor: batch x copy bandwidth / bytes a step reads")
    all_batches = sorted({x for _, x in points})
    for ax, ylabel in ((tok_ax, "decode tok/s, all sequences (dotted: the floor)"),
                       (ratio_ax, "decode_floor_ratio (measured / floor)")):
        _batch_axis(ax, all_batches)
        _finish(ax, ylabel)
    columns = ("series", "batch size", "decode tok/s per sequence", "decode tok/s, all sequences", "floor tok/s",
               "floor ratio", "TTFT ms", "TPOT ms", "file")
    return [Chart("Latency: decode speed against batch size", to_png(fig), columns, rows, _note(superseded))]


def total_decode_tok_s(record: Record) -> float:
    """Tokens per second over the whole batch, what the floor bounds: decode_tok_s_total where the
    record has it, else its definition, per-sequence decode_tok_s x batch_size."""
    total = number(record.data.get("decode_tok_s_total"))
    return total if total is not None else record.data["decode_tok_s"] * record.data["batch_size"]


def _batch_axis(ax, batches: list) -> None:
    ax.set_xscale("log", base=2)  # batch sizes are powers of two, mostly
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size")


# -- throughput ------------------------------------------------------------------------------


def _lengths(category: tuple) -> str:
    isl, osl, random_lengths = category
    return f"{isl}/{osl}" + (" random" if random_lengths else "")


def throughput_charts(records: list[Record]) -> list[Chart]:
    # a random-lengths run (each request's lengths drawn around isl/osl) is a workload of its own
    points, superseded = newest(records, lambda r: (series_name(r, lengths=False),
                                                    (r.data["isl"], r.data["osl"], bool(r.data.get("random_lengths")))))
    categories = sorted({cat for _, cat in points})
    ingot, peers, published = {}, {}, {}  # series name -> {(isl, osl): Bar}
    for (name, cat), record in sorted(points.items()):
        data = record.data
        ingot.setdefault(name, {})[cat] = Bar(data["output_tok_s"], record.file,
                                              number(data.get("compute_ceiling_ratio")))
        for peer_name, value in peer_figures(data.get("peer"), "output_tok_s"):
            peers.setdefault(f"peer: {peer_name} ({data.get('device')})", {}).setdefault(cat, Bar(value, record.file))
        for label, value in published_figures(data.get("published"), "output_tok_s"):
            published.setdefault(f"published: {label}", {}).setdefault(cat, Bar(value, record.file))
    fig = Figure(figsize=(max(8, 2.5 * len(categories)), 5))
    ax = fig.subplots()
    everything = {**ingot, **peers, **published}
    width = 0.8 / len(everything)
    for i, (name, cells) in enumerate(everything.items()):
        xs = [categories.index(cat) - 0.4 + width * (i + 0.5) for cat in cells]
        hatched = name in published
        ax.bar(xs, [bar.value for bar in cells.values()], width, label=name,
               color="white" if hatched else f"C{i % 10}", edgecolor=f"C{i % 10}", hatch="//" if hatched else None)
        for x, bar in zip(xs, cells.values()):
            if bar.ratio is not None:
                ax.annotate(f"{bar.ratio:.0%} of\nceiling", (x, bar.value), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(categories)), [_lengths(cat) for cat in categories])
    ax.set_xlabel("ISL/OSL (input/output tokens per request)")
    _finish(ax, "output tok/s")
    rows = [(name, _lengths(cat), bar.value, bar.ratio, bar.file)
            for name, cells in everything.items() for cat, bar in cells.items()]
    columns = ("series", "ISL/OSL", "output tok/s", "compute ceiling ratio", "file")
    note = "Hatched bars are published figures (not measured here); compute_ceiling_ratio above ingot's bars."
    return [Chart("Offline throughput per ISL/OSL", to_png(fig), columns, rows,
                  " ".join(filter(None, (note, _note(superseded)))))]


def peer_figures(peer, key: str) -> list[tuple[str, float]]:
    """The peer's figure, and one per nested result holding it ({"name": ..., "generate_batch": {key: ...}})."""
    if not isinstance(peer, dict):
        return []
    name = str(peer.get("name") or "peer")
    found = [(name, value)] if (value := number(peer.get(key))) is not None else []
    for part, result in peer.items():
        if isinstance(result, dict) and (value := number(result.get(key))) is not None:
            found.append((f"{name}, {part}", value))
    return found


def published_figures(items, key: str) -> list[tuple[str, float]]:
    """(source, hardware, precision) and the figure, for each published item that gives `key`."""
    found = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and (value := number(item.get(key))) is not None:
            label = ", ".join(str(item[k]) for k in ("source", "hardware", "precision") if item.get(k))
            found.append((label or "unnamed", value))
    return found


# -- serve -----------------------------------------------------------------------------------


def serve_charts(records: list[Record]) -> list[Chart]:
    points, superseded = newest(records, lambda r: (serve_series_name(r), number(r.data["request_rate"])))
    rates = sorted({rate for _, rate in points})  # inf ("all at once") last
    series = by_series(points)
    latency_fig, tput_fig = Figure(figsize=(12, 4.5)), Figure(figsize=(8, 4.5))
    ttft_ax, tpot_ax = latency_fig.subplots(1, 2)
    tput_ax = tput_fig.subplots()
    for i, (name, items) in enumerate(series.items()):
        for ax, metric in ((ttft_ax, "ttft"), (tpot_ax, "tpot")):
            for q, style in (("p50", "-"), ("p99", "--")):
                line = [(rates.index(x), y) for x, r in items if (y := percentile(r, metric, q)) is not None]
                if line:
                    ax.plot(*zip(*line), style, marker="o", color=f"C{i % 10}", label=f"{name} {q}")
        tput_ax.plot([rates.index(x) for x, _ in items], [r.data["output_tok_s"] for _, r in items], marker="o",
                     color=f"C{i % 10}", label=name)
    for ax, ylabel in ((ttft_ax, "TTFT ms"), (tpot_ax, "TPOT ms"), (tput_ax, "output tok/s")):
        ax.set_xticks(range(len(rates)), [_rate_label(rate) for rate in rates])
        ax.set_xlabel("request rate (req/s; inf: all at once)")
        _finish(ax, ylabel)
    note = _note(superseded)
    latency_rows = [(name, x, *(percentile(r, m, q) for m in ("ttft", "tpot") for q in ("p50", "p99")), r.file)
                    for name, items in series.items() for x, r in items]
    tput_rows = [(name, x, r.data["output_tok_s"], r.file) for name, items in series.items() for x, r in items]
    return [Chart("Online serving: TTFT and TPOT against request rate", to_png(latency_fig),
                  ("series", "request rate", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "file"),
                  latency_rows, note),
            Chart("Online serving: output tok/s against request rate", to_png(tput_fig),
                  ("series", "request rate", "output tok/s", "file"), tput_rows, note)]


def serve_series_name(record: Record) -> str:
    """A closed loop (--max-concurrency) is another configuration than open Poisson arrivals at the same rate."""
    concurrency = record.data.get("max_concurrency")
    return series_name(record) + (f" · concurrency {concurrency}" if concurrency is not None else "")


def percentile(record: Record, metric: str, q: str) -> float | None:
    """record["ttft_ms"]["p50"] and the like; `ingot bench serve` has called p50 "median"."""
    stats = record.data.get(f"{metric}_ms")
    if not isinstance(stats, dict):
        return None
    return number(stats.get(q, stats.get("median") if q == "p50" else None))


def _rate_label(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


# -- shared ----------------------------------------------------------------------------------


def series_name(record: Record, lengths: bool = True) -> str:
    """device · model · dtype[/quant] [· ISL/OSL]: the configuration a line or a bar colour stands for."""
    d = record.data
    quant = d.get("quant") if d.get("quant") not in (None, "none") else None  # records write "none" or null
    precision = f"{d.get('dtype') or 'dtype ?'}{'/' + str(quant) if quant else ''}"  # a server's dtype may be unknown
    model = str(d.get("model")).split(" (")[0][:40]  # records may describe the model at length in brackets
    name = f"{d.get('device')} · {model} · {precision}"
    return f"{name} · {d.get('isl')}/{d.get('osl')}" if lengths else name


def newest(records: list[Record], key: Callable[[Record], tuple]) -> tuple[dict[tuple, Record], list[str]]:
    """{key: the newest record with it}, and the files of the older ones that share a key."""
    ordered = sorted(records, key=lambda r: (str(r.data.get("date") or ""), r.file))
    kept = {key(r): r for r in ordered}  # later (newer) records overwrite earlier ones
    return kept, [r.file for r in ordered if kept[key(r)] is not r]


def by_series(points: dict[tuple, Record]) -> dict[str, list[tuple]]:
    """{series name: [(x, record)] in x order} from {(series name, x): record}."""
    series: dict[str, list[tuple]] = {}
    for (name, x), record in sorted(points.items(), key=lambda kv: kv[0]):
        series.setdefault(name, []).append((x, record))
    return series


def number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return math.inf
    return None


def _finish(ax, ylabel: str) -> None:
    """y from zero (bars and lines compare by height), a light grid, the legend under the plot so it hides no point."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15))


def _note(superseded: list[str]) -> str:
    return f"Not drawn, a newer record gives the same point: {', '.join(superseded)}." if superseded else ""


def to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches the Agg canvas: PNG output without a GUI backend
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()
