"""Report section of ``pifair mpc-infer``, and one table over all MPC runs of a report."""

from __future__ import annotations

from ..runs import Run
from ..secure.cost import DELPHI
from .html import pct, register_section, register_summary, table

MB = 1e6


def _per_op_tables(m: dict) -> list[str]:
    """Per image, the profiled rank's time, bytes and messages by kind of op, then by SPU op."""
    parts = []
    cats = m["per_image"]["by_category"]
    total_s = sum(c["seconds"] for c in cats.values()) or 1.0
    parts.append(
        f"<h4>Per image, by kind of op (rank {m['profiled_rank']}'s profile)</h4>"
        + table(
            ["ops", "seconds", "share of time", "MB", "messages"],
            [
                [
                    k,
                    f"{c['seconds']:.3f}",
                    pct(c["seconds"] / total_s),
                    _mb(c["bytes"]),
                    f"{c['messages']:.0f}",
                ]
                for k, c in cats.items()
            ],
        )
    )
    ops = sorted(m["per_image"]["ops"].items(), key=lambda kv: -kv[1]["bytes"])[:8]
    parts.append(
        table(
            ["SPU op", "calls / image", "seconds", "MB"],
            [[k, f"{v['count']:.0f}", f"{v['seconds']:.3f}", _mb(v["bytes"])] for k, v in ops],
        )
    )
    return parts


@register_section("mpc-infer")
def mpc_section(run: Run) -> str:
    m = run.metrics
    if "argmax_agreement" not in m:
        return "<p>mpc-infer not finished (or this folder holds one party of a multi-host run).</p>"
    parts = [
        f"<p>{m['images']} test image(s) of <code>{run.config.get('from')}</code> under "
        f"<b>{m['protocol']}</b> ({m['security']}); parties: {m['placement']}; {m['fixed_point']}"
        + (f"; OT: {m['ot']}" if m.get("ot") else "")
        + ".</p>",
        table(
            [
                "agreement with plaintext",
                "max logit error",
                "MPC accuracy",
                "plaintext accuracy",
                "comparisons / image",
                "seconds / image",
                "MB / image",
                "messages / image",
            ],
            [
                [
                    pct(m["argmax_agreement"]),
                    f"{m['max_logit_error']:.1e}",
                    pct(m["mpc_accuracy"]),
                    pct(m["plaintext_accuracy"]),
                    f"{m['comparisons']:,}",
                    f"{m['seconds_per_image']:.2f}",
                    _mb(m.get("bytes_per_image")),
                    f"{m['per_image']['messages']:.0f}" if m.get("per_image") else "-",
                ]
            ],
        ),
    ]
    if m.get("per_image"):
        parts += _per_op_tables(m)
    parties = [
        [
            p["rank"],
            p["role"] or "-",
            _mb(p.get("sent_per_image")),
            _mb(p.get("received_per_image")),
            p.get("derived_from", "measured" if p["measured"] else "-"),
        ]
        for p in m["parties"]
    ]
    parts.append(
        table(["rank", "role", "MB sent / image", "MB received / image", "source"], parties)
    )
    if m.get("setup"):
        s = m["setup"]
        parts.append(
            f"<p class='meta'>One-time setup (warm-up run on a zero image): {s['seconds']:.2f} s "
            f"and {_mb(s['bytes'])} MB, "
            f"of which {s['one_time_seconds']:.2f} s and {_mb(s['one_time_bytes'])} MB beyond an "
            "ordinary run; not charged to the images.</p>"
        )
    d = DELPHI.estimate(m["comparisons"])
    parts.append(
        f"<p class='meta'>DELPHI's garbled-circuit model for the same {m['comparisons']:,} ReLUs: "
        f"{_mb(d['offline_bytes'])} MB offline, "
        f"{_mb(d['online_bytes'])} MB online, {d['offline_seconds']:.2f} s to garble and "
        f"{d['online_seconds']:.2f} s to evaluate on one core.</p>"
    )
    return "".join(parts)


@register_summary("mpc-infer")
def mpc_summary(runs: list[Run]) -> str:
    """Dense against reduced: one row per finished MPC run."""
    done = [r for r in runs if "argmax_agreement" in r.metrics and r.metrics.get("per_image")]
    if len(done) < 2:
        return ""
    rows = []
    for r in sorted(done, key=lambda r: -r.metrics["comparisons"]):
        m = r.metrics
        cats = m["per_image"]["by_category"]
        total_s = sum(c["seconds"] for c in cats.values()) or 1.0
        rows.append(
            [
                r.path.name,
                m["protocol"],
                f"{m['comparisons']:,}",
                f"{m['seconds_per_image']:.2f}",
                _mb(m["bytes_per_image"]),
                _mb(cats["comparison"]["bytes"]),
                _mb(cats["linear"]["bytes"]),
                pct((cats["comparison"]["seconds"] + cats["multiplication"]["seconds"]) / total_s),
                pct(m["argmax_agreement"]),
            ]
        )
    return (
        "<h2>Private inference under MPC</h2>"
        + table(
            [
                "run",
                "protocol",
                "comparisons / image",
                "seconds / image",
                "MB / image",
                "comparison MB",
                "linear MB",
                "time in ReLUs",
                "agreement",
            ],
            rows,
        )
        + "<p class='meta'>Time in ReLUs: comparisons plus the multiplexers that apply their bits. "
        "ReLU reduction removes only this part; the linear layers stay.</p>"
    )


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / MB:.2f}"
