"""A new site kind is one module plus its lowerings: the engines dispatch on ``site.kind``.

A toy site (``y = a x + b x^2`` per channel, one comparison per channel to count) is
registered here with its MPC and HE lowerings and run through count_relus, the MPC export
(plain JAX against torch) and the HE compiler (plaintext program against torch), without a
change to any engine. And the engines' source names no concrete site class.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pifair.errors import UnsupportedLayerError
from pifair.relu import ActivationSite, count_relus, register_site
from pifair.relu.sites import _SITE_TYPES
from pifair.secure.he import lowerings as he_lowerings
from pifair.secure.he.compile import compile_model
from pifair.secure.mpc import lowerings as mpc_lowerings

pytest.importorskip("jax")

from pifair.secure.mpc.export import export_model  # noqa: E402


class ToySquare(ActivationSite):
    """``a_c x + b_c x^2`` with one (a, b) per channel; counts one comparison per channel."""

    kind = "toy_square"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.linspace(0.5, 1.0, channels))
        self.b = nn.Parameter(torch.linspace(0.1, 0.2, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_shape(x)
        view = (1, -1) + (1,) * (x.dim() - 2)
        return self.a.view(view) * x + self.b.view(view) * x * x

    def relu_count(self, feature_shape: tuple[int, ...]) -> int:
        return feature_shape[0]


def _toy_mpc(ctx, name, site, shape):
    features = math.prod(shape)
    ctx.sites.append(mpc_lowerings.SiteExport(name, "toy_square", features, 0, 0, features))
    a, b = ctx.param(f"{name}.a", site.a), ctx.param(f"{name}.b", site.b)
    view = (1, -1) + (1,) * (len(shape) - 1)
    return lambda x, p: p[a].reshape(view) * x + p[b].reshape(view) * x * x


def _toy_he(name, site, shape):
    per_channel = math.prod(shape[1:])
    a = site.a.detach().double().repeat_interleave(per_channel)
    b = site.b.detach().double().repeat_interleave(per_channel)
    return torch.stack([torch.zeros_like(a), a, b]).numpy()


@pytest.fixture
def toy_kind():
    register_site(ToySquare)
    mpc_lowerings.register_mpc_lowering("toy_square")(_toy_mpc)
    he_lowerings.register_he_lowering("toy_square")(_toy_he)
    yield
    _SITE_TYPES.pop("toy_square")
    mpc_lowerings.MPC_LOWERINGS.pop("toy_square")
    he_lowerings.HE_LOWERINGS.pop("toy_square")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        ToySquare(3),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
    ).eval()


def test_a_toy_site_kind_runs_through_the_counter_and_both_engines(toy_kind):
    model = _model()
    count = count_relus(model, (1, 8, 8))
    assert count.total == 3 and count.sites[0].kind == "toy_square"

    exported = export_model(model, (1, 8, 8))  # checks plain JAX against torch itself
    assert [s.kind for s in exported.sites] == ["toy_square"]
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(exported.run_plain(x.numpy()), want, rtol=1e-4, atol=1e-4)

    program = compile_model(model, (1, 8, 8))  # checks the program against torch itself
    assert [s["stage"] for s in program.summary()] == ["linear", "poly2", "linear"]
    np.testing.assert_allclose(program.run_plain(x.double().numpy()), want, rtol=1e-4, atol=1e-4)


def test_without_its_lowerings_the_engines_refuse_the_kind_by_name():
    register_site(ToySquare)
    try:
        model = _model()
        count_relus(model, (1, 8, 8))
        with pytest.raises(UnsupportedLayerError, match="toy_square"):
            export_model(model, (1, 8, 8))
        with pytest.raises(UnsupportedLayerError, match="toy_square"):
            compile_model(model, (1, 8, 8))
    finally:
        _SITE_TYPES.pop("toy_square")


def test_the_engines_name_no_concrete_site_class():
    concrete = {cls.__name__ for cls in _SITE_TYPES.values()}
    secure = Path(__file__).resolve().parents[2] / "src" / "pifair" / "secure"
    found = []
    for path in secure.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id in concrete:
                found.append(f"{path.name}:{node.lineno} {node.id}")
    # building a DenseReLU for a plain nn.ReLU is allowed; reading a class's internals is not
    assert all("DenseReLU" in f and "export.py" in f for f in found), found
