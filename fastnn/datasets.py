"""Real handwritten digits: MNIST IDX files, and 5,000 MNIST images bundled with fastnn.

IDX is big-endian: a magic number (0x0803 = images with 3 dimensions, 0x0801 = labels
with 1), one 4-byte count per dimension, then the uint8 data.
"""
from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

BUNDLED = pathlib.Path(__file__).resolve().parent / "data" / "mnist_5k"
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(ValueError):
    """A data file is missing, truncated or not what it claims to be."""


def read_idx(path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (gzip or raw) into a uint8 array, checking magic, counts and size."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    ndim = {IMAGE_MAGIC: 3, LABEL_MAGIC: 1}[expected_magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: magic number {magic}, expected {expected_magic} "
                        f"({'images' if expected_magic == IMAGE_MAGIC else 'labels'})")
    dims = tuple(int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    size = int(np.prod(dims))
    if len(raw) != header + size:
        raise DataError(f"{path}: {len(raw) - header} data bytes for shape {dims}, expected {size} "
                        f"(truncated or corrupt)")
    return np.frombuffer(raw, np.uint8, size, header).reshape(dims)


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path:
    # both spellings are in use: train-images-idx3-ubyte and train-images.idx3-ubyte
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, dotted):
        for suffix in (".gz", ""):
            candidate = directory / (name + suffix)
            if candidate.is_file():
                return candidate
    raise DataError(f"{directory}: no {stem}[.gz] (or {dotted}[.gz]) found")


def _as_xy(images: np.ndarray, labels: np.ndarray, images_path, labels_path):
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} outside 0..9")
    X = images.reshape(images.shape[0], 784).astype(np.float32)
    X /= 255.0
    return X, labels.astype(np.int64)


def load_mnist(path):
    """Load MNIST (or Fashion-MNIST) from a folder of the four standard IDX files.

    Parameters
    ----------
    path : str or Path
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, gzipped or raw, with
        either spelling (``train-images.idx3-ubyte`` too).

    Returns
    -------
    ((X_train, y_train), (X_test, y_test)) : X float32 (N, 784) in [0, 1], y int64 (N,)
    """
    directory = pathlib.Path(os.fspath(path))
    if not directory.is_dir():
        raise DataError(f"{directory} is not a folder of MNIST IDX files")
    out = []
    for images_stem, labels_stem in SPLITS.values():
        ip, lp = _find(directory, images_stem), _find(directory, labels_stem)
        out.append(_as_xy(read_idx(ip, IMAGE_MAGIC), read_idx(lp, LABEL_MAGIC), ip, lp))
    return tuple(out)


def load_mnist_5k():
    """The 5,000 real MNIST digits bundled with fastnn, split 400 train / 100 test per class.

    The images are the first 500 of each class of MNIST's *training* set (see
    ``fastnn/data/mnist_5k/README.md``): never evaluate an MNIST-trained model on them.

    Returns
    -------
    ((X_train, y_train), (X_test, y_test)) : 4,000 and 1,000 rows, in a fixed shuffled order
    """
    ip = BUNDLED / "mnist5k-images-idx3-ubyte.gz"
    lp = BUNDLED / "mnist5k-labels-idx1-ubyte.gz"
    X, y = _as_xy(read_idx(ip, IMAGE_MAGIC), read_idx(lp, LABEL_MAGIC), ip, lp)
    rank = np.empty_like(y)  # position of each image within its class (the file is in MNIST order)
    for c in range(10):
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(members.size)
    order = np.random.default_rng(0)
    train = order.permutation(np.flatnonzero(rank < 400))
    test = order.permutation(np.flatnonzero(rank >= 400))
    return (X[train], y[train]), (X[test], y[test])
