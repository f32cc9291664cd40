"""Polynomial activations: evaluation per granularity, the ReLU fit, polyfit on real data."""

from __future__ import annotations

import pytest
import torch

from pifair.models import create_model
from pifair.models.io import load_model, save_model
from pifair.reduce import FinetuneSettings
from pifair.reduce.polyfit import polyfit, relu_fit
from pifair.relu import MaskedReLU, count_relus, iter_sites, replace_activations
from pifair.relu.polynomial import PolyAct


def test_evaluation_per_granularity_on_a_hand_built_tensor():
    x = torch.tensor([[[[1.0, 2.0]], [[-1.0, 3.0]]]])  # (1, C=2, 1, 2)
    layer = PolyAct(2, "layer", (2, 1, 2))
    layer.coefficients.data = torch.tensor([1.0, 2.0, 3.0])  # 1 + 2x + 3x^2
    assert torch.equal(layer(x), 1 + 2 * x + 3 * x**2)
    channel = PolyAct(2, "channel", (2, 1, 2))
    channel.coefficients.data = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]]).reshape(
        3, 2, 1, 1
    )
    # channel 0: x; channel 1: 1 + 2x^2
    assert torch.equal(channel(x), torch.tensor([[[[1.0, 2.0]], [[3.0, 19.0]]]]))
    element = PolyAct(1, "element", (2, 1, 2))
    element.coefficients.data = torch.stack(
        [torch.zeros(2, 1, 2), torch.tensor([[[1.0, -1.0]], [[0.0, 2.0]]])]
    )
    assert torch.equal(element(x), torch.tensor([[[[1.0, -2.0]], [[0.0, 6.0]]]]))
    assert (
        layer.coefficients.numel() == 3
        and channel.coefficients.numel() == 6
        and element.coefficients.numel() == 8
    )


def test_relu_fit_is_the_least_squares_fit():
    # ReLU on [-a, a]: 3a/32 + x/2 + 15/(32a) x^2 (continuous least squares)
    c = relu_fit(torch.tensor([-2.0]), torch.tensor([2.0]), 2).flatten()
    assert torch.allclose(c, torch.tensor([3 * 2 / 32, 0.5, 15 / 64]), atol=3e-3)
    # where ReLU is linear on the whole range the fit is exact
    assert torch.allclose(
        relu_fit(torch.tensor([1.0]), torch.tensor([3.0]), 2).flatten(),
        torch.tensor([0.0, 1.0, 0.0]),
        atol=1e-5,
    )
    assert torch.allclose(
        relu_fit(torch.tensor([-3.0]), torch.tensor([-1.0]), 2).flatten(), torch.zeros(3), atol=1e-5
    )


def test_polynomials_report_no_comparisons_and_their_depth():
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8))
    count_relus(model, (1, 8, 8))
    replace_activations(model, lambda n, m: PolyAct(2, "channel", m.feature_shape))
    assert count_relus(model, (1, 8, 8)).total == 0
    assert {s.multiplicative_depth() for _, s in iter_sites(model)} == {1}
    assert PolyAct(4, "layer", (3,)).multiplicative_depth() == 2


@pytest.mark.parametrize("granularity", ["layer", "channel", "element"])
def test_polyfit_replaces_every_relu_and_round_trips(digits, tmp_path, granularity):
    model = create_model("lenet", num_classes=10, input_shape=digits.input_shape)
    result = polyfit(
        model,
        digits,
        degree=2,
        granularity=granularity,
        finetune=FinetuneSettings(epochs=1, batch_size=64),
        progress=False,
    )
    polys = [s for _, s in iter_sites(result.model) if isinstance(s, PolyAct)]
    assert len(polys) == 3 and result.sites == 3
    assert count_relus(result.model, digits.input_shape).total == 0
    save_model(
        tmp_path / "m.pt",
        result.model,
        name="lenet",
        num_classes=10,
        input_shape=digits.input_shape,
    )
    again = load_model(tmp_path / "m.pt")[0].eval()
    x = digits.normalize(digits.test.x[:16])
    assert torch.allclose(again(x), result.model(x), atol=1e-5)


def test_polyfit_keeps_the_identity_where_snl_linearized(digits):
    model = create_model("lenet", num_classes=10, input_shape=digits.input_shape)
    count_relus(model, digits.input_shape)
    mask = torch.zeros(16, 8, 8)
    mask[:, :4] = 1
    replace_activations(
        model, lambda n, m: MaskedReLU(mask, feature_shape=m.feature_shape) if n == "act1" else None
    )
    result = polyfit(
        model, digits, granularity="element", finetune=FinetuneSettings(epochs=0), progress=False
    )
    c = result.model.act1.coefficients.detach()
    assert torch.equal(
        c[:, :, 4:], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1).expand(3, 16, 4, 8)
    )
    assert not torch.equal(c[:, :, :4], c[:, :, 4:])
    with pytest.raises(ValueError, match="use --granularity element"):
        polyfit(model, digits, granularity="channel", progress=False)


def test_polyfit_refuses_a_model_without_relus(digits):
    model = create_model("mlp", num_classes=10, input_shape=digits.input_shape, act_layer="tanh")
    with pytest.raises(ValueError, match="no ReLU site"):
        polyfit(model, digits, progress=False)
