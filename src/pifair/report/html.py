"""One self-contained HTML page for a set of run folders: tables and plots embedded (base64).

Each run kind (``train``, later ``linearize``, ``share``, ...) has a section renderer in
:data:`SECTIONS`; a capability adds its section by registering one.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..errors import ConfigError
from ..runs import Run

__all__ = [
    "SECTIONS",
    "SUMMARIES",
    "register_section",
    "register_summary",
    "build_report",
    "img",
    "table",
    "machine_summary",
]

SectionRenderer = Callable[[Run], str]
SECTIONS: dict[str, SectionRenderer] = {}
SummaryRenderer = Callable[[list[Run]], str]
SUMMARIES: dict[str, SummaryRenderer] = {}


def register_section(kind: str):
    """Decorator: render runs whose config ``command`` is ``kind``."""

    def wrap(fn: SectionRenderer) -> SectionRenderer:
        SECTIONS[kind] = fn
        return fn

    return wrap


def register_summary(kind: str):
    """Decorator: one block over all runs of ``kind`` in a report (after the overview)."""

    def wrap(fn: SummaryRenderer) -> SummaryRenderer:
        SUMMARIES[kind] = fn
        return fn

    return wrap


def img(path: Path, alt: str = "") -> str:
    """An <img> with the PNG at ``path`` embedded, or nothing when the file is missing."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def machine_summary() -> dict[str, str]:
    """Where the report was made: host, CPU count, torch, device, git commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "commit": commit or "unknown",
        "made": _dt.datetime.now().isoformat(timespec="seconds"),
    }


@register_section("train")
def _train_section(run: Run) -> str:
    m, c = run.metrics, run.config
    if not m:
        return (
            f"<p>Run {html.escape(str(run.path))} has no metrics yet (still running, or "
            "killed: resume it).</p>"
        )
    test = m.get("test", {})
    rows = [
        [
            "data",
            f"{c.get('data')} (groups: "
            f"{c.get('group_by')}{', keep ' + str(c['keep']) if c.get('keep') else ''})",
        ],
        ["model", f"{c.get('model')} ({m.get('relus', 0):,} ReLUs)"],
        [
            "epochs / batch / lr",
            f"{c.get('epochs')} / {c.get('batch_size')} / {c.get('lr')} ({c.get('schedule')})",
        ],
        ["validation accuracy", pct(m.get("val_accuracy"))],
        ["test accuracy", pct(m.get("test_accuracy"))],
        ["worst-group test accuracy", pct(test.get("worst_group_accuracy"))],
        ["wall time", f"{m.get('wall_time_s', 0):.1f} s on {m.get('device')}"],
    ]
    groups = [
        [g["name"], g["count"], pct(g["accuracy"]), f"{g['loss']:.4f}"]
        for g in test.get("groups", [])
    ]
    return (
        table(["", ""], rows)
        + img(run.file("curves.png"), "training curves")
        + "<h4>Per-group test accuracy</h4>"
        + table(["group", "n", "accuracy", "loss"], groups)
        + img(run.file("groups.png"), "per-group accuracy")
    )


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.6em 0}
h2{border-bottom:2px solid #ddd}
.meta{color:#666;font-size:.9em}
"""


def _data_name(run: Run) -> str:
    data = run.metrics.get("data") or run.config.get("data", "-")
    return data.get("name", "-") if isinstance(data, dict) else str(data)


GENERATOR = '<meta name="generator" content="pifair">'


def _is_report(path: Path) -> bool:
    """A pifair report: marked as one (older ones: their overview heading)."""
    text = path.read_text(errors="replace")
    return GENERATOR in text[:4096] or "<h2>Overview</h2>" in text


def default_report_path(runs: Sequence[Run]) -> Path:
    """``report.html`` beside the first run, outside every reported run folder."""
    folders = [r.path.resolve() for r in runs]
    where = runs[0].path.resolve().parent
    while any(where == f or f in where.parents for f in folders) and where != where.parent:
        where = where.parent
    return where / "report.html"


def check_report_path(out: Path, runs: Sequence[Run]) -> None:
    """Refuse a report path that would replace something else, saying what to give instead."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file, e.g. {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: the report is an HTML file; give a path ending in .html")
    if out.exists() and not _is_report(out):
        raise ConfigError(f"{out} exists and is not a pifair report; choose another --out")
    where = out.resolve().parent
    inside = [
        r.path for r in runs if where == r.path.resolve() or r.path.resolve() in where.parents
    ]
    if inside:
        raise ConfigError(
            f"--out {out} is inside the run folder {inside[0]}; write the report next to the runs"
        )


def build_report(
    run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, title: str = "pifair report"
) -> Path:
    """Write the report for ``run_dirs`` to ``out`` (atomically) and return its path.

    ``out`` must be an ``.html`` file that is not inside one of the reported runs and is not
    an existing file other than a pifair report: a report never replaces anything else."""
    runs = [Run.open(p) for p in run_dirs]
    check_report_path(Path(out), runs)
    overview = []
    sections = []
    for run in runs:
        m, kind = run.metrics, run.config.get("command", "?")
        overview.append(
            [
                run.path.name,
                kind,
                _data_name(run),
                m.get("model") or run.config.get("model", "-"),
                f"{m.get('relus', 0):,}" if "relus" in m else "-",
                pct(m.get("test_accuracy")),
            ]
        )
        renderer = SECTIONS.get(kind)
        body = (
            renderer(run)
            if renderer
            else f"<p>No report section for runs of kind {html.escape(kind)}.</p>"
        )
        sections.append(
            f'<h2 id="{html.escape(run.path.name)}">{html.escape(run.path.name)} '
            f"<small>({html.escape(kind)})</small></h2>"
            f'<p class="meta">{html.escape(str(run.path))}</p>{body}'
        )
    summaries = "".join(
        fn([r for r in runs if r.config.get("command") == kind]) for kind, fn in SUMMARIES.items()
    )
    meta = machine_summary()
    page = (
        f"<!doctype html><html><head>{GENERATOR}<meta "
        f"charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='meta'>{' · '.join(f'{k}: {html.escape(v)}' for k, v in meta.items())}</p>"
        "<h2>Overview</h2>"
        + table(["run", "kind", "data", "model", "ReLUs", "test accuracy"], overview)
        + summaries
        + "".join(sections)
        + "</body></html>"
    )
    out = Path(out)
    atomic_write_text(out, page)
    return out
