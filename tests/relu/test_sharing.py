import pytest
import torch

from pifair.models import create_model
from pifair.models.io import load_model, save_model
from pifair.reduce import FinetuneSettings
from pifair.reduce.share import share
from pifair.relu import count_relus, replace_activations
from pifair.relu.shared_relu import SharedReLU, channel_groups, grouping_options, patch_groups


def test_patch_groups_tile_each_channel():
    g = patch_groups((2, 4, 4), (2, 2))
    assert g.shape == (2, 4, 4) and int(g.max()) + 1 == 8
    assert g[0, :2, :2].unique().tolist() == [0] and g[1, 2:, 2:].unique().tolist() == [7]
    assert int(patch_groups((1, 5, 5), (2, 2)).max()) + 1 == 9  # edge patches are smaller


def test_channel_groups_share_a_pixel():
    g = channel_groups((4, 2, 2), 2)
    assert g[0, 1, 1] == g[1, 1, 1] != g[2, 1, 1]
    assert int(g.max()) + 1 == 8


def test_every_member_of_a_group_gets_the_same_bit():
    site = SharedReLU(patch_groups((3, 4, 4), (2, 2)))
    x = torch.randn(5, 3, 4, 4)
    bits = (site(x) != 0) | (x == 0)
    groups = site.groups
    for b in range(5):
        for gid in range(site.num_decisions):
            members = bits[b][groups == gid]
            assert members.all() or (~members).all()
    assert count_relus(torch.nn.Sequential(site), (3, 4, 4)).total == 12


def test_one_by_one_patch_is_plain_relu():
    x = torch.randn(4, 3, 5, 5)
    for rule in ("mean", "representative", "learned"):
        site = SharedReLU(patch_groups((3, 5, 5), (1, 1)), rule=rule).eval()
        torch.testing.assert_close(site(x), torch.relu(x))


def test_rules_on_a_hand_built_tensor():
    groups = torch.tensor([0, 0, 0, 1, 1])
    x = torch.tensor([[3.0, -1.0, -1.5, -2.0, 1.0]])
    mean = SharedReLU(groups, rule="mean")  # group 0 mean 1/6 > 0 -> all pass; group 1 mean < 0
    assert mean(x).tolist() == [[3.0, -1.0, -1.5, 0.0, 0.0]]
    rep = SharedReLU(
        groups, rule="representative", representatives=torch.tensor([1, 4])
    )  # -1 -> off, 1 -> on
    assert rep(x).tolist() == [[0.0, 0.0, 0.0, -2.0, 1.0]]
    learned = SharedReLU(groups, rule="learned").eval()
    with torch.no_grad():
        learned.weight.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0]))  # d0 = -1, d1 = 1
    assert learned(x).tolist() == [[0.0, 0.0, 0.0, -2.0, 1.0]]


def test_gradients_reach_the_members():
    site = SharedReLU(patch_groups((2, 4, 4), (2, 2)))
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    site(x).sum().backward()
    kept = site(x.detach()) != 0
    assert (x.grad[kept] == 1).all() and (x.grad[~kept & (x != 0)] == 0).all()
    assert x.grad.abs().sum() > 0


def test_learned_weights_get_gradients():
    site = SharedReLU(patch_groups((2, 4, 4), (2, 2)), rule="learned").train()
    site(torch.randn(8, 2, 4, 4)).pow(2).sum().backward()
    assert site.weight.grad is not None and site.weight.grad.abs().sum() > 0


def test_options_run_from_relu_to_one_decision_per_channel():
    names = [o[0] for o in grouping_options((4, 14, 14), "patch")]
    assert names[0] == "1x1" and names[-1] == "14x14"
    assert [o[0] for o in grouping_options((128,), "patch")][-1] == "128"


def test_clusters_follow_sign_patterns():
    from pifair.relu.clustering import cluster_groups, farthest_point_order, sign_patterns

    torch.manual_seed(0)
    base = torch.randn(64, 1)
    # elements 0-3 follow base, 4-7 follow -base: two clusters of agreeing signs
    x = torch.cat([base.expand(64, 4), -base.expand(64, 4)], dim=1) + 0.01 * torch.randn(64, 8)
    patterns = sign_patterns(x)
    protos = farthest_point_order(patterns, 2)
    groups = cluster_groups(patterns, protos, (8,))
    assert (
        len(set(groups[:4].tolist())) == 1
        and len(set(groups[4:].tolist())) == 1
        and groups[0] != groups[4]
    )
    site = SharedReLU(groups, rule="representative", representatives=protos)
    out = site(x)
    rep = x[:, protos]
    for g in range(2):
        members = groups == g
        assert torch.equal(
            out[:, members] != 0,
            (rep[:, g : g + 1] > 0).expand(-1, int(members.sum())) & (x[:, members] != 0),
        )


def test_cluster_scheme_reaches_very_low_budgets(digits):
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    result = share(
        model,
        digits,
        3,
        scheme="cluster",
        rule="representative",
        finetune=FinetuneSettings(epochs=0),
        progress=False,
    )
    assert result.relus == 3  # one prototype per site: 1664 / 3 = 555x fewer decisions


def test_share_meets_the_budget_and_round_trips(digits, tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    result = share(
        model, digits, 300, finetune=FinetuneSettings(epochs=1, batch_size=64), progress=False
    )
    assert result.relus <= 300 and count_relus(result.model, (1, 8, 8)).total == result.relus
    assert set(result.allocation) == {"act1", "act2", "act3"}
    save_model(tmp_path / "m.pt", result.model, name="lenet", num_classes=10, input_shape=(1, 8, 8))
    loaded, _ = load_model(tmp_path / "m.pt")
    x = digits.normalize(digits.test.x[:16])
    torch.testing.assert_close(loaded.eval()(x), result.model(x))


def test_unreachable_budget_says_so(digits):
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="coarsest grouping keeps .*try --scheme cluster"):
        share(model, digits, 10, finetune=FinetuneSettings(epochs=0), progress=False)
    with pytest.raises(ValueError, match=r"coarsest grouping keeps \d+$"):  # no advice to try it
        share(
            model, digits, 1, scheme="cluster", finetune=FinetuneSettings(epochs=0), progress=False
        )


def test_replace_with_shared_sites_counts_groups():
    model = create_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    replace_activations(
        model, lambda n, m: SharedReLU(patch_groups((16, 28, 28), (4, 4))) if n == "act1" else None
    )
    count = count_relus(model, (1, 28, 28))
    assert count.sites[0].relus == 16 * 7 * 7


def test_patch_fast_path_gives_the_same_bits_as_the_group_map():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 7, 5)
    for patch in [(1, 1), (2, 2), (3, 2), (7, 5)]:
        fast = SharedReLU(patch_groups((3, 7, 5), patch), patch=patch)
        slow = SharedReLU(patch_groups((3, 7, 5), patch))
        torch.testing.assert_close(fast(x), slow(x))


def _snl_lenet(keep: float = 0.3) -> torch.nn.Module:
    """LeNet on 8x8 digits with random SNL masks keeping about ``keep`` of each site."""
    from pifair.relu.sites import MaskedReLU

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    count_relus(model, (1, 8, 8))
    return replace_activations(
        model, lambda n, s: MaskedReLU((torch.rand(s.feature_shape) < keep).float())
    )


def test_a_linear_element_passes_through_and_decides_nothing():
    site = SharedReLU(torch.tensor([0, -1, 0, 1, -1]))  # elements 1 and 4 stay linear
    site.feature_shape = (5,)
    x = torch.tensor([[2.0, -3.0, -1.0, -1.0, -4.0]])
    assert site.num_decisions == 2
    assert site(x).tolist() == [[2.0, -3.0, -1.0, 0.0, -4.0]]  # group 0's mean is +0.5
    for rule in ("representative", "learned"):
        other = SharedReLU(torch.tensor([0, -1, 0, 1, -1]), rule=rule).eval()
        assert other(x)[0, [1, 4]].tolist() == [-3.0, -4.0]  # the identity, whatever the rule


@pytest.mark.parametrize("scheme", ["patch", "channel", "cluster"])
def test_sharing_an_snl_model_keeps_every_linear_position_linear(digits, scheme):
    from pifair.relu.sites import MaskedReLU, iter_sites

    snl = _snl_lenet()
    kept = count_relus(snl, (1, 8, 8)).total
    masks = {n: s.mask.bool() for n, s in iter_sites(snl) if isinstance(s, MaskedReLU)}
    budget = kept // 4  # the channel scheme keeps at least one decision per pixel
    result = share(
        snl, digits, budget, scheme=scheme, finetune=FinetuneSettings(epochs=0), progress=False
    )
    assert result.relus <= budget and count_relus(result.model, (1, 8, 8)).total == result.relus
    for name, site in iter_sites(result.model):
        linear = ~masks[name]
        if isinstance(site, SharedReLU):  # the same linear positions, and no other
            assert torch.equal(site.linear, linear)
            x = -torch.rand(4, *site.feature_shape) - 0.1  # every decision says "off"
            assert torch.equal(site(x)[:, linear], x[:, linear])  # linear: the identity
            assert not site(x)[:, ~linear].any()
        else:  # a site the budget did not touch stays the SNL site
            assert torch.equal(site.mask.bool(), masks[name])


def test_the_budget_of_an_snl_model_is_its_kept_count(digits):
    snl = _snl_lenet()
    kept = count_relus(snl, (1, 8, 8)).total
    with pytest.raises(Exception, match="above the model's ReLU count"):
        share(snl, digits, kept + 1, finetune=FinetuneSettings(epochs=0), progress=False)
    untouched = FinetuneSettings(epochs=0, recalibrate_bn=False)
    same = share(snl, digits, kept, finetune=untouched, progress=False)
    x = digits.normalize(digits.test.x[:32])
    torch.testing.assert_close(same.model(x), snl(x))  # nothing shared: the SNL model
