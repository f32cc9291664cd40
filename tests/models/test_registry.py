import pytest
import torch
from torch import nn

from pifair.errors import UnknownNameError
from pifair.models import create_model, list_models
from pifair.models.io import load_model, save_model
from pifair.relu import ActivationSite, MaskedReLU, count_relus, replace_activations

SHAPES = {
    "resnet18": (3, 32, 32),
    "resnet18_gn": (3, 32, 32),
    "wrn22_8": (3, 32, 32),
    "lenet": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "fairdp_cnn": (1, 28, 28),
    "he_cnn": (1, 28, 28),
    "he_cifar": (3, 32, 32),
    "mlp": (20,),
}


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_and_every_nonlinearity_is_a_site(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_shape=SHAPES[name]).eval()
    out = model(torch.randn(2, *SHAPES[name]))
    assert out.shape == (2, 7)
    plain = [m for m in model.modules() if isinstance(m, nn.ReLU | nn.Tanh | nn.GELU | nn.SiLU)]
    assert plain == []
    assert any(isinstance(m, ActivationSite) for m in model.modules())


def test_resnet18_gn_has_group_norm_only_and_is_dp_trainable():
    """Same ReLUs as ResNet18 at width 16, no batch norm left (Opacus' validator agrees)."""
    validators = pytest.importorskip("opacus.validators")
    model = create_model("resnet18_gn", num_classes=10, input_shape=(3, 32, 32))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 20  # 17 + 3 shortcuts
    assert validators.ModuleValidator.validate(model, strict=False) == []
    dense = create_model("resnet18", num_classes=10, input_shape=(3, 32, 32), width=16)
    assert count_relus(model, (3, 32, 32)).total == count_relus(dense, (3, 32, 32)).total == 139_264


def test_lenet5_has_the_published_layout():
    """C1 6x28x28, C3 16x10x10, F5 120, F6 84: the ReLUs and weights counted by hand."""
    model = create_model("lenet5", num_classes=10, input_shape=(1, 28, 28))
    assert count_relus(model, (1, 28, 28)).total == 6 * 28 * 28 + 16 * 10 * 10 + 120 + 84
    weights = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert weights == [6 * 25, 16 * 6 * 25, 400 * 120, 120 * 84, 84 * 10]


def test_he_cifar_has_the_layout_counted_by_hand():
    """4,096 activations after the stride-2 conv (16 x 16 x 16), 4,096 after the second (64 x
    8 x 8, after a 2x2 pooling), 256 dense; the weights of each layer counted by hand."""
    model = create_model("he_cifar", num_classes=10, input_shape=(3, 32, 32))
    assert count_relus(model, (3, 32, 32)).total == 16 * 16 * 16 + 64 * 8 * 8 + 256
    weights = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert weights == [16 * 3 * 25, 64 * 16 * 9, 64 * 4 * 4 * 256, 256 * 10]


def test_unknown_model_lists_the_registry():
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("resnet19", num_classes=10, input_shape=(3, 32, 32))


def test_save_and_load_keep_reduced_sites(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 28, 28)).eval()
    replace_activations(
        model,
        lambda name, m: (
            MaskedReLU((torch.rand(16, 28, 28) < 0.3).float()) if name == "act1" else None
        ),
    )
    before = count_relus(model, (1, 28, 28)).total
    save_model(tmp_path / "m.pt", model, name="lenet", num_classes=10, input_shape=(1, 28, 28))
    loaded, record = load_model(tmp_path / "m.pt")
    loaded.eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x))
    assert count_relus(loaded, (1, 28, 28)).total == before
    assert record["sites"]["act1"]["kind"] == "masked_relu"
