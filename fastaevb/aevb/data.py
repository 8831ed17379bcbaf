"""MNIST-format IDX files: reader, the Fashion-MNIST / MNIST splits, and binarization.

IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``0x00 0x00 <type> <ndim>``,
``ndim`` big-endian uint32 sizes, then the data. Only unsigned bytes (type 0x08) occur in
MNIST-like sets and only they are accepted. Files may be gzip-compressed (``.gz``) or raw.
Nothing is downloaded: the default directory is Debian's ``dataset-fashion-mnist`` package.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = (
    "install Fashion-MNIST with `sudo apt-get install dataset-fashion-mnist` (or run "
    "`bash scripts/setup.sh`, which does it), or pass --data-dir DIR holding MNIST-format IDX files"
)
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


class DataError(RuntimeError):
    """A missing, truncated or malformed data file; the message names the file."""


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read one IDX file (gzip or raw) into a uint8 tensor of the shape its header gives.

    Raises :class:`DataError` naming the file for a missing file, a wrong magic number, an
    unsupported element type, or a file shorter (or longer) than its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; {INSTALL_HINT}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read (corrupt or truncated gzip?): {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, too short for an IDX header")
    zero, dtype, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file (magic {raw[:4].hex()}, expected 0000 08 followed by the number of dimensions)"
        )
    if dtype != _UBYTE:
        raise DataError(f"{path}: IDX element type 0x{dtype:02x} is not supported (only unsigned bytes, 0x08)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: header needs {header} bytes, file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header
    if have < expected:
        raise DataError(f"{path}: truncated: header says {dims} = {expected} bytes of data, file has {have}")
    if have > expected:
        raise DataError(f"{path}: {have - expected} unexpected bytes after the {dims} data")
    array = np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())


def find_idx(data_dir: str | os.PathLike, stem: str) -> Path:
    """``DIR/stem.gz`` or ``DIR/stem`` (also the ``stem.idx3-ubyte`` spelling some mirrors use)."""
    data_dir = Path(data_dir)
    candidates = [data_dir / f"{stem}.gz", data_dir / stem]
    dotted = stem.replace("-idx", ".idx")
    candidates += [data_dir / f"{dotted}.gz", data_dir / dotted]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; {INSTALL_HINT}")
    raise DataError(f"{data_dir}: no {stem}.gz or {stem} file; {INSTALL_HINT}")


def load_split(data_dir: str | os.PathLike | None, split: str, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Images as float32 grey levels in [0, 1] of shape ``(N, rows * cols)`` and int64 labels.

    ``limit`` keeps the first N datapoints. Image and label counts must agree.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    data_dir = DEFAULT_DATA_DIR if data_dir is None else data_dir
    image_path, label_path = (find_idx(data_dir, stem) for stem in SPLITS[split])
    images = read_idx(image_path)
    if images.dim() != 3:
        raise DataError(f"{image_path}: expected 3 dimensions (N, rows, cols), header gives {tuple(images.shape)}")
    labels = read_idx(label_path)
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{label_path}: {tuple(labels.shape)} labels do not match the {images.shape[0]} images of {image_path}"
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.reshape(images.shape[0], -1).float().div_(255.0), labels.long()


def image_shape(data_dim: int) -> tuple[int, int]:
    """Square image side for plotting (784 -> (28, 28))."""
    side = int(round(data_dim**0.5))
    if side * side != data_dim:
        raise ValueError(f"cannot show {data_dim}-pixel datapoints as square images")
    return side, side


def binarize_dynamic(grey: Tensor, generator: torch.Generator) -> Tensor:
    """A fresh Bernoulli draw of the grey levels: ``x = 1[u < grey]`` with ``u ~ U(0, 1)``."""
    u = torch.rand(grey.shape, generator=generator, dtype=grey.dtype, device=grey.device)
    return (u < grey).to(grey.dtype)


def binarize_static(grey: Tensor) -> Tensor:
    """Deterministic thresholding at 0.5."""
    return (grey > 0.5).to(grey.dtype)


def prepare_test(grey: Tensor, likelihood: str, binarization: str, seed: int = 12345) -> Tensor:
    """The test set as a model sees it: for Bernoulli models one fixed binarization (a seeded
    Bernoulli draw for dynamically binarized training, thresholding for static), else grey levels."""
    if likelihood != "bernoulli":
        return grey
    if binarization == "static":
        return binarize_static(grey)
    return binarize_dynamic(grey, torch.Generator().manual_seed(seed))


def write_idx(path: str | os.PathLike, array: Tensor | np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as an IDX file (gzip when ``path`` ends in ``.gz``); for tests and tools."""
    array = np.asarray(array.numpy() if isinstance(array, Tensor) else array, dtype=np.uint8)
    payload = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
