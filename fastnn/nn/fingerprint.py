"""A compact fingerprint of the rows a model was trained on, to tell when it is evaluated on them.

Each row (its bytes, as the model read them) gets a 64-bit hash. The fingerprint keeps the
hashes that fall in a fixed share of the hash space (those divisible by ``stride``), at most
``CAPACITY`` of them (32 KiB): a consistent sample, the same rows whichever data set they come
from. An evaluation set's share of rows seen in training is then measured on its rows in that
share of the space: exact on them (a 64-bit hash practically never collides), and an
unbiased estimate for the set, without the false positives of a Bloom filter of that size.
When more training rows arrive than the capacity holds, the stride doubles and half the kept
hashes go.
"""
from __future__ import annotations

import numpy as np

CAPACITY = 4096
_CHUNK = 2048  # rows hashed at once: bounds the temporary (rows x words) array
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def row_hashes(X: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes: the bytes as 64-bit words, a sum of words times
    per-position odd constants, then a splitmix64 finish (all wrapping uint64 arithmetic)."""
    X = np.ascontiguousarray(X)
    raw = X.reshape(X.shape[0], -1).view(np.uint8)
    pad = (-raw.shape[1]) % 8
    out = np.empty(X.shape[0], np.uint64)
    constants = None
    for start in range(0, X.shape[0], _CHUNK):
        part = raw[start:start + _CHUNK]
        if pad:
            part = np.concatenate([part, np.zeros((part.shape[0], pad), np.uint8)], axis=1)
        words = np.ascontiguousarray(part).view(np.uint64)
        if constants is None:
            constants = np.random.default_rng(0x5EED).integers(0, 2**63, words.shape[1], dtype=np.uint64) * 2 + 1
        with np.errstate(over="ignore"):
            h = (words * constants).sum(axis=1, dtype=np.uint64) + np.uint64(words.shape[1])
            h ^= h >> np.uint64(30)
            h *= _MIX1
            h ^= h >> np.uint64(27)
            h *= _MIX2
            h ^= h >> np.uint64(31)
        out[start:start + len(h)] = h
    return out


class Fingerprint:
    """The sampled set of training-row hashes (see the module docstring)."""

    def __init__(self, hashes=None, stride=1):
        self.hashes = np.zeros(0, np.uint64) if hashes is None else np.asarray(hashes, np.uint64)
        self.stride = int(stride)

    def add(self, X) -> None:
        h = row_hashes(X)
        kept = np.union1d(self.hashes, h[h % np.uint64(self.stride) == 0])
        while kept.size > CAPACITY:
            self.stride *= 2
            kept = kept[kept % np.uint64(self.stride) == 0]
        self.hashes = kept

    def share_seen(self, X) -> float | None:
        """The estimated share of ``X``'s rows that were training rows (None: no rows of ``X``
        fall in the sampled share of the hash space, so there is nothing to measure)."""
        if self.hashes.size == 0:
            return 0.0
        h = row_hashes(X)
        sampled = h[h % np.uint64(self.stride) == 0]
        if sampled.size == 0:
            return None
        return float(np.isin(sampled, self.hashes).mean())
