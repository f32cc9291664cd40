"""pifair's training epoch against a plain PyTorch loop, same machine, same process.

On CUDA: ResNet18 (CIFAR stem) on CIFAR-10 (JPEG), 40 epochs, batch 512, one-cycle, label
smoothing 0.1, bf16, channels_last, data resident on the GPU -- the issue's target is pifair's
epoch within 1.3x of the plain loop and >= 91.5 % test accuracy. On CPU (no GPU lent) the same
comparison runs at reduced scale: the LeNet CNN on Fashion-MNIST.

    python benchmarks/train_speed.py [--epochs N] [--data-dir DIR] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine_line, print_table, save_results  # noqa: E402
from pifair.data import load_dataset  # noqa: E402
from pifair.models import create_model  # noqa: E402
from pifair.relu import replace_activations  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.train import train  # noqa: E402


def plain_loop(
    data,
    *,
    model_name: str,
    epochs: int,
    batch_size: int,
    lr: float,
    smoothing: float,
    device: torch.device,
) -> dict:
    """The baseline: a hand-written loop with nn.ReLU, the data on the device, crop/flip inline."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape)
    replace_activations(model, lambda name, m: nn.ReLU(inplace=True))
    model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    x_all = data.train.x.to(device)
    y_all = data.train.y.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    steps = len(x_all) // batch_size
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.25
    )
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x_all), device=device)
        for i in range(steps):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = x_all[idx].float() / 255
            if data.augment == "crop-flip":
                x = F.pad(x, (4, 4, 4, 4))
                dy, dx = torch.randint(
                    0, 9, (2,)
                ).tolist()  # one shift per batch: the cheapest baseline
                x = x[:, :, dy : dy + 32, dx : dx + 32]
                x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(3), x)
            x = (x - mean) / std
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for i in range(0, len(data.test), 1000):
            x = (data.test.x[i : i + 1000].to(device).float() / 255 - mean) / std
            correct += int((model(x).argmax(1) == data.test.y[i : i + 1000].to(device)).sum())
    return {"epoch_times": times, "test_accuracy": correct / len(data.test)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--limit", type=int, help="N evenly spaced samples of train and test (quick checks)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train-speed"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        setting = dict(
            data="cifar10",
            model="resnet18",
            epochs=args.epochs or 40,
            batch_size=512,
            lr=0.2,
            label_smoothing=0.1,
            schedule="onecycle",
        )
    else:
        setting = dict(
            data="fashion-mnist",
            model="lenet",
            epochs=args.epochs or 2,
            batch_size=128,
            lr=0.05,
            label_smoothing=0.0,
            schedule="onecycle",
        )
    print(f"machine: {machine_line()}\ncommit:  {commit()}\nsetting: {setting}\n")
    data = load_dataset(setting["data"], data_dir=args.data_dir, seed=0, limit=args.limit)

    t0 = time.perf_counter()
    plain = plain_loop(
        data,
        model_name=setting["model"],
        epochs=setting["epochs"],
        batch_size=setting["batch_size"],
        lr=setting["lr"],
        smoothing=setting["label_smoothing"],
        device=device,
    )
    plain["wall_s"] = time.perf_counter() - t0

    cfg = TrainConfig(
        **setting, data_dir=args.data_dir, limit=args.limit, seed=0, device=str(device)
    )
    out = args.out / f"pifair-{int(time.time())}"
    t0 = time.perf_counter()
    run = train(cfg, out=out, progress=False)
    wall = time.perf_counter() - t0
    m = run.metrics
    ours = {
        "epoch_times": [h["epoch_time_s"] for h in m["history"]],
        "test_accuracy": m["test_accuracy"],
        "wall_s": wall,
    }

    def steady(times: list[float]) -> float:  # median without the first (warm-up) epoch
        return statistics.median(times[1:] if len(times) > 1 else times)

    ratio = steady(ours["epoch_times"]) / steady(plain["epoch_times"])
    header = ["loop", "epoch (median, s)", "test accuracy", "wall (s)"]
    rows = [
        [
            "plain PyTorch",
            f"{steady(plain['epoch_times']):.3f}",
            f"{100 * plain['test_accuracy']:.2f}%",
            f"{plain['wall_s']:.1f}",
        ],
        [
            "pifair train",
            f"{steady(ours['epoch_times']):.3f}",
            f"{100 * ours['test_accuracy']:.2f}%",
            f"{ours['wall_s']:.1f}",
        ],
    ]
    print_table(header, rows)
    summary = [
        f"pifair / plain epoch time: {ratio:.2f}x ({steady(ours['epoch_times']):.2f} s vs "
        f"{steady(plain['epoch_times']):.2f} s)",
        f"test accuracy: pifair {100 * ours['test_accuracy']:.2f} %, plain "
        f"{100 * plain['test_accuracy']:.2f} %",
    ]
    print("\n" + "\n".join(summary) + " (target <= 1.3x)")
    result = {
        "machine": machine_line(),
        "commit": commit(),
        "setting": setting,
        "plain": plain,
        "pifair": ours,
        "ratio": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    # a --limit run is a quick check, not a result: its file stays in the run folder
    save_results(
        "train_speed_" + ("gpu" if cuda else "cpu"),
        tables={"epoch time": (header, rows)},
        summary=summary,
        data=result,
        setting=setting,
        results_dir=args.out if args.limit else None,
    )


if __name__ == "__main__":
    main()
