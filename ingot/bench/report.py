"""`ingot bench report`: the benchmark records as charts, in one HTML page.

    ingot bench report bench/results/ [MORE.json ...] [-o report.html]

Every JSON file named (a directory stands for the *.json in it) whose `benchmark` key is
latency, throughput or serve becomes a point on a chart (see report_charts.py). The page is
self-contained: each chart is a PNG inside it (a data: URI), with a table under it of the
values it plots and the file each came from, so a reader looks first and checks any point
against its file. Files of other shapes (older records, script outputs, broken JSON) are
listed at the bottom with the reason they were left out; they never stop the report.

matplotlib is an optional dependency (`pip install 'ingot[report]'`), imported only when a
report is drawn, so `ingot --help` and the other verbs never need it.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ingot.errors import ConfigError, IngotError

KINDS = ("latency", "throughput", "serve")
# The fields a record of each kind must hold as numbers to be drawn at all.
REQUIRED = {"latency": ("batch_size", "decode_tok_s"), "throughput": ("isl", "osl", "output_tok_s"),
            "serve": ("request_rate", "output_tok_s")}
INSTALL_HINT = "pip install 'ingot[report]'"


@dataclass(frozen=True)
class Record:
    file: str  # the file's name, shown beside every point drawn from it
    data: dict  # the JSON record, with REQUIRED[kind] present as numbers

    @property
    def kind(self) -> str:
        return self.data["benchmark"]


def register(sub) -> None:
    p = sub.add_parser("report", help="draw benchmark records (bench/results/*.json) as charts in one HTML page")
    p.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="directories of JSON records, or record files")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--png-dir", default=None, metavar="DIR",
                   help="also write each chart as DIR/<slug of its title>.png (README shows one of these)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    records, skipped = read_records(collect_files(args.paths))
    charts = _draw(records)
    Path(args.output).write_text(render_html(charts, skipped, args.paths), encoding="utf-8")
    if args.png_dir:
        _write_pngs(charts, Path(args.png_dir))
    print(f"wrote {args.output}: {len(charts)} chart(s) from {len(records)} record(s); "
          f"{len(skipped)} file(s) skipped (listed at the bottom of the page)")
    return 0


def _write_pngs(charts: list, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for chart in charts:
        slug = "".join(c if c.isalnum() else "-" for c in chart.title.lower()).strip("-")
        path = directory / f"{'-'.join(filter(None, slug.split('-')))}.png"
        path.write_bytes(chart.png)
        print(f"wrote {path}")


def _draw(records: list[Record]) -> list:
    try:
        import matplotlib  # noqa: F401 - only to fail early with the fix
    except ImportError:
        raise IngotError(f"the report draws its charts with matplotlib, which is not installed: {INSTALL_HINT}") \
            from None
    from ingot.bench.report_charts import draw_all

    return draw_all(records)


def collect_files(paths: list[str]) -> list[Path]:
    """The *.json files of each directory (sorted), and each file as given."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{name} does not exist; pass a directory of records (bench/results/) or JSON files")
    return files


def read_records(files: list[Path]) -> tuple[list[Record], list[tuple[str, str]]]:
    """(records to draw, [(file name, why it was skipped)])."""
    records, skipped = [], []
    for path in files:
        data, reason = _load(path)
        if reason is None:
            records.append(Record(path.name, data))
        else:
            skipped.append((path.name, reason))
    return records, skipped


def _load(path: Path) -> tuple[dict | None, str | None]:
    """The record, or None and the reason it cannot be drawn."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({exc})"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"holds a JSON {type(data).__name__}, not a record"
    kind = data.get("benchmark")
    if kind is None:
        return None, 'no "benchmark" key (a record of an older shape, or a script\'s output)'
    if kind not in KINDS:
        return None, f'"benchmark" is {kind!r}, none of {", ".join(KINDS)}'
    missing = [key for key in REQUIRED[kind] if not _is_number(data.get(key))]
    if missing:
        return None, f"a {kind} record without a number in {', '.join(missing)}"
    return data, None


def _is_number(value) -> bool:
    # request_rate "inf" is how a record may spell "all at once" (JSON has no infinity)
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or \
        (isinstance(value, str) and value.lower() in ("inf", "infinity"))


# -- the page --------------------------------------------------------------------------------


def render_html(charts: list, skipped: list[tuple[str, str]], sources: list[str]) -> str:
    body = [f"<h1>ingot benchmark report</h1><p>From {_text(', '.join(sources))}.</p>"]
    if not charts:
        body.append("<p>No latency, throughput or serve record was found: nothing to draw.</p>")
    for chart in charts:
        body.append(_chart_html(chart))
    if skipped:
        items = "".join(f"<li><code>{_text(name)}</code>: {_text(reason)}</li>" for name, reason in skipped)
        body.append(f"<h2>Skipped files</h2><ul>{items}</ul>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ingot benchmark report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:0.85em;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,td:last-child{text-align:left}")


def _chart_html(chart) -> str:
    image = base64.b64encode(chart.png).decode("ascii")
    head = "".join(f"<th>{_text(c)}</th>" for c in chart.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_text(_cell(v))}</td>" for v in row) + "</tr>" for row in chart.rows)
    note = f"<p>{_text(chart.note)}</p>" if chart.note else ""
    return (f"<h2>{_text(chart.title)}</h2><img alt=\"{html.escape(chart.title)}\" "
            f"src=\"data:image/png;base64,{image}\">{note}<table><tr>{head}</tr>{rows}</table>")


def _text(text: str) -> str:
    """Escaped for an element's text (quotes stay readable; they matter only inside attributes)."""
    return html.escape(text, quote=False)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.10g}"  # the recorded digits, not float noise
    return str(value)
