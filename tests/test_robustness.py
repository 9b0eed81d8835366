"""Divergence, safe files, checkpoints that survive SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numba
import numpy as np
import pytest

import fastnn
from fastnn.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def regression(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((256, 4)).astype(np.float32), rng.standard_normal((256, 1)).astype(np.float32)


def test_divergence_stops_fit_naming_epoch_and_step_and_keeps_finite_parameters():
    X, y = regression()
    model = fastnn.Sequential(fastnn.Dense(4, 16, activation="relu"), fastnn.Dense(16, 1), seed=0)
    opt = fastnn.SGD(lr=10.0, momentum=0.9)
    with pytest.raises(fastnn.DivergenceError, match=r"in epoch 2 at step 8 of 8") as info:
        model.fit(X, y, loss="mse", optimizer=opt, epochs=50, batch_size=32)
    assert (info.value.epoch, info.value.step) == (2, 8)
    assert all(np.isfinite(p).all() for p in model.parameters())
    assert opt.step_count == 8 + 7  # the refused step is not counted
    # the parameters are exactly those after the last good step: replay it by hand
    replay = fastnn.Sequential(fastnn.Dense(4, 16, activation="relu"), fastnn.Dense(16, 1), seed=0)
    opt2 = fastnn.SGD(lr=10.0, momentum=0.9)
    replay.fit(X, y, loss="mse", optimizer=opt2, epochs=1, batch_size=32)
    order = replay.rng.permutation(256)
    for b in range(7):
        idx = order[b * 32:(b + 1) * 32]
        replay.train_step(X[idx], y[idx], loss="mse", optimizer=opt2)
    for p, q in zip(model.parameters(), replay.parameters()):
        np.testing.assert_array_equal(p, q)


def test_a_diverging_train_step_raises_and_changes_nothing():
    X, y = regression()
    model = fastnn.Sequential(fastnn.Dense(4, 2), seed=0, dtype=np.float64)
    model.parameters()[0][...] = 1e200  # the loss overflows to inf
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(fastnn.DivergenceError, match="optimizer step 1"):
        model.train_step(X[:8], np.zeros((8, 2)), loss="mse", optimizer=fastnn.Adam())
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)


def tiny_classifier(dtype=np.float32):
    return fastnn.Sequential(fastnn.Dense(4, 8, activation="relu"), fastnn.Dense(8, 3), seed=0, dtype=dtype)


@pytest.mark.parametrize("optimizer", [lambda: fastnn.SGD(lr=1e39), lambda: fastnn.SGD(lr=1e39, momentum=0.9),
                                       lambda: fastnn.Adam(lr=1e39), lambda: fastnn.AdamW(lr=1e39)])
def test_a_learning_rate_beyond_float32_is_refused_with_the_parameters_untouched(optimizer):
    # 1e39 is a fine float64 but inf in float32, where the kernels compute: the update would write inf
    X, y = regression()
    model = tiny_classifier()
    before = [p.copy() for p in model.parameters()]
    opt = optimizer()
    with pytest.raises(fastnn.DivergenceError, match="learning rate 1e[+]39 is beyond float32's range"):
        model.train_step(X[:32], np.arange(32) % 3, optimizer=opt)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)
    assert opt.step_count == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_update_that_overflows_is_refused_and_fit_keeps_the_last_finite_step(dtype):
    # finite gradients (targets of 1e4), a finite learning rate from epoch 2 on, and an update
    # beyond the dtype's range: the step is refused whole, the parameters stay epoch 1's
    X, y = regression()
    y = y * 1e4
    huge = 3e38 if dtype == np.float32 else 1e307

    def raise_lr(epoch, history):
        model.optimizer.lr = huge

    model = fastnn.Sequential(fastnn.Dense(4, 8, activation="tanh"), fastnn.Dense(8, 1), seed=0, dtype=dtype)
    with pytest.raises(fastnn.DivergenceError, match=r"in epoch 2 at step 1 of 8") as info:
        model.fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=1e-4, momentum=0.5), epochs=3, batch_size=32,
                  callbacks=[raise_lr])
    assert all(np.isfinite(p).all() for p in model.parameters())
    assert "beyond" not in str(info.value)  # (the learning rate itself fits the dtype)
    one = fastnn.Sequential(fastnn.Dense(4, 8, activation="tanh"), fastnn.Dense(8, 1), seed=0, dtype=dtype)
    one.fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=1e-4, momentum=0.5), epochs=1, batch_size=32)
    for p, q in zip(model.parameters(), one.parameters()):
        np.testing.assert_array_equal(p, q)
    assert model.optimizer.step_count == one.optimizer.step_count == 8


def test_a_learning_rate_is_checked_whenever_it_changes():
    X, y = regression()
    model = tiny_classifier()
    for opt in (fastnn.SGD(lr=0.1), fastnn.Adam(), fastnn.AdamW()):
        model.train_step(X[:8], np.arange(8) % 3, optimizer=opt)
        for bad in (float("nan"), float("inf"), -1.0, 0.0):
            with pytest.raises(ValueError, match="lr must be a finite number > 0"):
                opt.lr = bad
        with pytest.raises(ValueError, match="momentum must be a finite number >= 0" if isinstance(opt, fastnn.SGD)
                           else r"betas\[1\] must lie in \[0, 1\)"):
            if isinstance(opt, fastnn.SGD):
                opt.momentum = float("nan")
            else:
                opt.betas = (0.9, 1.0)
        opt.lr /= 2  # a fine change goes through
        model.train_step(X[:8], np.arange(8) % 3, optimizer=opt)
        assert all(np.isfinite(p).all() for p in model.parameters())


def test_an_optimizer_step_is_all_or_nothing_for_parameters_and_state():
    # Adam's second moment overflows float32 ((1 - beta2) g^2 > 3.4e38) in the second array only
    params = [np.ones(5, np.float32), np.ones((2, 3), np.float32)]
    grads = [np.full(5, 0.5, np.float32), np.full((2, 3), 1e22, np.float32)]
    opt = fastnn.Adam(lr=0.1)
    opt.step([p.copy() for p in params], [g * 0 + 1 for g in grads])  # state to keep
    state = {k: [a.copy() for a in v] for k, v in opt.state.items()}
    before, grads_before = [p.copy() for p in params], [g.copy() for g in grads]
    from fastnn.kernels.optimizers import UpdateRefused
    with pytest.raises(UpdateRefused, match="nothing was changed"):
        opt.step(params, grads)
    for a, b in zip(params + grads, before + grads_before):
        np.testing.assert_array_equal(a, b)
    for k, v in opt.state.items():
        for a, b in zip(v, state[k]):
            np.testing.assert_array_equal(a, b)
    assert opt.step_count == 1


@pytest.mark.parametrize("path", ["train_step", "fit"])
def test_a_finite_loss_with_an_overflowing_weight_gradient_is_refused(path):
    # loss (3e19 - 0)^2 ~ 1e39 is finite in float64, the bias gradient 2 * 3e19 is finite in
    # float32, but dW = x * dz = 3e19 * 6e19 overflows: only a guard over every gradient sees it
    model = fastnn.Sequential(fastnn.Dense(1, 1), seed=0)
    X, y = np.full((4, 1), 3e19, np.float32), np.zeros((4, 1), np.float32)
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(fastnn.DivergenceError):
        if path == "train_step":
            model.train_step(X, y, loss="mse", optimizer=fastnn.SGD(lr=0.1))
        else:
            model.fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=0.1), batch_size=4)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)
    loss, grads = model.loss_and_grad(X, y, loss="mse")
    assert np.isfinite(loss) and np.isfinite(grads[1]).all() and not np.isfinite(grads[0]).all()


def test_a_failed_save_never_destroys_the_existing_file(tmp_path, monkeypatch):
    model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    path = tmp_path / "model.npz"
    model.save(path)
    good = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        fastnn.Sequential(fastnn.Dense(3, 2), seed=1).save(path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["model.npz"]


TRAIN = textwrap.dedent("""
    import sys, numpy as np, fastnn
    fastnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    X, y = rng.random((12000, 784), dtype=np.float32), rng.integers(0, 10, 12000)
    model = fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 10), seed=3)
    opt = fastnn.Adam(lr=1e-3)
    model.fit(X, y, optimizer=opt, epochs=int(sys.argv[3]), batch_size=32, lr_schedule=fastnn.Cosine(warmup_steps=20),
              checkpoint_dir=sys.argv[1], resume=True)
    np.save(sys.argv[2], np.concatenate([p.ravel() for p in model.parameters()]))
""")


def train(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", TRAIN, *map(str, args)], cwd=ROOT, **kwargs)


def test_a_run_killed_mid_epoch_resumes_to_the_same_parameters(tmp_path):
    epochs = 4
    assert train(tmp_path / "plain", tmp_path / "plain.npy", epochs).wait(timeout=600) == 0
    victim = train(tmp_path / "ck", tmp_path / "resumed.npy", epochs)
    checkpoint = tmp_path / "ck" / "checkpoint.npz"
    deadline = time.time() + 300
    while not checkpoint.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert checkpoint.exists(), "the first epoch never finished"
    time.sleep(0.15)  # well inside the second epoch (an epoch takes about a second)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    with np.load(checkpoint) as f:
        assert json.loads(str(f["meta"]))["epoch"] < epochs  # it really was interrupted
    assert train(tmp_path / "ck", tmp_path / "resumed.npy", epochs).wait(timeout=600) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "plain.npy"))


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    X, y = regression()
    model = fastnn.Sequential(fastnn.Dense(4, 8, activation="tanh"), fastnn.Dense(8, 1), seed=0)
    model.fit(X, y, loss="mse", optimizer=fastnn.Adam(), epochs=2, batch_size=32, checkpoint_dir=tmp_path)
    other = fastnn.Sequential(fastnn.Dense(4, 9, activation="tanh"), fastnn.Dense(9, 1), seed=0)
    with pytest.raises(CheckpointError, match="belongs to another model"):
        other.fit(X, y, loss="mse", optimizer=fastnn.Adam(), epochs=2, batch_size=32, checkpoint_dir=tmp_path,
                  resume=True)
    same = fastnn.Sequential(fastnn.Dense(4, 8, activation="tanh"), fastnn.Dense(8, 1), seed=0)
    with pytest.raises(CheckpointError, match="belongs to another training run"):
        same.fit(X, y, loss="mse", optimizer=fastnn.Adam(), epochs=2, batch_size=16, checkpoint_dir=tmp_path,
                 resume=True)
    with pytest.raises(CheckpointError, match="was written with Adam, not SGD"):
        same.fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=0.1), epochs=2, batch_size=32, checkpoint_dir=tmp_path,
                 resume=True)
    (tmp_path / "checkpoint.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable fastnn checkpoint"):
        same.fit(X, y, loss="mse", optimizer=fastnn.Adam(), epochs=2, batch_size=32, checkpoint_dir=tmp_path,
                 resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        same.fit(X, y, loss="mse", optimizer=fastnn.Adam(), resume=True)


def test_a_finished_run_resumes_to_nothing_more(tmp_path):
    X, y = regression()
    model = fastnn.Sequential(fastnn.Dense(4, 1), seed=0)
    history = model.fit(X, y, loss="mse", optimizer=fastnn.Adam(), epochs=2, checkpoint_dir=tmp_path)
    before = [p.copy() for p in model.parameters()]
    again = fastnn.Sequential(fastnn.Dense(4, 1), seed=0)
    opt = fastnn.Adam()
    assert again.fit(X, y, loss="mse", optimizer=opt, epochs=2, checkpoint_dir=tmp_path, resume=True) == history
    for p, b in zip(again.parameters(), before):
        np.testing.assert_array_equal(p, b)
    assert opt.step_count == 2 * 8


@pytest.mark.parametrize("threads", [1, 2])
def test_the_finite_check_finds_a_bad_value_in_any_part_of_a_large_array(threads):
    from fastnn.kernels._checks import PARALLEL_CHECK_BYTES, all_finite

    before = fastnn.get_num_threads()["numba"]
    fastnn.set_num_threads(min(threads, numba_ceiling()))
    try:
        a = np.ones((PARALLEL_CHECK_BYTES // 4 // 256 + 7, 256), np.float32)  # above the threaded size
        assert all_finite(a)
        for at in (0, a.size // 2 - 1, a.size // 2, a.size - 1):
            for bad in (np.nan, np.inf, -np.inf):
                a.flat[at] = bad
                assert not all_finite(a), (at, bad)
                a.flat[at] = 1.0
        a[...] = 3e38  # finite values whose sum overflows: still finite, and no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert all_finite(a)
    finally:
        fastnn.set_num_threads(before)


def numba_ceiling():
    import numba
    return numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize("entry", ["train_step", "fit", "loss_and_grad"])
def test_read_only_parameters_are_refused_before_any_kernel_writes(entry):
    X, y = regression()
    model = fastnn.Sequential(fastnn.Dense(4, 3, activation="tanh"), fastnn.Dense(3, 1), seed=0)
    model._flat_params.setflags(write=False)
    before = model._flat_params.copy()
    with pytest.raises(ValueError, match="read-only"):
        if entry == "train_step":
            model.train_step(X[:8], y[:8], loss="mse", optimizer=fastnn.SGD(lr=0.1))
        elif entry == "fit":
            model.fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=0.1))
        else:
            model.loss_and_grad(X, y, loss="mse")  # writes no parameter: fine
            model._flat_grads.setflags(write=False)
            model.loss_and_grad(X, y, loss="mse")
    np.testing.assert_array_equal(model._flat_params, before)


@pytest.mark.skipif(not hasattr(os, "umask") or os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("what", ["model", "checkpoint"])
def test_saved_files_get_the_mode_a_plain_write_would(tmp_path, what):
    from fastnn._files import atomic_write

    def write(path):
        model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
        if what == "model":
            model.save(path)
        else:
            from fastnn import checkpoint
            checkpoint.save(path.parent, model, fastnn.SGD(lr=0.1), np.random.default_rng(0), 1, {"loss": [1.0]}, {})

    def mode(path):
        return os.stat(path).st_mode & 0o777

    name = "model.npz" if what == "model" else "checkpoint.npz"
    old = os.umask(0o022)
    try:
        for umask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
            folder = tmp_path / f"u{umask:o}"
            folder.mkdir()
            os.umask(umask)
            write(folder / name)
            with open(folder / "plain", "wb"):
                pass
            assert mode(folder / name) == mode(folder / "plain") == expected
        os.umask(0o022)
        target = tmp_path / "u22" / name
        target.chmod(0o640)  # a replaced file keeps the mode its owner gave it
        write(target)
        assert mode(target) == 0o640
        with pytest.raises(RuntimeError):  # and a failed write leaves no temporary file behind
            with atomic_write(target) as f:
                f.write(b"partial")
                raise RuntimeError("interrupted")
        assert sorted(os.listdir(target.parent)) == sorted([name, "plain"])
    finally:
        os.umask(old)


def test_the_finite_check_raises_nothing_of_its_own_under_strict_numpy_errors():
    from fastnn.kernels._checks import PARALLEL_CHECK_BYTES, all_finite

    for rows in (4, PARALLEL_CHECK_BYTES // 4 // 64 + 3):  # one pass, and in parts on threads
        a = np.full((rows, 64), 3e38, np.float32)
        a[rows // 2:] = -3e38  # finite, but the parts' sums are +inf and -inf
        with np.errstate(all="raise"):
            assert all_finite(a)
            a[0, 0], a[-1, -1] = np.inf, -np.inf
            assert not all_finite(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gradient_guard_sees_every_non_finite_value_and_nothing_else(dtype):
    # the guard the compiled step runs before any optimizer write; the same code in every lane
    # (an earlier float version was folded away by LLVM 14's fast-math and passed an inf)
    from fastnn.kernels import _compose, _jit, train
    sig = numba.float64(_jit.array_type(dtype, 1))
    info = np.finfo(dtype)
    finite = np.array([0.0, -0.0, info.max, -info.max, info.tiny, info.smallest_subnormal, 1.0], dtype)
    assert _compose.run(train.gradients_finite, sig, finite) == 1.0
    assert _compose.run(train.gradients_finite, sig, np.zeros(0, dtype)) == 1.0
    for bad in (np.inf, -np.inf, np.nan, -np.nan):
        for at in (0, 5, 1000):  # first element, inside a vector, in the tail
            g = np.ones(1001, dtype)
            g[at] = bad
            assert _compose.run(train.gradients_finite, sig, g) == 0.0, (bad, at)
