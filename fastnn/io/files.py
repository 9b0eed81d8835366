"""Files: writing so that a reader never sees a file half-written, and reading an ``.npz``
archive so that nothing is read or allocated before it is checked (models, checkpoints, data)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import stat
import zipfile
import zlib


def _host():
    return socket.gethostname().replace(".", "_").replace(os.sep, "_") or "host"


def _temporary(directory, name):
    """A temporary name beside ``name`` saying whose it is: the host and the process writing it."""
    return os.path.join(directory, f".{name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_stale(path):
    """Remove the temporary files ``atomic_write`` left beside ``path`` in processes that are gone
    (killed mid-save). Only files of this host whose writing process no longer runs are removed,
    so a save in progress in another process is never touched."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    prefix, host = f".{name}.", _host()
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        parts = entry[len(prefix):-len(".tmp")].rsplit(".", 2)  # host, pid, token
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or int(parts[1]) == os.getpid():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # the writer is alive (or another user's): its file is not ours to remove
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, OSError):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except OSError:
            pass


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f:`` write ``f`` (binary); on leaving the block the file
    replaces ``path`` in one rename, after an fsync. If anything fails, ``path`` is as it was
    and the temporary file is gone; an OSError (a full disk) names ``path``. Temporary files
    that killed processes left beside ``path`` are removed first (``remove_stale``).

    Modes: a new file gets what a plain ``open(path, "wb")`` would give under the current
    umask (the temporary file is created with 0o666 and the umask applied by the system, not
    ``mkstemp``'s 0o600, which would hide it from everyone else on a shared machine); a
    replaced file keeps its mode.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    try:
        previous = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        previous = None
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: the folder {directory} does not exist; create it first")
    remove_stale(path)
    tmp = _temporary(directory, name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if previous is not None:
            os.chmod(tmp, previous)
        os.replace(tmp, path)
    except OSError as e:
        if str(path) in str(e):
            raise
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


DEFLATE_RATIO = 1032  # deflate expands a byte to at most this many


class Archive:
    """An ``.npz`` archive read header-first (the design of safetensors): every member is checked
    before any array is read or allocated.

    On opening: a zip archive whose members are all ``.npy`` files, stored or deflated (no other
    compression, no encryption), each name once. ``header(name)`` reads a member's ``.npy``
    header only; ``read(name, ...)`` checks the header against what the caller expects (shape,
    dtype kind, a size limit), checks that the member holds exactly the bytes its header declares,
    and only then reads them. Object arrays (pickles) are refused. Every problem is one
    ``error`` (ValueError by default) naming the file and what is wrong.
    """

    METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)

    def __init__(self, path, what="archive", error=ValueError):
        self.path, self.what, self.error = os.fspath(path), what, error
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise self.error(f"{self.path} is not a readable {self.what}: it is not a readable .npz archive ({e})"
                             ) from None
        self.members = {}
        try:
            for info in self.zip.infolist():
                name = info.filename
                if not name.endswith(".npy"):
                    raise self._bad(f"it holds a member {name[:80]!r} that is not an array (.npy)")
                if info.flag_bits & 0x1:
                    raise self._bad(f"its member {name[:80]!r} is encrypted")
                if info.compress_type not in self.METHODS:
                    raise self._bad(f"its member {name[:80]!r} uses compression method {info.compress_type}, "
                                    f"not stored or deflated")
                if name[:-4] in self.members:
                    raise self._bad(f"it holds the member {name[:80]!r} twice")
                self.members[name[:-4]] = info
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def _bad(self, why):
        return self.error(f"{self.path} is not a valid {self.what}: {why}")

    def header(self, name):
        """``(shape, dtype, fortran_order, header bytes)`` of member ``name``, reading nothing else."""
        import numpy as np
        from numpy.lib import format as npy

        try:
            with self.zip.open(self.members[name]) as f:
                version = npy.read_magic(f)
                read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f"an .npy format version {version} this reader does not take")
                shape, fortran, dtype = read(f)
                offset = f.tell()
        except KeyError:
            raise self._bad(f"it has no member {name!r}") from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError, RecursionError) as e:
            raise self._bad(f"the header of its member {name!r} is damaged ({e})") from None
        if dtype.hasobject:
            raise self._bad(f"its member {name!r} holds pickled Python objects, which fastnn never loads (they can "
                            f"run code)")
        if any(not isinstance(n, int) or n < 0 for n in shape):
            raise self._bad(f"its member {name!r} declares the shape {shape}")
        return tuple(shape), np.dtype(dtype), fortran, offset

    def read(self, name, shape=None, kinds=None, dtype=None, max_bytes=None):
        """Member ``name`` as an array, after checking its header: ``shape`` (a tuple, with None
        for any size), dtype ``kinds`` (such as "f" or "iu") or exactly ``dtype``, at most
        ``max_bytes`` of data, and a member size that matches the header."""
        import numpy as np

        got, got_dtype, fortran, offset = self.header(name)
        if shape is not None and (len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got))):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise self._bad(f"its member {name!r} has shape {got}, expected {want}")
        if dtype is not None and got_dtype != np.dtype(dtype):
            raise self._bad(f"its member {name!r} is {got_dtype}, expected {np.dtype(dtype)}")
        if kinds is not None and got_dtype.kind not in kinds:
            raise self._bad(f"its member {name!r} is {got_dtype}, not of the kind expected")
        nbytes = int(np.prod(got, dtype=object)) * got_dtype.itemsize
        if max_bytes is not None and nbytes > max_bytes:
            raise self._bad(f"its member {name!r} declares {nbytes:,} bytes, more than such a member holds "
                            f"({max_bytes:,})")
        info = self.members[name]
        declared = info.file_size
        if info.compress_type == zipfile.ZIP_DEFLATED and declared > DEFLATE_RATIO * info.compress_size + 1024:
            # (a zip bomb: the sizes in its headers are the archive's word, the bytes are not)
            raise self._bad(f"its member {name!r} declares {declared:,} bytes from {info.compress_size:,} "
                            f"compressed, more than deflate can expand to")
        if declared != offset + nbytes:
            raise self._bad(f"its member {name!r} declares {got} {got_dtype} ({nbytes:,} bytes) but holds "
                            f"{declared - offset:,} bytes of data")
        out = np.empty(nbytes, np.uint8)  # (sized by a header that matches the member's declared size)
        try:
            with self.zip.open(self.members[name]) as f:
                f.read(offset)
                done = 0
                while done < nbytes:
                    n = f.readinto(memoryview(out)[done:])
                    if not n:
                        raise self._bad(f"its member {name!r} is cut short")
                    done += n
        except (OSError, EOFError, zipfile.BadZipFile, ValueError, zlib.error) as e:
            if isinstance(e, self.error):
                raise
            raise self._bad(f"its member {name!r} is damaged ({e})") from None
        array = out.view(got_dtype)
        if fortran:
            return np.ascontiguousarray(array.reshape(got, order="F"))
        return array.reshape(got)


def parse_json(text, path, what):
    """``text`` as JSON, every failure (nesting too deep included) a ValueError naming ``path``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not a valid {what}: its description is not readable JSON "
                         f"({type(e).__name__}: {str(e)[:100]})") from None
