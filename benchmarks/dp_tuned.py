"""Fair DP-SGD compared fairly (#27): every method at its own tuned setting, and every method at
the same learning rate.

Protocol (as ``dp_fairness.py``: Fashion-MNIST with Bag kept at 9 %, the fair-dp CNN, 12 epochs
with momentum 0.8, epsilon 6, delta 1e-6; Adult by sex, MLP 2 x 256 tanh, noise multiplier 1,
20 epochs), with 10 % of the training set held out for validation in every run.

1. **Tuning**, the same for every method: learning rate in {0.01, 0.03, 0.1, 0.3, 1.0} x the
   method's clip bound in two values (C; Z for DPSGD-Global and Global-Adapt; the non-private
   model has no bound: five points), one run per point (seed 0). The setting is chosen by
   validation accuracy (and, second, by the validation accuracy of the worst group) through
   ``pifair.workflows.dp_sweep.select_point``, which reads validation metrics only. Tuning on
   the training data is not accounted in epsilon (as in the papers).
2. **Tuned comparison**: each method at its selected setting, 5 seeds, privacy cost measured
   against the tuned non-private model of the same seed: accuracy, minority, worst class, the
   minority-majority gap of the privacy cost (accuracy and test loss), and each method minus
   tuned DPSGD on the same seeds with paired 95 % t intervals.
3. **Same settings**: every method at lr 0.1 and at the tuned DPSGD's lr, each with its default
   bound, 5 seeds.
4. **Worst-group selection**: each method at the setting chosen by its worst group's
   validation accuracy, 5 seeds.

Runs are resumable and go ``--jobs`` at a time, one thread each: each finished run's metrics
are written at once to ``benchmarks/results/dp_tuned_DATA_runs.json`` (commit it: a later
session skips those runs), an interrupted run resumes from its run folder's last epoch.

    python benchmarks/dp_tuned.py [--data fashion-mnist,adult] [--jobs 2]
        [--phases tune,tuned,same,worst] [--seeds 0,1,2,3,4] [--out runs/bench-dp-tuned]
        [--epochs E --limit N: a quick look, never the results files]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, print_table, save_results  # noqa: E402
from dp_fairness import PROTOCOLS, _config, _row, _settings  # noqa: E402
from pifair import DPConfig  # noqa: E402
from pifair.atomic import atomic_write_json  # noqa: E402
from pifair.fairness.audit import mean_ci, paired_difference  # noqa: E402
from pifair.workflows.dp_sweep import (  # noqa: E402
    bound_field,
    select_point,
    train_point,
    validation_view,
)

PRIVATE = ["dpsgd", "global", "global-adapt", "dpsgd-f", "bounded-adapt"]
GRID_LR = [0.01, 0.03, 0.1, 0.3, 1.0]
GRID_BOUND = {"clip": [0.5, 1.0], "z": [50.0, 100.0]}
VAL_FRACTION = 0.1
OVERRIDES: dict = {}  # --epochs / --limit: a quick look at the pipeline, not the protocol


def _point_config(
    name: str, method: str, seed: int, lr: float, bound: float | None, base: str | None
) -> DPConfig:
    p = PROTOCOLS[name]
    extra: dict = dict(momentum=p["momentum"], val_fraction=VAL_FRACTION, lr=lr)
    extra |= {k: v for k, v in OVERRIDES.items() if k != "epochs"}
    if method != "nonprivate":
        extra |= dict(grad_path=p["grad_path"], baseline=base)
        if bound is not None:
            extra[bound_field(method)] = bound
    return _config(name, method, seed, OVERRIDES.get("epochs", p["epochs"]), **extra)


def _folder(root: Path, name: str, cfg: DPConfig) -> Path:
    digest = hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return root / name / f"{cfg.method}-s{cfg.seed}-{digest}"


def _task(task: tuple) -> dict:
    cfg_dict, out, threads = task
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    run = train_point(DPConfig.from_dict(cfg_dict), Path(out))
    m = run.metrics
    val = 100 * m.get("val_accuracy", float("nan"))
    print(f"  {out}: val {val:.2f} %, {time.perf_counter() - t0:.0f} s", flush=True)
    return m


def _key(cfg: DPConfig) -> str:
    """The run's settings as a digest that holds on any machine (the baseline by its folder's
    name, which is itself a digest of the non-private model's settings)."""
    settings = _settings(cfg)
    if settings.get("baseline"):
        settings["baseline"] = Path(settings["baseline"]).name
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _slim(metrics: dict) -> dict:
    """What the tables read from a run's metrics.json (no per-epoch history)."""
    return {k: v for k, v in metrics.items() if k not in ("history", "releases")}


class Runner:
    """Runs configs ``jobs`` at a time. Every finished run's metrics go into a progress file
    under ``benchmarks/results/`` as soon as it finishes, so a run is never trained twice, even
    on another machine or after the run folders are gone (commit that file to keep it)."""

    def __init__(self, root: Path, name: str, jobs: int, progress_file: Path) -> None:
        self.root, self.name, self.jobs = root, name, jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
        self.progress_file = progress_file
        self.done: dict[str, dict] = (
            json.loads(progress_file.read_text()) if progress_file.exists() else {}
        )

    def run(self, configs: list[DPConfig]) -> list[dict]:
        keys = [_key(c) for c in configs]
        todo = {k: c for k, c in zip(keys, configs) if k not in self.done}
        futures = {
            self.pool.submit(
                _task, (c.as_dict(), str(_folder(self.root, self.name, c)), self.threads)
            ): k
            for k, c in todo.items()
        }
        for future in as_completed(futures):
            self.done[futures[future]] = _slim(future.result())
            atomic_write_json(self.progress_file, self.done)
        return [self.done[k] for k in keys]


def tune(runner: Runner, name: str) -> dict:
    """Phase 1: the non-private grid (lr only), then every private method's grid."""
    grids: dict[str, dict[str, DPConfig]] = {}
    grids["nonprivate"] = {
        f"lr{lr:g}": _point_config(name, "nonprivate", 0, lr, None, None) for lr in GRID_LR
    }
    metrics = dict(zip(grids["nonprivate"], runner.run(list(grids["nonprivate"].values()))))
    views = {"nonprivate": {k: validation_view(m) for k, m in metrics.items()}}
    selected = {"nonprivate": select_point(views["nonprivate"], "accuracy")}
    for method in PRIVATE:
        field = bound_field(method)
        grids[method] = {
            f"lr{lr:g}-{field}{b:g}": _point_config(
                name, method, 0, lr, b, _baseline(runner, name, grids, selected, 0)
            )
            for lr in GRID_LR
            for b in GRID_BOUND[field]
        }
    todo = [(m, k, c) for m in PRIVATE for k, c in grids[m].items()]
    for (method, key, _), m in zip(todo, runner.run([c for *_, c in todo]), strict=True):
        views.setdefault(method, {})[key] = validation_view(m)
    by_worst = {}
    for method in PRIVATE:
        selected[method] = select_point(views[method], "accuracy")
        by_worst[method] = select_point(views[method], "worst-group")
    by_worst["nonprivate"] = select_point(views["nonprivate"], "worst-group")
    return dict(grids=grids, views=views, selected=selected, by_worst=by_worst)


def _baseline(runner: Runner, name: str, grids: dict, selected: dict, seed: int) -> str:
    """The tuned non-private model's run folder at ``seed`` (the privacy cost's reference)."""
    cfg = grids["nonprivate"][selected["nonprivate"]]
    cfg = DPConfig.from_dict(cfg.as_dict() | dict(seed=seed))
    return str(_folder(runner.root, name, cfg))


def at_settings(
    runner: Runner, name: str, tuned: dict, seeds: list[int], settings: dict[str, DPConfig]
) -> dict[str, list[dict]]:
    """Every method's config of ``settings`` at every seed (the non-private model first: the
    private runs' baselines)."""
    np_cfg = tuned["grids"]["nonprivate"][tuned["selected"]["nonprivate"]]
    np_cfgs = [DPConfig.from_dict(np_cfg.as_dict() | dict(seed=s)) for s in seeds]
    out = {
        "nonprivate": [_row(name, "nonprivate", s, m) for s, m in zip(seeds, runner.run(np_cfgs))]
    }
    todo = []
    for method, cfg in settings.items():
        for s in seeds:
            base = str(_folder(runner.root, name, np_cfgs[seeds.index(s)]))
            todo.append(
                (method, s, DPConfig.from_dict(cfg.as_dict() | dict(seed=s, baseline=base)))
            )
    for (method, s, _), m in zip(todo, runner.run([c for *_, c in todo]), strict=True):
        out.setdefault(method, []).append(_row(name, method, s, m))
    return out


def _pct(x: tuple[float, float]) -> str:
    return f"{100 * x[0]:.2f} ± {100 * x[1]:.2f}"


def _diff(d: tuple[float, float, float]) -> str:
    return f"{100 * d[0]:+.2f} [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]"


def comparison_table(rows: dict[str, list[dict]], label: dict[str, str]) -> tuple[list, list, dict]:
    """Per method: means ± 95 % t half-widths over seeds, and minus DPSGD (paired by seed)."""
    header = [
        "method", "setting", "seeds", "accuracy %", "minority %", "worst class %",
        "gap, accuracy (pts)", "gap, test loss", "accuracy - DPSGD", "|gap| - DPSGD's [95 %]",
        "worst - DPSGD", "minority - DPSGD", "|gap on loss| - DPSGD's",
    ]  # fmt: skip
    dp = {r["seed"]: r for r in rows.get("dpsgd", [])}
    table, data = [], {}
    for method, rs in rows.items():
        s = {k: mean_ci([r[k] for r in rs]) for k in ("accuracy", "minority", "worst")}
        line = [
            method,
            label.get(method, ""),
            len(rs),
            *(_pct(s[k]) for k in ("accuracy", "minority", "worst")),
        ]
        entry: dict = {k: s[k] for k in s} | {"seeds": [r["seed"] for r in rs]}
        if method != "nonprivate":
            entry["gap"] = mean_ci([r["gap"] for r in rs])
            entry["gap_loss"] = mean_ci([r["gap_loss"] for r in rs])
            line += [_pct(entry["gap"]), f"{entry['gap_loss'][0]:.3f} ± {entry['gap_loss'][1]:.3f}"]
        else:
            line += ["-", "-"]
        common = [r["seed"] for r in rs if r["seed"] in dp]
        if method not in ("nonprivate", "dpsgd") and len(common) >= 2:
            mine = {r["seed"]: r for r in rs}
            for k in ("accuracy", "gap", "worst", "minority", "gap_loss"):
                entry[f"{k}_minus_dpsgd"] = paired_difference(
                    [dp[i][k] for i in common], [mine[i][k] for i in common]
                )
            # the distance from equal costs: a gap that changes sign is not a wider one
            for k in ("gap", "gap_loss"):
                entry[f"abs_{k}_minus_dpsgd"] = paired_difference(
                    [abs(dp[i][k]) for i in common], [abs(mine[i][k]) for i in common]
                )
            line += [_diff(entry[k]) for k in ("accuracy_minus_dpsgd", "abs_gap_minus_dpsgd")]
            line += [_diff(entry[k]) for k in ("worst_minus_dpsgd", "minority_minus_dpsgd")]
            loss = entry["abs_gap_loss_minus_dpsgd"]
            line += [f"{loss[0]:+.3f} [{loss[1]:+.3f}, {loss[2]:+.3f}]"]
        else:
            line += ["-"] * 5
        table.append(line)
        data[method] = entry
    return header, table, data


def _word(d: tuple[float, float, float]) -> str:
    if d[2] < 0:
        return "narrows"
    if d[1] > 0:
        return "widens"
    return "does not change (interval includes 0)"


def verdicts(name: str, data: dict, how: str = "each tuned by validation accuracy") -> list[str]:
    """Per method against DPSGD on the same seeds: the minority-majority gap of the privacy
    cost, as a distance from equal costs (|gap|), on accuracy and on test loss."""
    out = []
    for method, e in data.items():
        d, loss = e.get("abs_gap_minus_dpsgd"), e.get("abs_gap_loss_minus_dpsgd")
        if d is None or loss is None:
            continue
        acc = e["accuracy_minus_dpsgd"]
        out.append(
            f"{name}: {method} vs DPSGD, {how}: {_word(d)} the gap on accuracy, "
            f"|gap| {100 * d[0]:+.2f} points [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]; "
            f"{_word(loss)} it on test loss, {loss[0]:+.3f} [{loss[1]:+.3f}, {loss[2]:+.3f}]; "
            f"accuracy {100 * acc[0]:+.2f} [{100 * acc[1]:+.2f}, {100 * acc[2]:+.2f}] "
            f"({len(e['seeds'])} seeds)"
        )
    return out


def _grid_row(method: str, key: str, view: dict, tuned: dict) -> list[str]:
    def pct(k: str) -> str:
        return "-" if view.get(k) is None else f"{100 * view[k]:.2f}"

    chosen = [
        label
        for label, picks in (("accuracy", tuned["selected"]), ("worst group", tuned["by_worst"]))
        if picks[method] == key
    ]
    return [
        method,
        key,
        pct("val_accuracy"),
        pct("val_worst_group_accuracy"),
        pct("val_minority_majority_gap"),
        ", ".join(chosen),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="fashion-mnist,adult")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument(
        "--phases", default="tune,tuned,same,worst", help="tune (always), tuned, same, worst"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dp-tuned"))
    parser.add_argument(
        "--results-dir", type=Path, help="where the results file goes (default benchmarks/results)"
    )
    parser.add_argument("--epochs", type=int, help="not the protocol's: a quick look only")
    parser.add_argument("--limit", type=int, help="samples per split: a quick look only")
    ns = parser.parse_args()
    OVERRIDES.update({k: getattr(ns, k) for k in ("epochs", "limit") if getattr(ns, k)})
    seeds = [int(s) for s in ns.seeds.split(",")]
    phases = set(ns.phases.split(","))
    for name in ns.data.split(","):
        if name not in PROTOCOLS:
            parser.error(f"unknown data {name!r}; choose from {', '.join(PROTOCOLS)}")
        tables: dict = {}
        summary: list[str] = [
            "tuning: lr x bound grid of the same size per method (10 points; non-private 5), one "
            "seed, chosen on a 10 % validation split of the training set; not accounted in epsilon"
        ]
        data: dict = {}
        t0 = time.perf_counter()
        progress_file = (ns.out if OVERRIDES else RESULTS_DIR) / f"dp_tuned_{name}_runs.json"
        runner = Runner(ns.out, name, ns.jobs, progress_file)
        tuned = tune(runner, name)
        grid_rows = [
            _grid_row(method, key, v, tuned)
            for method, points in tuned["views"].items()
            for key, v in points.items()
        ]
        tables[f"{name}: validation over the grid (seed 0)"] = (
            [
                "method",
                "point",
                "val accuracy %",
                "val worst group %",
                "val gap (pts)",
                "selected by",
            ],
            grid_rows,
        )
        data["grid"] = {m: v for m, v in tuned["views"].items()}
        data["selected"] = {"by_accuracy": tuned["selected"], "by_worst_group": tuned["by_worst"]}
        print_table(*tables[f"{name}: validation over the grid (seed 0)"])
        if "tuned" in phases:
            settings = {m: tuned["grids"][m][tuned["selected"][m]] for m in PRIVATE}
            rows = at_settings(runner, name, tuned, seeds, settings)
            label = {m: tuned["selected"][m] for m in ["nonprivate", *PRIVATE]}
            header, table, d = comparison_table(rows, label)
            tables[f"{name}: each method at its tuned setting"] = (header, table)
            data["tuned"] = {"rows": rows, "summary": d}
            summary += verdicts(name, d)
            print_table(header, table)
        if "same" in phases:
            dpsgd_lr = settings["dpsgd"].lr if "tuned" in phases else None
            for lr in sorted({0.1, *([dpsgd_lr] if dpsgd_lr else [])}):
                same = {m: _point_config(name, m, 0, lr, None, None) for m in PRIVATE}
                rows = at_settings(runner, name, tuned, seeds, same)
                header, table, d = comparison_table(rows, {m: f"lr {lr:g}" for m in PRIVATE})
                title = f"{name}: every method at lr {lr:g} (default bounds)"
                tables[title] = (header, table)
                data[f"same_lr{lr:g}"] = {"rows": rows, "summary": d}
                print_table(header, table)
        if "worst" in phases:  # the second selection: by the worst group's validation accuracy
            settings_w = {m: tuned["grids"][m][tuned["by_worst"][m]] for m in PRIVATE}
            rows = at_settings(runner, name, tuned, seeds, settings_w)
            label = {m: tuned["by_worst"][m] for m in PRIVATE}
            header, table, d = comparison_table(rows, label)
            title = f"{name}: each method at the setting its worst group selects"
            tables[title] = (header, table)
            data["tuned_by_worst_group"] = {"rows": rows, "summary": d}
            summary += verdicts(name, d, "each tuned by its worst group's validation accuracy")
            print_table(header, table)
        data["wall_s"] = time.perf_counter() - t0
        runner.pool.shutdown()
        save_results(
            f"dp_tuned_{name}",
            tables=tables,
            summary=summary,
            data=json.loads(json.dumps(data, default=str)),
            # a quick look never replaces results
            results_dir=ns.out if OVERRIDES else ns.results_dir,
            setting=OVERRIDES
            | {
                "seeds": seeds,
                "phases": sorted(phases),
                "jobs": ns.jobs,
                "grid_lr": GRID_LR,
                "grid_bound": GRID_BOUND,
            },
        )


if __name__ == "__main__":
    main()
