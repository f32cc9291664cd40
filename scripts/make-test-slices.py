"""Write the small real data slices the tests read (tests/data/slices/), from ../shared/data.

Adult: every 40th row of adult.data and of adult.test, header kept, same format. CIFAR-10:
every 100th training and every 50th test image of the JPEG bundle (the JPEG bytes as they are),
in the bundle's own format. Evenly spaced rows keep every class and group. Run once:

    python scripts/make-test-slices.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "slices"


def adult(shared: Path) -> None:
    (OUT / "adult").mkdir(parents=True, exist_ok=True)
    for name in ("adult.data", "adult.test"):
        lines = (shared / "adult" / name).read_text().splitlines()
        header, rows = lines[0], [r for r in lines[1:] if r.strip()]
        (OUT / "adult" / name).write_text("\n".join([header, *rows[::40]]) + "\n")


def cifar10(shared: Path) -> None:
    (OUT / "cifar10").mkdir(parents=True, exist_ok=True)
    with np.load(shared / "cifar10-jpeg" / "cifar10_jpeg.npz") as z:
        out = {"classes": z["classes"]}
        for split, step in (("train", 100), ("test", 50)):
            blob, off, labels = z[f"{split}_jpeg"], z[f"{split}_offsets"], z[f"{split}_labels"]
            keep = np.arange(0, len(labels), step)
            parts = [blob[off[i] : off[i + 1]] for i in keep]
            out[f"{split}_jpeg"] = np.concatenate(parts)
            out[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)  # fmt: skip
            out[f"{split}_labels"] = labels[keep]
    np.savez_compressed(OUT / "cifar10" / "cifar10_jpeg.npz", **out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")  # fmt: skip
    ns = parser.parse_args()
    adult(ns.shared)
    cifar10(ns.shared)
    for p in sorted(OUT.rglob("*.*")):
        print(p.relative_to(OUT.parent), f"{p.stat().st_size / 1024:.0f} KiB")
