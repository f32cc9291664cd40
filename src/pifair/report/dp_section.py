"""Report section of ``pifair dp-train``: privacy spent, per-group accuracy, privacy cost and
gradient misalignment."""

from __future__ import annotations

from ..runs import Run
from .html import img, pct, register_section, register_summary, table


def _mean_alignment(history: list[dict], group: str, key: str) -> float | None:
    values = [h["alignment"][group][key] for h in history if group in h.get("alignment", {})]
    return sum(values) / len(values) if values else None


@register_section("dp-train")
def dp_section(run: Run) -> str:
    m, c = run.metrics, run.config
    if "test_groups" not in m:
        return "<p>DP training not finished (resume it with <code>--resume</code>).</p>"
    if "epsilon" in m:
        state = ", ".join(
            f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {[round(b, 2) for b in v]}"
            for k, v in m["rule_state"].items()
        )
        privacy = (
            f"({m['epsilon']:.3f}, {m['delta']:g})-DP over {m['steps']:,} steps: noise multiplier "
            f"{m['noise_multiplier']:.4f}, sampling rate {m['sample_rate']:.5f} (Poisson), clip "
            f"{c['clip']:g}; "
            f"{sum(n for _, _, n in m['releases']) - m['steps']:,} further count releases "
            "accounted. "
            f"{'Final ' + state + '. ' if state else ''}"
        )
    else:
        privacy = "Non-private baseline (plain SGD). "
    history = m["history"]
    cost = m.get("privacy_cost", {})
    diagnosed = any(h.get("alignment") for h in history)
    rows = [
        [
            name,
            pct(acc),
            "-" if name not in cost else f"{100 * cost[name]:.2f}",
            *(
                (
                    ("-" if (v := _mean_alignment(history, name, k)) is None else f"{v:.3f}")
                    for k in ("cosine", "norm_ratio")
                )
                if diagnosed
                else ()
            ),
        ]
        for name, acc in m["test_groups"].items()
    ]
    header = ["group", "test accuracy", "privacy cost (points)"]
    if diagnosed:
        header += ["cos(clipped, raw) [not DP]", "|clipped| / |raw| [not DP]"]
    warning = (
        "<p class='meta'><b>Not covered by epsilon:</b> the misalignment columns are exact "
        "statistics of the private training data (research diagnostics, "
        "<code>--diag-every</code>); "
        "do not release them with the model.</p>"
        if diagnosed and "epsilon" in m
        else ""
    )
    gap = _cost_gaps(m)
    return "".join(
        [
            f"<p><b>{c['method']}</b> on "
            f"{c['data']}{' (keep ' + c['keep'] + ')' if c.get('keep') else ''}, "
            f"{c['model']}, {c['epochs']} epochs, expected batch {c['batch_size']}, lr "
            f"{c['lr']:g}, "
            f"{m.get('grad_path', c['grad_path'])} path, {m['samples_per_s']:.0f} samples/s. "
            f"{privacy}{gap}</p>",
            table(header, rows),
            warning,
            "<p class='meta'>Misalignment: per group, the mean over measured steps of the cosine "
            "and the norm ratio "
            "between the clipped and the unclipped mean gradient of the group's samples in the "
            "batch (before noise).</p>"
            if diagnosed
            else "",
            img(
                run.file("dp_curves.png"),
                "per-group accuracy, epsilon and direction error per epoch",
            ),
        ]
    )


def _cost_gaps(m: dict) -> str:
    """The privacy-cost gaps, each named for what it is."""
    if "privacy_cost_max_min_spread" not in m:
        if "privacy_cost_gap" in m:  # runs written before the gaps were named apart
            return (
                " Privacy cost, max-min spread over the groups: "
                f"<b>{100 * m['privacy_cost_gap']:.2f} points</b> against "
                f"<code>{m['baseline']}</code>."
            )
        return ""
    parts = []
    gap = m.get("privacy_cost_minority_majority_gap")
    if gap is not None:
        minority = ", ".join(m.get("minority_groups", []))
        parts.append(
            f"minority-majority gap (size-weighted; minority: {minority}) <b>{100 * gap:.2f} "
            "points</b>"
        )
    loss_gap = m.get("privacy_cost_loss_minority_majority_gap")
    if loss_gap is not None:
        parts.append(f"on test loss {loss_gap:+.3f}")
    parts.append(
        f"max-min spread over all groups {100 * m['privacy_cost_max_min_spread']:.2f} points"
    )
    return f" Privacy cost against <code>{m['baseline']}</code>: {'; '.join(parts)}."


# what must be equal for two DP runs' gaps to be compared (docs/dp.md, "Tuning, and comparing
# methods fairly"): a method's learning rate moves its gap as much as its clipping rule does
COMPARED_SETTINGS = ("data", "keep", "model", "epochs", "batch_size", "lr", "epsilon", "delta")


def unequal_settings(configs: list[dict]) -> dict[str, list]:
    """The settings in :data:`COMPARED_SETTINGS` on which the private runs differ."""
    out = {}
    for key in COMPARED_SETTINGS:
        values = [c.get(key) for c in configs]
        if len({repr(v) for v in values}) > 1:
            out[key] = values
    return out


@register_summary("dp-train")
def dp_comparison_summary(runs: list[Run]) -> str:
    """Several private methods in one report: say whether their gaps may be compared."""
    private = [r for r in runs if r.config.get("method") not in (None, "nonprivate")]
    if len({r.config["method"] for r in private}) < 2:
        return ""
    differ = unequal_settings([r.config for r in private])
    rows = [
        [r.path.name, r.config["method"], *(str(r.config.get(k)) for k in differ)] for r in private
    ]
    if not differ:
        verdict = (
            "<p>These private runs share data, model, epochs, batch, learning rate and privacy "
            "level: their gaps differ by method alone. A fair comparison still tunes each method "
            "on the same grid (<code>pifair sweep dp-train</code>): a learning rate that suits "
            "one method can widen another's gap.</p>"
        )
        return "<h2>DP methods compared</h2>" + verdict
    verdict = (
        f"<p><b>Not a fair comparison:</b> these private runs differ in "
        f"{', '.join(differ)}, so their gaps differ for more than the method. Tune each method "
        "on the same grid with <code>pifair sweep dp-train</code> and compare the selected "
        "runs (docs/dp.md).</p>"
    )
    return "<h2>DP methods compared</h2>" + verdict + table(["run", "method", *differ], rows)


@register_section("sweep-dp-train")
def dp_sweep_section(run: Run) -> str:
    """A DP sweep: validation over the grid, the selected points and what tuning costs."""
    m = run.metrics
    if "rows" not in m:
        return "<p>DP sweep not finished (run the same command again to continue it).</p>"
    rows = [
        [
            r["point"],
            pct(r["val_accuracy"]),
            pct(r["val_worst_group_accuracy"]),
            pct(r["val_minority_majority_gap"]),
        ]
        for r in m["rows"]
    ]
    chosen = "".join(
        f"<li>by validation {by}: <b>{s['point']}</b>, test accuracy {pct(s['test_accuracy'])}, "
        f"worst group {pct(s['test_worst_group_accuracy'])}</li>"
        for by, s in m["selected"].items()
    )
    return (
        f"<p>{m['method']}: {m['points']} settings, {m['epochs']} epochs each, expected batch "
        f"{m['batch_size']}; selected on the validation split, test read afterwards.</p>"
        + table(["setting", "val accuracy", "val worst group", "val majority - minority"], rows)
        + f"<ul>{chosen}</ul><p class='meta'><b>Not covered by epsilon:</b> {m['not_accounted']}"
        "</p>" + img(run.file("grid.png"), "validation over the grid")
    )
