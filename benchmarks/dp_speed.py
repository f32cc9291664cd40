"""DP-SGD throughput and memory: every method on pifair's two gradient paths against Opacus'
default pipeline and the non-private step, on the same data in the same process.

Pipelines, one epoch each, timed in one process (ratios to the mean of the two Opacus epochs,
one first and one last, so that drift shows):
  non-private       pifair's training step without clipping or noise: the ceiling of any DP path
  Opacus default    ``PrivacyEngine.make_private`` (hooks, Poisson DataLoader over a
                    TensorDataset of the same tensors, flat clipping), noise multiplier 1
  pifair hooks      Opacus' per-sample gradients, each method's factors (noise multiplier 1)
  pifair ghost      ghost norms (linear: Opacus'; conv: pifair's mixed rule), second backward
Peak memory: each pipeline again in a fresh process for ``--memory-steps`` steps; the peak
resident set (Linux VmHWM, reset after set-up) above the resident set after set-up; on CUDA
``torch.cuda.max_memory_allocated``.
``--profile``: torch.profiler over ``--memory-steps`` steps of the non-private step, Opacus
default and pifair hooks/ghost (DPSGD): the operators that take the time.

Setups: ``fashion-mnist`` is the fair-dp protocol (class 8 at 9 %, fair-dp CNN, batch 256) on
20,000 evenly spaced training images (18,180 after subsampling: 71 steps an epoch);
``cifar10-gn`` a ResNet18 with group norm (``resnet18_gn``, width 8) on 2,048 CIFAR-10 images
(CPU scale: one epoch is 8 steps).

    python benchmarks/dp_speed.py [--setups fashion-mnist,cifar10-gn] [--memory-steps 10]
                                  [--profile] [--limit N]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine_line, print_table, save_results  # noqa: E402
from pifair import DPConfig  # noqa: E402
from pifair.data import Dataset, load_dataset  # noqa: E402
from pifair.dp.private import PrivateTraining, train_epoch  # noqa: E402
from pifair.models import create_model  # noqa: E402

METHODS = ["dpsgd", "global", "global-adapt", "dpsgd-f", "bounded-adapt"]
SETUPS: dict[str, dict] = {
    "fashion-mnist": dict(
        data=dict(data="fashion-mnist", keep="8:0.09", limit=20000),
        model="fairdp_cnn",
        options={},
    ),
    "cifar10-gn": dict(
        data=dict(data="cifar10", limit=2048), model="resnet18_gn", options=dict(width=8)
    ),
}
SEED = 0


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _data(setup: str, limit: int | None = None) -> Dataset:
    kwargs = dict(SETUPS[setup]["data"]) | ({"limit": limit} if limit else {})
    return load_dataset(**DPConfig(**kwargs, method="nonprivate").data_config.load_kwargs(SEED))


def _model(setup: str, data: Dataset) -> torch.nn.Module:
    torch.manual_seed(SEED)
    s = SETUPS[setup]
    return create_model(
        s["model"], num_classes=data.num_classes, input_shape=data.input_shape, **s["options"]
    ).to(_device())


def _pifair(setup: str, data: Dataset, method: str, path: str):
    """Set up one pifair pipeline; returns a function that trains one epoch."""
    private_cfg = {} if method == "nonprivate" else dict(noise_multiplier=1.0, grad_path=path)
    cfg = DPConfig(
        **SETUPS[setup]["data"],
        model=SETUPS[setup]["model"],
        method=method,
        epochs=1,
        batch_size=256,
        seed=SEED,
        **private_cfg,
    )
    model = _model(setup, data)
    private = PrivateTraining(cfg, model, data, 0, 1) if cfg.private else None
    assert cfg.lr is not None
    opt = private.optimizer if private else torch.optim.SGD(model.parameters(), lr=cfg.lr)
    train = data.train.to(_device())

    def epoch() -> int:
        return train_epoch(cfg, model, data, train, opt, private, 0, _device(), False)["samples"]

    return epoch


def _opacus_default(setup: str, data: Dataset):
    """Opacus' own pipeline: make_private, hooks, a Poisson DataLoader, flat clipping."""
    from opacus import PrivacyEngine

    x, y = data.normalize(data.train.x), data.train.y
    model = _model(setup, data)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def epoch() -> int:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256)
        engine = PrivacyEngine()
        m, o, dl = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
        )
        seen = 0
        for xb, yb in dl:
            xb, yb = xb.to(_device()), yb.to(_device())
            o.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            o.step()
            seen += len(xb)
        m._close()  # remove the hooks: the next epoch wraps the model again
        return seen

    return epoch


PIPELINES = (
    [("non-private", "nonprivate", None), ("Opacus default", "dpsgd", None)]
    + [("pifair hooks", m, "hooks") for m in METHODS]
    + [("pifair ghost", m, "ghost") for m in METHODS]
)


def _make(setup: str, data: Dataset, pipeline: str, method: str, path: str | None):
    if pipeline == "Opacus default":
        return _opacus_default(setup, data)
    return _pifair(setup, data, method, path or "hooks")


def _first_batches(data: Dataset, steps: int) -> Dataset:
    """The data with a training set of ``steps`` expected batches (256 each): one epoch of it is
    ``steps`` steps of the full run's batch size."""
    return data.with_splits(
        train=data.train.subset(torch.arange(min(len(data.train), 256 * steps)))
    )


def _rss_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def _peak_memory(task: tuple) -> float:
    """MiB above set-up for ``steps`` steps of one pipeline, in a fresh process."""
    setup, pipeline, method, path, steps, threads = task
    torch.set_num_threads(threads)
    epoch = _make(setup, _first_batches(_data(setup), steps), pipeline, method, path)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        epoch()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    base = _rss_kib("VmRSS")
    epoch()
    return (_rss_kib("VmHWM") - base) / 1024


def _profile(setup: str, data: Dataset, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for pipeline, method, path in PIPELINES[:3] + [PIPELINES[2 + len(METHODS)]]:
        epoch = _make(setup, _first_batches(data, steps), pipeline, method, path)
        epoch()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            epoch()
            wall = time.perf_counter() - t0
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        label = f"{pipeline} {method}" if pipeline.startswith("pifair") else pipeline
        rows.append([label, "(wall, per step)", f"{1e3 * wall / steps:.1f}", "100.0"])
        for e in ops[:6]:
            rows.append(
                [
                    "",
                    e.key,
                    f"{e.self_cpu_time_total / 1e3 / steps:.1f}",
                    f"{100 * e.self_cpu_time_total / total:.1f}",
                ]
            )
    TABLES[f"{setup}: where the time goes (torch.profiler, {steps} steps)"] = (
        ["pipeline", "operator (self time)", "ms per step", "% of operator time"],
        rows,
    )
    print_table(*TABLES[f"{setup}: where the time goes (torch.profiler, {steps} steps)"])


TABLES: dict[str, tuple[list[str], list[list[object]]]] = {}


def measure(setup: str, memory_steps: int, profile: bool, limit: int | None = None) -> dict:
    data = _data(setup, limit)
    threads = torch.get_num_threads()
    speeds: dict[tuple[str, str], float] = {}
    order = [*PIPELINES, PIPELINES[1]]  # Opacus default again at the end
    opacus_runs = []
    _make(setup, _first_batches(data, 2), *PIPELINES[0])()  # warm-up: first-call costs
    for pipeline, method, path in order:
        epoch = _make(setup, data, pipeline, method, path)
        t0 = time.perf_counter()
        seen = epoch()
        sps = seen / (time.perf_counter() - t0)
        print(f"  {setup}: {pipeline} {method}: {sps:.0f} samples/s", flush=True)
        if pipeline == "Opacus default":
            opacus_runs.append(sps)
        else:
            speeds[(pipeline, method)] = sps
    opacus = sum(opacus_runs) / len(opacus_runs)
    memory = {}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        for pipeline, method, path in PIPELINES:
            task = (setup, pipeline, method, path, memory_steps, threads)
            memory[(pipeline, method)] = pool.submit(_peak_memory, task).result()
    rows = []
    for pipeline, method, _ in PIPELINES:
        sps = opacus if pipeline == "Opacus default" else speeds[(pipeline, method)]
        rows.append(
            [
                pipeline,
                "-" if pipeline == "non-private" else method,
                f"{sps:.0f}",
                f"{sps / opacus:.2f}",
                f"{memory[(pipeline, method)]:.0f}",
            ]
        )
    unit = "MiB (CUDA allocated)" if torch.cuda.is_available() else "MiB (peak RSS)"
    title = f"{setup}: samples/s, one epoch, {len(data.train)} samples, {threads} threads"
    TABLES[title] = (
        ["pipeline", "method", "samples/s", "vs Opacus default", f"peak {unit}"],
        rows,
    )
    print_table(*TABLES[title])
    if profile:
        _profile(setup, data, memory_steps)
    return {
        "samples": len(data.train),
        "opacus_default_runs": opacus_runs,
        "rows": rows,
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setups", default="fashion-mnist,cifar10-gn", help=", ".join(SETUPS))
    parser.add_argument("--memory-steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--limit", type=int, help="evenly spaced samples of each set (quick looks)")
    ns = parser.parse_args()
    print(f"machine: {machine_line()}\ncommit: {commit()}")
    data: dict = {}
    for setup in ns.setups.split(","):
        if setup not in SETUPS:
            parser.error(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}")
        data[setup] = measure(setup, ns.memory_steps, ns.profile, ns.limit)
    save_results(
        "dp_speed",
        tables=TABLES,
        summary=[],
        data=data,
        setting={k: str(v) for k, v in vars(ns).items()},
    )


if __name__ == "__main__":
    main()
