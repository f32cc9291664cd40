import torch

from pifair.data import ResidentLoader, random_crop_flip


def test_resident_loader_visits_each_sample_once_per_epoch(digits):
    loader = ResidentLoader(digits, "train", batch_size=100, shuffle=True, seed=3)
    ys = torch.cat([y for _, y, _ in loader])
    assert len(ys) == len(digits.train)
    assert torch.equal(ys.sort().values, digits.train.y.sort().values)
    x, _, _ = next(iter(loader))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.5


def test_resident_loader_is_reproducible_per_epoch(digits):
    a = ResidentLoader(digits, "train", batch_size=64, shuffle=True, seed=1)
    b = ResidentLoader(digits, "train", batch_size=64, shuffle=True, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(next(iter(a))[1], next(iter(b))[1])
    b.set_epoch(3)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])


def test_random_crop_flip_is_a_shifted_and_maybe_mirrored_window():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) + 1  # strictly positive, so padding shows as zeros
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2,) * 4)
    for i in range(64):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert (out == 0).any()  # some crops reach into the padding
