"""SPU engine: the export matches the torch model site by site, MPC outputs match the plaintext
model under Cheetah and SEMI2K, comparison bytes follow the kept ReLUs, and SPU's profile is
read right."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("spu")

from pifair.errors import UnsupportedLayerError  # noqa: E402
from pifair.models import create_model  # noqa: E402
from pifair.relu import count_relus, replace_activations  # noqa: E402
from pifair.relu.polynomial import PolyAct  # noqa: E402
from pifair.relu.shared_relu import SharedReLU, channel_groups, patch_groups  # noqa: E402
from pifair.relu.sites import DenseReLU, DenseTanh, MaskedReLU, iter_sites  # noqa: E402
from pifair.secure.mpc import (  # noqa: E402
    MPCSettings,
    export_model,
    make_link,
    parse_parties,
    parse_profile,
    run_in_processes,
    run_in_threads,
    run_party,
)

pytestmark = pytest.mark.mpc


def _reduced_lenet(shape=(1, 8, 8)) -> nn.Module:
    """LeNet with one site of each reducible kind: masked (SNL), shared (patches), shared
    (channel groups, representative rule)."""
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=shape, width=4).eval()
    count_relus(model, shape)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding is exercised
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)

    def reduce(name, site):
        fs = site.feature_shape
        if name == "act1":
            return MaskedReLU((torch.rand(fs) < 0.3).float())
        if name == "act2":
            return SharedReLU(patch_groups(fs, (2, 2)))
        return SharedReLU(channel_groups(fs, 4), rule="representative")

    return replace_activations(model, reduce)


def test_export_matches_torch_and_counts_each_sites_comparisons():
    model = _reduced_lenet()
    exported = export_model(model, (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(exported.run_plain(x.numpy()) - want).max() < 1e-4
    assert [s.comparisons for s in exported.sites] == [s.relus for s in count_relus(model).sites]
    masked = model.act1
    assert exported.sites[0].comparisons == int(masked.mask.sum()) < exported.sites[0].elements
    assert exported.sites[1].comparisons == 8 * 2 * 2  # 8 channels of 4x4 in 2x2 patches
    assert "batch" not in " ".join(exported.params)  # batch norm folded into the convolutions


def test_shared_relu_export_applies_one_sign_per_group():
    # two groups of two: the mean decides, so a negative member of a positive group passes
    site = SharedReLU(torch.tensor([0, 0, 1, 1]))
    model = nn.Sequential(nn.Identity(), site)
    site.feature_shape = (4,)
    exported = export_model(model, (4,))
    x = np.array([[3.0, -1.0, 1.0, -2.0]], np.float32)
    assert exported.run_plain(x).tolist() == [[3.0, -1.0, 0.0, 0.0]]


def test_a_shared_site_on_an_snl_mask_exports_its_linear_positions_as_the_identity():
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8), width=4).eval()
    count_relus(model, (1, 8, 8))

    def shared_on_mask(name, site):
        groups = patch_groups(site.feature_shape, (2, 2))
        linear = torch.rand(site.feature_shape) < 0.6  # what SNL linearized
        return SharedReLU(torch.where(linear, -1, groups))

    model = replace_activations(model, shared_on_mask)
    exported = export_model(model, (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(exported.run_plain(x.numpy()) - want).max() < 1e-4
    sites = dict(iter_sites(model))
    assert [s.comparisons for s in exported.sites] == [s.relus for s in count_relus(model).sites]
    for export in exported.sites:
        assert export.comparisons == sites[export.name].num_decisions
        assert export.muxes == int((~sites[export.name].linear).sum())  # none for the identity


def _secret_comparisons(exported, shape) -> int:
    """Elements compared on secret (float) values in the exported program's StableHLO, one
    image: an independent count read from the program the parties run (integer compares are
    on public indices)."""
    import re

    import jax

    x = np.zeros((1, *shape), np.float32)
    text = jax.jit(exported.fn).lower(x, exported.params).as_text()
    total = 0
    for line in text.splitlines():
        float_compare = "stablehlo.compare" in line and "FLOAT" in line
        if float_compare or "stablehlo.maximum" in line:
            dims = re.findall(r"tensor<([\dx]+)xf32>", line)[-1]
            total += int(np.prod([int(d) for d in dims.split("x")]))
    return total


@pytest.mark.parametrize("linear_fraction", [0.0, 0.6])
def test_decisions_equal_the_comparisons_of_the_exported_program(linear_fraction):
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8), width=4).eval()
    count_relus(model, (1, 8, 8))

    def shared(name, site):
        fs = site.feature_shape
        groups = patch_groups(fs, (2, 2)) if len(fs) == 3 else torch.arange(fs[0]) // 4
        return SharedReLU(torch.where(torch.rand(fs) < linear_fraction, -1, groups))

    model = replace_activations(model, shared)
    exported = export_model(model, (1, 8, 8))
    decisions = count_relus(model, (1, 8, 8)).total
    assert _secret_comparisons(exported, (1, 8, 8)) == exported.comparisons == decisions


def test_residual_model_and_polynomials_export():
    torch.manual_seed(0)
    resnet = create_model("resnet18", num_classes=10, input_shape=(3, 8, 8)).eval()
    exported = export_model(resnet, (3, 8, 8))
    assert exported.comparisons == count_relus(resnet, (3, 8, 8)).total
    poly = create_model(
        "he_cnn", num_classes=10, input_shape=(1, 8, 8), channels=2, hidden=6
    ).eval()
    count_relus(poly, (1, 8, 8))
    replace_activations(poly, lambda n, s: PolyAct(2, "channel", s.feature_shape))
    assert export_model(poly, (1, 8, 8)).comparisons == 0


def test_layers_mpc_cannot_run_are_named():
    tanh = create_model("fairdp_cnn", num_classes=10, input_shape=(1, 28, 28), act_layer="tanh")
    with pytest.raises(
        UnsupportedLayerError, match=r"site 'act1' \(DenseTanh\) has no exact MPC form"
    ):
        export_model(tanh, (1, 28, 28))
    upsample = nn.Sequential(nn.Conv2d(1, 2, 3), DenseReLU(), nn.Upsample(scale_factor=2))
    with pytest.raises(UnsupportedLayerError, match=r"layer '2' \(Upsample\) cannot be exported"):
        export_model(upsample, (1, 8, 8))

    class FunctionalReLU(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    with pytest.raises(UnsupportedLayerError, match="make it an activation site"):
        export_model(FunctionalReLU(), (4,))
    assert DenseTanh().relu_count((3,)) == 0


@pytest.mark.parametrize("protocol", ["cheetah", "semi2k", "aby3"])
def test_small_cnn_under_mpc_agrees_with_plaintext(digits, protocol, tmp_path):
    model = _reduced_lenet()
    exported = export_model(model, (1, 8, 8))
    x = digits.normalize(digits.test.x[:3]).float()
    results = run_in_threads(
        exported, x.numpy(), MPCSettings(protocol=protocol, batch=2), log_path=tmp_path / "spu.log"
    )
    assert len(results) == (3 if protocol == "aby3" else 2)
    client = next(r for r in results if r.rank == 1)
    with torch.no_grad():
        want = model(x).double().numpy()
    assert client.logits.shape == want.shape  # the padded last batch is cut
    assert np.abs(client.logits - want).max() <= 2e-3 * max(1.0, np.abs(want).max())
    assert (client.logits.argmax(1) == want.argmax(1)).all()
    server = next(r for r in results if r.rank == 0)
    assert len(server.runs) == 2 and server.setup is not None  # two batches, warm-up apart
    assert server.total.by_category()["comparison"]["bytes"] > 0
    # the split by op kind accounts for every byte SPU's link counted (what the sharing
    # bandwidth benchmark reads by op kind)
    ops = server.total.ops.values()
    assert sum(o.sent for o in ops) == server.total.sent > 0
    assert sum(o.received for o in ops) == server.total.received > 0


def test_parties_as_processes_profile_every_party(digits, tmp_path):
    """ABY3 with each party in a process of its own: every party's profile comes back, the
    bytes one party sends are bytes another receives, and each party's split by op kind sums
    to its link totals."""
    model = _reduced_lenet()
    x = digits.normalize(digits.test.x[:2]).float()
    results = run_in_processes(
        export_model(model, (1, 8, 8)), x.numpy(), MPCSettings(protocol="aby3"), folder=tmp_path
    )
    assert sorted(r.rank for r in results) == [0, 1, 2]
    totals = [r.total for r in results]
    assert all(t is not None and t.sent > 0 for t in totals)
    assert sum(t.sent for t in totals) == sum(t.received for t in totals)
    for t in totals:
        assert sum(o.sent for o in t.ops.values()) == t.sent
    client = next(r for r in results if r.rank == 1)
    with torch.no_grad():
        assert (client.logits.argmax(1) == model(x).numpy().argmax(1)).all()


def test_a_failing_party_stops_the_run_with_its_error(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    images = np.zeros((2, 1, 6, 6), np.float32)  # the model takes 1x8x8
    with pytest.raises(ValueError, match=r"shape \(1, 6, 6\) but the model takes \(1, 8, 8\)"):
        run_in_threads(
            export_model(model, (1, 8, 8)), images, MPCSettings(), log_path=tmp_path / "spu.log"
        )


def test_parties_started_with_different_settings_are_refused():
    model = export_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval(), (1, 8, 8))
    errors = {}

    def party(rank: int, settings: MPCSettings) -> None:
        link = make_link(None, rank, world=2, world_id=f"mismatch-{id(errors)}")
        try:
            run_party(
                rank, link, settings, program=model, images=np.zeros((1, 1, 8, 8), np.float32)
            )
        except ValueError as err:
            errors[rank] = err

    server = threading.Thread(target=party, args=(0, MPCSettings(batch=2)), daemon=True)
    client = threading.Thread(target=party, args=(1, MPCSettings(batch=1)), daemon=True)
    server.start(), client.start()
    server.join(timeout=60)
    assert "start every party with the same options" in str(errors[0])


def _one_site(mask: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), MaskedReLU(mask), nn.Flatten(), nn.Linear(16 * 16 * 16, 4)
    )
    model[1].feature_shape = (16, 16, 16)
    return model.eval()


def test_comparison_bytes_follow_the_kept_count_not_the_full_count(tmp_path):
    shape = (16, 16, 16)
    dense = torch.ones(shape)
    tenth = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    measured = {}
    for name, mask in [("dense", dense), ("tenth", tenth)]:
        results = run_in_threads(
            export_model(_one_site(mask), (1, 16, 16)),
            x,
            MPCSettings(),
            log_path=tmp_path / f"{name}.log",
        )
        measured[name] = results[0].total.by_category()["comparison"]["bytes"]
    kept = int(tenth.sum()) / tenth.numel()
    ratio = measured["tenth"] / measured["dense"]
    assert abs(ratio - kept) <= 0.15 * kept, (ratio, kept)


# SPU's profile as it writes it (the prefix of every line is the same)
_SPU_PREFIX = "2026-11-26 01:40:28.027 [info] [api.cc:printProfilingData:"
SPU_LOG = "".join(
    _SPU_PREFIX + line + "\n"
    for line in [
        "220] HLO profiling: total time 3.1",
        "223] - pphlo.dot, executed 1 times, duration 1.5s, send bytes 100 recv bytes 90, send "
        "actions 4, recv actions 3",
        "223] - pphlo.less, executed 2 times, duration 0.5s, send bytes 40 recv bytes 60, send "
        "actions 6, recv actions 7",
        "223] - pphlo.custom_call: spu.gather, executed 2 times, duration 0.001s, send bytes 0 "
        "recv bytes 0, send actions 0, recv actions 0",
        "220] HAL profiling: total time 3.1",
        "223] - f_mmul, executed 1 times, duration 1.5s, send bytes 100 recv bytes 90, send "
        "actions 4, recv actions 3",
        "233] Link details: total send bytes 140, recv bytes 150, send actions 10, recv actions 10",
    ]
)


def test_profile_is_parsed_per_op_and_per_category():
    p = parse_profile(
        "older run ... Link details: total send bytes 1, recv bytes 1, send actions 1, recv "
        "actions 1\n" + SPU_LOG
    )
    assert set(p.ops) == {
        "pphlo.dot",
        "pphlo.less",
        "pphlo.custom_call: spu.gather",
    }  # HAL not mixed in
    assert (p.sent, p.received, p.send_actions) == (140, 150, 10)
    cat = p.by_category()
    assert cat["linear"] == {"seconds": 1.5, "bytes": 190, "messages": 4}
    assert cat["comparison"] == {"seconds": 0.5, "bytes": 100, "messages": 6}
    assert cat["data movement"]["bytes"] == 0
    twice = p + p
    assert twice.ops["pphlo.less"].count == 4 and twice.sent == 280
    with pytest.raises(RuntimeError, match="no profile"):
        parse_profile("nothing here")


def test_party_placements_are_parsed_and_checked():
    assert parse_parties("threads", "cheetah").mode == "threads"
    hosts = parse_parties("10.0.0.1:9001, 10.0.0.2:9002", "cheetah")
    assert hosts.mode == "hosts" and hosts.addresses == ("10.0.0.1:9001", "10.0.0.2:9002")
    with pytest.raises(ValueError, match="aby3 has 3 parties but --parties lists 2"):
        parse_parties("a:1,b:2", "aby3")
    with pytest.raises(ValueError, match="not host:port"):
        parse_parties("a:1,b", "cheetah")
    with pytest.raises(ValueError, match="unknown MPC protocol 'spdz'"):
        parse_parties("threads", "spdz")
