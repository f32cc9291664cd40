"""Plots written as PNG into run folders (matplotlib, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence


def _pyplot():
    """matplotlib, imported on first use with the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = [
    "training_curves",
    "group_accuracy",
    "search_trajectory",
    "pareto",
    "drops_by_budget",
    "margin_distributions",
    "dp_curves",
    "accuracy_gap_pareto",
    "privacy_cost_gaps",
    "dp_grid",
]


def training_curves(history: list[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Loss and accuracy per epoch (train and validation)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss")
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train")
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], label="validation")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def group_accuracy(report: dict, path: str | os.PathLike, *, title: str = "") -> None:
    """Bar chart of per-group accuracy with the overall accuracy as a line."""
    plt = _pyplot()
    groups = report["groups"]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(groups) + 2), 3.2))
    ax.bar([g["name"] for g in groups], [100 * g["accuracy"] for g in groups], color="tab:blue")
    ax.axhline(
        100 * report["accuracy"],
        color="k",
        ls="--",
        lw=1,
        label=f"all {100 * report['accuracy']:.1f}%",
    )
    lo = min(100 * g["accuracy"] for g in groups)
    ax.set(ylabel="accuracy (%)", ylim=(max(0, lo - 10), 100), title=title)
    ax.tick_params(axis="x", rotation=45)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_trajectory(
    history: list[dict], path: str | os.PathLike, *, budgets: Sequence[int] = ()
) -> None:
    """SNL search: ReLUs with a above the threshold, and lambda, per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(epochs, [h["count"] for h in history], marker="o", label="ReLUs with a > threshold")
    for b in budgets:
        ax.axhline(b, color="tab:red", ls=":", lw=1)
    ax.set(xlabel="search epoch", ylabel="ReLUs", yscale="log")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["lambda"] for h in history], color="tab:gray", ls="--", label="lambda")
    ax2.set(ylabel="lambda", yscale="log")
    ax.grid(alpha=0.3)
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto(
    rows: list[dict],
    dense_accuracy: float,
    dense_relus: int,
    path: str | os.PathLike,
    *,
    published: list[tuple[int, float, float]] | None = None,
    title: str = "",
) -> None:
    """Accuracy and drop against ReLU count per method; published reference points if given
    (ReLUs, accuracy %, drop in points), drawn as drops since their dense model differs."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["relus"])
        x = [r["relus"] for r in sel]
        ax1.plot(x, [100 * r["test_accuracy"] for r in sel], marker="o", label=method)
        ax2.plot(x, [100 * r["drop"] for r in sel], marker="o", label=method)
    ax1.axhline(
        100 * dense_accuracy, color="k", ls="--", lw=1, label=f"dense ({dense_relus:,} ReLUs)"
    )
    if published:
        ax1.plot(
            [p[0] for p in published],
            [p[1] for p in published],
            "s",
            color="tab:gray",
            mfc="none",
            label="SNL published (lossless)",
        )
        ax2.plot(
            [p[0] for p in published],
            [p[2] for p in published],
            "s--",
            color="tab:gray",
            mfc="none",
            label="SNL published",
        )
    ax1.set(
        xscale="log",
        xlabel="ReLUs",
        ylabel="test accuracy (%)",
        title=title or "accuracy vs ReLU budget",
    )
    ax2.set(xscale="log", xlabel="ReLUs", ylabel="drop from dense (points)", title="accuracy drop")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drops_by_budget(summary: list[dict], path: str | os.PathLike) -> None:
    """Per-group accuracy drop against ReLU count, one panel per method (minority dashed)."""
    plt = _pyplot()
    labels = list(dict.fromkeys(r["label"] for r in summary))
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 3.6), squeeze=False)
    for ax, label in zip(axes[0], labels):
        rows = sorted((r for r in summary if r["label"] == label), key=lambda r: r["relus"])
        for name in rows[0]["group_drops"]:
            minority = name in rows[0]["minority"]
            ax.plot(
                [r["relus"] for r in rows],
                [100 * r["group_drops"][name] for r in rows],
                marker="o",
                ls="--" if minority else "-",
                lw=2 if minority else 1,
                label=name + (" (minority)" if minority else ""),
            )
        ax.set(xscale="log", xlabel="ReLUs", ylabel="accuracy drop (points)", title=label)
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def margin_distributions(
    margins: dict[str, dict[str, list[float]]], path: str | os.PathLike, *, title: str = ""
) -> None:
    """Per group, box plots of the softmax top-1 minus top-2 margin of dense and reduced models."""
    plt = _pyplot()
    models = list(margins)
    groups = list(margins[models[0]])
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(groups) + 2), 3.4))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        pos = [j + (i - (len(models) - 1) / 2) * width for j in range(len(groups))]
        box = ax.boxplot(
            [margins[model][g] for g in groups],
            positions=pos,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=False,
        )
        for patch in box["boxes"]:
            patch.set_facecolor(f"C{i}")
            patch.set_alpha(0.6)
        ax.plot([], [], color=f"C{i}", lw=6, alpha=0.6, label=model)
    ax.set_xticks(range(len(groups)), groups, rotation=45)
    ax.set(ylabel="top-1 minus top-2 softmax", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dp_curves(history: list[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Per-group test accuracy, epsilon spent, and per-group direction error, per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    groups = list(history[-1]["test_groups"]) if history else []
    private = bool(history) and "epsilon" in history[-1]
    fig, axes = plt.subplots(1, 3 if private else 1, figsize=(13 if private else 5, 3.4))
    axes = axes if private else [axes]
    for name in groups:
        axes[0].plot(
            epochs, [100 * h["test_groups"].get(name, float("nan")) for h in history], label=name
        )
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%)", title="per group")
    if private:
        axes[1].plot(epochs, [h["epsilon"] for h in history], color="k")
        axes[1].set(xlabel="epoch", ylabel="epsilon spent", title="privacy")
        for name in groups:  # 1 - cos on a log axis: aligned steps sit near 1e-6, bent ones near 1
            ys = [
                max(1 - h["alignment"].get(name, {}).get("cosine", float("nan")), 1e-7)
                for h in history
            ]
            axes[2].plot(epochs, ys, label=name, marker=".")
        axes[2].set_yscale("log")
        axes[2].set(
            xlabel="epoch", ylabel="1 - cos(clipped, unclipped)", title="direction error per group"
        )
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_gap_pareto(points: list[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Overall accuracy against the minority-majority gap, one point per objective and budget,
    with 95 % intervals on both axes (``points``: label, relus, accuracy, accuracy_ci, gap,
    gap_ci, in points). Up and towards 0 on the x axis is better."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    labels = list(dict.fromkeys(p["label"] for p in points))
    budgets = sorted({p["relus"] for p in points})
    markers = "os^Dv<>p"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(labels):
        for j, relus in enumerate(budgets):
            for p in (p for p in points if p["label"] == label and p["relus"] == relus):
                ax.errorbar(
                    p["gap"],
                    p["accuracy"],
                    xerr=p["gap_ci"],
                    yerr=p["accuracy_ci"],
                    fmt=markers[j % len(markers)],
                    color=colours[i % len(colours)],
                    capsize=3,
                    label=label if j == 0 else None,
                )
    ax.axvline(0, color="grey", lw=0.8)
    handles = [
        plt.Line2D(
            [], [], marker=markers[j % len(markers)], ls="", color="black", label=f"{b:,} ReLUs"
        )
        for j, b in enumerate(budgets)
    ]
    first = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.add_artist(first)
    second = ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0))
    ax.set(
        xlabel="minority-majority gap in accuracy drop (points)",
        ylabel="accuracy (%, balanced test)",
        title=title,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", bbox_extra_artists=[first, second])
    plt.close(fig)


def privacy_cost_gaps(points: list[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Each DP method's accuracy against the minority-majority gap of its privacy cost, on
    accuracy (left, points) and on test loss (right), 95 % intervals on both axes (``points``:
    method, accuracy, accuracy_ci, gap, gap_ci, gap_loss, gap_loss_ci). Up and towards 0 is
    better."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key, label in (
        (axes[0], "gap", "minority-majority gap of the accuracy cost (points)"),
        (axes[1], "gap_loss", "minority-majority gap of the test-loss cost"),
    ):
        for i, p in enumerate(points):
            ax.errorbar(
                p[key],
                p["accuracy"],
                xerr=p[f"{key}_ci"],
                yerr=p["accuracy_ci"],
                fmt="os^Dv<>"[i % 7],
                color=colours[i % len(colours)],
                capsize=3,
                label=p["method"],
            )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="test accuracy (%)")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dp_grid(rows: list[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """A DP sweep on its validation split: accuracy, worst group's accuracy and the
    minority-majority gap against the learning rate, one line per clip bound."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = (
        ("val_accuracy", "validation accuracy (%)"),
        ("val_worst_group_accuracy", "worst group, validation (%)"),
        ("val_minority_majority_gap", "majority - minority (points)"),
    )
    for bound in dict.fromkeys(r["bound"] for r in rows):
        sel = sorted((r for r in rows if r["bound"] == bound), key=lambda r: r["lr"])
        label = "no clip" if bound is None else f"bound {bound:g}"
        for ax, (key, _) in zip(axes, panels):
            pts = [(r["lr"], 100 * r[key]) for r in sel if r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set(xscale="log", xlabel="learning rate", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title or "validation over the grid")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
