"""Report section of ``pifair audit``."""

from __future__ import annotations

from pathlib import Path

from ..runs import Run
from .html import img, pct, register_section, table


def _pm(mean: float | None, half: float | None, runs: int) -> str:
    if mean is None or mean != mean:  # None or NaN
        return "-"
    spread = f" ± {100 * half:.2f}" if runs > 1 and half is not None else ""
    return f"{100 * mean:.2f}" + spread


@register_section("audit")
def audit_section(run: Run) -> str:
    m = run.metrics
    if "pairs" not in m:
        return "<p>Audit not finished.</p>"
    summary = [
        [
            r["label"],
            f"{r['relus']:,}",
            r["runs"],
            _pm(r["accuracy"], r["accuracy_ci"], r["runs"]),
            _pm(r["drop"], r["drop_ci"], r["runs"]),
            _pm(r["worst_group_accuracy"], r["worst_group_accuracy_ci"], r["runs"]),
            _pm(r["drop_spread"], r["drop_spread_ci"], r["runs"]),
            _pm(r["minority_gap"], r["minority_gap_ci"], r["runs"]),
            _pm(r.get("minority_gap_unweighted"), r.get("minority_gap_unweighted_ci"), r["runs"]),
        ]
        for r in m["summary"]
    ]
    parts = [
        f"<p>Per-group audit on the {m['split']} split, groups by {m['group_by']}. Drops in points "
        "(dense minus reduced); "
        "± is the 95 % confidence interval across seeds. <i>max-min spread</i>: largest minus "
        "smallest group drop. "
        "<i>minority-majority gap</i>: mean drop of the minority groups minus that of the majority "
        "groups, each group weighted by its "
        "size (the drop of the pooled samples), and unweighted beside it "
        "(minority: fewer than 80 % of the mean group's training samples).</p>",
        table(
            [
                "method",
                "ReLUs",
                "runs",
                "accuracy %",
                "drop",
                "worst group %",
                "max-min spread",
                "minority-majority gap",
                "gap, unweighted",
            ],
            summary,
        ),
        img(run.file("drops.png"), "per-group drop against ReLU budget"),
    ]
    for i, p in enumerate(m["pairs"][:6]):
        rows = [
            [
                g["name"] + (" (minority)" if g["minority"] else ""),
                g["count"],
                pct(g["dense_accuracy"]),
                pct(g["reduced_accuracy"]),
                f"{100 * g['drop']:.2f}",
                f"{g['dense_margin']:.3f} / {g['reduced_margin']:.3f}",
                "-"
                if g["dense_grad_norm"] is None
                else f"{g['dense_grad_norm']:.2f} / {g['reduced_grad_norm']:.2f}",
            ]
            for g in p["groups"]
        ]
        parts += [
            f"<h4>{Path(p['run']).name}: {p['relus']:,} ReLUs, {p['label']}</h4>",
            table(
                [
                    "group",
                    "n",
                    "dense",
                    "reduced",
                    "drop",
                    "margin dense / reduced",
                    "grad norm dense / reduced",
                ],
                rows,
            ),
            img(run.file(f"margins-{i}.png"), "margins"),
        ]
    return "".join(parts)
