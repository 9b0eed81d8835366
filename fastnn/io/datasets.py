"""Real handwritten digits: MNIST IDX files, and 5,000 MNIST images bundled with fastnn.

IDX is big-endian: a magic number (0x0803 = images with 3 dimensions, 0x0801 = labels
with 1), one 4-byte count per dimension, then the uint8 data.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pathlib
import urllib.error
import urllib.request

import numpy as np

from .files import atomic_write

BUNDLED = pathlib.Path(__file__).resolve().parent / "data" / "mnist_5k"
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


# Well-known MNIST mirrors, tried in order. Mirrors re-gzip the files, so the SHA-256 of the
# *decompressed* content is what identifies a file (values from shared/data/README.md).
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
           "https://storage.googleapis.com/cvdf-datasets/mnist/")
CHECKSUMS = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
DOWNLOAD_TIMEOUT = 60


class DataError(ValueError):
    """A data file is missing, truncated or not what it claims to be."""


def default_cache_dir() -> pathlib.Path:
    """``$FASTNN_DATA`` if set, else ``~/.cache/fastnn``."""
    return pathlib.Path(os.environ.get("FASTNN_DATA") or pathlib.Path.home() / ".cache" / "fastnn")


def _content_sha256(path: pathlib.Path) -> str | None:
    """SHA-256 of a file's decompressed content; None if it cannot be read or decompressed."""
    try:
        raw = path.read_bytes()
        return hashlib.sha256(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).hexdigest()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        data = response.read()
        expected = response.headers.get("Content-Length")
    if expected is not None and len(data) != int(expected):
        raise DataError(f"{url}: got {len(data)} of {expected} bytes (transfer cut short)")
    return data


def download_file(stem: str, cache_dir, mirrors=MIRRORS, checksums=CHECKSUMS) -> pathlib.Path:
    """Make sure ``cache_dir/stem.gz`` holds the verified file, fetching it if needed.

    A file already there whose decompressed SHA-256 matches is used as it is. Otherwise each
    mirror is tried in turn; what arrives is checked (decompressed SHA-256) before it is
    written, atomically, under its final name. Raises ``DataError`` naming every mirror's
    failure when none delivers the right file.
    """
    cache_dir = pathlib.Path(cache_dir)
    target = cache_dir / f"{stem}.gz"
    expected = checksums[stem]
    if target.exists() and _content_sha256(target) == expected:
        return target  # verified: never downloaded again
    cache_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{stem}.gz"
        try:
            data = _fetch(url)
            content = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        except (OSError, EOFError, gzip.BadGzipFile, http.client.HTTPException, DataError) as e:
            failures.append(f"{url}: {e}")
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest != expected:
            failures.append(f"{url}: SHA-256 of the content is {digest}, expected {expected}")
            continue
        with atomic_write(target) as f:
            f.write(gzip.compress(content, mtime=0) if data[:2] != b"\x1f\x8b" else data)
        return target
    raise DataError(f"could not download {stem}: " + "; ".join(failures))


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


def load_mnist(path=None, *, download=False, cache_dir=None, mirrors=None, checksums=None):
    """Load MNIST (or Fashion-MNIST) from a folder of the four standard IDX files.

    Parameters
    ----------
    path : str or Path, optional
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, gzipped or raw, with
        either spelling (``train-images.idx3-ubyte`` too). Default: the cache folder.
    download : bool
        Fetch missing or unverified files into the cache folder from ``mirrors``, checking
        each file's decompressed SHA-256 against ``checksums``.
    cache_dir : str or Path, optional
        Where downloads go: default ``$FASTNN_DATA`` or ``~/.cache/fastnn``.
    mirrors : sequence of URL prefixes, optional
        Default ``MIRRORS``; tried in order.
    checksums : dict, optional
        ``{file stem: SHA-256 of the decompressed content}``; default ``CHECKSUMS`` (MNIST).

    Returns
    -------
    ((X_train, y_train), (X_test, y_test)) : X float32 (N, 784) in [0, 1], C-contiguous;
        y int64 (N,)
    """
    if download:
        directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if path is not None and pathlib.Path(path) != directory:
            raise ValueError("pass either path (files you have) or download=True with cache_dir, not both")
        checksums = CHECKSUMS if checksums is None else checksums
        for stem in checksums:
            download_file(stem, directory, MIRRORS if mirrors is None else mirrors, checksums)
    else:
        directory = pathlib.Path(os.fspath(path)) if path is not None else default_cache_dir()
    if not directory.is_dir():
        raise DataError(f"{directory} is not a folder of MNIST IDX files; pass path=FOLDER, or download=True "
                        f"to fetch them")
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
