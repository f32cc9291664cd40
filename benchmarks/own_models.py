"""Users' own models, counted exactly (#26): pifair's ReLU count of torchvision, timm and a
hand-written module against an independent count, and linearization budgets that hold.

The independent count (the tests' ``ReluCalls``) runs the *unconverted* model once under a
TorchFunctionMode that adds up the elements entering every relu call (F.relu, torch.relu,
Tensor.relu/relu_, nn.ReLU). pifair's
count converts a copy by graph (torch.fx) and reads its sites. Both at ImageNet size (3x224x224)
and CIFAR size (3x32x32). The conversion's time is given as a ratio to one forward pass of the
same model in the same process (a baseline, not seconds).

Then SNL to an exact budget, pixel- and channel-wise, on a user module and torchvision resnet18
(digits, 160 images, 2 search epochs, no fine-tuning: only the counts matter here): the reduced
model's count, the positions where it applies max(x, 0) (probed with -1 at every site), and the
comparisons of the exported JAX program must all equal the budget.

    python benchmarks/own_models.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests" / "models")]
# the tests' independent reference and user module: the benchmark measures what they check
from test_own_model import ReluCalls, UserNet, positions_applying_relu  # noqa: E402

import pifair  # noqa: E402
from _common import print_table, save_results  # noqa: E402
from pifair.extras import require  # noqa: E402
from pifair.models.external import import_torchvision  # noqa: E402
from pifair.relu import convert_activations, count_relus, iter_sites  # noqa: E402

TORCHVISION = ["resnet18", "resnet50", "vgg11_bn", "densenet121", "squeezenet1_0", "mobilenet_v2"]


def _models(shape: tuple[int, ...]):
    tv = import_torchvision()
    for name in TORCHVISION:
        yield f"torchvision:{name}", tv.models.get_model(name, weights=None, num_classes=10)
    import_torchvision()  # timm imports torchvision
    timm = require("timm", extra="vision", purpose="the timm row")
    yield "timm:resnet18", timm.create_model("resnet18", pretrained=False, num_classes=10)
    user = UserNet(in_channels=shape[0], image_size=shape[1])
    yield "user module (F.relu, reused in-place ReLU, x.relu())", user


def count_rows(shape: tuple[int, ...]) -> tuple[list[list[object]], list[dict]]:
    rows, data = [], []
    for name, model in _models(shape):
        model.eval()
        ref = ReluCalls()
        with torch.no_grad(), ref:
            model(torch.zeros(1, *shape))
        t0 = time.perf_counter()
        with torch.no_grad():
            model(torch.zeros(1, *shape))
        forward = time.perf_counter() - t0
        t0 = time.perf_counter()
        converted = convert_activations(model, shape)
        convert = time.perf_counter() - t0
        count = count_relus(converted, shape)
        listed = sorted({c.op for c in count.untouched})
        rows.append(
            [
                name,
                f"{ref.elements:,}",
                f"{count.total:,}",
                "yes" if ref.elements == count.total else "NO",
                len(iter_sites(converted)),
                f"{len(count.untouched)} ({', '.join(listed)})" if listed else "0",
                f"{convert / forward:.0f}x",
            ]
        )
        data.append(
            {
                "model": name,
                "input_shape": list(shape),
                "reference": ref.elements,
                "pifair": count.total,
                "sites": len(iter_sites(converted)),
                "untouched": [c.op for c in count.untouched],
                "convert_over_forward": convert / forward,
            }
        )
        print(rows[-1])
    return rows, data


def budget_rows() -> tuple[list[list[object]], list[dict]]:
    data_set = pifair.load_dataset("digits", seed=0, limit=160)
    shape = data_set.input_shape
    rows, data = [], []
    for arch in ("user module", "torchvision:resnet18"):
        for granularity, budget in (("pixel", 300), ("channel", 256)):
            torch.manual_seed(0)
            model = (
                UserNet()
                if arch == "user module"
                else pifair.create_model(arch, num_classes=10, input_shape=shape)
            )
            result = pifair.linearize(
                model,
                data_set,
                budget,
                granularity=granularity,
                progress=False,
                search=pifair.SearchSettings(max_epochs=2, harden_epochs=0.5),
                finetune=pifair.FinetuneSettings(epochs=0),
            )
            counted = count_relus(result.model, shape).total
            applied = positions_applying_relu(result.model, shape)
            comparisons = pifair.mpc.export(result.model, shape).comparisons
            ok = result.relus == counted == applied == comparisons == budget
            rows.append(
                [arch, granularity, budget, counted, applied, comparisons, "yes" if ok else "NO"]
            )
            data.append(
                dict(
                    arch=arch,
                    granularity=granularity,
                    budget=budget,
                    counted=counted,
                    applied=applied,
                    comparisons=comparisons,
                )
            )
            print(rows[-1])
    return rows, data


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    header = ["model", "independent", "pifair", "equal", "sites", "listed, not ReLU", "convert"]
    tables, data = {}, {}
    for shape in ((3, 224, 224), (3, 32, 32)):
        rows, d = count_rows(shape)
        title = f"ReLUs per image at {'x'.join(map(str, shape))}"
        tables[title] = (header, rows)
        data["x".join(map(str, shape))] = d
    budget_header = ["model", "granularity", "budget", "count", "max(x,0) applied", "MPC cmp", "ok"]
    rows, d = budget_rows()
    tables["linearized budgets (digits)"] = (budget_header, rows)
    data["budgets"] = d
    for title, (h, r) in tables.items():
        print(f"\n{title}")
        print_table(h, r)
    all_counts = [x for k in ("3x224x224", "3x32x32") for x in data[k]]
    summary = [
        f"{sum(x['reference'] == x['pifair'] for x in all_counts)} of {len(all_counts)} counts "
        "equal the independent count",
        f"{sum(r[-1] == 'yes' for r in rows)} of {len(rows)} linearized budgets hold in the "
        "model, the probe and the MPC program",
    ]
    print("\n" + "\n".join(summary))
    save_results(
        "own_models", tables=tables, summary=summary, data=data, setting={"seed": 0, "limit": 160}
    )


if __name__ == "__main__":
    main()
