import pytest
import torch
from torch import nn

from pifair.models import create_model
from pifair.relu import (
    DenseReLU,
    DenseTanh,
    MaskedReLU,
    count_relus,
    iter_sites,
    replace_activations,
    site_from_spec,
)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("resnet18", {}, 557_056),
        ("resnet18", {"snl_variant": True}, 491_520),
        ("wrn22_8", {}, 1_359_872),
    ],
)
def test_published_relu_counts(name, options, expected):
    model = create_model(name, num_classes=10, input_shape=(3, 32, 32), **options)
    count = count_relus(model, (3, 32, 32))
    assert count.total == expected
    assert count.elements == expected
    assert sum(s.relus for s in count.sites) == expected


def test_count_table_lists_every_site():
    model = create_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    count = count_relus(model, (1, 28, 28))
    assert [s.name for s in count.sites] == ["act1", "act2", "act3"]
    assert [s.relus for s in count.sites] == [16 * 28 * 28, 32 * 14 * 14, 128]
    text = count.table()
    assert "act1" in text and f"{count.total:,}" in text


def test_masked_relu_pixelwise_computes_relu_where_kept_identity_elsewhere():
    mask = torch.zeros(2, 3, 3)
    mask[0, 1, 1] = 1
    mask[1] = 1
    site = MaskedReLU(mask)
    x = torch.randn(5, 2, 3, 3)
    y = site(x)
    keep = mask.bool().expand_as(x)
    assert torch.equal(y[keep], torch.relu(x)[keep])
    assert torch.equal(y[~keep], x[~keep])
    assert site.relu_count((2, 3, 3)) == 10
    assert site.granularity == "pixel"


def test_masked_relu_channelwise_counts_whole_channels():
    mask = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
    site = MaskedReLU(mask)
    x = torch.randn(4, 3, 5, 5)
    y = site(x)
    assert torch.equal(y[:, 1], x[:, 1])
    assert torch.equal(y[:, 0], torch.relu(x[:, 0]))
    assert site.granularity == "channel"
    assert site.relu_count((3, 5, 5)) == 50


def test_masked_relu_rejects_non_binary_mask():
    with pytest.raises(ValueError, match="only 0 and 1"):
        MaskedReLU(torch.full((2, 2), 0.5))


def test_replace_activations_turns_torch_modules_into_sites_and_counts_them():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Tanh())
    model = replace_activations(model)
    kinds = [type(m) for _, m in iter_sites(model)]
    assert kinds == [DenseReLU, DenseTanh]
    assert count_relus(model, (4,)).total == 8


def test_replace_activations_with_factory_swaps_named_sites():
    model = create_model("mlp", num_classes=2, input_shape=(6,))
    replace_activations(
        model, lambda name, m: MaskedReLU(torch.zeros(256)) if name == "net.2" else None
    )
    count = count_relus(model, (6,))
    assert count.total == 256  # the first layer's 256 are linearized, the second keeps its 256
    assert isinstance(model.net[2], MaskedReLU)


def test_zero_mask_model_is_linear():
    model = create_model("mlp", num_classes=3, input_shape=(5,))
    replace_activations(model, lambda name, m: MaskedReLU(torch.zeros(256)))
    assert count_relus(model, (5,)).total == 0
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    f = lambda x: model(x) - model(torch.zeros_like(x))  # noqa: E731
    torch.testing.assert_close(f(a + b), f(a) + f(b), atol=1e-5, rtol=1e-5)


def test_site_spec_round_trip():
    site = MaskedReLU(torch.ones(4, 1, 1))
    again = site_from_spec(site.spec())
    assert isinstance(again, MaskedReLU) and again.mask.shape == (4, 1, 1)
    with pytest.raises(ValueError, match="unknown activation site kind"):
        site_from_spec({"kind": "nope"})


def test_count_without_shape_needs_a_forward_first():
    model = nn.Sequential(nn.Linear(3, 4), DenseReLU())
    with pytest.raises(ValueError, match="input_shape"):
        count_relus(model)
    model(torch.zeros(1, 3))
    assert count_relus(model).total == 4
