"""Conv2d's per-sample gradient norms without per-sample gradients (ghost and instantiated, the
cheaper per layer) equal the norms of per-sample gradients from torch.func, for strides,
padding, groups, dilation and no bias; the rule picks the cheaper way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

pytest.importorskip("opacus")

from opacus.grad_sample import GradSampleModuleFastGradientClipping  # noqa: E402

from pifair.dp.conv_norms import conv2d_norm_sample, ghost_is_cheaper, unfold  # noqa: E402
from pifair.dp.optimizers import FairDPOptimizerFast, ghost_backward  # noqa: E402
from pifair.dp.rules import make_rule  # noqa: E402

SHAPES = [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=2, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), groups=2, padding=(1, 0)),
    dict(in_channels=3, out_channels=5, kernel_size=3, dilation=2, padding=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=5, stride=(2, 1), groups=4, padding=2),
]


def _reference_norms(layer: nn.Conv2d, x: torch.Tensor, weights: torch.Tensor):
    """Per-sample gradients by torch.func (vmap over samples), then their norms."""
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, xi, wi):
        out = functional_call(layer, p, (xi[None],))
        return (out * wi[None]).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, weights)
    return {k: v.flatten(1).norm(dim=1) for k, v in per_sample.items()}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("ghost", [True, False, None])
def test_conv_norms_equal_the_per_sample_gradients_norms(shape, ghost):
    torch.manual_seed(0)
    layer = nn.Conv2d(**shape).double()
    x = torch.randn(7, shape["in_channels"], 9, 8, dtype=torch.float64)
    out = layer(x)
    backprops = torch.randn_like(out)  # d loss / d output of each sample
    got = conv2d_norm_sample(layer, [x], backprops, ghost=ghost)
    want = _reference_norms(layer, x, backprops)
    assert set(got) == set(dict(layer.named_parameters()).values())
    for name, param in layer.named_parameters():
        torch.testing.assert_close(got[param], want[name], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_strided_unfold_is_torch_unfold(shape):
    layer = nn.Conv2d(**shape)
    x = torch.randn(3, shape["in_channels"], 9, 7)
    k, s, p, d = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    expected = F.unfold(x, k, dilation=d, padding=p, stride=s)
    assert torch.equal(unfold(x, k, stride=s, padding=p, dilation=d), expected)


def test_the_rule_picks_the_cheaper_way():
    # a 3x3 conv over a 28x28 image: 676 positions, 9 inputs: instantiate
    assert not ghost_is_cheaper(676, 9, 32)
    # a late layer of a ResNet: 16 positions, 2304 inputs, 512 outputs: ghost
    assert ghost_is_cheaper(16, 2304, 512)


def test_padding_same_falls_back_to_instantiated_gradients():
    torch.manual_seed(1)
    layer = nn.Conv2d(2, 3, 3, padding="same").double()
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    backprops = torch.randn_like(layer(x))
    got = conv2d_norm_sample(layer, [x], backprops)
    want = _reference_norms(layer, x, backprops)
    torch.testing.assert_close(got[layer.weight], want["weight"], rtol=1e-9, atol=1e-9)


def test_the_ghost_path_takes_conv_norms_without_per_sample_gradients():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 3))
    gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=1.0, use_ghost_clipping=True)
    assert gsm.NORM_SAMPLERS[nn.Conv2d] is conv2d_norm_sample
    opt = FairDPOptimizerFast(
        torch.optim.SGD(gsm.parameters(), lr=0.0),
        rule=make_rule("dpsgd", clip=1.0),
        noise_multiplier=0.0,
        expected_batch_size=5,
    )
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    ghost_backward(gsm, opt, F.cross_entropy(gsm(x), y, reduction="none"))
    assert getattr(model[0].weight, "grad_sample", None) is None  # never instantiated
    assert model[0].weight.grad is not None
