"""Does Global-Adapt close DP-SGD's fairness gap, and how fast is each method?

Esipova et al. (ICLR 2023) protocol, with Fashion-MNIST for MNIST: class 8 kept at 9 % in train
(test untouched), the fair-dp CNN (32 -> 16 channels, tanh), expected batch 256, delta 1e-6,
epsilon 6 (the noise multiplier is derived for the epochs run, every count release included);
Adult with groups by sex, MLP 2 x 256 tanh, noise multiplier 1 (the fair-dp Adult script).
Method settings are the fair-dp scripts' (``pifair.dp.config.METHOD_DEFAULTS``).

For each seed: the non-private model, then DPSGD, DPSGD-Global, DPSGD-Global-Adapt, DPSGD-F.
Privacy cost pi_g = acc_nonprivate,g - acc_private,g; the gap is pi of the minority group minus
pi of the reference group (Fashion-MNIST: Bag (8) vs Pullover (2), the paper's groups; Adult:
female vs male). Target: Global-Adapt's gap at most a third of DPSGD's.

Throughput (``--speed``): one epoch per method on each gradient path against Opacus' default
pipeline in the same process (``PrivacyEngine.make_private``, hooks, a DataLoader over a
TensorDataset of the same tensors, flat clipping). Ratios, not seconds.

    python benchmarks/dp_fairness.py [--seeds 0,1,2] [--epochs 5] [--data fashion-mnist,adult]
                                     [--speed] [--out runs/bench-dp]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine_line, print_table, save_results  # noqa: E402
from pifair import DPConfig, dp_train  # noqa: E402
from pifair.data import load_dataset  # noqa: E402
from pifair.fairness.audit import mean_ci  # noqa: E402
from pifair.runs import MODEL, Run  # noqa: E402

METHODS = ["dpsgd", "global", "global-adapt", "dpsgd-f", "bounded-adapt"]
PROTOCOLS = {
    "fashion-mnist": dict(
        config=dict(
            data="fashion-mnist",
            keep="8:0.09",
            model="fairdp_cnn",
            batch_size=256,
            delta=1e-6,
            epsilon=6.0,
        ),
        per_method={},
        groups=("Bag", "Pullover"),
        default_epochs=60,
    ),
    "adult": dict(
        config=dict(
            data="adult",
            group_by="sex",
            model="mlp",
            act="tanh",
            batch_size=256,
            delta=1e-6,
            noise_multiplier=1.0,
        ),
        per_method={
            "nonprivate": dict(lr=0.01),
            "dpsgd": dict(lr=0.01, clip=0.5),
            "dpsgd-f": dict(lr=0.01, clip=0.5, count_noise=10.0),
            "global": dict(lr=0.2, clip=0.5, z=50.0),
            "global-adapt": dict(lr=0.2, clip=0.5, z=50.0, tau=1.0, count_noise=10.0),
        },
        groups=("Female", "Male"),
        default_epochs=20,
    ),
}


def _config(name: str, method: str, seed: int, epochs: int, **extra) -> DPConfig:
    p = PROTOCOLS[name]
    base = dict(p["config"])
    if method == "nonprivate":
        base.pop("epsilon", None)
        base.pop("noise_multiplier", None)
    return DPConfig(
        **(
            base
            | p["per_method"].get(method, {})
            | dict(method=method, seed=seed, epochs=epochs)
            | extra
        )
    )


def _train(cfg: DPConfig, out: Path) -> Run:
    if (out / MODEL).exists():
        return Run.open(out)
    shutil.rmtree(out, ignore_errors=True)
    return dp_train(cfg, out=out, progress=False)


def fairness(
    name: str, seeds: list[int], epochs: int, root: Path, *, momentum: float
) -> list[dict]:
    minority, reference = PROTOCOLS[name]["groups"]
    rows = []
    for seed in seeds:
        base = _train(
            _config(name, "nonprivate", seed, epochs, momentum=momentum),
            root / name / f"s{seed}-nonprivate",
        )
        b = base.metrics
        rows.append(
            dict(
                method="nonprivate",
                seed=seed,
                accuracy=b["test_accuracy"],
                minority=b["test_groups"][minority],
                reference=b["test_groups"][reference],
                gap=0.0,
                epsilon=None,
                sps=b["samples_per_s"],
            )
        )
        for method in METHODS:
            cfg = _config(
                name,
                method,
                seed,
                epochs,
                baseline=str(base.path),
                diag_every=50,
                momentum=momentum,
            )
            m = _train(cfg, root / name / f"s{seed}-{method}").metrics
            cost = m["privacy_cost"]
            rows.append(
                dict(
                    method=method,
                    seed=seed,
                    accuracy=m["test_accuracy"],
                    minority=m["test_groups"][minority],
                    reference=m["test_groups"][reference],
                    gap=cost[minority] - cost[reference],
                    epsilon=m["epsilon"],
                    sps=m["samples_per_s"],
                )
            )
            print(
                f"  {name} seed {seed} {method}: {100 * m['test_accuracy']:.2f}%, gap "
                f"{100 * rows[-1]['gap']:+.2f}, eps {m['epsilon']:.2f}",
                flush=True,
            )
    return rows


def summarize(name: str, rows: list[dict]) -> list[dict]:
    minority, reference = PROTOCOLS[name]["groups"]
    out = []
    for method in ["nonprivate", *METHODS]:
        sel = [r for r in rows if r["method"] == method]
        agg = {
            k: mean_ci([r[k] for r in sel]) for k in ("accuracy", "minority", "reference", "gap")
        }
        eps = [r["epsilon"] for r in sel if r["epsilon"] is not None]
        out.append(
            dict(method=method, runs=len(sel), epsilon=sum(eps) / len(eps) if eps else None, **agg)
        )
    dpsgd_gap = next(s["gap"][0] for s in out if s["method"] == "dpsgd")
    header = [
        "method",
        "runs",
        "epsilon",
        "accuracy %",
        f"{minority} %",
        f"{reference} %",
        "privacy-cost gap",
        "gap / DPSGD's",
    ]
    TABLES[name] = (
        header,
        [
            [
                s["method"],
                s["runs"],
                "-" if s["epsilon"] is None else f"{s['epsilon']:.2f}",
                *(
                    f"{100 * s[k][0]:.2f} ± {100 * s[k][1]:.2f}"
                    for k in ("accuracy", "minority", "reference", "gap")
                ),
                "-" if s["method"] == "nonprivate" else f"{s['gap'][0] / dpsgd_gap:.2f}",
            ]
            for s in out
        ],
    )
    print_table(*TABLES[name])
    return out


TABLES: dict[
    str, tuple[list[str], list[list[object]]]
] = {}  # every printed table, for the results file


def _opacus_default_epoch(name: str, seed: int) -> float:
    """Samples/s of one epoch of Opacus' own pipeline: make_private, hooks, flat clipping."""
    from opacus import PrivacyEngine

    from pifair.models import create_model

    cfg = _config(name, "dpsgd", seed, 1)
    data = load_dataset(**cfg.data_config.load_kwargs(seed))
    x, y = data.normalize(data.train.x), data.train.y
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=cfg.batch_size
    )
    model = create_model(
        cfg.model, num_classes=data.num_classes, input_shape=data.input_shape, **cfg.model_options()
    )
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    model, opt, loader = PrivacyEngine().make_private(
        module=model,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=cfg.clip,
    )
    seen, t0 = 0, time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        seen += len(xb)
    return seen / (time.perf_counter() - t0)


def speed(name: str, root: Path) -> list[list[object]]:
    baseline = _opacus_default_epoch(name, 0)
    rows = [["Opacus default (hooks, DataLoader)", "dpsgd", f"{baseline:.0f}", "1.00"]]
    for path in ("hooks", "ghost"):
        for method in METHODS:
            out = root / "speed" / name / f"{path}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            m = dp_train(
                _config(name, method, 0, 1, grad_path=path, diag_every=0), out=out, progress=False
            ).metrics
            rows.append(
                [
                    f"pifair {path}",
                    method,
                    f"{m['samples_per_s']:.0f}",
                    f"{m['samples_per_s'] / baseline:.2f}",
                ]
            )
    TABLES[f"{name} throughput"] = (["pipeline", "method", "samples/s", "vs Opacus default"], rows)
    print_table(*TABLES[f"{name} throughput"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--epochs", type=int, help="epochs per run (default: the protocol's, 60 / 20)"
    )
    parser.add_argument("--data", default="fashion-mnist,adult")
    parser.add_argument(
        "--momentum",
        type=float,
        default=0.0,
        help="SGD momentum of every method (the protocol: 0; with few CPU epochs 0.9 stands in for "
        "the missing ones)",
    )
    parser.add_argument("--speed", action="store_true", help="also measure throughput")
    parser.add_argument("--no-fairness", action="store_true", help="throughput only")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dp"))
    ns = parser.parse_args()
    print(f"machine: {machine_line()}\ncommit: {commit()}")
    results: dict = {"machine": machine_line(), "commit": commit()}
    seeds = [int(s) for s in ns.seeds.split(",")]
    for name in ns.data.split(","):
        if not ns.no_fairness:
            epochs = ns.epochs or PROTOCOLS[name]["default_epochs"]
            print(f"\n## {name}: {epochs} epochs, seeds {seeds}")
            rows = fairness(name, seeds, epochs, ns.out, momentum=ns.momentum)
            results[name] = {
                "epochs": epochs,
                "momentum": ns.momentum,
                "runs": rows,
                "summary": summarize(name, rows),
            }
        if ns.speed:
            print(f"\n## {name}: throughput, one epoch each")
            results[f"{name}-speed"] = speed(name, ns.out)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    name = (
        "dp_"
        + "_".join(ns.data.split(","))
        + ("_speed" if ns.speed else "")
        + ("" if not ns.no_fairness else "_only")
    )
    save_results(
        name,
        tables=TABLES,
        summary=[],
        data=json.loads(json.dumps(results, default=str)),
        setting={k: str(v) for k, v in vars(ns).items()},
    )


if __name__ == "__main__":
    main()
