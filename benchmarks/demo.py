"""The end-to-end demo (``pifair demo``) from scratch: wall time and the headline number of each
stage, read back from the run folders it wrote. README's demo figures come from this file.

    python benchmarks/demo.py [--out runs/demo]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, print_table, save_results  # noqa: E402
from pifair.demo import run_demo  # noqa: E402
from pifair.runs import Run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    ns = parser.parse_args()
    print(f"machine: {machine_line()}")
    shutil.rmtree(ns.out, ignore_errors=True)  # from scratch: the time is the whole demo's
    t0 = time.perf_counter()
    run_demo(ns.out, progress=False)
    wall = time.perf_counter() - t0

    def metrics(name: str) -> dict:
        return Run.open(ns.out / name).metrics

    dense = metrics("train")
    epoch_s = sorted(h["epoch_time_s"] for h in dense["history"])[len(dense["history"]) // 2]
    rows = [["dense LeNet", f"{dense['relus']:,}", f"{100 * dense['test_accuracy']:.2f}"]]
    for r in sorted(metrics("linearize")["rows"], key=lambda r: r["relus"]):
        rows.append([f"SNL {r['budget']}", f"{r['relus']:,}", f"{100 * r['test_accuracy']:.2f}"])
    share, mitigated = metrics("share-1000"), metrics("mitigate-1000")
    rows.append(["shared (patches)", f"{share['relus']:,}", f"{100 * share['test_accuracy']:.2f}"])
    rows.append(
        [
            "SNL 1000, constrained fine-tuning",
            f"{mitigated['relus']:,}",
            f"{100 * mitigated['test_accuracy']:.2f}",
        ]
    )
    poly, he = metrics("polyfit"), metrics("he-infer")
    rows.append(["he_cnn, polynomials", "0", f"{100 * poly['test_accuracy']:.2f}"])
    header = ["model", "ReLUs", "test accuracy %"]
    print_table(header, rows)
    summary = [
        f"dense CNN {100 * dense['test_accuracy']:.2f} % test accuracy, median epoch {epoch_s:.1f} "
        "s",
        f"CKKS: encrypted accuracy {100 * he['encrypted_accuracy']:.2f} % on {he['images']:,} "
        f"images, agreement {100 * he['argmax_agreement']:.2f} %, "
        f"{he['amortized_ms_per_image']:.1f} ms per image",
        f"whole demo {wall / 60:.1f} min ({wall:.0f} s)",
    ]
    print("\n" + "\n".join(summary))
    save_results(
        "demo",
        tables={"demo stages": (header, rows)},
        summary=summary,
        data={
            "wall_s": wall,
            "dense": {k: dense[k] for k in ("test_accuracy", "relus")},
            "epoch_s": epoch_s,
        },
        setting={"out": str(ns.out)},
    )


if __name__ == "__main__":
    main()
