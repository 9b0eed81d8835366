"""One switch for both thread pools fastnn uses: Numba's and the BLAS libraries'.

Matrix products inside kernels run on SciPy's OpenBLAS (a second pool beside NumPy's);
threadpoolctl limits every BLAS it finds, so SciPy's is loaded first.
"""
from __future__ import annotations

import numba
import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS that Numba calls, so it is limited too)
from threadpoolctl import threadpool_info, threadpool_limits

_limiter = None


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for Numba kernels and for every BLAS library in the process.

    Numba's ceiling is fixed at import (``NUMBA_NUM_THREADS``); ``n`` above it is an error.
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
