"""Writing a file so that a reader never sees it half-written (models, checkpoints, data)."""
from __future__ import annotations

import contextlib
import os
import secrets
import stat


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f:`` write ``f`` (binary); on leaving the block the file
    replaces ``path`` in one rename, after an fsync. If anything fails, ``path`` is as it was
    and the temporary file is gone.

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
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if previous is not None:
            os.chmod(tmp, previous)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
