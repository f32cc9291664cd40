"""Plots written as PNG into run folders (matplotlib, no display needed)."""

from __future__ import annotations

import os


def _pyplot():
    """matplotlib, imported on first use with the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["training_curves", "group_accuracy", "search_trajectory", "pareto"]


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
    history: list[dict], path: str | os.PathLike, *, budgets: list[int] = ()
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
