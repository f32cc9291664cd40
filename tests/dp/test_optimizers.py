"""The Opacus optimizers: the hooks path is Opacus' DPSGD, the ghost path agrees with the hooks
path for every method, and the noise has the standard deviation the rule asks for."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("opacus")

from opacus import GradSampleModule  # noqa: E402
from opacus.grad_sample import GradSampleModuleFastGradientClipping  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

from pifair.dp.optimizers import FairDPOptimizer, FairDPOptimizerFast, ghost_backward  # noqa: E402
from pifair.dp.rules import make_rule  # noqa: E402


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 16),
        nn.Tanh(),
        nn.Linear(16, 3),
    )


def _maxpool_groupnorm_cnn() -> nn.Module:
    """The layers the fair-dp CNN and DP ResNets use: max pooling, group norm, tanh."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, bias=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def _resnet18_gn() -> nn.Module:
    from pifair.models import create_model

    torch.manual_seed(0)
    return create_model("resnet18_gn", num_classes=3, input_shape=(1, 16, 16), width=2)


# each model and the side of its square input (ResNet18 halves it three times)
MODELS = {
    "cnn": (_cnn, 8),
    "maxpool-groupnorm": (_maxpool_groupnorm_cnn, 8),
    "resnet18_gn": (_resnet18_gn, 16),
}


def _batch(n: int = 24, side: int = 8):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, side, side, generator=gen) * 3
    y = torch.randint(0, 3, (n,), generator=gen)
    groups = torch.randint(0, 2, (n,), generator=gen)
    return x, y, groups


def _rule(method: str):
    # small bounds so that every method's clipping is active on this batch
    return make_rule(
        method, clip=0.3, z=1.0, count_noise=1.0, tau=0.7, num_groups=2, clip_lower=0.1
    )


def _hooks_grads(method, model, x, y, g, sigma=0.0, seed=0):
    gsm = GradSampleModule(copy.deepcopy(model))
    opt = FairDPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        rule=_rule(method),
        noise_multiplier=sigma,
        expected_batch_size=len(x),
        count_generator=torch.Generator().manual_seed(seed),
    )
    opt.zero_grad()
    opt.set_groups(g)
    F.cross_entropy(gsm(x), y).backward()
    opt.step()
    return [p.grad.clone() for p in gsm.parameters()], opt


def test_hooks_path_with_flat_clipping_is_opacus_dpsgd():
    """Same batch, same noise generator: FairDPOptimizer(dpsgd) releases what Opacus does."""
    model, (x, y, _) = _cnn(), _batch()
    released = []
    for make in (
        lambda params: DPOptimizer(
            torch.optim.SGD(params, lr=0.0),
            noise_multiplier=0.7,
            max_grad_norm=0.3,
            expected_batch_size=len(x),
            generator=torch.Generator().manual_seed(5),
        ),
        lambda params: FairDPOptimizer(
            torch.optim.SGD(params, lr=0.0),
            rule=_rule("dpsgd"),
            noise_multiplier=0.7,
            expected_batch_size=len(x),
            generator=torch.Generator().manual_seed(5),
        ),
    ):
        gsm = GradSampleModule(copy.deepcopy(model))
        opt = make(gsm.parameters())
        F.cross_entropy(gsm(x), y).backward()
        opt.step()
        released.append([p.grad.clone() for p in gsm.parameters()])
    for a, b in zip(*released, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", ["dpsgd", "global", "global-adapt", "dpsgd-f", "bounded-adapt"])
def test_ghost_path_agrees_with_the_hooks_path(method, model_name):
    make, side = MODELS[model_name]
    model, (x, y, g) = make(), _batch(side=side)
    reference, ref_opt = _hooks_grads(method, model, x, y, g)
    gsm = GradSampleModuleFastGradientClipping(
        copy.deepcopy(model), max_grad_norm=0.3, use_ghost_clipping=True
    )
    opt = FairDPOptimizerFast(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        rule=_rule(method),
        noise_multiplier=0.0,
        expected_batch_size=len(x),
        count_generator=torch.Generator().manual_seed(0),
    )
    opt.zero_grad()
    opt.set_groups(g)
    ghost_backward(gsm, opt, F.cross_entropy(gsm(x), y, reduction="none"))
    opt.step()
    assert torch.allclose(opt.last_step.factors, ref_opt.last_step.factors, atol=1e-5)
    assert opt.last_step.sensitivity == pytest.approx(ref_opt.last_step.sensitivity)
    assert (opt.last_step.factors < 1).any()  # the rule did act on this batch
    for ours, ref in zip((p.grad for p in gsm.parameters()), reference, strict=True):
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["dpsgd", "global-adapt", "dpsgd-f"])
def test_noise_std_is_sigma_times_the_sensitivity_over_the_batch(method):
    """Zero gradients: what the optimizer releases is noise only, N(0, (sigma S / B)^2)."""
    torch.manual_seed(0)
    model = nn.Linear(100, 100)
    gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=1.0)
    opt = FairDPOptimizerFast(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        rule=make_rule(method, clip=1.0, count_noise=1.0, num_groups=2),
        noise_multiplier=1.5,
        expected_batch_size=32,
        generator=torch.Generator().manual_seed(0),
        count_generator=torch.Generator().manual_seed(0),
    )
    x = torch.randn(32, 100)
    opt.zero_grad()
    opt.set_groups(torch.randint(0, 2, (32,)))
    ghost_backward(gsm, opt, 0.0 * gsm(x).sum(1))
    opt.step()
    noise = model.weight.grad.flatten()  # 10,000 draws
    expected = 1.5 * opt.last_step.sensitivity / 32
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(noise.mean())) < 4 * expected / 100


def _released(path: str, model: nn.Module, x, y, g, precision: str) -> list[torch.Tensor]:
    """One noise-free DPSGD step's released gradient, the forward under ``precision``."""
    from pifair.dp.private import autocast

    model = copy.deepcopy(model)
    if path == "hooks":
        gsm, make = GradSampleModule(model), FairDPOptimizer
    else:
        gsm = GradSampleModuleFastGradientClipping(
            model, max_grad_norm=0.3, use_ghost_clipping=True
        )
        make = FairDPOptimizerFast
    opt = make(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        rule=_rule("dpsgd"),
        noise_multiplier=0.0,
        expected_batch_size=len(x),
    )
    opt.zero_grad()
    opt.set_groups(g)
    with autocast(precision, torch.device("cpu")):
        logits = gsm(x)
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    if path == "hooks":
        loss.mean().backward()
    else:
        ghost_backward(gsm, opt, loss)
    opt.step()
    return [p.grad.clone() for p in gsm.parameters()]


def test_bf16_forward_gives_the_fp32_step_to_bfloat16_precision_on_both_paths():
    make, side = MODELS["maxpool-groupnorm"]
    model, (x, y, g) = make(), _batch(side=side)
    fp32 = _released("hooks", model, x, y, g, "fp32")
    hooks = _released("hooks", model, x, y, g, "bf16")
    ghost = _released("ghost", model, x, y, g, "bf16")
    for ref, h, gh in zip(fp32, hooks, ghost, strict=True):
        assert h.dtype == torch.float32 and gh.dtype == torch.float32  # the update stays fp32
        assert not torch.equal(h, ref)  # the forward did run in bfloat16
        # bfloat16 keeps 8 bits: about 1 % here, 14 % on the first conv's weight (a sum over
        # every position of bfloat16 products; the non-private gradient shows the same)
        assert (h - ref).norm() <= 0.2 * ref.norm()
        assert (gh - h).norm() <= 0.03 * h.norm()  # both paths agree on the bf16 step


def test_auto_path_takes_hooks_for_small_conv_nets_and_ghost_otherwise():
    from pifair.dp.private import resolve_grad_path
    from pifair.models import create_model

    def model(name: str, shape: tuple[int, ...], **kw) -> nn.Module:
        return create_model(name, num_classes=10, input_shape=shape, **kw)

    cnn = model("fairdp_cnn", (1, 28, 28))  # 8.7 MiB of per-sample gradients at 256
    assert resolve_grad_path("auto", cnn, 256) == "hooks"
    assert resolve_grad_path("auto", model("mlp", (108,), act_layer="tanh"), 256) == "ghost"
    assert resolve_grad_path("auto", model("resnet18_gn", (3, 32, 32), width=8), 256) == "hooks"
    assert resolve_grad_path("auto", model("resnet18_gn", (3, 32, 32)), 256) == "ghost"  # 685 MiB
    assert resolve_grad_path("ghost", cnn, 256) == "ghost"  # a path given is kept
