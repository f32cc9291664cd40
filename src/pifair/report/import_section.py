"""Report section of ``pifair import``: a user's architecture and weights, as evaluated here."""

from __future__ import annotations

from ..runs import Run
from .html import img, pct, register_section, table


@register_section("import")
def import_section(run: Run) -> str:
    m, c = run.metrics, run.config
    if "test_accuracy" not in m:
        return "<p>Import not finished (run pifair import again).</p>"
    test = m.get("test", {})
    rows: list[list[object]] = [
        ["architecture", c.get("arch")],
        ["weights", f"{c.get('weights')} (SHA-256 {str(c.get('weights_sha256'))[:16]}...)"],
        ["data", f"{c.get('data')} (groups: {c.get('group_by')})"],
        ["ReLUs (every call a site of its own)", f"{m.get('relus', 0):,}"],
        ["validation accuracy", pct(m.get("val_accuracy"))],
        ["test accuracy", pct(m.get("test_accuracy"))],
        ["worst-group test accuracy", pct(test.get("worst_group_accuracy"))],
    ]
    groups = [
        [g["name"], g["count"], pct(g["accuracy"]), f"{g['loss']:.4f}"]
        for g in test.get("groups", [])
    ]
    return (
        table(["", ""], rows)
        + "<h4>Per-group test accuracy</h4>"
        + table(["group", "n", "accuracy", "loss"], groups)
        + img(run.file("groups.png"), "per-group accuracy")
    )
