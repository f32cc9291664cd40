"""Image data sets: Fashion-MNIST (IDX files), CIFAR-10 (JPEG bundle or python pickles), digits."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_open
from ..errors import CorruptFileError, DataNotFoundError
from ..extras import require_torchvision
from .paths import find_file, search_roots

__all__ = ["read_idx", "load_fashion_mnist_arrays", "load_cifar10_arrays", "load_digits_arrays"]

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

Arrays = dict[str, np.ndarray]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) into a numpy array.

    Written by hand because the format is 10 lines and torchvision (which also reads it) is
    optional in pifair.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise CorruptFileError(f"{path} is not an unsigned-byte IDX file")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_dir(data_dir: str | os.PathLike | None) -> Path | None:
    name = _FASHION_FILES["train"][0]
    candidates = []
    roots = search_roots(data_dir) if data_dir else [FASHION_DEBIAN_DIR, *search_roots()]
    for root in roots:
        for sub in ("", "fashion-mnist", "FashionMNIST/raw"):
            for ext in (".gz", ""):
                candidates.append(root / sub / (name + ext))
    found = find_file(candidates)
    return found.parent if found else None


def load_fashion_mnist_arrays(
    data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> Arrays:
    """Fashion-MNIST as uint8 arrays (N, 1, 28, 28) and labels.

    Looks in ``data_dir``, the Debian package's folder and pifair's search roots; with
    ``download=True`` (needs a network and torchvision) fetches the files into ``data_dir``.
    """
    folder = _fashion_dir(data_dir)
    if folder is None and download:
        datasets = require_torchvision("downloading Fashion-MNIST", "torchvision.datasets")
        root = Path(data_dir or "data")
        for train in (True, False):
            datasets.FashionMNIST(str(root), train=train, download=True)
        folder = _fashion_dir(root)
    if folder is None:
        roots = search_roots(data_dir) if data_dir else [FASHION_DEBIAN_DIR, *search_roots()]
        raise DataNotFoundError(
            "Fashion-MNIST not found. Looked for train-images-idx3-ubyte(.gz) in "
            f"{[str(r) for r in roots]}. "
            "Install it with 'apt-get install -y dataset-fashion-mnist' (as root; 'make data' does "
            "it), "
            "pass --data-dir DIR holding the four IDX files, or --download (network + torchvision)."
        )

    def read(stem: str) -> np.ndarray:
        gz = folder / f"{stem}.gz"
        return read_idx(gz if gz.exists() else folder / stem)

    out: Arrays = {}
    for split, (images, labels) in _FASHION_FILES.items():
        out[f"{split}_x"] = read(images)[:, None]
        out[f"{split}_y"] = read(labels).astype(np.int64)
    out["source"] = np.array(str(folder))
    return out


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, limit: int | None) -> np.ndarray:
    from PIL import Image

    index = spread_index(len(offsets) - 1, limit)
    out = np.empty((len(index), 3, 32, 32), dtype=np.uint8)
    for j, i in enumerate(index):
        img = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
        out[j] = np.asarray(img).transpose(2, 0, 1)
    return out


def _cache_dir() -> Path:
    return Path(os.environ.get("PIFAIR_CACHE_DIR", Path.home() / ".cache" / "pifair"))


def _cifar_from_bundle(bundle: Path, limit: int | None) -> Arrays:
    """Decode the JPEG bundle; the full decode (12 s) is cached as raw uint8 under the cache dir."""
    stat = bundle.stat()
    key = hashlib.sha1(
        f"{bundle.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    cache = _cache_dir() / f"cifar10_jpeg_decoded_{key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            arrays = {k: z[k] for k in z.files}
        if limit is not None:
            arrays = {k: v[spread_index(len(v), limit)] for k, v in arrays.items()}
        return arrays
    with np.load(bundle) as z:
        arrays = {}
        for split in ("train", "test"):
            arrays[f"{split}_x"] = _decode_jpegs(z[f"{split}_jpeg"], z[f"{split}_offsets"], limit)
            labels = z[f"{split}_labels"]
            arrays[f"{split}_y"] = labels[spread_index(len(labels), limit)].astype(np.int64)
    if limit is None:
        try:
            with atomic_open(cache, "wb") as f:
                np.savez(f, **arrays)
        except OSError:
            pass  # a read-only home only costs the decode next time
    return arrays


def _cifar_from_pickles(folder: Path, limit: int | None) -> Arrays:
    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        index = spread_index(sum(len(y) for y in ys), limit)
        return np.concatenate(xs)[index], np.concatenate(ys)[index]

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def load_cifar10_arrays(
    data_dir: str | os.PathLike | None = None, *, download: bool = False, limit: int | None = None
) -> Arrays:
    """CIFAR-10 as uint8 arrays (N, 3, 32, 32) and labels.

    Reads, in order: a JPEG bundle (``cifar10_jpeg.npz``, the file itself or a folder holding it),
    a torchvision CIFAR10 root (``cifar-10-batches-py``); ``download=True`` fetches the latter
    with torchvision. ``limit`` keeps N evenly spaced images of each split (fast tests).
    """
    candidates = []
    for root in search_roots(data_dir):
        candidates += [
            root,
            root / "cifar10_jpeg.npz",
            root / "cifar10-jpeg" / "cifar10_jpeg.npz",
            root / "cifar-10-batches-py",
        ]
    bundle = find_file(
        [c for c in candidates if c.suffix == ".npz" or c.name == "cifar-10-batches-py"]
    )
    if bundle is None and download:
        datasets = require_torchvision("downloading CIFAR-10", "torchvision.datasets")
        root = Path(data_dir or "data")
        datasets.CIFAR10(str(root), train=True, download=True)
        bundle = root / "cifar-10-batches-py"
    if bundle is None:
        raise DataNotFoundError(
            "CIFAR-10 not found. Looked for cifar10_jpeg.npz and cifar-10-batches-py under "
            f"{[str(r) for r in search_roots(data_dir)]}. Pass --data-dir pointing at the JPEG "
            "bundle "
            "(e.g. ../shared/data/cifar10-jpeg) or a torchvision CIFAR10 root, or --download."
        )
    arrays = (
        _cifar_from_bundle(bundle, limit)
        if bundle.suffix == ".npz"
        else _cifar_from_pickles(bundle, limit)
    )
    arrays["source"] = np.array(str(bundle))
    return arrays


def load_digits_arrays(limit: int | None = None) -> Arrays:
    """scikit-learn's 8x8 digits (1,797 images) as uint8 (N, 1, 8, 8); a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.clip(np.round(bunch.images * 255 / 16), 0, 255).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    cut = int(0.8 * len(x))
    tr, te = perm[:cut], perm[cut:]
    tr, te = tr[spread_index(len(tr), limit)], te[spread_index(len(te), limit)]
    return {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]}


def to_tensor(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def spread_index(n: int, limit: int | None) -> np.ndarray:
    """``limit`` evenly spaced indices of ``range(n)`` (all of them without a limit).

    Some files are sorted by class; evenly spaced samples keep every class in a small slice.
    """
    if limit is None or limit >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(np.int64)
