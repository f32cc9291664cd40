"""2PC inference under SPU's Cheetah: what ReLU reduction removes from time and bytes.

Fashion-MNIST CNN (LeNet, 18,944 ReLUs) dense, SNL-reduced at two budgets and ReLU-shared:
``pifair mpc-infer`` on the first N test images each (parties as threads, one image per run,
one-time setup apart). Then ResNet18 (CIFAR-10, 557,056 ReLUs) dense and with exactly 50,000
kept ReLUs, one image each. Printed per model: seconds and MB per image, split into linear
layers, comparisons and multiplexers; the ratio of comparison bytes to the dense model's
beside the ratio of ReLUs; and how much of the dense latency the reduction removed.

The Fashion-MNIST models are the demo's (``make demo``) unless given. ResNet18 uses trained
run folders when given (``--resnet-dense``, ``--resnet-snl``); otherwise random weights and
50,000 kept positions drawn at random (SPU's cost does not depend on weight values or on
which positions are kept, only on how many). With ``--write-calibration PATH`` the Cheetah
cost model of ``pifair cost`` is fitted on these runs and saved with this machine and commit.

    python benchmarks/mpc.py [--images 4] [--out runs/bench-mpc] [--no-resnet]
                             [--models LABEL=RUN ...] [--write-calibration PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine_line, print_table, save_results  # noqa: E402
from pifair.data import load_dataset  # noqa: E402
from pifair.models import create_model  # noqa: E402
from pifair.relu import count_relus, replace_activations  # noqa: E402
from pifair.relu.sites import MaskedReLU, iter_sites  # noqa: E402
from pifair.secure.cost import CheetahModel, model_work  # noqa: E402
from pifair.secure.mpc import MPCSettings, export_model, run_in_threads  # noqa: E402
from pifair.workflows.cost import calibration_sample  # noqa: E402
from pifair.workflows.mpc import MPCInferJob, run_mpc_infer, summarize  # noqa: E402
from pifair.workflows.train import load_from_run  # noqa: E402

DEMO = {
    "dense": "runs/demo/train",
    "snl-3000": "runs/demo/linearize/snl-3000",
    "snl-1000": "runs/demo/linearize/snl-1000",
    "shared-1000": "runs/demo/share-1000",
}
RESNET_BUDGET = 50_000
# with --write-calibration: the demo's HE-ready CNN with ReLUs and with polynomials
CALIBRATION_EXTRA = {"he_cnn relu": "runs/demo/he-cnn", "he_cnn poly": "runs/demo/polyfit"}


def _row(label: str, m: dict, dense: dict | None) -> list[object]:
    cats = m["per_image"]["by_category"]
    relu_s = cats["comparison"]["seconds"] + cats["multiplication"]["seconds"]
    total_s = sum(c["seconds"] for c in cats.values())
    row = [
        label,
        f"{m['comparisons']:,}",
        f"{m['seconds_per_image']:.2f}",
        f"{m['bytes_per_image'] / 1e6:.2f}",
        f"{cats['linear']['seconds']:.2f} / {cats['linear']['bytes'] / 1e6:.2f}",
        f"{cats['comparison']['seconds']:.3f} / {cats['comparison']['bytes'] / 1e6:.3f}",
        f"{cats['multiplication']['seconds']:.3f} / {cats['multiplication']['bytes'] / 1e6:.3f}",
        f"{100 * relu_s / total_s:.1f}%",
        f"{100 * m['argmax_agreement']:.0f}%",
    ]
    if dense is None or dense is m:
        return row + ["1", "1", "-", "-"]
    dc = dense["per_image"]["by_category"]
    return row + [
        f"{m['comparisons'] / dense['comparisons']:.4f}",
        f"{cats['comparison']['bytes'] / dc['comparison']['bytes']:.4f}",
        f"{100 * (1 - m['seconds_per_image'] / dense['seconds_per_image']):.1f}%",
        f"{100 * (1 - m['bytes_per_image'] / dense['bytes_per_image']):.1f}%",
    ]


HEADER = [
    "model",
    "ReLUs",
    "s / image",
    "MB / image",
    "linear s / MB",
    "comparison s / MB",
    "mux s / MB",
    "time in ReLUs",
    "agree",
    "ReLU ratio",
    "cmp-bytes ratio",
    "latency removed",
    "bytes removed",
]


def _resnet_models(ns) -> dict[str, tuple[torch.nn.Module, str]]:
    if ns.resnet_dense and ns.resnet_snl:
        dense, _, _ = load_from_run(ns.resnet_dense)
        snl, _, _ = load_from_run(ns.resnet_snl)
        return {
            "resnet18 dense": (dense, "trained"),
            f"resnet18 {count_relus(snl, (3, 32, 32)).total // 1000}K": (snl, "trained, SNL"),
        }
    torch.manual_seed(0)
    dense = create_model("resnet18", num_classes=10, input_shape=(3, 32, 32)).eval()
    reduced = create_model("resnet18", num_classes=10, input_shape=(3, 32, 32)).eval()
    reduced.load_state_dict(dense.state_dict())
    count_relus(reduced, (3, 32, 32))
    # exactly RESNET_BUDGET kept positions over all sites, drawn uniformly at random
    sizes = [int(np.prod(s.feature_shape)) for _, s in iter_sites(reduced)]
    keep = np.zeros(sum(sizes), bool)
    keep[np.random.default_rng(0).choice(keep.size, RESNET_BUDGET, replace=False)] = True
    chunks = iter(np.split(keep, np.cumsum(sizes)[:-1]))
    replace_activations(
        reduced,
        lambda n, s: MaskedReLU(torch.from_numpy(next(chunks).reshape(s.feature_shape)).float()),
    )
    assert count_relus(reduced, (3, 32, 32)).total == RESNET_BUDGET
    return {
        "resnet18 dense": (dense, "random weights"),
        "resnet18 50K": (reduced, "random weights, random kept positions"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=4, help="Fashion-MNIST test images per model")
    parser.add_argument(
        "--models", nargs="+", metavar="LABEL=RUN", help="Fashion-MNIST runs (default: the demo's)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-mpc"))
    parser.add_argument(
        "--no-resnet", action="store_true", help="skip ResNet18 (about 7 minutes on 2 cores)"
    )
    parser.add_argument("--resnet-dense", type=Path, help="a trained ResNet18 run (CIFAR-10)")
    parser.add_argument("--resnet-snl", type=Path, help="its SNL-reduced run")
    parser.add_argument("--ot", default="ferret", choices=["ferret", "softspoken"])
    parser.add_argument(
        "--write-calibration",
        type=Path,
        metavar="PATH",
        help="fit the Cheetah cost model on the Fashion-MNIST runs and save it",
    )
    ns = parser.parse_args()
    models = dict(m.split("=", 1) for m in ns.models) if ns.models else DEMO
    missing = [r for r in models.values() if not (Path(r) / "model.pt").exists()]
    if missing:
        sys.exit(f"missing model runs {missing}: run `make demo` first or give --models LABEL=RUN")
    print(
        f"machine: {machine_line()}\ncommit: {commit()}\nprotocol: cheetah (OT {ns.ot}), parties "
        "as threads, one image per run, one-time setup apart"
    )

    results, done = {}, []
    for label, source in models.items():
        out = ns.out / label
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        run = run_mpc_infer(MPCInferJob(from_run=source, images=ns.images, ot=ns.ot), out=out)
        results[label] = run.metrics
        done.append(out)
        print(f"  {label}: {time.perf_counter() - t0:.0f} s", flush=True)
    dense = results.get("dense")
    print(f"\nFashion-MNIST, {ns.images} test images per model (per image: mean)")
    tables = {"Fashion-MNIST": (HEADER, [_row(k, m, dense) for k, m in results.items()])}
    print_table(*tables["Fashion-MNIST"])

    # (work, per-image profile) of every model, for the cost model
    samples, labels = [calibration_sample(p) for p in done], list(results)
    if ns.write_calibration:
        # architectures other than LeNet, so that the linear fit sees more than one shape
        for label, source in CALIBRATION_EXTRA.items():
            if (Path(source) / "model.pt").exists():
                out = ns.out / label
                shutil.rmtree(out, ignore_errors=True)
                run_mpc_infer(MPCInferJob(from_run=source, images=ns.images, ot=ns.ot), out=out)
                samples.append(calibration_sample(out))
                labels.append(label)
    resnet: dict = {}
    if not ns.no_resnet:
        for label, work, per_image in _resnet(ns, tables, resnet):
            samples.append((work, per_image))
            labels.append(label)
    if ns.write_calibration:
        _write_calibration(ns, samples, labels)
    data = {
        "fashion_mnist": {
            k: {
                f: m.get(f)
                for f in (
                    "relus",
                    "comparisons",
                    "seconds_per_image",
                    "bytes_per_image",
                    "per_image",
                    "setup",
                    "argmax_agreement",
                    "max_logit_error",
                )
            }
            for k, m in results.items()
        },
        "resnet18": resnet,
    }
    save_results(
        "mpc_cheetah_" + ns.ot,
        tables=tables,
        summary=[],
        data=json.loads(json.dumps(data, default=float)),
        setting={"images": ns.images, "ot": ns.ot, "models": models, "resnet": not ns.no_resnet},
    )


def _write_calibration(ns, samples, labels) -> None:
    cheetah = CheetahModel.fit(
        samples,
        {
            "machine": machine_line(),
            "commit": commit(),
            "command": f"python benchmarks/mpc.py --write-calibration {ns.write_calibration}"
            + (" --no-resnet" if ns.no_resnet else ""),
            "ot": ns.ot,
            "models": labels,
        },
    )
    check = cheetah.check(samples)
    for row, label in zip(check, labels):
        row["model"] = label
    cheetah.provenance["check"] = check
    cheetah.save(ns.write_calibration)
    print(
        f"\nCheetah cost model saved to {ns.write_calibration}: {cheetah.bytes_per_comparison:.1f} "
        f"B and {1e6 * cheetah.seconds_per_comparison:.2f} us per comparison"
    )
    print_table(
        ["model", "measured MB", "estimated MB", "measured s", "estimated s"],
        [
            [
                r["model"],
                f"{r['measured_bytes'] / 1e6:.2f}",
                f"{r['estimated_bytes'] / 1e6:.2f}",
                f"{r['measured_seconds']:.2f}",
                f"{r['estimated_seconds']:.2f}",
            ]
            for r in check
        ],
    )


def _resnet(ns, tables: dict, measured: dict) -> list[tuple[str, object, dict]]:
    """ResNet18 dense and at 50K under Cheetah, one CIFAR-10 test image each."""
    data = load_dataset("cifar10", seed=0)
    image = data.normalize(data.test.x[:1]).float().numpy()
    resnet_rows, dense_r, out = [], None, []
    for label, (model, what) in _resnet_models(ns).items():
        t0 = time.perf_counter()
        exported = export_model(model, (3, 32, 32))
        results_r = run_in_threads(
            exported,
            image,
            MPCSettings(ot=ns.ot),
            log_path=ns.out / f"{label.replace(' ', '-')}.spu.log",
        )
        with torch.no_grad():
            plain = model(torch.from_numpy(image)).double().numpy()
        logits = results_r[1].logits
        m = summarize(results_r, 2) | {
            "comparisons": exported.comparisons,
            "argmax_agreement": float((logits.argmax(1) == plain.argmax(1)).mean()),
        }
        m["max_relative_error"] = float(np.abs(logits - plain).max() / np.abs(plain).max())
        dense_r = dense_r or m
        resnet_rows.append(_row(f"{label} ({what})", m, dense_r))
        print(
            f"  {label}: {time.perf_counter() - t0:.0f} s (relative logit error "
            f"{m['max_relative_error']:.1e}, setup {m['setup']['seconds']:.0f} s)",
            flush=True,
        )
        out.append((label, model_work(model, (3, 32, 32)), m["per_image"]))
        measured[label] = {
            k: m[k]
            for k in ("comparisons", "per_image", "setup", "argmax_agreement", "max_relative_error")
            if k in m
        }
    print("\nResNet18, CIFAR-10 (JPEG q75), one test image")
    tables["ResNet18"] = (HEADER, resnet_rows)
    print_table(HEADER, resnet_rows)
    return out


if __name__ == "__main__":
    main()
