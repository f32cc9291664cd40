"""Does linearization hurt the minority more, and which objective closes the gap?

Das et al. (ICML 2024) protocol: classes 0-4 kept at 90 % and 5-9 at 10 % of the training set.
Per seed: one dense model, one SNL search shared by every budget, then each objective below
fine-tunes the same binarized masks (``pifair mitigate`` replays the search), except the
"fairness inside the search" arm, which runs its own search. Everything is paired: arm and
plain SNL share the seed's dense model, search and masks.

Reported on the balanced test set (every class at full size: 1,000 Fashion-MNIST images per
class) and on the imbalanced test distribution (classes weighted 0.9 / 0.1 like the training
set; per-class accuracies are the balanced set's, so the estimate is the same samples
reweighted). The gap is the minority-majority gap of the accuracy drops against the seed's dense
model, size-weighted (the audit's ``minority_gap``); intervals are 95 % t-intervals over seeds,
for paired differences where a row compares with plain SNL.

Mitigated arms keep the fine-tuning epoch with the best validation ``accuracy - |gap|``
(``select_by="fair"``); plain SNL and Das et al. as released keep the best validation accuracy.

Settings (``--setting``):
  fashion-mnist  LeNet (18,944 ReLUs) on the full Fashion-MNIST protocol at 100 and 300 ReLUs:
                 the CPU setting (about 15 minutes per seed on 2 cores)
  cifar10-cpu    ResNet18 at width 8 (61,440 ReLUs) on the CIFAR-10 protocol over 20,000 evenly
                 spaced training images (10,000 after subsampling: 200 per minority class), the
                 full test set, 3K ReLUs; plain SNL, logit adjustment and the dense-anchored
                 constraint (the two that did best on Fashion-MNIST): the CPU-scale stand-in
  cifar10-gpu    ResNet18 (SNL variant, 557,056 ReLUs) at 15K / 50K / 100K
  tiny           scikit-learn digits: checks the script in a minute

    python benchmarks/fairness.py --setting fashion-mnist [--seeds 0,1,2,3,4] [--out DIR]

Resumes from its run folders: a finished arm is read, not rerun.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CIFAR10_RESNET18,
    RESULTS_DIR,
    commit,
    machine_line,
    print_table,
    save_results,
    settings_parser,
)
from pifair.data import parse_keep  # noqa: E402
from pifair.fairness import GroupReport  # noqa: E402
from pifair.fairness.audit import mean_ci, minority_gap, minority_groups, paired_difference  # noqa: E402
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.reduce.snl import SearchSettings  # noqa: E402
from pifair.relu import count_relus  # noqa: E402
from pifair.report import plots  # noqa: E402
from pifair.runs import MODEL  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.training.loop import evaluate  # noqa: E402
from pifair.workflows.fairness import MitigateJob, run_mitigate  # noqa: E402
from pifair.workflows.linearize import LinearizeJob  # noqa: E402
from pifair.workflows.sweep import run_sweep  # noqa: E402
from pifair.workflows.train import dataset_for_run, load_from_run, train  # noqa: E402

KEEP = "0-4:0.9,5-9:0.1"
FAIR = {"select_by": "fair"}


@dataclass(frozen=True)
class Arm:
    """One objective: its fine-tuning settings, and the search's objective if it has its own."""

    key: str
    label: str
    finetune: dict = field(default_factory=dict)
    search_objective: str | None = None


ARMS = [
    Arm("plain", "SNL, CE + KD (no mitigation)"),
    Arm(
        "das-paper",
        "Das et al. as released: gamma from 0, per epoch, mu 1e-3",
        {"objective": "constrained", "multiplier_init": 0.0, "dual_update": "epoch", "mu": 1e-3},
    ),
    Arm("das", "Das et al., warm gamma 0.5, per step", {"objective": "constrained"} | FAIR),
    Arm(
        "anchored",
        "dense-anchored: no group loses more than its share",
        {"objective": "anchored"} | FAIR,
    ),
    Arm("group-dro", "group DRO (Sagawa et al.)", {"objective": "group-dro"} | FAIR),
    Arm("logit-adjust", "logit adjustment (Menon et al.)", {"objective": "logit-adjust"} | FAIR),
    Arm("reweight", "inverse group frequency", {"objective": "reweight"} | FAIR),
    Arm(
        "search-anchored",
        "dense-anchored inside the mask search and the fine-tuning",
        {"objective": "anchored"} | FAIR,
        search_objective="anchored",
    ),
]

SETTINGS = {
    "fashion-mnist": dict(
        dense=dict(
            data="fashion-mnist",
            model="lenet",
            epochs=6,
            batch_size=128,
            lr=0.05,
            schedule="cosine",
        ),
        budgets=["100", "300"],
        search=SearchSettings(
            max_epochs=14,
            batch_size=128,
            mask_lr=0.02,
            lambda_init=3e-4,
            lambda_growth=1.5,
            harden_epochs=0.5,
        ),
        finetune=FinetuneSettings(epochs=3, batch_size=128, lr=0.01),
    ),
    "cifar10-cpu": dict(
        dense=dict(
            data="cifar10",
            model="resnet18",
            snl_variant=True,
            width=8,
            limit=20000,
            epochs=10,
            batch_size=128,
            lr=0.1,
            label_smoothing=0.1,
            schedule="onecycle",
        ),
        budgets=["3k"],
        search=SearchSettings(
            max_epochs=5,
            batch_size=128,
            mask_lr=0.02,
            lambda_init=3e-4,
            lambda_growth=2.0,
            harden_epochs=0.5,
        ),
        finetune=FinetuneSettings(epochs=2, batch_size=128, lr=0.01),
        arms=["logit-adjust", "anchored"],
    ),
    "cifar10-gpu": dict(
        dense=dict(CIFAR10_RESNET18),
        budgets=["15k", "50k", "100k"],
        search=SearchSettings(max_epochs=30, batch_size=256, mask_lr=0.02, lambda_init=1e-4),
        finetune=FinetuneSettings(epochs=20, batch_size=256),
    ),
    "tiny": dict(
        dense=dict(data="digits", model="lenet", epochs=3, batch_size=64, lr=0.05),
        budgets=["60", "200"],
        search=SearchSettings(
            max_epochs=3, batch_size=64, mask_lr=0.05, lambda_init=1e-3, harden_epochs=0.5
        ),
        finetune=FinetuneSettings(epochs=2, batch_size=64, lr=0.01),
    ),
}


def _sweep(setting: dict, seed: int, dense_dir: Path, out: Path, arm: Arm) -> Path:
    """The seed's SNL sweep (plain, or with the arm's search objective): one search, every
    budget fine-tuned with the arm's settings."""
    search = replace(setting["search"], seed=seed, objective=arm.search_objective or "kd")
    finetune = replace(setting["finetune"], seed=seed, **arm.finetune)
    job = LinearizeJob(
        from_run=str(dense_dir),
        budgets=setting["budgets"],
        methods=["snl"],
        seed=seed,
        search=search,
        finetune=finetune,
    )
    if not all((out / f"snl-{b}" / MODEL).exists() for b in setting["budgets"]):
        run_sweep(job, out=out, resume=(out / "config.yaml").exists(), progress=False)
    return out


def arm_runs(
    setting: dict, seed: int, root: Path, data_dir: str | None, arms: list[Arm]
) -> dict[tuple[str, str], Path]:
    """Every arm's run folder for this seed, keyed by (arm, budget): trained, resumed or read."""
    dense_dir = root / "dense"
    if not (dense_dir / MODEL).exists():
        config = TrainConfig(**setting["dense"], keep=KEEP, seed=seed, data_dir=data_dir)
        train(
            config,
            out=dense_dir,
            resume=(dense_dir / "checkpoint.pt").exists(),
            progress=False,
        )
    runs: dict[tuple[str, str], Path] = {}
    plain = _sweep(setting, seed, dense_dir, root / "snl", ARMS[0])
    for arm in arms:
        t0 = time.perf_counter()
        for budget in setting["budgets"]:
            if arm.key == "plain":
                path = plain / f"snl-{budget}"
            elif arm.search_objective:
                path = _sweep(setting, seed, dense_dir, root / arm.key, arm) / f"snl-{budget}"
            else:
                path = root / f"{arm.key}-{budget}"
                if not (path / MODEL).exists():
                    shutil.rmtree(
                        path, ignore_errors=True
                    )  # a killed one restarts; the search is reused
                    job = MitigateJob(str(plain / f"snl-{budget}"), **arm.finetune)
                    run_mitigate(job, out=path, progress=False)
            runs[(arm.key, budget)] = path
        print(f"  seed {seed} {arm.key:16s} {time.perf_counter() - t0:6.0f} s", flush=True)
    return runs


def measure(
    dense: GroupReport, reduced: GroupReport, minority: list[int], keep: dict[int, float]
) -> dict:
    """Accuracy (balanced test and imbalanced test distribution), the minority-majority gap
    (the audit's size-weighted ``minority_gap``, unweighted beside it), worst group and spread."""
    pairs = list(zip(dense.groups, reduced.groups))
    drops = [d.accuracy - r.accuracy for d, r in pairs]
    counts = [r.count for r in reduced.groups]
    is_minority = [r.group in minority for r in reduced.groups]

    def imbalanced(report: GroupReport) -> float:
        weights = [g.count * keep.get(g.group, 1.0) for g in report.groups]
        return sum(w * g.accuracy for w, g in zip(weights, report.groups)) / sum(weights)

    side = [(d, c) for d, c, m in zip(drops, counts, is_minority) if m]
    return {
        "relus": None,
        "accuracy": reduced.accuracy,
        "dense_accuracy": dense.accuracy,
        "accuracy_imbalanced": imbalanced(reduced),
        "dense_accuracy_imbalanced": imbalanced(dense),
        "gap": minority_gap(drops, counts, is_minority),
        "gap_unweighted": minority_gap(drops, counts, is_minority, weighted=False),
        "worst_group_accuracy": reduced.worst_group_accuracy,
        "drop_spread": max(drops) - min(drops),
        "minority_drop": sum(d * c for d, c in side) / sum(c for _, c in side),
        "group_drops": {g.name: d for g, d in zip(reduced.groups, drops)},
        "group_sizes": {g.name: g.count for g in reduced.groups},
    }


def measure_seed(
    root: Path, runs: dict[tuple[str, str], Path], keep: dict[int, float]
) -> dict[tuple[str, str], dict]:
    """Every arm of one seed against the seed's dense model, on the balanced test set (the
    dense model and the data are read once)."""
    dense, _, parent = load_from_run(root / "dense")
    data = dataset_for_run(parent)
    dense_report = evaluate(dense, data, "test")
    minority = minority_groups(data)
    out = {}
    for key, path in runs.items():
        reduced, _, _ = load_from_run(path)
        out[key] = measure(dense_report, evaluate(reduced, data, "test"), minority, keep)
        out[key]["relus"] = count_relus(reduced, data.input_shape).total
    return out


def _ci(values: list[float]) -> str:
    mean, half = mean_ci([100 * v for v in values])
    return f"{mean:.2f} ± {half:.2f}"


def _paired(base: list[float], arm: list[float]) -> str:
    mean, low, high = paired_difference([100 * v for v in base], [100 * v for v in arm])
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def verdict(base: list[float], gap: list[float], base_acc: list[float], acc: list[float]) -> dict:
    """Halves the gap (paired interval excluding 0), costs at most 1 point, reverses it by at
    most half its size."""
    g0, g1 = mean_ci(base)[0], mean_ci(gap)[0]
    _, low, high = paired_difference(base, gap)
    cost = mean_ci(base_acc)[0] - mean_ci(acc)[0]
    halved = len(base) > 1 and g0 > 0 and g1 <= 0.5 * g0 and high < 0  # one seed has no interval
    return {
        "gap_halved": bool(halved),
        "accuracy_cost": cost,
        "cost_ok": cost <= 0.01,
        "reversed_too_far": bool(g1 < -0.5 * g0),
        "meets_aim": bool(halved and cost <= 0.01 and g1 >= -0.5 * g0),
    }


def write_results(
    name: str, setting: dict, arms: list[Arm], by: dict, seeds: list[int], results_dir: Path | None
) -> None:
    """Tables, verdicts, Pareto plot and results JSON for the seeds finished so far (rewritten
    after every seed: a stopped run keeps what it measured)."""
    header = [
        "objective",
        "ReLUs",
        "accuracy % (balanced)",
        "accuracy % (imbalanced test)",
        "minority-majority gap (pts)",
        "gap vs plain (pts, paired)",
        "accuracy vs plain (pts, paired)",
        "imbalanced-test accuracy vs plain (pts, paired)",
        "worst group %",
        "max-min spread (pts)",
    ]
    rows, points, verdicts = [], [], {}
    for budget in setting["budgets"]:
        base = by[("plain", budget)]
        for arm in arms:
            r = by[(arm.key, budget)]
            gaps, accs, imb = (
                [m["gap"] for m in r],
                [m["accuracy"] for m in r],
                [m["accuracy_imbalanced"] for m in r],
            )
            compare = arm.key != "plain"
            rows.append(
                [
                    arm.label,
                    f"{r[0]['relus']:,}",
                    _ci(accs),
                    _ci(imb),
                    _ci(gaps),
                    _paired([m["gap"] for m in base], gaps) if compare else "-",
                    _paired([m["accuracy"] for m in base], accs) if compare else "-",
                    _paired([m["accuracy_imbalanced"] for m in base], imb) if compare else "-",
                    _ci([m["worst_group_accuracy"] for m in r]),
                    _ci([m["drop_spread"] for m in r]),
                ]
            )
            acc_mean, acc_half = mean_ci([100 * a for a in accs])
            gap_mean, gap_half = mean_ci([100 * g for g in gaps])
            points.append(
                {
                    "label": arm.key,
                    "relus": r[0]["relus"],
                    "accuracy": acc_mean,
                    "accuracy_ci": acc_half,
                    "gap": gap_mean,
                    "gap_ci": gap_half,
                }
            )
            if compare:
                verdicts[f"{arm.key}@{budget}"] = verdict(
                    [m["gap"] for m in base], gaps, [m["accuracy"] for m in base], accs
                )
    print()
    print_table(header, rows)
    dense_accs = [m["dense_accuracy"] for m in by[("plain", setting["budgets"][0])]]
    summary = [
        f"{name}, keep {KEEP}, {len(seeds)} seeds (a dense model per seed): dense "
        f"{_ci(dense_accs)} % on the balanced test set"
    ]
    for budget in setting["budgets"]:
        base = by[("plain", budget)]
        relus = f"{base[0]['relus']:,}"
        gap_mean, gap_half = mean_ci([100 * m["gap"] for m in base])
        pays = (
            "one seed: no interval"
            if len(base) < 2
            else "the minority pays more"
            if gap_mean - gap_half > 0
            else ("the majority pays more" if gap_mean + gap_half < 0 else "no difference shown")
        )
        summary.append(
            f"plain SNL at {relus} ReLUs: gap {gap_mean:+.2f} ± {gap_half:.2f} pts ({pays})"
        )
        met = [
            k.split("@")[0]
            for k, v in verdicts.items()
            if k.endswith(f"@{budget}") and v["meets_aim"]
        ]
        summary.append(
            f"at {relus} ReLUs, objectives that halve the gap (paired interval excluding 0) at <= "
            f"1 pt of balanced accuracy, reversing it by at most half: {', '.join(met) or 'none'}"
        )
    for line in summary:
        print(line)
    results_dir = results_dir or RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    plots.accuracy_gap_pareto(
        points,
        results_dir / f"fairness_{name}.png",
        title=f"{name}: accuracy vs minority-majority gap ({len(seeds)} seeds, 95 % CI)",
    )
    save_results(
        f"fairness_{name}",
        tables={f"{name}: objectives against plain SNL, paired by seed": (header, rows)},
        summary=summary,
        data={
            "seeds": seeds,
            "keep": KEEP,
            "points": points,
            "verdicts": verdicts,
            "arms": {
                a.key: {
                    "label": a.label,
                    "finetune": a.finetune,
                    "search_objective": a.search_objective,
                }
                for a in arms
            },
            "by_seed": {f"{a}@{b}": v for (a, b), v in by.items()},
        },
        setting={k: str(v) for k, v in setting.items()},
        results_dir=results_dir,
    )


def main() -> None:
    parser = settings_parser(__doc__, SETTINGS, "fashion-mnist", seeds="0,1,2,3,4")
    parser.add_argument(
        "--arms",
        help=f"comma list of {', '.join(a.key for a in ARMS)} (default: the setting's; plain "
        "always runs)",
    )
    parser.add_argument("--out", type=Path, help="run folders (default runs/fairness-SETTING)")
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--results-dir", type=Path, help=f"where the JSON and plot go (default {RESULTS_DIR})"
    )
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = args.arms.split(",") if args.arms else setting.get("arms", [a.key for a in ARMS])
    unknown = set(wanted) - {a.key for a in ARMS}
    if unknown:
        parser.error(
            f"unknown arms {sorted(unknown)}; choose from {', '.join(a.key for a in ARMS)}"
        )
    arms = [a for a in ARMS if a.key == "plain" or a.key in wanted]
    out = args.out or Path(f"runs/fairness-{args.setting}")
    print(
        f"machine: {machine_line()}\ncommit:  {commit()}\nsetting: {args.setting}, keep {KEEP}, "
        f"seeds {seeds}, arms {[a.key for a in arms]}\n"
    )
    keep = parse_keep(KEEP, 10)
    by: dict[tuple[str, str], list[dict]] = {}
    for i, seed in enumerate(seeds):
        root = out / f"seed{seed}"
        runs = arm_runs(setting, seed, root, args.data_dir, arms)
        for key, m in measure_seed(root, runs, keep).items():
            by.setdefault(key, []).append(m | {"seed": seed})
        write_results(args.setting, setting, arms, by, seeds[: i + 1], args.results_dir)


if __name__ == "__main__":
    main()
