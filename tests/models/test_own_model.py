"""A user's own model (torchvision, timm, a hand-written module) counted exactly and reduced to
an exact budget: each count against an independent one, made during one forward pass by a
TorchFunctionMode that adds up the elements entering every relu call of the unconverted model."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import pifair
from pifair.cli import main
from pifair.errors import ConfigError
from pifair.models import create_model
from pifair.models.external import import_torchvision
from pifair.models.weights import load_user_weights, read_state_dict
from pifair.relu import (
    MaskedReLU,
    UntraceableModelError,
    convert_activations,
    count_relus,
    iter_sites,
)
from pifair.runs import Run

torchvision = import_torchvision()


class ReluCalls(TorchFunctionMode):
    """The reference: elements per sample entering every relu call (function, method, module)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("relu", "relu_"):
            self.elements += args[0][0].numel()
            self.calls += 1
        return func(*args, **(kwargs or {}))


def reference_count(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    model.eval()
    with torch.no_grad(), ReluCalls() as ref:
        model(torch.zeros(1, *shape))
    return ref.elements, ref.calls


class UserNet(nn.Module):
    """F.relu, an in-place nn.ReLU applied twice (the second after a residual add), x.relu()."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8 * (image_size // 2) ** 2, 16)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = self.act(self.conv2(x))
        x = self.act(x + y)
        x = F.avg_pool2d(x, 2).flatten(1)
        return self.out(self.fc(x).relu())


TORCHVISION = ["resnet18", "resnet50", "vgg11_bn", "densenet121", "squeezenet1_0", "mobilenet_v2"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_count_equals_the_independent_count(name):
    raw = torchvision.models.get_model(name, weights=None, num_classes=10)
    elements, calls = reference_count(raw, (3, 32, 32))
    count = count_relus(raw, (3, 32, 32))
    assert count.total == elements
    built = create_model(f"torchvision:{name}", num_classes=10, input_shape=(3, 32, 32))
    assert count_relus(built, (3, 32, 32)).total == elements
    assert len(iter_sites(built)) == calls  # one site per call
    if name == "mobilenet_v2":  # ReLU6 is listed, never counted
        relu6 = sum(isinstance(m, nn.ReLU6) for m in raw.modules())
        assert elements == 0 and count.total == 0 and relu6 == 35
        assert [c.op for c in count.untouched] == ["ReLU6"] * relu6
        assert "ReLU6" in count.table() and "not ReLUs" in count.note
    if name == "resnet18":  # BasicBlock applies its ReLU twice: 8 blocks, one extra call each
        assert calls == 17 and "maxpool" in [c.module for c in count.untouched]


def test_timm_count_equals_the_independent_count():
    timm = pytest.importorskip("timm")
    raw = timm.create_model("resnet18", pretrained=False, num_classes=10)
    elements, _ = reference_count(raw, (3, 32, 32))
    assert count_relus(raw, (3, 32, 32)).total == elements
    built = create_model("timm:resnet18", num_classes=10, input_shape=(1, 28, 28))
    assert count_relus(built, (1, 28, 28)).total == reference_count(built, (1, 28, 28))[0]


def test_user_module_count_and_conversion():
    model = UserNet()
    elements, calls = reference_count(model, (1, 8, 8))
    assert calls == 4 and elements == 8 * 64 * 3 + 16
    count = count_relus(model, (1, 8, 8))
    assert count.total == elements and "converted copy" in count.note
    converted = convert_activations(model, (1, 8, 8))
    assert [n for n, _ in iter_sites(converted)] == ["relu", "act", "act_2", "relu_2"]
    x = torch.randn(3, 1, 8, 8)
    model.eval(), converted.eval()
    torch.testing.assert_close(converted(x), model(x))
    assert type(model.act) is nn.ReLU  # the user's model is left as it was


def test_in_place_relu_is_seen_by_later_readers():
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            F.relu_(h)  # result unused: h itself changed
            return h * 2

    model = InPlace()
    converted = convert_activations(model, (4,))
    x = torch.randn(5, 4)
    torch.testing.assert_close(converted(x), model(x))
    assert count_relus(model, (4,)).total == 4


def test_plain_model_is_never_counted_zero_silently():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert "linear" in count_relus(linear, (4,)).note
    gelu = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    count = count_relus(gelu, (4,))
    assert count.total == 0 and "GELU" in count.note
    with pytest.raises(ConfigError, match="input_shape"):
        count_relus(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_untraceable_model_is_refused_naming_the_module():
    class Gate(nn.Module):
        def forward(self, x):
            return F.relu(x) if x.sum() > 0 else x

    model = nn.Sequential(nn.Linear(4, 4), Gate(), nn.Linear(4, 2))
    with pytest.raises(UntraceableModelError, match=r"module '1' \(Gate\).*traceable"):
        count_relus(model, (4,))


def test_a_reduced_site_applied_twice_is_refused():
    site = MaskedReLU(torch.ones(4))
    model = nn.Sequential(nn.Linear(64, 4), site, nn.Linear(4, 4), site, nn.Linear(4, 10))
    with pytest.raises(pifair.UnsupportedLayerError, match="more than one place"):
        convert_activations(model)


def positions_applying_relu(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Independent of the masks' bookkeeping: feed -1 into every site and count the outputs
    that come out 0 (max(x, 0) applied) rather than -1 (identity)."""
    applied = 0

    def probe(site, inputs, output):
        nonlocal applied
        out = type(site).forward(site, -torch.ones_like(inputs[0]))
        applied += int((out[0] == 0).sum())

    handles = [s.register_forward_hook(probe) for _, s in iter_sites(model)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return applied


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["user", "torchvision:resnet18"])
@pytest.mark.parametrize("granularity,budget", [("pixel", 300), ("channel", 256)])
def test_linearized_budget_holds_in_the_model_and_the_mpc_program(arch, granularity, budget):
    pytest.importorskip("jax")
    small = pifair.load_dataset("digits", seed=0, limit=160)
    model = (
        UserNet() if arch == "user" else create_model(arch, num_classes=10, input_shape=(1, 8, 8))
    )
    result = pifair.linearize(
        model,
        small,
        budget,
        granularity=granularity,
        progress=False,
        search=pifair.SearchSettings(max_epochs=2, harden_epochs=0.5),
        finetune=pifair.FinetuneSettings(epochs=0),
    )
    assert result.relus == budget
    assert count_relus(result.model, (1, 8, 8)).total == budget
    assert positions_applying_relu(result.model, (1, 8, 8)) == budget
    assert pifair.mpc.export(result.model, (1, 8, 8)).comparisons == budget


def test_torchvision_resnet18_exports_to_jax_at_cifar_shape():
    pytest.importorskip("jax")
    model = create_model("torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32))
    for m in model.modules():  # non-trivial batch-norm statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    exported = pifair.mpc.export(model.eval(), (3, 32, 32))  # checked against torch inside
    assert exported.comparisons == count_relus(model, (3, 32, 32)).total
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    got = exported.run_plain(x.numpy())
    assert abs(got - want).max() <= 1e-3 * max(1.0, abs(want).max())


class SmallSequential(nn.Module):
    """A user CNN with functional ReLUs that the HE engine can run (no branch, no max pool)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(2 * 16, 6)
        self.fc2 = nn.Linear(6, num_classes)

    def forward(self, x):
        x = F.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.he
def test_user_cnn_with_functional_relu_runs_under_ckks(digits):
    pytest.importorskip("tenseal")
    he = pytest.importorskip("pifair.secure.he.engine")
    params = pytest.importorskip("pifair.secure.he.params")
    torch.manual_seed(0)
    poly = pifair.polyfit(
        SmallSequential(),
        digits,
        granularity="layer",
        progress=False,
        finetune=pifair.FinetuneSettings(epochs=0),
    ).model.eval()
    assert [s.kind for _, s in iter_sites(poly)] == ["poly", "poly"]
    program = pifair.he.compile(poly, (1, 8, 8))
    client = he.HEClient(params.choose_parameters(program.depth))
    server = he.HEServer(client.server_keys())
    x = digits.normalize(digits.test.x[:8]).double()
    logits = client.decrypt(server.run(program, client.encrypt(x.numpy())), batch=8)
    with torch.no_grad():
        expected = poly.double()(x).numpy()
    assert abs(logits - expected).max() <= 1e-4 * max(1.0, abs(expected).max())


def test_weights_with_wrong_keys_or_shapes_are_refused_by_name(tmp_path):
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "w.pt")
    fresh = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ConfigError) as err:
        load_user_weights(fresh, read_state_dict(tmp_path / "w.pt"), source="w.pt")
    text = str(err.value)
    assert "1 missing: fc.bias" in text and "1 unexpected: extra.weight" in text
    assert "layer1.0.conv1.weight (file (3, 3), model (64, 64, 3, 3))" in text


def test_import_refuses_mismatched_weights_before_writing(tmp_path, capsys):
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "w.pt")
    code = main(["import", "--arch", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt"),
                 "--data", "digits", "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "pifair import: error: the weights in" in error and len(error.splitlines()) == 1
    assert "fc.weight (file (7, 512), model (10, 512))" in error
    assert "conv1.weight (file (64, 3, 7, 7), model (64, 1, 7, 7))" in error
    assert not (tmp_path / "run").exists()


def test_whole_pickled_module_and_checkpoint_dicts_load(tmp_path):
    model = UserNet()
    wrapped = {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "c.pt")
    torch.save(model, tmp_path / "m.pt")
    for name in ("c.pt", "m.pt"):
        state = read_state_dict(tmp_path / name)
        assert sorted(state) == sorted(model.state_dict())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_wrong_class_count_is_refused_by_name(tmp_path):
    source = tmp_path / "net.py"
    source.write_text(
        "import torch\n"
        "class Seven(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, 7)\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.relu(x.flatten(1)))\n"
    )
    with pytest.raises(ConfigError, match=r"outputs \(7,\) per sample where the data set has 10"):
        create_model(f"{source}:Seven", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="no nn.Module class 'Eight'.*Seven"):
        create_model(f"{source}:Eight", num_classes=10, input_shape=(1, 8, 8))


def test_unknown_torchvision_name_lists_the_builders():
    with pytest.raises(pifair.UnknownNameError, match="resnet18"):
        create_model("torchvision:resnet19", num_classes=10, input_shape=(3, 32, 32))


@pytest.mark.slow
@pytest.mark.mpc
def test_import_then_linearize_audit_cost_mpc_on_a_torchvision_model(tmp_path, capsys):
    pytest.importorskip("spu")
    raw = torchvision.models.resnet18(num_classes=10)
    raw.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(raw.state_dict(), tmp_path / "weights.pt")  # plain PyTorch, no pifair object
    imported, reduced = tmp_path / "imported", tmp_path / "reduced"
    assert main(["import", "--arch", "torchvision:resnet18", "--weights",
                 str(tmp_path / "weights.pt"), "--data", "digits", "--limit", "200",
                 "--out", str(imported)]) == 0  # fmt: skip
    model, record, _ = pifair.load_from_run(imported)
    assert record["model"] == "torchvision:resnet18"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in raw.state_dict().items())
    assert count_relus(model, (1, 8, 8)).total == reference_count(raw, (1, 8, 8))[0]
    assert main(["linearize", "--from", str(imported), "--budget", "400", "--out", str(reduced),
                 "--search-epochs", "1", "--harden-epochs", "0", "--finetune-epochs", "1",
                 "--no-progress"]) == 0  # fmt: skip
    assert Run.open(reduced).metrics["relus"] == 400
    assert main(["audit", str(imported), str(reduced), "--out", str(tmp_path / "audit")]) == 0
    assert main(["cost", str(reduced)]) == 0
    mpc_run = ["mpc-infer", "--from", str(reduced), "--images", "1", "--out", str(tmp_path / "mpc")]
    assert main(mpc_run) == 0
    mpc = Run.open(tmp_path / "mpc").metrics
    assert mpc["relus"] == mpc["comparisons"] == 400 and mpc["argmax_agreement"] == 1.0
    assert "400 ReLUs" in capsys.readouterr().out


USER_FILE = """
import torch
import torch.nn.functional as F


class Net(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc1 = torch.nn.Linear(4 * 16, 16)
        self.fc2 = torch.nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))
"""


@pytest.mark.slow
@pytest.mark.he
def test_user_file_model_through_import_share_linearize_mitigate_polyfit_he(tmp_path, monkeypatch):
    pytest.importorskip("tenseal")
    (tmp_path / "usernet.py").write_text(USER_FILE)
    with monkeypatch.context() as m:  # the user's training script: import, train, save
        m.syspath_prepend(str(tmp_path))
        usernet = importlib.import_module("usernet")
        torch.manual_seed(0)
        torch.save(usernet.Net(), tmp_path / "whole.pt")  # a whole pickled module
    del sys.modules["usernet"]  # pifair finds the class from the file's folder
    run = {k: str(tmp_path / k) for k in ("imported", "shared", "lin", "fair", "poly", "he")}
    arch = f"{tmp_path / 'usernet.py'}:Net"
    weights = str(tmp_path / "whole.pt")
    quick = ["--finetune-epochs", "1", "--no-progress"]
    imp = ["import", "--arch", arch, "--weights", weights, "--data", "digits"]
    assert main([*imp, "--out", run["imported"]]) == 0
    assert Run.open(run["imported"]).metrics["relus"] == 4 * 16 + 16
    assert main(["report", run["imported"], "--out", str(tmp_path / "r.html")]) == 0
    assert "every call a site of its own" in (tmp_path / "r.html").read_text()
    assert (
        main(["share", "--from", run["imported"], "--budget", "20", *quick, "--out", run["shared"]])
        == 0
    )
    assert Run.open(run["shared"]).metrics["relus"] <= 20
    lin = ["linearize", "--from", run["imported"], "--budget", "40", "--search-epochs", "1"]
    assert main([*lin, "--harden-epochs", "0", *quick, "--out", run["lin"]]) == 0
    fair = ["mitigate", "--from", run["lin"], "--objective", "logit-adjust", "--epochs", "1"]
    assert main([*fair, "--no-progress", "--out", run["fair"]]) == 0
    poly = ["polyfit", "--from", run["imported"], "--granularity", "layer", *quick]
    assert main([*poly, "--out", run["poly"]]) == 0
    he = ["he-infer", "--from", run["poly"], "--images", "16", "--workers", "1"]
    assert main([*he, "--out", run["he"]]) == 0
    assert Run.open(run["he"]).metrics["argmax_agreement"] == 1.0
