"""Encrypted inference of an HE-ready CNN on Fashion-MNIST under CKKS, one image per slot.

The CryptoNets-style ``he_cnn`` is trained with ReLU, then its ReLUs become degree-2
polynomials with coefficients per layer, per channel and per element (``pifair polyfit``, KD
from the ReLU model); each polynomial model then classifies one CKKS batch of test images
(``pifair he-infer``). Printed: plaintext accuracy of the ReLU and polynomial models, encrypted
accuracy, argmax agreement, max logit error, server time and amortized time per image.

    python benchmarks/he_fashion_mnist.py [--batch 4096] [--granularities layer,channel,element]
                                          [--out runs/bench-he]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine_line, print_table, save_results  # noqa: E402
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.runs import MODEL, Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.he import HEInferJob, run_he_infer  # noqa: E402
from pifair.workflows.polyfit import PolyfitJob, run_polyfit  # noqa: E402
from pifair.workflows.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--granularities", default="layer,channel,element")
    parser.add_argument("--epochs", type=int, default=10, help="ReLU training epochs")
    parser.add_argument(
        "--finetune-epochs", type=int, default=5, help="KD epochs per polynomial model"
    )
    parser.add_argument(
        "--compare-images",
        type=int,
        default=2,
        help="images run one per ciphertext (rotations) with the last granularity",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-he"))
    ns = parser.parse_args()
    print(f"machine: {machine_line()}\ncommit: {commit()}")
    dense = ns.out / "relu"
    if not (dense / MODEL).exists():
        shutil.rmtree(dense, ignore_errors=True)
        train(
            TrainConfig(
                data="fashion-mnist", model="he_cnn", epochs=ns.epochs, batch_size=128, lr=0.05
            ),
            out=dense,
            progress=False,
        )
    relu_acc = Run.open(dense).metrics["test_accuracy"]
    rows, results = [], []
    granularities = ns.granularities.split(",")
    for g in granularities:
        poly, he = ns.out / f"poly-{g}", ns.out / f"he-{g}"
        for p in (poly, he):
            shutil.rmtree(p, ignore_errors=True)
        run_polyfit(
            PolyfitJob(
                from_run=str(dense),
                granularity=g,
                finetune=FinetuneSettings(epochs=ns.finetune_epochs),
            ),
            out=poly,
            progress=False,
        )
        compare = ns.compare_images if g == granularities[-1] else 0
        m = run_he_infer(
            HEInferJob(from_run=str(poly), batch=ns.batch, compare_images=compare), out=he
        ).metrics
        results.append(
            {"granularity": g}
            | {
                k: m[k]
                for k in (
                    "encrypted_accuracy",
                    "plaintext_accuracy",
                    "argmax_agreement",
                    "max_logit_error",
                    "amortized_ms_per_image",
                    "seconds",
                    "params",
                    "images",
                )
            }
        )
        rows.append(
            [
                g,
                f"{100 * relu_acc:.2f}",
                f"{100 * m['plaintext_accuracy']:.2f}",
                f"{100 * m['encrypted_accuracy']:.2f}",
                f"{100 * m['argmax_agreement']:.2f}",
                f"{m['max_logit_error']:.1e}",
                f"{m['seconds']['server']:.0f}",
                f"{m['amortized_ms_per_image']:.1f}",
            ]
        )
        print(f"  {g}: done", flush=True)
    print(
        f"\nhe_cnn on Fashion-MNIST, {results[0]['images']:,} test images per CKKS batch, "
        f"N={results[0]['params']['poly_modulus_degree']}"
    )
    header = [
        "coefficients",
        "ReLU %",
        "poly plaintext %",
        "encrypted %",
        "agreement %",
        "max logit err",
        "server s",
        "ms/image",
    ]
    print_table(header, rows)
    p0 = results[0]["params"]
    summary = [
        f"{results[0]['images']:,} test images in one batch, N = {p0['poly_modulus_degree']}, "
        f"depth {m['depth']}"
    ]
    if "batch_vs_image_layout" in m:
        c, il = m["batch_vs_image_layout"], m["image_layout"]
        print(
            f"\none image per ciphertext ({il['features_per_ciphertext']} features, "
            f"{il['rotation_keys']} rotation keys, {il['images']} images): "
            f"{c['image_layout_ms_per_image']:.0f} ms per image, agreement "
            f"{100 * il['argmax_agreement']:.0f}%; batch packing "
            f"{c['amortized_ms_per_image']:.1f} ms per image: {100 * c['time_reduction']:.2f}% less"
        )
        results[-1]["comparison"] = {"image_layout": il, "batch_vs_image_layout": c}
        summary.append(
            f"one image per ciphertext: {c['image_layout_ms_per_image']:.0f} ms per image vs batch "
            f"packing {c['amortized_ms_per_image']:.1f} ms per image: "
            f"{100 * c['time_reduction']:.2f} % less"
        )
    (ns.out / "results.json").write_text(
        json.dumps(
            {
                "machine": machine_line(),
                "commit": commit(),
                "relu_accuracy": relu_acc,
                "runs": results,
            },
            indent=2,
        )
    )
    save_results(
        "he_fashion_mnist",
        tables={"CKKS inference": (header, rows)},
        summary=summary,
        data={"relu_accuracy": relu_acc, "runs": results},
        setting=vars(ns) | {"out": str(ns.out)},
    )


if __name__ == "__main__":
    main()
