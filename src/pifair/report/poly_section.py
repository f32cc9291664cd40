"""Report section of ``pifair polyfit``."""

from __future__ import annotations

from ..runs import Run
from .html import img, pct, register_section, table


@register_section("polyfit")
def polyfit_section(run: Run) -> str:
    m = run.metrics
    if "test_accuracy" not in m:
        return "<p>polyfit not finished (resume it with <code>--resume</code>).</p>"
    rows = [
        [
            g["name"],
            pct(p["accuracy"]),
            pct(g["accuracy"]),
            f"{100 * (p['accuracy'] - g['accuracy']):.2f}",
        ]
        for g, p in zip(m["test"]["groups"], m["parent_test"]["groups"])
    ]
    before = m.get("val_accuracy_before_finetune")
    before_text = (
        f" ({pct(before)} validation accuracy before fine-tuning)" if before is not None else ""
    )
    return "".join(
        [
            f"<p>Degree-{m['degree']} {m['granularity']}-wise polynomials replace the "
            f"{m['parent_relus']:,} ReLUs of "
            f"<code>{run.config.get('from')}</code> at {m['poly_sites']} sites "
            f"({m['coefficients']:,} coefficients), "
            f"least-squares fits of ReLU on the calibrated input ranges"
            f"{before_text}, then KD "
            f"fine-tuning from the ReLU parent. Test accuracy {pct(m['test_accuracy'])} against "
            f"{pct(m['parent_test_accuracy'])} (drop {100 * m['drop']:.2f} points); {m['relus']} "
            "ReLUs left.</p>",
            table(["group", "ReLU parent", "polynomial", "drop"], rows),
            img(run.file("curves.png"), "fine-tuning curves"),
        ]
    )
