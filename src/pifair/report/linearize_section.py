"""Report sections of ``pifair linearize`` and ``pifair sweep linearize``."""

from __future__ import annotations

from ..runs import Run
from .html import img, pct, register_section, table


@register_section("linearize")
def linearize_section(run: Run) -> str:
    m = run.metrics
    if "relus" not in m:
        return "<p>Not finished: resume it with <code>pifair linearize --resume</code>.</p>"
    rows: list[list[object]] = [
        [
            "method",
            f"{m['method']} ({m['granularity']}-wise, binarized by "
            f"{m['binarize']}){' - SNL reference settings' if m.get('reference') else ''}",
        ],
        [
            "fine-tuning objective",
            {
                "kd": "CE + KD",
                "constrained": "CE + KD, fairness-constrained (Das et al.)",
                "reweight": "CE + KD, groups reweighted",
            }.get(m.get("objective", "kd"), m.get("objective")),
        ],
        [
            "ReLUs",
            f"{m['relus']:,} of {m['parent_relus']:,} (budget {m['budget']:,}; "
            f"{100 * m['relus'] / m['parent_relus']:.2f} %)",
        ],
        [
            "test accuracy",
            f"{pct(m['test_accuracy'])} (dense {pct(m['parent_test_accuracy'])}, drop "
            f"{100 * m['drop']:.2f} points)",
        ],
        [
            "validation accuracy",
            f"{pct(m['val_accuracy'])} (soft searched model: {pct(m.get('val_accuracy_soft'))}; "
            f"right after binarization: {pct(m.get('val_accuracy_before_finetune'))})",
        ],
        ["binarization", m.get("binarize", "")],
        [
            "worst-group test accuracy",
            f"{pct(m['test']['worst_group_accuracy'])} (dense "
            f"{pct(m['parent_test']['worst_group_accuracy'])})",
        ],
        [
            "time",
            f"search {m['seconds']['reduce']:.0f} s, hardening {m['seconds'].get('harden', 0):.0f} "
            f"s, fine-tune {m['seconds']['finetune']:.0f} s on {m.get('device')}",
        ],
    ]
    dense_groups = {g["name"]: g["accuracy"] for g in m["parent_test"]["groups"]}
    groups = [
        [
            g["name"],
            pct(dense_groups.get(g["name"])),
            pct(g["accuracy"]),
            f"{100 * (dense_groups.get(g['name'], 0) - g['accuracy']):.2f}",
        ]
        for g in m["test"]["groups"]
    ]
    return (
        table(["", ""], rows)
        + img(run.file("search.png"), "SNL search")
        + img(run.file("curves.png"), "fine-tuning")
        + "<h4>Per-group test accuracy against the dense parent</h4>"
        + table(["group", "dense", "reduced", "drop (points)"], groups)
    )


@register_section("sweep-linearize")
def sweep_section(run: Run) -> str:
    m = run.metrics
    if "rows" not in m:
        return "<p>Not finished: resume it with <code>pifair sweep linearize --resume</code>.</p>"
    rows = [
        [
            r["method"],
            r["budget"],
            f"{r['relus']:,}",
            pct(r["test_accuracy"]),
            f"{100 * r['drop']:.2f}",
            pct(r["worst_group_accuracy"]),
            f"{r.get('reduce_s', r.get('search_s', 0.0)):.0f}",
            f"{r['finetune_s']:.0f}",
        ]
        for r in sorted(m["rows"], key=lambda r: (r["method"], r["relus"]))
    ]
    return (
        f"<p>Dense parent: {pct(m['parent_test_accuracy'])} with {m['parent_relus']:,} ReLUs on "
        f"{m['data']}. "
        "The SNL search is shared by all budgets (its time appears in each of its rows); for "
        "sharing the column is the layer allocation.</p>"
        + table(
            [
                "method",
                "budget",
                "ReLUs",
                "test acc.",
                "drop (pts)",
                "worst group",
                "search / allocation s",
                "fine-tune s",
            ],
            rows,
        )
        + img(run.file("pareto.png"), "Pareto plot")
    )


@register_section("share")
def share_section(run: Run) -> str:
    m = run.metrics
    if "relus" not in m:
        return "<p>Not finished: resume it with <code>pifair share --resume --out RUN</code>.</p>"
    rows = [
        ["scheme / rule", f"{m['scheme']} / {m['rule']}"],
        [
            "sign decisions",
            f"{m['relus']:,} (budget {m['budget']:,}; dense {m['parent_relus']:,}: "
            f"{m['parent_relus'] / max(m['relus'], 1):.0f}x fewer)",
        ],
        ["groupings", ", ".join(f"{k}: {v}" for k, v in m["allocation"].items())],
        [
            "test accuracy",
            f"{pct(m['test_accuracy'])} (dense {pct(m['parent_test_accuracy'])}, drop "
            f"{100 * m['drop']:.2f} points)",
        ],
        [
            "worst-group test accuracy",
            f"{pct(m['test']['worst_group_accuracy'])} (dense "
            f"{pct(m['parent_test']['worst_group_accuracy'])})",
        ],
        [
            "time",
            f"allocation {m['seconds']['reduce']:.0f} s, fine-tune "
            f"{m['seconds']['finetune']:.0f} s on {m.get('device')}",
        ],
    ]
    return (
        table(["", ""], rows)
        + img(run.file("curves.png"), "fine-tuning")
        + img(run.file("groups.png"), "per-group accuracy")
    )
