"""The kernel cache runs nobody else's code and never fails a run: folders others can write
are not used, files that do not carry this user's tag are never unpickled, a damaged file is a
miss that is compiled again and rewritten, and a cache that cannot be written is a warning."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from .conftest import checkout_env

POSIX = pytest.mark.skipif(not hasattr(os, "getuid"), reason="folder modes and owners are POSIX")
ROOT_ONLY = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                               reason="only root can give a folder to another user")

TRAIN = textwrap.dedent("""
    import sys, warnings, numpy as np, fastnn, fastnn.kernels._jit as jit
    warnings.simplefilter("always")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    losses = []
    for act in ("tanh", None):  # two forward kernels of one factory: a swapped pair would mix them up
        model = fastnn.Sequential(fastnn.Dense(3, 5, activation=act), fastnn.Dense(5, 2), seed=1)
        losses.append(model.fit(X, y, epochs=2, optimizer=fastnn.SGD(lr=0.1))["loss"][-1])
    print("losses", *losses, jit.CACHE, flush=True)
""")


def train(cache, tmp_path, **env):
    out = subprocess.run([sys.executable, "-c", TRAIN], capture_output=True, text=True, timeout=600,
                         env=checkout_env(FASTNN_CACHE_DIR=str(cache), XDG_CONFIG_HOME=str(tmp_path / "config"),
                                          FASTNN_PARALLEL_COMPILE="0", **env))
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("losses"))
    return line.split()[1:3], line.split()[3] == "True", out.stderr


@pytest.fixture
def warm(tmp_path):
    """A cache filled by one process, the losses it computed, and its folder of kernel files."""
    cache = tmp_path / "cache"
    losses, cached, err = train(cache, tmp_path)
    assert cached and "compiling" in err
    again, _, err = train(cache, tmp_path)
    assert again == losses and "compiling" not in err  # a second process loads everything
    (folder,) = (cache / "numba").iterdir()
    return cache, losses, folder


def forward_files(folder):
    return sorted(folder.glob("dense.forward_kernel*.nbc"))


@POSIX
@pytest.mark.parametrize("damage", ["truncate index", "flip index", "truncate data", "flip data", "empty data",
                                    "swap data", "foreign pickle"])
def test_a_damaged_or_planted_cache_file_is_a_miss_compiled_again(warm, tmp_path, damage):
    cache, losses, folder = warm
    index = next(folder.glob("dense.forward_kernel*.nbi"))
    a, b = forward_files(folder)[:2]
    marker = tmp_path / "planted-code-ran"
    if damage == "truncate index":
        index.write_bytes(index.read_bytes()[:40])
    elif damage == "flip index":
        blob = bytearray(index.read_bytes())
        blob[-7] ^= 0x10
        index.write_bytes(bytes(blob))
    elif damage == "truncate data":
        a.write_bytes(a.read_bytes()[: a.stat().st_size // 2])
    elif damage == "flip data":
        blob = bytearray(a.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        a.write_bytes(bytes(blob))
    elif damage == "empty data":
        a.write_bytes(b"")
    elif damage == "swap data":  # tanh's code under identity's name and the other way round
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
    else:  # what Numba itself would unpickle: code that runs as it loads
        import pickle

        class Plant:
            def __reduce__(self):
                return (open, (str(marker), "w"))
        for victim in (index, a):
            victim.write_bytes(pickle.dumps(Plant()))
    got, cached, err = train(cache, tmp_path)
    assert got == losses and cached  # right answers, from code compiled again
    assert not marker.exists()
    assert "CacheWarning" in err and ("compiled again" in err or "rebuilt" in err)
    again, _, err = train(cache, tmp_path)  # the cache was rewritten: warm, silent, right
    assert again == losses and "compiling" not in err and "CacheWarning" not in err


@POSIX
@ROOT_ONLY
def test_a_cache_folder_of_another_user_is_not_used(tmp_path):
    other = tmp_path / "theirs"
    other.mkdir(mode=0o755)
    os.chown(other, 12345, 12345)  # another user's folder, which they could plant a pickle in
    got, cached, err = train(other, tmp_path)
    assert not cached and "belongs to another user" in err and str(other) in err
    assert not (other / "numba").exists()


@POSIX
def test_a_folder_others_can_write_anywhere_on_the_way_turns_the_cache_off(tmp_path, warm):
    cache, losses, folder = warm
    (cache / "numba").chmod(0o777)  # another user could rename the digest folder and make their own
    got, cached, err = train(cache, tmp_path)
    assert got == losses and not cached and "writable by other users" in err and str(cache / "numba") in err
    assert "every process compiles again" in err


@POSIX
def test_the_key_is_the_users_and_private(warm, tmp_path):
    key = tmp_path / "config" / "fastnn" / "cache.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
    assert len(key.read_bytes()) == 32
    cache, losses, folder = warm
    key.chmod(0o644)  # readable by others: a planted file could carry a good tag
    got, cached, err = train(cache, tmp_path)
    assert got == losses and not cached and "can be read or written by other users" in err


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path):
    # a full disk: every cache write fails with ENOSPC; training goes on and says so once
    code = ("import errno, fastnn.kernels._cache as c\n"
            "def full(self, *a, **k):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "c.AuthenticatedCacheFile._save_data = full\n" + TRAIN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=checkout_env(FASTNN_CACHE_DIR=str(tmp_path / "cache"),
                                          XDG_CONFIG_HOME=str(tmp_path / "config"), FASTNN_PARALLEL_COMPILE="0"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("could not write the kernel cache") == 1 and "the disk is full" in out.stderr


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_cache_folder_that_cannot_be_used_is_said_once(tmp_path, where):
    (tmp_path / "file").write_text("")
    named = tmp_path / "file" if where == "a file" else tmp_path / "file" / "cache"
    got, cached, err = train(named, tmp_path)
    assert not cached and err.count("not caching compiled kernels") == 1
    assert "cached for later runs" not in err and "the kernel cache is off" in err
