"""The one place that decides how fastnn kernels are compiled, cached and composed.

- fastmath: the LLVM flags that allow vectorised reductions and contraction, but *not*
  ``nnan``/``ninf``: with those, LLVM may delete NaN checks and relu(NaN) stops being NaN
  (numba#2919).
- error_model="numpy": a division by zero gives inf/NaN as NumPy does, instead of an
  exception check that also blocks vectorisation.
- Caching: Numba stamps a cached kernel with its own file only, so an edit to a helper in
  another file would leave a stale kernel in use. fastnn's kernels are cached under a key
  made of *all* kernel sources, the Numba, llvmlite and NumPy versions and every setting
  that changes generated code (``_KernelCacheLocator``), in folders and files no one else can
  have written (``_cache``). ``FASTNN_CACHE=0`` turns caching off; ``FASTNN_CACHE_DIR`` moves
  the cache.
- Composition (``_compose``): a training step is a few small compiled drivers
  (``kernels/train.py``) that call each layer's kernels through their addresses. Each kernel
  is compiled once per dtype and shared by every model; a driver is compiled once per dtype
  and never links, re-optimises or inlines the kernels it calls. Kernels for one activation
  come from a cached factory (``specialize``), so a model compiles only what it uses.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pathlib
import sys
import threading
import time

import llvmlite
import numba
import numpy as np
from numba import types
from numba.core import caching, config
from numba.extending import intrinsic, overload, register_jitable

from . import _cache

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn"})
# Reassociation only for sums of terms that cannot cancel (MSE, the fused small layers): elsewhere it
# changed results, found by the fuzz tests. LLVM turned `total += m + log(s) - logit` into
# `(total + m) - logit`, so one row with a logit of 1e30 wiped out every other row's loss, and
# `b2*v + (1 - b2)*g*g` into `... + g*g - b2*g*g`, NaN where the reference has inf. The
# element-wise loops vectorise without it.
REDUCTION = FASTMATH | {"reassoc"}

JIT = not config.DISABLE_JIT  # NUMBA_DISABLE_JIT=1: every kernel runs as plain Python
KERNEL_DIR = pathlib.Path(__file__).resolve().parent


def _settings() -> str:
    """Everything besides the sources that changes the code Numba generates."""
    knobs = ("BOUNDSCHECK", "OPT", "DEBUGINFO_DEFAULT", "CPU_NAME", "CPU_FEATURES", "LOOP_VECTORIZE",
             "SLP_VECTORIZE", "ENABLE_AVX", "EXTEND_VARIABLE_LIFETIMES")
    return repr((numba.__version__, llvmlite.__version__, np.__version__, sys.version_info[:2],
                 [getattr(config, k, None) for k in knobs], sorted(FASTMATH), sorted(REDUCTION)))


def sources_digest(directory: pathlib.Path = KERNEL_DIR) -> str:
    """SHA-256 over every kernel source file and the code-generation settings: the cache key."""
    h = hashlib.sha256(_settings().encode())
    for path in sorted(directory.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


DIGEST = sources_digest()
if os.environ.get("FASTNN_CACHE", "1") != "0" and JIT:
    CACHE_DIR, _cache.AuthenticatedCacheFile.KEY = _cache.choose(DIGEST)
else:
    CACHE_DIR = None
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


_TWINS = {}  # id(intrinsic) -> (intrinsic, the Python function that stands in for it)


def as_python(fn, overrides=None, call_compiled=None):
    """``fn``'s source as plain Python: every intrinsic it names replaced by its Python twin,
    every kernel without a Python entry called through ``call_compiled(kernel, *args)`` (when
    given: ``_compose.run_by_types``), and any name in ``overrides`` replaced as given. This is
    how kernels run under NUMBA_DISABLE_JIT and how ``fastnn profile`` runs a driver."""
    fn = getattr(fn, "py_func", fn)
    names = fn.__code__.co_names
    scope = dict(fn.__globals__)
    changed = False
    for name in names:
        value = scope.get(name)
        twin = _TWINS.get(id(value))
        if overrides and name in overrides:
            scope[name] = overrides[name]
        elif twin is not None:
            scope[name] = twin[1]
        elif call_compiled and isinstance(value, numba.core.registry.CPUDispatcher) and value.targetoptions.get(
                "no_cpython_wrapper"):
            scope[name] = functools.partial(call_compiled, value)
        else:
            continue
        changed = True
    if not changed:
        return fn
    python = type(fn)(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    python.__doc__, python.__qualname__ = fn.__doc__, fn.__qualname__
    return python


def intrinsic_with_twin(python_fn):
    """Decorator for an intrinsic's typing function: compiled code gets the intrinsic (inline
    LLVM, no compiled function of its own), Python (``as_python``) gets ``python_fn``."""
    def wrap(typer):
        obj = intrinsic(typer)
        _TWINS[id(obj)] = (obj, python_fn)
        return obj
    return wrap


def kernel(fn=None, *, fastmath=FASTMATH, python_entry=True):
    """Decorator for every fastnn kernel and driver: one set of Numba options for all of them
    (``fastmath=REDUCTION`` for plain reductions that may reorder their sums). Compiled
    lazily, per argument types, and cached. ``python_entry=False`` for functions only ever
    called through their address from compiled code (``call``; from Python: ``run``): Numba
    then builds no wrapper for calls from Python, which costs 0.04-0.12 s of a cold start per
    function."""
    options = dict(fastmath=set(fastmath), error_model="numpy", nogil=True, cache=CACHE, no_cfunc_wrapper=True,
                   no_cpython_wrapper=not python_entry)

    def decorate(f):
        if not JIT:
            return as_python(f)
        dispatcher = numba.njit(**options)(f)
        _cache.protect(dispatcher)  # authenticated files; unreadable is a miss, unwritable a warning
        return dispatcher
    return decorate if fn is None else decorate(fn)


def inline_scalar(fn):
    """Decorator for a few scalar operations inlined into their caller at Numba-IR level (no
    loop, no compiled function of its own: as one, the float32 tanh cost 0.15 s to compile)."""
    return numba.njit(inline="always", fastmath=set(FASTMATH), error_model="numpy")(fn)


def helper(fn=None, *, fastmath=FASTMATH):
    """Decorator for small functions called from kernels: plain Python when called from Python
    (and under NUMBA_DISABLE_JIT), compiled per argument types inside kernels, where LLVM
    inlines them. Never used for loops over arrays that a caller would re-optimise. A helper's
    instructions keep its own ``fastmath`` flags once inlined (``REDUCTION`` for its sums to
    vectorise)."""
    decorate = register_jitable(fastmath=set(fastmath), error_model="numpy")
    return decorate if fn is None else decorate(fn)


def typed_helper(python_fn, fastmath=FASTMATH):
    """Decorator: give the Python function ``python_fn`` a compiled implementation per argument type.

    The decorated function receives Numba types and returns the implementation to compile
    (``numba.extending.overload``), so float32 code can use float32 constants and float32
    approximations while float64 keeps full precision, and a constant activation code
    (``types.IntegerLiteral``) selects one activation's code. ``python_fn`` stays a plain
    function (what runs under NUMBA_DISABLE_JIT=1) whose signature the implementations share.
    """
    return overload(python_fn, jit_options=dict(fastmath=set(fastmath), error_model="numpy"))


def specialize(factory):
    """Decorator for a kernel factory ``factory(*constants) -> kernel``, called once per set of
    constants (an activation code, say) and kept: each kernel it returns closes over its
    constants, which Numba compiles in as literals and keys the disk cache on."""
    return functools.cache(factory)


# -- composing compiled kernels ---------------------------------------------------------

def array_type(dtype, ndim):
    """The Numba type of a C-contiguous, writable, aligned ndarray: what every kernel takes."""
    return types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C")


SIGNATURES = {}  # address -> the signature compiled there (``_compose.run`` checks calls against it)


def address(dispatcher, signature):
    """Compile ``dispatcher`` for ``signature`` (or load it from the cache) and return the
    address of its native function, which ``_compose.call`` invokes from a driver. Under
    NUMBA_DISABLE_JIT the function itself stands in for its address."""
    if not JIT:
        return dispatcher
    key = (dispatcher, signature)
    addr = _ADDRESSES.get(key)
    if addr is None:  # (compile() and the symbol lookup cost about 20 us even when compiled)
        dispatcher.compile(signature)
        cres = dispatcher.overloads[tuple(signature.args)]
        addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        SIGNATURES[addr] = cres.signature
        _ADDRESSES[key] = addr
    return addr


_ADDRESSES = {}  # (dispatcher, signature) -> address


# -- compiling on a cold cache ---------------------------------------------------------

def _signature_args(signature):
    return tuple(signature.args) if hasattr(signature, "args") else tuple(signature)


def is_cached(dispatcher, signature) -> bool:
    """True when ``dispatcher`` is compiled for ``signature`` in this process or in the disk
    cache. (Reads Numba's cache index, keyed as ``dispatcher.compile(signature)`` keys it.)"""
    if _signature_args(signature) in dispatcher.overloads:
        return True
    try:
        cache = dispatcher._cache
        key = cache._index_key(signature, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # no cache, or another Numba: then it is not known to be cached
        return False


def _may_fork() -> bool:
    # A forked child compiles safely only where nothing else runs: no other Python thread (a
    # notebook's, a progress bar's), no MPI (forking an MPI rank can break its transport).
    return (JIT and CACHE and sys.platform.startswith("linux") and hasattr(os, "fork")
            and os.environ.get("FASTNN_PARALLEL_COMPILE", "1") != "0" and threading.active_count() == 1
            and len(os.sched_getaffinity(0)) >= 2 and "mpi4py.MPI" not in sys.modules)


CHILD_TIMEOUT = 300.0  # seconds; a child that takes longer is stopped and its share compiled here


def compile_all(pieces):
    """Compile, or load from the cache, every ``(dispatcher, signature)`` of ``pieces``.

    On a cold cache with two free cores, a forked child compiles about half of the missing
    pieces while this process compiles the other half; the child leaves its share in the
    disk cache, where this process then loads it (the first MNIST step: 1.45 -> 0.9 s). Pieces
    that share a cache index file (kernels of one factory) stay in one process, so the two
    never rewrite one index at once. If the child fails, this process compiles its share.
    """
    if not JIT:
        return
    todo = [(d, s) for d, s in pieces if not is_cached(d, s)]
    groups = {}
    for d, s in todo:
        code = d.py_func.__code__
        groups.setdefault((code.co_filename, code.co_firstlineno), []).append((d, s))
    if len(groups) >= 3 and _may_fork():  # (a fork taxes this process: its pages fault once more)
        shares = ([], [])
        for k, group in enumerate(sorted(groups.values(), key=len, reverse=True)):
            shares[k % 2].extend(group)
        if _watch is not None:
            _watch.say()  # before forking, so that only this process speaks
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: compile its share into the cache, then leave without cleanup
            try:
                for d, s in shares[1]:
                    d.compile(s)
                os._exit(0)
            except BaseException:
                os._exit(1)
        done = False
        try:
            for d, s in shares[0]:
                d.compile(s)
            deadline = time.monotonic() + CHILD_TIMEOUT
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            else:
                done = True
        finally:
            if not done:  # this process failed, or the child took too long: stop and reap it
                try:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
    for d, s in todo:
        d.compile(s)  # what the child left in the cache loads; anything it did not, compiles here


# -- saying when something compiles -----------------------------------------------------

class _CompileWatch(numba.core.event.Listener):
    """Counts Numba compilations (cache misses only) while a fastnn step is being built, and
    has the build announced before the first."""

    def __init__(self, announce):
        self.announce, self.compiled, self.said = announce, 0, False

    def say(self):
        if not self.said:
            self.said = True
            self.announce()

    def on_start(self, event):
        self.say()
        self.compiled += 1

    def on_end(self, event):  # the Listener interface; nothing to do when a compilation ends
        pass


_watch = None  # the watch of the build in progress


_watch_lock = threading.Lock()
_compile_seconds = [0.0]


def compile_seconds() -> float:
    """Seconds this process has spent in builds that compiled something (``compiling``)."""
    return _compile_seconds[0]


@contextlib.contextmanager
def compiling(what, *, quiet=False, announce=None):
    """Build something from kernels; if anything must compile, say so once on stderr first.

    ``what`` completes "compiling ..." (say "the float32 training step: relu, identity;
    Adam"). Yields a dict that receives ``compiled`` (how many functions compiled) and
    ``seconds``. ``announce`` is called as well, for a progress bar.
    """
    def say():
        if not quiet:
            later = "once; cached for later runs" if CACHE else "the kernel cache is off: every process compiles again"
            print(f"fastnn: compiling {what} ({later})", file=sys.stderr, flush=True)
        if announce is not None:
            announce()

    global _watch
    report = {"compiled": 0, "seconds": 0.0}
    watch = _CompileWatch(say)
    start = time.perf_counter()
    with _watch_lock, numba.core.event.install_listener("numba:compile", watch):
        _watch = watch
        try:
            yield report
        finally:
            _watch = None
    report["compiled"] = watch.compiled + watch.said  # (the forked child's count is not seen here)
    report["seconds"] = time.perf_counter() - start
    if report["compiled"]:
        _compile_seconds[0] += report["seconds"]
