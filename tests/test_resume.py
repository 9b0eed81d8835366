"""Resuming is bit-identical in its corners: early stopping's state, a validation split drawn
again after Ctrl-C on the same model object, a run that had stopped, and Ctrl-C at any moment
(the model, its optimizer, its history and its checkpoint agree afterwards)."""
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastnn

from .conftest import checkout_env
from fastnn.checkpoint import CheckpointError


class Crash(Exception):
    """Stands for a process killed between two epochs (after the checkpoint of the last one)."""


def crash_at(epoch):
    def callback(e, history):
        if e == epoch:
            raise Crash
    return callback


def data(rng, n=200):
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(n) > 0).astype(np.int64) + (X[:, 1] > 1)
    return X, y


def net(seed=2):
    return fastnn.Sequential(fastnn.Dense(6, 16, activation="tanh"), fastnn.Dense(16, 3), seed=seed)


def fit_args(stopper=None):
    return dict(optimizer=fastnn.Adam(lr=0.05), epochs=12, batch_size=16, validation_split=0.25,
                early_stopping=stopper if stopper is not None else fastnn.EarlyStopping(patience=2))


def test_early_stopping_resumes_where_it_stood_from_every_kill_point(rng, tmp_path):
    X, y = data(rng)
    full, stopper = net(), fastnn.EarlyStopping(patience=2)
    full.fit(X, y, **fit_args(stopper))
    assert stopper.stopped_epoch is not None and stopper.best_epoch < stopper.stopped_epoch  # it stopped, and restored
    epochs = len(full.history["loss"])
    for kill in range(1, epochs + 1):
        folder = tmp_path / f"kill-{kill}"
        try:
            net().fit(X, y, checkpoint_dir=folder, callbacks=[crash_at(kill)], **fit_args())
        except Crash:
            pass
        resumed, again = net(), fastnn.EarlyStopping(patience=2)
        resumed.fit(X, y, checkpoint_dir=folder, resume=True, **fit_args(again))
        assert resumed.history == full.history, f"killed after epoch {kill}"
        assert (again.best_epoch, again.stopped_epoch) == (stopper.best_epoch, stopper.stopped_epoch)
        for p, q in zip(resumed.parameters(), full.parameters()):
            np.testing.assert_array_equal(p, q, err_msg=f"killed after epoch {kill}")


def test_a_stopped_run_resumed_trains_nothing(rng, tmp_path):
    X, y = data(rng)
    first = net()
    first.fit(X, y, checkpoint_dir=tmp_path, **fit_args())
    steps = first.optimizer.step_count
    again = net()
    again.fit(X, y, checkpoint_dir=tmp_path, resume=True, **fit_args())
    assert again.history == first.history and again.optimizer.step_count == steps
    for p, q in zip(again.parameters(), first.parameters()):
        np.testing.assert_array_equal(p, q)


def test_interrupted_then_resumed_on_the_same_model_holds_out_the_same_rows(rng, tmp_path):
    X, y = data(rng)
    full = net()
    full.fit(X, y, **fit_args(fastnn.EarlyStopping(patience=100)))
    model = net()
    with pytest.raises(KeyboardInterrupt):  # as Ctrl-C after the third epoch's checkpoint
        model.fit(X, y, checkpoint_dir=tmp_path, callbacks=[lambda e, h: e == 4 and (_ for _ in ()).throw(
            KeyboardInterrupt)], **fit_args(fastnn.EarlyStopping(patience=100)))
    model.fit(X, y, checkpoint_dir=tmp_path, resume=True, **fit_args(fastnn.EarlyStopping(patience=100)))
    assert model.history == full.history
    for p, q in zip(model.parameters(), full.parameters()):
        np.testing.assert_array_equal(p, q)


def test_a_checkpoint_of_another_stopping_rule_or_none_is_refused(rng, tmp_path):
    X, y = data(rng)
    try:
        net().fit(X, y, checkpoint_dir=tmp_path, callbacks=[crash_at(2)], **fit_args())
    except Crash:
        pass
    model = net()
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(CheckpointError, match="another training run"):
        model.fit(X, y, checkpoint_dir=tmp_path, resume=True, **fit_args(fastnn.EarlyStopping(patience=3)))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)
    assert model.optimizer is None


CTRL_C = textwrap.dedent("""
    import signal, sys, numpy as np, fastnn
    from fastnn import checkpoint
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((4096, 32)).astype(np.float32), rng.integers(0, 4, 4096)
    def net():
        return fastnn.Sequential(fastnn.Dense(32, 64, activation="relu"), fastnn.Dense(64, 4), seed=1)
    model = net()
    model.fit(X[:64], y[:64], optimizer=fastnn.Adam(lr=1e-3), batch_size=16, shuffle=False)  # compiled first
    model = net()
    opt = fastnn.Adam(lr=1e-3)
    try:
        model.fit(X, y, optimizer=opt, epochs=10**6, batch_size=16, shuffle=False, checkpoint_dir=sys.argv[1],
                  callbacks=[lambda epoch, history: print("epoch", epoch, flush=True)])
    except KeyboardInterrupt:
        pass
    steps, epochs = opt.step_count, len(model.history["loss"])
    saved = net()
    done = checkpoint.load(sys.argv[1], saved, fastnn.Adam(lr=1e-3), np.random.default_rng(), 
                           {"epochs": 10**6, "batch_size": 16, "loss": "softmax_cross_entropy", "samples": 4096,
                            "shuffle": False, "schedule": "Constant()", "validation": False})[0]
    replay, again = net(), fastnn.Adam(lr=1e-3)  # the same steps, one train_step each
    for t in range(steps):
        b = t % 256
        replay.train_step(X[b * 16:(b + 1) * 16], y[b * 16:(b + 1) * 16], optimizer=again)
    same = all(np.array_equal(p, q) for p, q in zip(model.parameters(), replay.parameters()))
    print("result", steps, epochs, done, same, flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.031, 0.057, 0.089])
def test_after_ctrl_c_the_model_optimizer_history_and_checkpoint_agree(tmp_path, delay):
    script = tmp_path / "train.py"
    script.write_text(CTRL_C)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ck")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=checkout_env())
    try:
        for line in proc.stdout:
            if line.startswith("epoch") and int(line.split()[1]) >= 2:
                break
        time.sleep(delay)  # anywhere in the third epoch: mid-chunk, between chunks, at its end
        proc.send_signal(signal.SIGINT)
        result = [line for line in proc.stdout if line.startswith("result")]
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert result, "the training process gave no result"
    _, steps, epochs, saved, same = result[0].split()
    steps, epochs, saved = int(steps), int(epochs), int(saved)
    assert same == "True"  # the optimizer counted exactly the steps applied to the parameters
    assert saved == epochs >= 2  # every finished epoch is in the history and the checkpoint
    assert epochs * 256 <= steps < (epochs + 1) * 256


FIRST_EPOCH = textwrap.dedent("""
    import signal, sys, numpy as np, fastnn
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60000, 64)).astype(np.float32), rng.integers(0, 3, 60000)
    def net():  # an epoch of about a second
        return fastnn.Sequential(fastnn.Dense(64, 512, activation="tanh"), fastnn.Dense(512, 256, activation="tanh"),
                                 fastnn.Dense(256, 3), seed=4)
    args = dict(epochs=2, batch_size=8, validation_split=0.2, checkpoint_dir=sys.argv[1])
    net().fit(X[:64], y[:64], batch_size=8)  # compiled before the clock starts
    model = net()
    print("start", flush=True)
    try:
        model.fit(X, y, **args)
        print("finished before the signal", flush=True)
    except KeyboardInterrupt:
        print("interrupted in epoch", len(model.history["loss"]) + 1, flush=True)
    model.fit(X, y, resume=True, **args)  # the same object: its generator and parameters have moved
    full = net()
    full.fit(X, y, **{**args, "checkpoint_dir": None})
    same = all(np.array_equal(p, q) for p, q in zip(model.parameters(), full.parameters()))
    print("result", same, model.history == full.history, flush=True)
""")


def test_ctrl_c_in_the_first_epoch_then_resume_on_the_same_object_is_exact(tmp_path):
    script = tmp_path / "first.py"
    script.write_text(FIRST_EPOCH)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ck")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=checkout_env())
    try:
        for line in proc.stdout:
            if line.startswith("start"):
                break
        time.sleep(0.4)
        proc.send_signal(signal.SIGINT)
        lines = [line.strip() for line in proc.stdout]
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert "interrupted in epoch 1" in lines, lines
    assert "result True True" in lines, lines


def test_an_epochs_history_does_not_depend_on_where_the_compiled_loop_returned(monkeypatch):
    from fastnn import training
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 5)).astype(np.float32)
    y = rng.integers(0, 3, 3000)
    w = rng.random(3000)

    def run():
        model = fastnn.Sequential(fastnn.Dense(5, 16, activation="relu"), fastnn.Dense(16, 3), seed=0)
        return model.fit(X, y, epochs=2, batch_size=16, sample_weight=w)
    monkeypatch.setattr(training, "CHUNK_SECONDS", 1e-9)  # a return to Python after every batch
    one_by_one = run()
    monkeypatch.setattr(training, "CHUNK_SECONDS", 10.0)  # the whole epoch at once
    whole = run()
    assert one_by_one == whole


COMPILING = textwrap.dedent("""
    import signal, sys, time, numpy as np, fastnn
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model = fastnn.Sequential(fastnn.Dense(8, 16, activation="gelu"), fastnn.Dense(16, 4, activation="tanh"),
                              fastnn.Dense(4, 2), seed=0, dtype=np.float64)
    print("start", flush=True)
    try:
        model.fit(np.ones((64, 8)), np.arange(64) % 2, optimizer=fastnn.AdamW(), epochs=3)
        print("compiled and trained before the signal", flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.perf_counter(), flush=True)
""")


def test_ctrl_c_while_fit_compiles_stops_at_once(tmp_path):
    script = tmp_path / "compile.py"
    script.write_text(COMPILING)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=checkout_env(FASTNN_CACHE="0", FASTNN_PARALLEL_COMPILE="0"))
    try:
        for line in proc.stdout:
            if line.startswith("start"):
                break
        time.sleep(0.3)  # compiling takes seconds with the cache off
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        lines = [line.split() for line in proc.stdout]
        proc.wait(timeout=120)
    finally:
        proc.kill()
    words = next(w for w in lines if w)
    assert words[0] == "interrupted" and float(words[1]) - sent < 0.5, lines
