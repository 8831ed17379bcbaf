"""IDX reader and data loading of the AEVB application (fastaevb.aevb.data)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from fastaevb.aevb import data as D

REAL = Path(D.DEFAULT_DATA_DIR)


def make_idx_dir(
    root: Path, n_train: int = 400, n_test: int = 100, side: int = 8, seed: int = 0, compress: bool = True
) -> Path:
    """A small MNIST-format data set: noisy copies of 4 prototype images, labels = prototype."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((4, side, side)) < 0.4).astype(np.float64)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 4, n)
        grey = protos[labels] * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.uniform(0, 0.15, (n, side, side))
        images = np.clip(grey * 255, 0, 255).astype(np.uint8)
        D.write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images)
        D.write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_roundtrip(tmp_path, compress):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.gz" if compress else "a")
    D.write_idx(path, a)
    assert torch.equal(D.read_idx(path), torch.from_numpy(a))


def test_load_split_shapes_and_range(tmp_path):
    root = make_idx_dir(tmp_path / "d", compress=False)
    x, y = D.load_split(root, "train")
    assert x.shape == (400, 64) and x.dtype == torch.float32 and y.shape == (400,)
    assert 0 <= x.min() and x.max() <= 1
    x, _ = D.load_split(root, "test", limit=10)
    assert x.shape == (10, 64)


def test_missing_file_names_the_install(tmp_path):
    with pytest.raises(D.DataError, match="apt-get install dataset-fashion-mnist"):
        D.load_split(tmp_path, "train")
    with pytest.raises(D.DataError, match="does not exist.*scripts/setup.sh"):
        D.load_split(tmp_path / "nowhere", "train")
    with pytest.raises(D.DataError, match="no such file"):
        D.read_idx(tmp_path / "x.gz")


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(D.DataError, match=r"bad: not an IDX file \(magic 12340801"):
        D.read_idx(path)


def test_unsupported_type(tmp_path):
    path = tmp_path / "f32"
    path.write_bytes(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4)
    with pytest.raises(D.DataError, match="element type 0x0d"):
        D.read_idx(path)


def test_truncated_data_and_header(tmp_path):
    path = tmp_path / "t-images.gz"
    D.write_idx(path, np.zeros((10, 28, 28), np.uint8))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(D.DataError, match=r"t-images.gz: truncated: header says \(10, 28, 28\) = 7840 bytes"):
        D.read_idx(path)
    path.write_bytes(raw[:9])
    with pytest.raises(D.DataError, match="truncated: header needs 16 bytes"):
        D.read_idx(path)
    path.write_bytes(raw + b"\x00")
    with pytest.raises(D.DataError, match="1 unexpected bytes"):
        D.read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    D.write_idx(path, np.zeros((100, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(D.DataError, match="cut.gz: cannot read"):
        D.read_idx(path)


def test_label_count_mismatch(tmp_path):
    root = make_idx_dir(tmp_path / "d")
    D.write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(D.DataError, match=r"\(7,\) labels do not match the 400 images"):
        D.load_split(root, "train")


def test_binarization():
    grey = torch.tensor([[0.0, 0.3, 0.7, 1.0]]).repeat(20000, 1)
    x = D.binarize_dynamic(grey, torch.Generator().manual_seed(0))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(x.mean(0), grey[0], atol=0.02)
    assert torch.equal(D.binarize_static(grey[:1]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


@pytest.mark.skipif(not REAL.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    x, y = D.load_split(REAL, "test")
    assert x.shape == (10000, 784) and y.shape == (10000,)
    assert int(y.min()) == 0 and int(y.max()) == 9
