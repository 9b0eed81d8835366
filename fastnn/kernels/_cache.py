"""The compiled-kernel cache: where it lives, and why nothing found there is trusted unread.

Numba unpickles its cache files, and unpickling runs code: a cache file someone else could
write would run their code in this process. So:

- **Folders.** Every folder from the cache root (``FASTNN_CACHE_DIR``, else the user cache
  ``~/.cache/fastnn``, else ``<tmp>/fastnn-<user>``) down to the folder of this code's digest
  is a real folder (not a symbolic link), owned by this user and writable by no one else, and
  the root's parent is writable by no one else or sticky (``/tmp``). Folders fastnn makes are
  0700. Otherwise the cache is not used, and one warning says why.
- **Authentication.** Every file fastnn writes into the cache carries an HMAC-SHA256 tag made
  with a per-user key kept outside the cache (``~/.config/fastnn/cache.key``, or
  ``<tmp>/fastnn-key-<user>/cache.key``: the file 0600, its folder 0700, both the user's, made
  on first use). A file whose tag does not verify is never unpickled: it is a miss, compiled
  again and overwritten. A data file's tag covers its name, which names its key, so a data file
  moved under another kernel's name does not verify either. Where no safe place for the key
  exists, there is no cache.
- **A cache is an optimisation, never a failure.** A file that cannot be read or rebuilt is a
  miss; a file that cannot be written (a full disk, a read-only folder) costs a compilation in
  the next process. Each is said once, as a ``CacheWarning``.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import pathlib
import pickle
import stat
import tempfile
import warnings

from numba.core import caching

KEY_BYTES = 32
MAGIC = b"fastnn-cache-1\n"


class CacheWarning(RuntimeWarning):
    """The kernel cache is not used, or a file in it could not be read or written."""


_said = set()


def say_once(message):
    if message not in _said:
        _said.add(message)
        warnings.warn(f"fastnn: {message}", CacheWarning, stacklevel=3)


def user_name() -> str:
    if hasattr(os, "getuid"):
        return str(os.getuid())
    try:
        import getpass
        return getpass.getuser()
    except Exception:  # no user name to be had (no login, no environment): a fixed one
        return "user"


class Unsafe(Exception):
    """A folder or file that may not hold the cache or its key (the message says why)."""


def _check(path: pathlib.Path, folder=True):
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise Unsafe(f"{path} is a symbolic link")
    if folder and not stat.S_ISDIR(st.st_mode):
        raise Unsafe(f"{path} is not a folder")
    if not folder and not stat.S_ISREG(st.st_mode):
        raise Unsafe(f"{path} is not a regular file")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise Unsafe(f"{path} belongs to another user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Unsafe(f"{path} is writable by other users")


def private_chain(root: pathlib.Path, parts=()) -> pathlib.Path:
    """``root/parts...``: each folder made (0700) if missing and checked (``_check``), and
    ``root``'s parent writable by no one else or sticky. Raises ``Unsafe``, or OSError when a
    folder cannot be made."""
    root = pathlib.Path(os.path.abspath(root))
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    st = os.stat(parent)
    if hasattr(os, "getuid") and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise Unsafe(f"{parent} (above {root.name}) is writable by other users and not sticky")
    path = root
    for part in (None, *parts):
        if part is not None:
            path = path / part
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        _check(path)
    return path


def _read_key(path: pathlib.Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            raise Unsafe(f"{path} is not a file of this user's")
        if st.st_mode & 0o077:
            raise Unsafe(f"{path} can be read or written by other users")
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise Unsafe(f"{path} does not hold a key of {KEY_BYTES} bytes")
    return key


def _make_key(path: pathlib.Path) -> bytes:
    """The key in ``path``, made (0600, exclusively: another process may be making it too)."""
    key = _read_key(path)
    if key is not None:
        return key
    new = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # another process made it first: theirs it is
        return _read_key(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(path)
        raise
    return new


def key_places():
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [pathlib.Path(config) / "fastnn", pathlib.Path(tempfile.gettempdir()) / f"fastnn-key-{user_name()}"]


def find_key() -> bytes:
    """This user's cache key (``key_places``: the first safe one that can be made); ``Unsafe``
    or OSError when none can be."""
    problems = []
    for place in key_places():
        try:
            return _make_key(private_chain(place) / "cache.key")
        except OSError as e:  # cannot be made here: the next place (an unsafe one stops the search)
            problems.append(f"{place}: {e.strerror or e}")
    raise Unsafe("no place to keep the cache's key: " + "; ".join(problems))


def choose(digest: str):
    """``(cache folder, key)``, or ``(None, None)`` after one warning saying why there is no cache."""
    parts = ("numba", digest[:16])
    named = os.environ.get("FASTNN_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots = [pathlib.Path(named)] if named else [pathlib.Path(xdg) / "fastnn",
                                                   pathlib.Path(tempfile.gettempdir()) / f"fastnn-{user_name()}"]
    problems = []
    for root in roots:
        try:
            folder = private_chain(root, parts)
            tempfile.TemporaryFile(dir=folder).close()  # writable
        except Unsafe as unsafe:  # never fall back past a folder someone else controls
            say_once(f"not caching compiled kernels: {unsafe}; remove it, or set FASTNN_CACHE_DIR to a folder of "
                     f"your own (kernels compile again in every process)")
            return None, None
        except OSError as e:
            problems.append(f"{root}: {e.strerror or e}")
            continue
        try:
            return folder, find_key()
        except Unsafe as unsafe:
            say_once(f"not caching compiled kernels: {unsafe} (kernels compile again in every process)")
            return None, None
    say_once(f"not caching compiled kernels: no usable cache folder ({'; '.join(problems)}); set "
             f"FASTNN_CACHE_DIR to a folder you can write (kernels compile again in every process)")
    return None, None


# -- the files -------------------------------------------------------------------------------

class Unauthentic(Exception):
    """A cache file without a valid tag: damaged, or not written by this user's fastnn."""


class AuthenticatedCacheFile(caching.IndexDataCacheFile):
    """Numba's cache index and data files, each sealed with an HMAC tag (``KEY``, set by
    ``_jit`` once the key is found) and opened only when the tag verifies.

    Each data file is named after its key: Numba numbers the data files of one index 1, 2, ...
    as it finds them free, and the kernels of one factory share an index, so two processes
    compiling into it at once could both take number 1 for different kernels. Named after the
    key, a data file only ever holds that key's code; a race can at worst lose an index entry,
    which costs a compilation in a later process. The data is written before the index names it.
    """

    KEY = None

    def save(self, key, data):
        name = self._data_name_pattern.replace("{number:d}", hashlib.sha256(repr(key).encode()).hexdigest()[:24])
        self._save_data(name, data)
        overloads = self._load_index()
        overloads[key] = name
        self._save_index(overloads)

    def _tag(self, kind, name, payload):
        return hmac.new(self.KEY, b"%s\0%s\0" % (kind, name.encode()) + payload, hashlib.sha256).digest()

    def _sealed(self, kind, name, payload):
        return MAGIC + self._tag(kind, name, payload) + payload

    def _opened(self, kind, name, blob):
        head = len(MAGIC) + hashlib.sha256().digest_size
        if not blob.startswith(MAGIC) or len(blob) < head:
            raise Unauthentic(f"{name} is not a fastnn cache file")
        payload = blob[head:]
        if not hmac.compare_digest(blob[len(MAGIC):head], self._tag(kind, name, payload)):
            raise Unauthentic(f"{name} is damaged or was not written by this user's fastnn")
        return payload

    def _load_index(self):
        try:
            with open(self._index_path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return {}
        try:
            version, stamp, overloads = pickle.loads(self._opened(b"index", self._index_name, blob))
        except Unauthentic as e:  # a miss; the next save writes a good index over it
            say_once(f"a kernel cache index was not used: {e}; it is rebuilt ({self._cache_path})")
            return {}
        if version != self._version or stamp != self._source_stamp:
            return {}
        return overloads

    def _save_index(self, overloads):
        payload = self._dump((self._version, self._source_stamp, overloads))
        with self._open_for_write(self._index_path) as f:
            f.write(self._sealed(b"index", self._index_name, payload))

    def _load_data(self, name):
        with open(self._data_path(name), "rb") as f:
            blob = f.read()
        return pickle.loads(self._opened(b"data", name, blob))  # (Unauthentic: the caller's miss)

    def _save_data(self, name, data):
        payload = self._dump(data)
        with self._open_for_write(self._data_path(name)) as f:
            f.write(self._sealed(b"data", name, payload))


def guarded(cache_class):
    """A subclass of Numba's cache class ``cache_class`` for which a file that cannot be read,
    verified or rebuilt is a miss, and one that cannot be written a warning."""
    class Guarded(cache_class):
        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception as e:
                say_once(f"a compiled kernel in the cache could not be used ({type(e).__name__}: {e}); it is "
                         f"compiled again and the cache file rewritten ({self._cache_path})")
                return None

        def save_overload(self, sig, data):
            try:
                super().save_overload(sig, data)
            except Exception as e:
                full = isinstance(e, OSError) and e.errno == errno.ENOSPC
                say_once(f"could not write the kernel cache in {self._cache_path} "
                         f"({'the disk is full' if full else f'{type(e).__name__}: {e}'}): training goes on, and "
                         f"the next process compiles again")

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{cache_class.__name__}"
    return Guarded


_GUARDED = {}


def protect(dispatcher):
    """Give ``dispatcher``'s cache the authenticated files and the guarded loads and saves."""
    cache = getattr(dispatcher, "_cache", None)
    if cache is None or not isinstance(getattr(cache, "_cache_file", None), caching.IndexDataCacheFile):
        return
    cache._cache_file.__class__ = AuthenticatedCacheFile
    base = type(cache)
    if base not in _GUARDED.values():
        cache.__class__ = _GUARDED.setdefault(base, guarded(base))
