"""The one place that decides Numba options for every fastnn kernel.

- fastmath: the LLVM flags that allow vectorised reductions and contraction, but *not*
  ``nnan``/``ninf``: with those, LLVM may delete NaN checks and relu(NaN) stops being NaN
  (numba#2919).
- error_model="numpy": a division by zero gives inf/NaN as NumPy does, instead of an
  exception check that also blocks vectorisation.
- Caching: Numba stamps a cached kernel with its own file only, so an edit to a helper in
  another file would leave a stale kernel in use. fastnn's kernels are cached under a key
  made of *all* kernel sources plus the Numba version (see ``_KernelCacheLocator``).
  ``FASTNN_CACHE=0`` turns caching off; ``FASTNN_CACHE_DIR`` moves the cache.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

import numba
from numba.core import caching

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn"})
# Reassociation only for plain reductions whose order cannot matter (all_finite): elsewhere it
# changed results, found by the fuzz tests. LLVM turned `total += m + log(s) - logit` into
# `(total + m) - logit`, so one row with a logit of 1e30 wiped out every other row's loss, and
# `b2*v + (1 - b2)*g*g` into `... + g*g - b2*g*g`, NaN where the reference has inf. The
# element-wise loops vectorise without it.
REDUCTION = FASTMATH | {"reassoc"}

KERNEL_DIR = pathlib.Path(__file__).resolve().parent


def sources_digest(directory: pathlib.Path = KERNEL_DIR) -> str:
    """SHA-256 over every kernel source file and the Numba version: the cache key."""
    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(directory.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _writable_dir(path: pathlib.Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _choose_cache_dir(digest: str) -> pathlib.Path | None:
    """First writable of FASTNN_CACHE_DIR, the user cache, the temp dir; None disables caching."""
    user = os.environ.get("FASTNN_CACHE_DIR")
    if user:
        roots = [pathlib.Path(user)]
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        roots = [pathlib.Path(xdg) / "fastnn", pathlib.Path(tempfile.gettempdir()) / f"fastnn-{os.getuid()}"]
    for root in roots:
        candidate = root / "numba" / digest[:16]
        if _writable_dir(candidate):
            return candidate
    return None


DIGEST = sources_digest()
CACHE_DIR = _choose_cache_dir(DIGEST) if os.environ.get("FASTNN_CACHE", "1") != "0" else None
CACHE = CACHE_DIR is not None


class _KernelCacheLocator(caching._CacheLocator):
    """Caches fastnn kernels in CACHE_DIR, stamped with the digest of all kernel sources."""

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self):
        return str(CACHE_DIR)

    def get_source_stamp(self):
        return DIGEST

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if CACHE_DIR is None or pathlib.Path(py_file).resolve().parent != KERNEL_DIR:
            return None  # not ours: Numba's own locators decide
        return cls(py_func, py_file)


if _KernelCacheLocator not in caching.CacheImpl._locator_classes:
    caching.CacheImpl._locator_classes.insert(0, _KernelCacheLocator)


def kernel(fn=None, *, parallel: bool = False, fastmath=FASTMATH):
    """Decorator for every fastnn kernel: one set of Numba options for all of them
    (``fastmath=REDUCTION`` for plain reductions that may reorder their sums)."""
    options = dict(fastmath=set(fastmath), error_model="numpy", nogil=True, cache=CACHE, parallel=parallel)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)


def helper(fn):
    """Decorator for scalar helpers called only from kernels; LLVM inlines them there."""
    return numba.njit(fastmath=set(FASTMATH), error_model="numpy")(fn)


def loop_helper(fn):
    """Decorator for a loop called from an if-chain once per constant activation code.

    Inlined by Numba itself, so each call site gets its own copy with the code fixed and
    LLVM vectorises it (left to LLVM, the bigger loops were not inlined, so not specialised).
    """
    return numba.njit(fastmath=set(FASTMATH), error_model="numpy", inline="always")(fn)


def typed_helper(python_fn):
    """Decorator: give the Python function ``python_fn`` a compiled implementation per argument type.

    The decorated function receives Numba types and returns the implementation to compile
    (``numba.extending.overload``), so float32 code can use float32 constants and float32
    approximations while float64 keeps full precision. ``python_fn`` stays a plain function
    (what runs under NUMBA_DISABLE_JIT=1) whose signature the implementations share.
    """
    from numba.extending import overload

    return overload(python_fn, jit_options=dict(fastmath=set(FASTMATH), error_model="numpy"))
