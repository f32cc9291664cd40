from pathlib import Path

import pytest
import torch

from pifair.data import load_dataset, parse_keep
from pifair.errors import DataNotFoundError, UnknownNameError

# small real slices kept in the repository (scripts/make-test-slices.py): nothing skips on a clone
SLICES = Path(__file__).resolve().parent / "slices"
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_digits_splits_are_disjoint_and_seeded(digits):
    assert digits.input_shape == (1, 8, 8)
    assert digits.train.x.dtype == torch.uint8
    assert len(digits.train) + len(digits.val) == 1437 and len(digits.test) == 360
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.val.x, digits.val.x)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.val.y, digits.val.y)
    # train and validation come from one pool without overlap: together they are the pool
    pool = load_dataset("digits", val_fraction=0.0)
    both = torch.cat([digits.train.x, digits.val.x]).flatten(1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, pool.train.x.flatten(1).numpy()))


def test_default_group_is_class(digits):
    assert torch.equal(digits.train.groups, digits.train.y)
    assert digits.group_names == digits.classes


@pytest.mark.skipif(
    not FASHION.exists(), reason="Fashion-MNIST Debian package not installed (make data)"
)
def test_fashion_mnist_slice():
    data = load_dataset("fashion-mnist", limit=3000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.test) == 3000 and data.train.x.max() > 200
    assert set(data.test.y.tolist()) == set(range(10))


def test_cifar10_jpeg_slice_covers_every_class():
    data = load_dataset("cifar10", data_dir=SLICES / "cifar10")
    assert data.input_shape == (3, 32, 32) and data.augment == "crop-flip"
    assert len(data.train) + len(data.val) == 500 and len(data.test) == 200
    assert set(data.train.y.tolist()) == set(range(10))
    # decoded JPEGs are real images: not constant, full uint8 range used
    assert data.train.x.dtype == torch.uint8 and int(data.train.x.max()) > 200
    assert float(data.train.x.float().std()) > 30


def test_adult_groups_by_sex_and_race():
    data = load_dataset("adult", group_by="sex", data_dir=SLICES / "adult")
    assert data.group_names == ["Female", "Male"]
    assert len(data.train) + len(data.val) == 815 and len(data.test) == 408
    assert data.train.x.dtype == torch.float32 and data.input_shape[0] > 50
    # the group labels are the sex column, counted by hand from the slice file
    rows = (SLICES / "adult" / "adult.test").read_text().splitlines()[1:]
    assert int((data.test.groups == 0).sum()) == sum(", Female," in r for r in rows)
    race = load_dataset("adult", group_by="race", data_dir=SLICES / "adult")
    assert "Black" in race.group_names
    with pytest.raises(ValueError, match="no group column 'age'"):
        load_dataset("adult", group_by="age", data_dir=SLICES / "adult")


def test_keep_protocol_subsamples_train_only_unless_keep_test():
    full = load_dataset("digits", val_fraction=0.0)
    kept = load_dataset("digits", val_fraction=0.0, keep="8:0.25")
    n8 = int((full.train.y == 8).sum())
    assert int((kept.train.y == 8).sum()) == round(0.25 * n8)
    assert int((kept.train.y == 3).sum()) == int((full.train.y == 3).sum())
    assert torch.equal(kept.test.y, full.test.y)
    both = load_dataset("digits", val_fraction=0.0, keep="0-4:0.9,5-9:0.1", keep_test=True)
    for c in range(10):
        frac = 0.9 if c < 5 else 0.1
        assert int((both.test.y == c).sum()) == round(frac * int((full.test.y == c).sum()))


@pytest.mark.parametrize("spec", ["8", "8:x", "12:0.5", "3:1.5", "a-b:0.1"])
def test_bad_keep_specs(spec):
    with pytest.raises(ValueError):
        parse_keep(spec, 10)


def test_unknown_dataset_lists_names():
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load_dataset("imagenet")


def test_missing_data_dir_says_where(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_dataset("fashion-mnist", data_dir=tmp_path)
