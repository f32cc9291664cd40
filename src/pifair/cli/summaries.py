"""What each command prints when it is done: one summary per command, read from its metrics."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..runs import Run

__all__ = ["table"]


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Aligned text: the first column left, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    )


def train(run: Run) -> None:
    m = run.metrics
    print(f"test accuracy {pct(m['test_accuracy'])}  ({m['relus']:,} ReLUs)  run: {run.path}")


def dp_sweep(run: Run) -> None:
    m = run.metrics
    rows = [
        [
            r["point"],
            pct(r["val_accuracy"]),
            pct(r["val_worst_group_accuracy"]),
            "-" if r["val_minority_majority_gap"] is None else pct(r["val_minority_majority_gap"]),
        ]
        for r in m["rows"]
    ]
    print(table([["point", "val accuracy", "val worst group", "val gap"], *rows]))
    for by, s in m["selected"].items():
        print(
            f"selected by validation {by}: {s['point']} -> test accuracy {pct(s['test_accuracy'])}"
        )
    print(f"note: {m['not_accounted']}  run: {run.path}")


def imported(run: Run) -> None:
    m = run.metrics
    print(
        f"{m['model']}: test accuracy {pct(m['test_accuracy'])}  ({m['relus']:,} ReLUs)  "
        f"run: {run.path}"
    )


def dp_train(run: Run) -> None:
    m = run.metrics
    for key in sorted(k for k in m if k.startswith("unaccounted_")):
        print(f"warning: {m[key]['note']}", file=sys.stderr)
    privacy = (
        f"epsilon {m['epsilon']:.2f} at delta {m['delta']:g} "
        f"(noise multiplier {m['noise_multiplier']:.3f})"
        if "epsilon" in m
        else "non-private"
    )
    worst = min(m["test_groups"].items(), key=lambda kv: kv[1])
    print(
        f"{m['method']}: test accuracy {pct(m['test_accuracy'])}, worst group {worst[0]} "
        f"{pct(worst[1])}, {privacy}  run: {run.path}"
    )


def linearize(run: Run) -> None:
    m = run.metrics
    print(
        f"{m['relus']:,} ReLUs (budget {m['budget']:,}): test {pct(m['test_accuracy'])} "
        f"(dense {pct(m['parent_test_accuracy'])}, drop {100 * m['drop']:.2f} points)  "
        f"run: {run.path}"
    )


def sweep(run: Run) -> None:
    rows = [("method", "budget", "ReLUs", "test", "drop", "time s")]
    for r in sorted(run.metrics["rows"], key=lambda r: (r["method"], r["relus"])):
        rows.append(
            (
                r["method"],
                str(r["budget"]),
                f"{r['relus']:,}",
                pct(r["test_accuracy"]),
                f"{100 * r['drop']:.2f}",
                f"{r['total_s']:.0f}",
            )
        )
    print(table(rows))
    print(f"sweep: {run.path} (pareto.csv, pareto.png)")


def share(run: Run) -> None:
    m = run.metrics
    print(
        f"{m['relus']:,} shared decisions (budget {m['budget']:,}; {m['allocation']}): "
        f"test {pct(m['test_accuracy'])} (parent {pct(m['parent_test_accuracy'])} with "
        f"{m['parent_relus']:,} ReLUs, drop {100 * m['drop']:.2f} points)  run: {run.path}"
    )


def polyfit(run: Run) -> None:
    m = run.metrics
    print(
        f"degree-{m['degree']} {m['granularity']}-wise polynomials at {m['poly_sites']} sites "
        f"({m['coefficients']:,} coefficients): test {pct(m['test_accuracy'])} "
        f"(ReLU parent {pct(m['parent_test_accuracy'])}), {m['relus']} ReLUs left  "
        f"run: {run.path}"
    )


def mitigate(run: Run) -> None:
    m = run.metrics
    print(
        f"{m.get('objective', '?')} fine-tuning at {m['relus']:,} ReLUs: "
        f"test {pct(m['test_accuracy'])} (dense {pct(m['parent_test_accuracy'])}), "
        f"worst group {pct(m['test']['worst_group_accuracy'])}  run: {run.path}"
    )


def audit(run: Run) -> None:
    pairs = run.metrics["pairs"]
    if pairs:
        sizes = ", ".join(f"{g['name']} {g['count']:,}" for g in pairs[0]["groups"])
        print(f"group sizes ({run.metrics['split']}): {sizes}")
    rows = [("run", "ReLUs", "acc", "drop", "worst", "max-min", "min-maj", "unweighted")]
    for p in pairs:
        gap, flat = ("-", "-")
        if p["minority_gap"] is not None:
            gap = f"{100 * p['minority_gap']:.2f}"
            flat = f"{100 * p['minority_gap_unweighted']:.2f}"
        rows.append(
            (
                Path(p["run"]).name,
                f"{p['relus']:,}",
                pct(p["reduced_accuracy"]),
                f"{100 * p['drop']:.2f}",
                pct(p["worst_group_accuracy"]),
                f"{100 * p['drop_spread']:.2f}",
                gap,
                flat,
            )
        )
    print(table(rows))
    print(
        "worst: worst-group accuracy; max-min: largest minus smallest group drop; min-maj: "
        "minority-majority gap, the size-weighted mean drop of the minority groups minus the "
        "majority's (points); unweighted: every group weighs the same"
    )
    print(f"audit: {run.path}")


def he_infer(run: Run) -> None:
    m = run.metrics
    if "encrypted_accuracy" not in m:
        return  # the client's half (--role client): it said what to run next
    p = m["params"]
    print(
        f"{m['images']} images under CKKS (N={p['poly_modulus_degree']}, log Q {p['log_q']}, "
        f"depth {m['depth']}): encrypted accuracy {pct(m['encrypted_accuracy'])} "
        f"(plaintext {pct(m['plaintext_accuracy'])}), agreement {pct(m['argmax_agreement'])}, "
        f"max logit error {m['max_logit_error']:.1e}, "
        f"{m['amortized_ms_per_image']:.2f} ms per image amortized (server; client: encrypt "
        f"{m['client_ms_per_image']['encrypt']:.2f}, decrypt "
        f"{m['client_ms_per_image']['decrypt']:.3f} ms per image)  run: {run.path}"
    )
    if "batch_vs_image_layout" in m:
        c = m["batch_vs_image_layout"]
        print(
            f"one image per ciphertext: {c['image_layout_ms_per_image']:.0f} ms per image; "
            f"batch packing takes {100 * c['time_reduction']:.1f}% less time per image"
        )


def mpc_infer(run: Run) -> None:
    m = run.metrics
    if "argmax_agreement" not in m:
        p = m["party"]
        print(
            f"party {p['rank']} ({p['role']}) done: {len(p['run_seconds'])} runs, "
            f"{sum(p['run_seconds']):.2f} s  run: {run.path}"
        )
        return
    print(
        f"{m['images']} images under {m['protocol']} ({m['security']}); parties: {m['placement']}"
    )
    print(
        f"agreement with plaintext {100 * m['argmax_agreement']:.1f}%, max logit error "
        f"{m['max_logit_error']:.1e}; accuracy {100 * m['mpc_accuracy']:.1f}% "
        f"(plaintext {100 * m['plaintext_accuracy']:.1f}%)"
    )
    if m.get("per_image"):
        _mpc_per_image(m)
    if m.get("setup"):
        s = m["setup"]
        print(
            f"one-time setup (warm-up run {s['seconds']:.2f} s, {s['bytes'] / 1e6:.2f} MB): "
            f"{s['one_time_seconds']:.2f} s and {s['one_time_bytes'] / 1e6:.2f} MB beyond one run"
        )
    print(f"run: {run.path}")


def _mpc_per_image(m: dict) -> None:
    print(
        f"{m['relus']:,} ReLUs, {m['comparisons']:,} comparisons per image; "
        f"{m['seconds_per_image']:.2f} s, {m['bytes_per_image'] / 1e6:.2f} MB, "
        f"{m['per_image']['messages']:.0f} messages per image (rank {m['profiled_rank']}'s link)"
    )
    rows = [("per image", "seconds", "MB", "messages")]
    for category, v in m["per_image"]["by_category"].items():
        rows.append(
            (category, f"{v['seconds']:.3f}", f"{v['bytes'] / 1e6:.3f}", f"{v['messages']:.0f}")
        )
    print(table(rows))


def cost(est: dict) -> None:
    w, d, c = est["work"], est["delphi"], est["cheetah"]
    print(
        f"{est['model']}: {w['relus']:,} ReLUs (comparisons), {w['muxes']:,} multiplexers, "
        f"{w['poly_products']:,} polynomial products, {w['linear']['macs'] / 1e6:.2f} M "
        f"multiply-accumulates in {w['linear']['layers']} linear layers"
    )

    def mb(b: float) -> str:
        return f"{b / 1e6:,.2f}"

    cores = f"{d['cores']} core{'s' if d['cores'] > 1 else ''}"
    rows = [
        ("per image", "offline MB", "online MB", "offline s", "online s"),
        (
            f"DELPHI GC ({cores}, ReLUs only)",
            mb(d["offline_bytes"]),
            mb(d["online_bytes"]),
            f"{d['offline_seconds']:.3f}",
            f"{d['online_seconds']:.3f}",
        ),
        ("Cheetah (this engine, calibrated)", "-", mb(c["bytes"]), "-", f"{c['seconds']:.3f}"),
    ]
    for label, key in (
        ("  of which comparisons", "comparison"),
        ("  of which linear layers", "linear"),
        ("  of which multiplexers and products", "multiplication"),
    ):
        rows.append((label, "-", mb(c[f"{key}_bytes"]), "-", f"{c[f'{key}_seconds']:.3f}"))
    print(table(rows))
    print(f"Cheetah calibration: {est['calibration']}")
