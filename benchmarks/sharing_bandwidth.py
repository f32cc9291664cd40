"""ReLU sharing's bandwidth claim (#28), per protocol: does sharing one sign decision among a
group of activations cut the bytes of private inference by more than half?

The Fashion-MNIST LeNet (1 x 28 x 28, 18,944 ReLUs) at 18,944 / 1,000 / 200 / 50 / 19 sign
decisions, built three ways: SNL (a random mask keeping exactly that many positions), sharing
(``pifair.share``: patch groups down to 200, sign clusters below) and sharing composed with SNL
(groups among the 1,000 positions SNL-1000 keeps: ``pifair share --from SNL_RUN``). Each model
runs under SPU's SEMI2K (2PC), ABY3 (3PC) and Cheetah (2PC) on the same test images, one image
per run, one-time setup apart: party 0's bytes per image (sent and received: all the traffic in
2PC, two of ABY3's three links), split by op kind (linear, comparison, multiplexer or product,
data movement; from its SPU profile), seconds, agreement with the plaintext model. With
``--parties processes`` (the default) every party runs in a process of its own and is
profiled: each party's bytes by op kind, and the traffic of all links (every byte sent, once),
which is what the claim is tested on; ``--parties threads`` profiles party 0 only. DELPHI's
garbled-circuit model is computed beside them (it charges the decisions only: a member's
multiplexer is free there).

SPU's cost does not depend on the weights or on which positions are kept, only on the
structure, so the models have random weights (seed 0) and no fine-tuning; their accuracy is
``benchmarks/sharing.py``'s question.

    python benchmarks/sharing_bandwidth.py [--images 2] [--protocols semi2k,aby3,cheetah]
        [--parties processes|threads]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results  # noqa: E402
from pifair.data import load_dataset  # noqa: E402
from pifair.errors import BudgetError  # noqa: E402
from pifair.models import create_model  # noqa: E402
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.reduce.share import share  # noqa: E402
from pifair.relu import count_relus, replace_activations  # noqa: E402
from pifair.relu.sites import MaskedReLU, iter_sites  # noqa: E402
from pifair.secure.cost import DELPHI  # noqa: E402
from pifair.secure.mpc import (  # noqa: E402
    MPCSettings,
    export_model,
    run_in_processes,
    run_in_threads,
)
from pifair.workflows.mpc import summarize  # noqa: E402

SHAPE = (1, 28, 28)
COUNTS = [1000, 200, 50, 19]
COMPOSED = [200, 50, 19]  # below SNL-1000's kept positions
WORLD = {"semi2k": 2, "aby3": 3, "cheetah": 2}
CATEGORIES = ("linear", "comparison", "multiplication", "data movement")


def _snl(dense: torch.nn.Module, kept: int, seed: int = 0) -> torch.nn.Module:
    """``dense`` with exactly ``kept`` positions kept, drawn uniformly at random."""
    model = create_model("lenet", num_classes=10, input_shape=SHAPE).eval()
    model.load_state_dict(dense.state_dict())
    count_relus(model, SHAPE)
    sizes = [int(np.prod(s.feature_shape)) for _, s in iter_sites(model)]
    keep = np.zeros(sum(sizes), bool)
    keep[np.random.default_rng(seed).choice(keep.size, kept, replace=False)] = True
    chunks = iter(np.split(keep, np.cumsum(sizes)[:-1]))
    return replace_activations(
        model,
        lambda n, s: MaskedReLU(torch.from_numpy(next(chunks).reshape(s.feature_shape)).float()),
    )


def _shared(parent: torch.nn.Module, data, decisions: int) -> torch.nn.Module:
    """``pifair.share`` of ``parent`` to at most ``decisions``: patches while they reach the
    budget, sign clusters below."""
    for scheme in ("patch", "cluster"):
        try:
            result = share(
                parent,
                data,
                decisions,
                scheme=scheme,
                finetune=FinetuneSettings(epochs=0, recalibrate_bn=False),
                progress=False,
            )
            return result.model.eval()
        except BudgetError as err:  # a budget the patch scheme cannot reach
            if scheme == "cluster":
                raise
            print(f"    patch cannot reach {decisions}: {err}")
    raise AssertionError("unreachable")


def models(data) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    dense = create_model("lenet", num_classes=10, input_shape=SHAPE).eval()
    out = {"dense": dense}
    for k in COUNTS:
        out[f"snl-{k}"] = _snl(dense, k)
        out[f"share-{k}"] = _shared(dense, data, k)
    for k in COMPOSED:
        out[f"snl-1000+share-{k}"] = _shared(out["snl-1000"], data, k)
    return out


def measure(model: torch.nn.Module, x: np.ndarray, protocol: str, log: Path, parties: str) -> dict:
    exported = export_model(model, SHAPE)
    settings = MPCSettings(protocol=protocol, batch=1)
    if parties == "processes":
        results = run_in_processes(exported, x, settings, folder=log.with_suffix(""))
    else:
        results = run_in_threads(exported, x, settings, log_path=log)
    summary = summarize(results, WORLD[protocol])
    client = next(r for r in results if r.logits is not None)
    plain = exported.run_plain(x)
    # party 0's bytes (sent + received) per op kind, from its SPU profile; with parties as
    # threads only party 0 is profiled: in 2PC that is all the traffic, in ABY3 two links of
    # three. With processes every party is, and the traffic of all links is every byte sent.
    per_image = summary["per_image"]
    # the parties that measured their own link (summarize derives a 2PC client's from the server)
    profiled = [q for q in summary["parties"] if "bytes_by_category_per_image" in q]
    return {
        "decisions": exported.comparisons,
        "muxes": exported.muxes,
        "bytes": per_image["sent"] + per_image["received"],
        "by_category": {c: per_image["by_category"][c]["bytes"] for c in CATEGORIES},
        "parties": {
            q["rank"]: {
                "sent": q["sent_per_image"],
                "received": q["received_per_image"],
                "by_category": {c: q["bytes_by_category_per_image"][c] for c in CATEGORIES},
            }
            for q in profiled
        },
        "all_links": (
            sum(q["sent_per_image"] for q in profiled) if len(profiled) == WORLD[protocol] else None
        ),
        "seconds": summary["seconds_per_image"],
        "agreement": float((client.logits.argmax(1) == plain.argmax(1)).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--protocols", default="semi2k,aby3,cheetah")
    parser.add_argument("--parties", choices=("processes", "threads"), default="processes")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sharing-bandwidth"))
    ns = parser.parse_args()
    protocols = ns.protocols.split(",")
    data = load_dataset("fashion-mnist", seed=0)
    x = data.normalize(data.test.x[: ns.images]).float().numpy()
    built = models(data)
    ns.out.mkdir(parents=True, exist_ok=True)
    measured: dict[str, dict[str, dict]] = {}
    for protocol in protocols:
        for label, model in built.items():
            t0 = time.perf_counter()
            m = measure(model, x, protocol, ns.out / f"{protocol}-{label}.log", ns.parties)
            measured.setdefault(protocol, {})[label] = m
            took = time.perf_counter() - t0
            print(f"  {protocol} {label}: {m['bytes'] / 1e6:.2f} MB, {took:.0f} s", flush=True)
    header = [
        "model",
        "decisions",
        "multiplexers",
        "party 0 MB per image",
        "vs dense",
        "linear MB",
        "comparison MB",
        "mux/product MB",
        "all links MB",
        "all links vs dense",
        "s per image",
        "agreement",
    ]
    tables, summary = {}, []
    for protocol in protocols:
        rows = []
        dense = measured[protocol]["dense"]["bytes"]
        dense_links = measured[protocol]["dense"]["all_links"]
        for label, m in measured[protocol].items():
            links = m["all_links"]
            rows.append(
                [
                    label,
                    f"{m['decisions']:,}",
                    f"{m['muxes']:,}",
                    f"{m['bytes'] / 1e6:.3f}",
                    f"{m['bytes'] / dense:.3f}",
                    f"{m['by_category']['linear'] / 1e6:.3f}",
                    f"{m['by_category']['comparison'] / 1e6:.3f}",
                    f"{m['by_category']['multiplication'] / 1e6:.3f}",
                    f"{links / 1e6:.3f}" if links is not None else "-",
                    f"{links / dense_links:.3f}" if links is not None else "-",
                    f"{m['seconds']:.3f}",
                    f"{100 * m['agreement']:.0f}%",
                ]
            )
        title = f"{protocol} ({WORLD[protocol]} parties), Fashion-MNIST LeNet, {ns.images} images"
        tables[title] = (header, rows)
        print(f"\n{title}")
        print_table(header, rows)
        if ns.parties == "processes":
            party_header = ["model", "party", "sent MB", "received MB"]
            party_header += [f"{c} MB" for c in CATEGORIES]
            party_rows = [
                [label, str(rank), f"{q['sent'] / 1e6:.3f}", f"{q['received'] / 1e6:.3f}"]
                + [f"{q['by_category'][c] / 1e6:.3f}" for c in CATEGORIES]
                for label, m in measured[protocol].items()
                for rank, q in m["parties"].items()
            ]
            tables[f"{protocol}: every party, bytes per image by op kind"] = (
                party_header,
                party_rows,
            )
            print_table(party_header, party_rows)
        for label, m in measured[protocol].items():
            if label.startswith("share-") or "+share" in label:
                # the claim is about the traffic: all links when every party was profiled
                ours, theirs, what = (
                    (m["all_links"], dense_links, "all links carry")
                    if m["all_links"] is not None
                    else (m["bytes"], dense, "party 0 sends and receives")
                )
                cut = 1 - ours / theirs
                verdict = "meets" if cut > 0.5 else "does not meet"
                summary.append(
                    f"{protocol}: {label} ({m['decisions']:,} decisions, {m['muxes']:,} "
                    f"multiplexers): {what} {ours / 1e6:.3f} MB per image against the dense "
                    f"model's {theirs / 1e6:.3f} MB, {100 * cut:.1f} % less: {verdict} the "
                    "> 50 % claim"
                )
    delphi = [
        [label, f"{count_relus(model, SHAPE).total:,}"]
        + [
            f"{DELPHI.estimate(count_relus(model, SHAPE).total)[k] / 1e6:.2f}"
            for k in ("offline_bytes", "online_bytes")
        ]
        for label, model in built.items()
    ]
    tables["DELPHI garbled-circuit model (decisions only)"] = (
        ["model", "decisions", "offline MB", "online MB"],
        delphi,
    )
    print_table(*tables["DELPHI garbled-circuit model (decisions only)"])
    for line in summary:
        print(line)
    save_results(
        "sharing_bandwidth",
        tables=tables,
        summary=summary,
        data=json.loads(json.dumps(measured, default=float)),
        setting={
            "images": ns.images,
            "protocols": protocols,
            "counts": COUNTS,
            "parties": ns.parties,
        },
    )


if __name__ == "__main__":
    main()
