"""One switch for both thread pools fastnn uses: Numba's and the BLAS libraries'.

Matrix products inside kernels run on SciPy's OpenBLAS (a second pool beside NumPy's);
threadpoolctl limits every BLAS it finds, so SciPy's is loaded first.
"""
from __future__ import annotations

import threading

import numba
import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS that Numba calls, so it is limited too)
from threadpoolctl import threadpool_info, threadpool_limits

_limiter = None


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for Numba kernels and for every BLAS library in the process.

    Numba's ceiling is fixed at import (``NUMBA_NUM_THREADS``); ``n`` above it is an error.
    ``n`` is an upper bound: a training step too small to gain from a second thread runs its
    products on one (``serial_rows``, ``one_blas_thread``).
    """
    global _limiter
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n={n} exceeds Numba's thread ceiling NUMBA_NUM_THREADS="
                         f"{numba.config.NUMBA_NUM_THREADS}; set that variable before importing fastnn")
    numba.set_num_threads(n)
    _limiter = threadpool_limits(limits=n)


def get_num_threads() -> dict:
    """``{"numba": n, "blas": [n per BLAS library]}``: what is in force now."""
    return {"numba": numba.get_num_threads(),
            "blas": [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]}


# -- threads by size ----------------------------------------------------------------------
# A second BLAS thread loses on mid-sized steps of small models: the optimizer rewrites the
# parameters on this core, and the other core's share of the next products must fetch them
# back from this core's cache. Measured per train_step (float32, SGD with momentum, median of
# 15 interleaved rounds, 2-core Xeon, OpenBLAS 0.3.30; 2 threads / 1 thread):
#   784-256-128-10 (0.9 MB of parameters)  batch 16: 1.14  32: 1.19  48: 1.09  64: 1.03  96: 0.90  128: 0.88
#   64-512-512-10  (1.2 MB)                batch 16: 1.12  32: 1.05  64: 0.94  128: 0.82  256: 0.71
#   784-2048-2048-10 (23 MB, beyond L2)    batch 16: 0.71  32: 0.69  64: 0.64  128: 0.59
# So a step of fewer than SERIAL_ROWS rows, of a model of at most SERIAL_PARAM_BYTES, runs its
# products on one thread. Steps whose largest product is under SERIAL_PRODUCT multiply-adds
# are left alone: BLAS runs those on one thread by itself, and switching would cost more than
# it could save. (Thread count changes a product's rounding, so the rule is fixed, never timed.)
# A busy machine: a product split over two threads waits for the slower, and with other
# processes on the cores that is a scheduler delay (milliseconds) per product. 64-256-128-10 at
# batch 64 (largest product 2.1M multiply-adds) fit in 0.16 s on a quiet machine and in 0.76 s
# (4.8x) beside two spinning processes with two threads, 0.20 s with one. So a product also goes
# to two threads only when it carries at least PARALLEL_PRODUCT multiply-adds (about 0.1 ms on
# one core) to share: what a delay costs is then a fraction of the work, not a multiple of it.
SERIAL_ROWS = 64
SERIAL_PARAM_BYTES = 4 << 20
SERIAL_PRODUCT = 2_000_000
PARALLEL_PRODUCT = 8_000_000

_blas_libraries = None


def serial_rows(largest_product: int, param_bytes: int) -> range:
    """The batch sizes at which a model's steps run their products on one BLAS thread;
    ``largest_product`` is the most multiply-adds per row of any layer (I * O)."""
    small = -(-PARALLEL_PRODUCT // largest_product)  # fewer rows than this: too little work to share
    return range(-(-SERIAL_PRODUCT // largest_product),
                 max(small, SERIAL_ROWS if param_bytes <= SERIAL_PARAM_BYTES else 0))


class one_blas_thread:
    """``with one_blas_thread():`` every BLAS library on one thread inside the block.

    BLAS's thread count is one per process, so this is too: the first block to open (in any
    Python thread) saves each library's count and sets 1; the last to close puts the counts
    back. Counts are set through the libraries' own calls, not threadpoolctl's (which since
    3.6 lets only one Python thread change OpenBLAS, and would ignore a block in another).
    While Python threads train at once, a step in one may run its products on one thread
    because a step in another asked for it; only speed and rounding can differ, never
    correctness."""

    __slots__ = ()
    _lock = threading.Lock()
    _depth = 0
    _saved = []

    def __enter__(self):
        cls = one_blas_thread
        with cls._lock:
            if cls._depth == 0:
                cls._saved = [(setter, n) for setter, n in ((s, g()) for s, g in _libraries()) if n != 1]
                for setter, _ in cls._saved:
                    setter(1)
            cls._depth += 1
        return self

    def __exit__(self, *exc):
        cls = one_blas_thread
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0:
                for setter, n in cls._saved:
                    setter(n)
                cls._saved = []
        return False


def _libraries():
    """(set, get) of the thread count of every BLAS library loaded (found once)."""
    global _blas_libraries
    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController
        found = []
        for lib in ThreadpoolController().lib_controllers:
            if lib.user_api == "blas":
                setter = getattr(lib, "_real_set_num_threads", lib.set_num_threads)  # (see one_blas_thread)
                found.append((setter, lib.get_num_threads))
        _blas_libraries = found
    return _blas_libraries
