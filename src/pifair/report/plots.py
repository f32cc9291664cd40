"""Plots written as PNG into run folders (matplotlib, no display needed)."""

from __future__ import annotations

import os


def _pyplot():
    """matplotlib, imported on first use with the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["training_curves", "group_accuracy"]


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
