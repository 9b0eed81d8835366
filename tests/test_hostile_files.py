"""Damaged and hostile model files and checkpoints: each is one clear error naming the file,
costs no more memory than the file itself, and the command line prints one ``error:`` line.
Every file here is made by the test."""
import errno
import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest

import fastnn
from fastnn.checkpoint import CheckpointError

from .conftest import checkout_env

FASTNN = pathlib.Path(sys.executable).parent / "fastnn"


def good_model(tmp_path):
    model = fastnn.Sequential(fastnn.Dense(4, 3, activation="relu"), fastnn.Dense(3, 2), seed=0)
    model.fit(np.ones((8, 4), np.float32), np.arange(8) % 2, epochs=1)
    model.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as f:
        return {k: f[k] for k in f.files}


def architecture(arrays):
    return json.loads(str(arrays["architecture"]))


def write(path, arrays, arch=None):
    if arch is not None:
        arrays = {**arrays, "architecture": np.array(json.dumps(arch))}
    np.savez(path, **arrays)
    return path


def patched(path, where, value, size=2):
    """``path`` with a field of every zip header changed: ``where`` maps a header signature to
    the field's offset in it (the same member's local and central headers)."""
    blob = bytearray(path.read_bytes())
    for signature, offset in where.items():
        start = 0
        while (start := blob.find(signature, start)) >= 0:
            blob[start + offset:start + offset + size] = value.to_bytes(size, "little")
            start += 4
    path.write_bytes(bytes(blob))
    return path


def hostile_files(tmp_path):
    """name -> (path, the words its error must say)."""
    arrays = good_model(tmp_path)
    arch = architecture(arrays)
    files = {}

    def add(name, words, arrays_=arrays, arch_=None):
        files[name] = (write(tmp_path / f"{name}.npz", arrays_, arch_), words)

    big = {**arch, "layers": [{"in_features": 8000, "out_features": 8000, "activation": "relu"},
                              {"in_features": 8000, "out_features": 2, "activation": None}]}
    add("declares-8000x8000", "param_0 is float32(4, 3), expected float32(8000, 8000)", arch_=big)
    add("version-99", "format version 99", arch_={**arch, "version": 99})
    add("no-layers", "1 to 10,000 layers", arch_={**arch, "layers": []})
    add("many-layers", "1 to 10,000 layers",
        arch_={**arch, "layers": [{"in_features": 1, "out_features": 1, "activation": None}] * 12_000})
    add("layer-not-a-dict", "layer 0 is not a description", arch_={**arch, "layers": [7, 8]})
    add("layer-fields", "unknown fields", arch_={**arch, "layers": [{"in_features": 4, "out": 3}]})
    add("bad-activation", "layer 0", arch_={**arch, "layers": [{**arch["layers"][0], "activation": "swoosh"},
                                                               arch["layers"][1]]})
    add("negative-size", "layer 0", arch_={**arch, "layers": [{**arch["layers"][0], "in_features": -4},
                                                              arch["layers"][1]]})
    add("null-stride", "fingerprint stride", arch_={**arch, "fingerprint_stride": None})
    add("bad-seed", "seed", arch_={**arch, "seed": "zero"})
    add("bad-dtype", "dtype", arch_={**arch, "dtype": "float16"})
    add("not-fastnn", "not a fastnn model", arch_=[1, 2, 3])
    files["nested-json"] = (write(tmp_path / "nested.npz", {**arrays, "architecture": np.array("[" * 100_000)}),
                            "not readable JSON")
    files["not-json"] = (write(tmp_path / "notjson.npz", {**arrays, "architecture": np.array("{oops")}),
                         "not readable JSON")
    add("extra-member", "refused unread", arrays_={**arrays, "payload": np.zeros(10)})
    add("missing-param", "lacks ['param_3']", arrays_={k: v for k, v in arrays.items() if k != "param_3"})
    add("no-architecture", "not a fastnn model", arrays_={k: v for k, v in arrays.items() if k != "architecture"})
    add("wrong-dtype", "param_1 is float64(3,)", arrays_={**arrays, "param_1": arrays["param_1"].astype(np.float64)})
    add("nan-weight", "holds NaN or inf", arrays_={**arrays, "param_0": np.full((4, 3), np.nan, np.float32)})
    add("huge-fingerprint", "fingerprint", arrays_={**arrays, "fingerprint": np.zeros(100_000, np.uint64)})
    add("object-member", "pickled Python objects",
        arrays_={k: v for k, v in arrays.items() if k != "fingerprint"})
    np.save(tmp_path / "fingerprint.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(files["object-member"][0], "a") as z:
        z.write(tmp_path / "fingerprint.npy", "fingerprint.npy")
    add("zero-scale", "input_scale holds", arrays_={**arrays, "prep_input_mean": np.zeros(4),
                                                    "prep_input_scale": np.array([1.0, 0.0, 1.0, 1.0]),
                                                    "prep_classes": np.array(["a", "b"])})
    add("few-classes", "needs 2 class labels", arrays_={**arrays, "prep_input_mean": np.zeros(4),
                                                        "prep_input_scale": np.ones(4), "prep_classes": np.array([7])})
    add("names-wrong-length", "shape", arrays_={**arrays, "feature_names": np.array(["a", "b"])})
    # a header that declares more than the member holds: refused before anything is allocated
    short = tmp_path / "short.npz"
    write(short, arrays)
    header_only = tmp_path / "param_0.npy"
    with open(header_only, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (4, 3)})
        f.write(b"\0" * 8)
    with zipfile.ZipFile(tmp_path / "short2.npz", "w") as z, zipfile.ZipFile(short) as src:
        for info in src.infolist():
            z.writestr(info.filename, header_only.read_bytes() if info.filename == "param_0.npy"
                       else src.read(info.filename))
    files["declares-more-than-held"] = (tmp_path / "short2.npz", "holds 8 bytes")
    files["compression-99"] = (patched(write(tmp_path / "m99.npz", arrays), {b"PK\x03\x04": 8, b"PK\x01\x02": 10}, 99),
                               "compression method 99")
    files["encrypted"] = (patched(write(tmp_path / "enc.npz", arrays), {b"PK\x03\x04": 6, b"PK\x01\x02": 8}, 1),
                          "encrypted")
    cut = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(cut[: len(cut) // 2])
    files["cut-short"] = (tmp_path / "cut.npz", "not")
    (tmp_path / "text.npz").write_text("hello")
    files["text"] = (tmp_path / "text.npz", "not a fastnn model file")
    return files


def test_every_hostile_model_file_is_one_clear_error(tmp_path):
    wrong = {}
    for name, (path, words) in hostile_files(tmp_path).items():
        try:
            fastnn.load(path)
            wrong[name] = "loaded"
        except ValueError as e:
            if not (str(path) in str(e) and words in str(e)):
                wrong[name] = str(e)
    assert wrong == {}


def test_the_command_line_prints_one_error_line_for_every_hostile_file(tmp_path, capsys, monkeypatch):
    from fastnn import cli

    files = hostile_files(tmp_path)
    np.savez(tmp_path / "rows.npz", X=np.ones((3, 4)), y=np.zeros(3, int))
    monkeypatch.chdir(tmp_path)
    for k, (name, (path, words)) in enumerate(files.items()):
        for argv in (("predict", str(path), "rows.npz"), ("evaluate", str(path), "--data", "rows.npz")):
            if k < 2:  # the installed command itself, in its own process
                out = subprocess.run([str(FASTNN), *argv], capture_output=True, text=True, cwd=tmp_path,
                                     timeout=300, env=checkout_env())
                code, err = out.returncode, out.stderr
            else:  # the rest through the same entry point in this process (a second each saved)
                code, err = cli.main(list(argv)), capsys.readouterr().err
            lines = err.strip().splitlines()
            assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), (name, err)
            assert "Traceback" not in err and "fastnn bug" not in err, (name, err)


MEMORY = textwrap.dedent("""
    import resource, sys, time, fastnn
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        fastnn.load(sys.argv[1])
    except ValueError as e:
        print("refused", time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
""")


def refusal_cost(path):
    out = subprocess.run([sys.executable, "-c", MEMORY, str(path)], capture_output=True, text=True, timeout=300,
                         env=checkout_env())
    words = out.stdout.split()
    assert words and words[0] == "refused", out.stderr[-2000:]
    return float(words[1]), int(words[2]) / 1024  # seconds, MB


def test_hostile_files_are_refused_before_anything_is_allocated(tmp_path):
    arrays = good_model(tmp_path)
    arch = architecture(arrays)
    costs = {}
    # a small file that declares an 8000 x 8000 layer
    big = {**arch, "layers": [{"in_features": 8000, "out_features": 8000, "activation": "relu"},
                              {"in_features": 8000, "out_features": 2, "activation": None}]}
    costs["declared layer"] = refusal_cost(write(tmp_path / "big.npz", arrays, big))
    # a zip bomb: a 256 MB member of zeros in a file of a few hundred KB
    bomb = tmp_path / "bomb.npz"
    write(bomb, arrays)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("payload.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**25,)})
            zeros = bytes(1 << 20)
            for _ in range(256):
                f.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    costs["zip bomb"] = refusal_cost(bomb)
    # a bomb in a member a model has: a fingerprint of 2^25 hashes
    bomb2 = tmp_path / "bomb2.npz"
    write(bomb2, {k: v for k, v in arrays.items() if k != "fingerprint"})
    with zipfile.ZipFile(bomb2, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("fingerprint.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<u8", "fortran_order": False, "shape": (2**25,)})
            for _ in range(256):
                f.write(bytes(1 << 20))
    costs["known-member bomb"] = refusal_cost(bomb2)
    # a description of 200,000 layers
    many = {**arch, "layers": [{"in_features": 1, "out_features": 1, "activation": None}] * 200_000}
    costs["200k layers"] = refusal_cost(write(tmp_path / "many.npz", arrays, many))
    for what, (seconds, megabytes) in costs.items():
        assert megabytes < 40 and seconds < 2.0, (what, seconds, megabytes)


def test_hostile_checkpoints_are_checkpoint_errors(tmp_path):
    X, y = np.ones((16, 4), np.float32), np.arange(16) % 2

    def net():
        return fastnn.Sequential(fastnn.Dense(4, 3, activation="relu"), fastnn.Dense(3, 2), seed=0)
    net().fit(X, y, epochs=2, checkpoint_dir=tmp_path / "good")
    with np.load(tmp_path / "good" / "checkpoint.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    cases = {"epoch -3": {**meta, "epoch": -3}, "epoch text": {**meta, "epoch": "two"},
             "settings not a dict": {**meta, "settings": 5}, "history not a record": {**meta, "history": [1]},
             "bad rng": {**meta, "rng": {"bit_generator": "PCG64", "state": "x"}},
             "nested": None, "negative step count": {**meta, "optimizer": {**meta["optimizer"], "scalars": {
                 **meta["optimizer"]["scalars"], "step_count": -3}}}}
    for name, changed in cases.items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        text = "[" * 100_000 if changed is None else json.dumps(changed)
        np.savez(folder / "checkpoint.npz", **{**arrays, "meta": np.array(text)})
        model = net()
        before = [p.copy() for p in model.parameters()]
        with pytest.raises(CheckpointError, match=str(folder / "checkpoint.npz").replace("[", "\\[")):
            model.fit(X, y, epochs=2, checkpoint_dir=folder, resume=True)
        for p, b in zip(model.parameters(), before):
            np.testing.assert_array_equal(p, b, err_msg=name)
    folder = tmp_path / "extra"
    folder.mkdir()
    np.savez(folder / "checkpoint.npz", **arrays, other=np.zeros(3))
    with pytest.raises(CheckpointError, match="refused unread"):
        net().fit(X, y, epochs=2, checkpoint_dir=folder, resume=True)


def test_temporary_files_of_killed_saves_are_removed_and_live_ones_kept(tmp_path):
    from fastnn._files import _host
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process that has ended
    alive = str(os.getppid())
    stale = tmp_path / f".m.npz.{_host()}.{dead}.0badc0de.tmp"
    live = tmp_path / f".m.npz.{_host()}.{alive}.0badc0de.tmp"
    other_host = tmp_path / f".m.npz.elsewhere.{dead}.0badc0de.tmp"
    unrelated = tmp_path / ".notes.txt.tmp"
    for f in (stale, live, other_host, unrelated):
        f.write_bytes(b"half a file")
    model = fastnn.Sequential(fastnn.Dense(2, 2), seed=0)
    model.save(tmp_path / "m.npz")
    assert not stale.exists() and live.exists() and other_host.exists() and unrelated.exists()
    ck = tmp_path / "ck"
    ck.mkdir()
    stale_ck = ck / f".checkpoint.npz.{_host()}.{dead}.0badc0de.tmp"
    stale_ck.write_bytes(b"half")
    model.fit(np.ones((4, 2), np.float32), [0, 1, 0, 1], checkpoint_dir=ck, resume=True)
    assert not stale_ck.exists() and sorted(p.name for p in ck.iterdir()) == ["checkpoint.npz"]


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from fastnn import _files
    model = fastnn.Sequential(fastnn.Dense(2, 2), seed=0)
    model.save(tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(_files.os, "fsync", full)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'm.npz'}: No space left on device"):
        model.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.npz"]
