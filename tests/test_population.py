"""Populations: each member trains exactly as its network alone, fails and stops alone, and a
population's results depend neither on the thread count nor on being killed and resumed."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastnn
from fastnn.testing import ACTIVATIONS, LOSS_KERNELS, assert_close, targets
from fastnn.kernels.optimizers import RULES
from fastnn.nn.optim import CLASSES

from .conftest import checkout_env


def mixed(dtype=np.float32, seed=0):
    """Every layer kind: Dense, LayerNorm, a residual block, Dropout."""
    return fastnn.Sequential(fastnn.Dense(5, 12, activation="tanh"), fastnn.LayerNorm(12),
                             fastnn.Residual(fastnn.Dense(12, 12, activation="relu")), fastnn.Dropout(p_drop=0.2),
                             fastnn.Dense(12, 3), seed=seed, dtype=dtype)


def small(seed=0, dtype=np.float32, act="tanh", outputs=3):
    return fastnn.Sequential(fastnn.Dense(5, 8, activation=act), fastnn.Dense(8, outputs), seed=seed, dtype=dtype)


def data(rng, n=96, dtype=np.float32, loss="softmax_cross_entropy", outputs=3):
    X = rng.standard_normal((n, 5)).astype(dtype)
    return X, targets(rng, loss, n, outputs, dtype)


def assert_same_params(a, b, msg=""):
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close(p, q, name=msg)


def test_each_member_trains_as_its_network_alone(rng, dtype):
    # own seed, learning rate, weight decay, L2, rows (a fold, a bootstrap sample with repeats,
    # every row) and row weights: each member ends as Sequential.fit of the same network would
    X, y = data(rng, dtype=dtype)
    seeds, lrs, decays, l2s = [3, 11, 4], [0.05, 0.02, 0.1], [0.0, 0.01, 0.1], [0.0, 0.001, 0.01]
    rows = [np.arange(0, 96, 2), rng.integers(0, 96, 70), np.arange(96)]
    w = rng.random((3, 96)).astype(dtype)
    pop = fastnn.Population(mixed(dtype), seeds=seeds, lr=lrs, weight_decay=decays, l2=l2s)
    history = pop.fit(X, y, optimizer=fastnn.SGD(lr=1.0, momentum=0.9), epochs=3, batch_size=8, rows=rows,
                      sample_weight=w, threads=2)
    for m in range(3):
        alone = mixed(dtype, seed=seeds[m])
        h = alone.fit(X[rows[m]], y[rows[m]], optimizer=fastnn.SGD(lr=lrs[m], momentum=0.9, weight_decay=decays[m]),
                      epochs=3, batch_size=8, sample_weight=w[m, rows[m]], l2=l2s[m])
        assert_same_params(pop[m], alone, f"member {m}")
        np.testing.assert_allclose(history["loss"][m], h["loss"], rtol=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(history["accuracy"][m], h["accuracy"], rtol=1e-12)


CASES = [(act, LOSS_KERNELS[i % len(LOSS_KERNELS)], list(RULES)[i % len(RULES)]) for i, act in enumerate(ACTIVATIONS)]


@pytest.mark.parametrize("act, loss, rule", CASES, ids=["-".join(c) for c in CASES])
def test_one_step_of_a_member_is_the_networks_train_step(act, loss, rule, rng, dtype):
    # every activation, loss and optimizer (each rule's richest example: momentum, decay, ...)
    X, y = data(rng, n=16, dtype=dtype, loss=loss)
    settings = RULES[rule].examples[-1]
    make = next(cls for cls in CLASSES.values() if cls.rule is RULES[rule])
    pop = fastnn.Population(small(dtype=dtype, act=act), seeds=[7, 8])
    pop.fit(X, y, loss=loss, optimizer=make(**settings), epochs=1, batch_size=16, shuffle=False)
    for m, seed in enumerate([7, 8]):
        alone = small(seed=seed, dtype=dtype, act=act)
        alone.train_step(X, y, loss=loss, optimizer=make(**settings))
        assert_same_params(pop[m], alone, f"{act} {loss} {rule} member {m}")


def test_results_depend_neither_on_threads_nor_on_the_run(rng):
    X, y = data(rng, n=200)
    runs = []
    for threads in (1, 2, 3, 2):
        pop = fastnn.Population(mixed(), size=5, lr=[0.01, 0.02, 0.03, 0.04, 0.05])
        h = pop.fit(X, y, optimizer=fastnn.Adam(), epochs=2, batch_size=16, threads=threads)
        runs.append((pop.params.copy(), h["loss"].copy()))
    for params, losses in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        np.testing.assert_array_equal(losses, runs[0][1])


def test_members_differ_by_seed_and_share_an_order_when_asked(rng):
    X, y = data(rng)
    start = np.repeat(small().engine.params[None], 2, axis=0)
    own = fastnn.Population(small(), seeds=[0, 1], params=start)
    own.fit(X, y, optimizer=fastnn.SGD(lr=0.1), batch_size=8)
    assert not np.array_equal(own.params[0], own.params[1])  # one start, two orders
    shared = fastnn.Population(small(), seeds=[0, 1], params=start)
    shared.fit(X, y, optimizer=fastnn.SGD(lr=0.1), batch_size=8, shared_order=True)
    np.testing.assert_array_equal(shared.params[0], shared.params[1])
    np.testing.assert_array_equal(shared.params[0], own.params[0])  # member 0's own order is the shared one


def regression(rng, n=64):
    X = rng.standard_normal((n, 5)).astype(np.float32)
    return X, (100.0 * rng.standard_normal((n, 3))).astype(np.float32)


def test_a_diverging_member_is_frozen_and_reported_while_the_others_go_on(rng):
    X, y = regression(rng)
    pop = fastnn.Population(small(), seeds=[0, 1, 2], lr=[1e-3, 1e30, 1e-3])
    with pytest.warns(fastnn.MemberDivergedWarning, match="member 1 in epoch 1 at step 2"):
        history = pop.fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=1.0), epochs=3, batch_size=16, shuffle=False)
    assert list(pop.status) == ["ok", "diverged", "ok"]
    assert [(f["member"], f["epoch"], f["step"]) for f in pop.failures] == [(1, 1, 2)]
    alone = small(seed=1)
    alone.train_step(X[:16], y[:16], loss="mse", optimizer=fastnn.SGD(lr=1e30))  # its one finite step
    np.testing.assert_array_equal(pop.params[1], alone.engine.params)
    assert np.isnan(history["loss"][1]).all() and np.isfinite(history["loss"][[0, 2]]).all()
    without = fastnn.Population(small(), seeds=[0, 2], lr=1e-3)
    without.fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=1.0), epochs=3, batch_size=16, shuffle=False)
    np.testing.assert_array_equal(pop.params[[0, 2]], without.params)  # as if it had never been there
    assert pop.ensemble_predict(X).shape == (64, 3)  # the ensemble leaves the diverged member out
    with pytest.raises(fastnn.DivergenceError, match="every member"):
        fastnn.Population(small(), size=2, lr=1e30).fit(X, y, loss="mse", optimizer=fastnn.SGD(lr=1.0))


def test_each_member_stops_early_on_its_own_and_keeps_its_best_epoch(rng):
    X, y = data(rng, n=120)
    Xv, yv = data(rng, n=40)
    lrs = [0.5, 0.05, 0.005]
    pop = fastnn.Population(small(), seeds=[0, 1, 2], lr=lrs)
    rule = fastnn.EarlyStopping(patience=1)
    history = pop.fit(X, y, optimizer=fastnn.SGD(lr=1.0, momentum=0.9), epochs=25, batch_size=16,
                      validation_data=(Xv, yv), early_stopping=rule)
    assert "stopped" in list(pop.status)
    for m in range(3):
        alone = small(seed=m)
        h = alone.fit(X, y, optimizer=fastnn.SGD(lr=lrs[m], momentum=0.9), epochs=25, batch_size=16,
                      validation_data=(Xv, yv), early_stopping=fastnn.EarlyStopping(patience=1))
        ran = np.isfinite(history["val_loss"][m])
        assert ran.sum() == len(h["val_loss"]) and ran[:ran.sum()].all()
        np.testing.assert_allclose(history["val_loss"][m][ran], h["val_loss"], rtol=1e-5)
        assert_same_params(pop[m], alone, f"member {m}")  # its best epoch's parameters, restored
    assert pop.best("val_loss") == int(np.argmin(np.nanmin(history["val_loss"], axis=1)))


def test_scikit_learns_rule_stops_and_lowers_each_members_rate(rng):
    X, y = data(rng, n=64)
    pop = fastnn.Population(small(), size=2, lr=[0.1, 0.1])
    history = pop.fit(X, y, optimizer=fastnn.SGD(lr=0.1, momentum=0.9), epochs=30, batch_size=16,
                      stopping=fastnn.NoImprovement(tol=1e9, n_iter_no_change=2))
    assert list(pop.status) == ["stopped", "stopped"]
    # better by 1e9 never happens: more than 2 epochs without, after the first, is 4 epochs
    assert np.isfinite(history["loss"][:, :4]).all() and np.isnan(history["loss"][:, 4:]).all()
    # adaptive: the rate / 5 after each plateau; a member whose rate is at 1e-6 or below stops
    pop = fastnn.Population(small(), size=2, lr=[0.1, 2e-6])
    history = pop.fit(X, y, optimizer=fastnn.SGD(lr=0.1, momentum=0.9), epochs=8, batch_size=16,
                      stopping=fastnn.NoImprovement(tol=1e9, n_iter_no_change=2, adaptive=True))
    np.testing.assert_allclose(history["lr"][0], [0.1] * 4 + [0.02] * 3 + [0.004])
    np.testing.assert_allclose(history["lr"][1, :7], [2e-6] * 4 + [4e-7] * 3)
    assert np.isnan(history["lr"][1, 7]) and list(pop.status) == ["ok", "stopped"]
    np.testing.assert_array_equal(pop.lr, [0.1, 2e-6])  # (the population's own rates: the next fit's)


def test_held_out_rows_score_each_member_on_its_fold(rng):
    X, y = data(rng, n=90)
    folds = np.array_split(np.arange(90), 3)
    train = [np.concatenate([f for j, f in enumerate(folds) if j != k]) for k in range(3)]
    pop = fastnn.Population(small(), size=3)
    history = pop.fit(X, y, optimizer=fastnn.Adam(lr=0.01), epochs=2, batch_size=10, rows=train,
                      validation_rows=folds)
    for m in range(3):
        scores = pop[m].evaluate(X[folds[m]], y[folds[m]])
        np.testing.assert_allclose(history["val_loss"][m, -1], scores["loss"], rtol=1e-6)
        np.testing.assert_allclose(history["val_accuracy"][m, -1], scores["accuracy"])


def test_predictions_per_member_and_as_an_ensemble(rng):
    X, y = data(rng)
    pop = fastnn.Population(small(), size=4)
    pop.fit(X, y, optimizer=fastnn.Adam(lr=0.01), batch_size=16)
    out = pop.predict(X)
    assert out.shape == (4, 96, 3)
    for m in range(4):
        np.testing.assert_array_equal(out[m], pop[m].predict(X))
        np.testing.assert_allclose(pop.evaluate(X, y)["loss"][m], pop[m].evaluate(X, y)["loss"], rtol=1e-6)
    buffer = np.empty_like(out)
    assert pop.predict(X, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, out)
    proba = pop.predict_proba(X)
    np.testing.assert_allclose(pop.ensemble_proba(X), proba.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(pop.ensemble_predict(X), proba.mean(axis=0).argmax(axis=1))
    results, errors = {}, []

    def work(k):
        try:
            for _ in range(20):
                results[k] = pop.predict(X[k:k + 30])
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, got in results.items():
        np.testing.assert_array_equal(got, out[:, k:k + 30])


def test_save_and_load_keep_every_member(rng, tmp_path):
    X, y = regression(rng)
    pop = fastnn.Population(mixed(np.float64), seeds=[5, 6, 7], lr=[1e-3, 1e300, 1e-3], l2=0.01)
    with pytest.warns(fastnn.MemberDivergedWarning):
        pop.fit(X, y / 100, loss="mse", optimizer=fastnn.SGD(lr=1.0), epochs=2, batch_size=16)
    path = tmp_path / "pop.npz"
    pop.save(path)
    back = fastnn.Population.load(path)
    assert back.dtype == np.float64 and list(back.status) == list(pop.status) and back.loss == "mse"
    np.testing.assert_array_equal(back.predict(X), pop.predict(X))
    np.testing.assert_array_equal(back.lr, pop.lr)
    data_ = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data_[: len(data_) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        fastnn.Population.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", meta=np.array(json.dumps({"format": "fastnn.Population", "version": 1,
                                                               "architecture": pop._arch, "status": ["ok"]})),
             params=np.zeros((1, 3)), seeds=np.zeros(1, np.int64), l2=np.zeros(1))
    with pytest.raises(ValueError, match="params"):
        fastnn.Population.load(tmp_path / "other.npz")
    pop.params  # (a read-only view)
    with pytest.raises(ValueError):
        pop.params[0, 0] = 1.0


@pytest.mark.parametrize("call, match", [
    (lambda X, y: fastnn.Population(small(), size=0), "size"),
    (lambda X, y: fastnn.Population(small(), seeds=[1, -2]), "seeds"),
    (lambda X, y: fastnn.Population(small(), size=3, lr=[0.1, 0.2]), "lr"),
    (lambda X, y: fastnn.Population(small(), size=2, lr=[0.1, np.nan]), "lr"),
    (lambda X, y: fastnn.Population(small(), size=2, params=np.zeros((2, 5))), "params"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, rows=[np.arange(5)]), "rows"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, rows=[np.arange(5), np.array([0, 96])]), "row 96"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, rows=[np.arange(5), np.array([], int)]), "rows"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, sample_weight=np.ones((3, 96))), "sample_weight"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, sample_weight=np.vstack([np.ones(96), np.zeros(96)])),
     "member 1"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(np.where(X > 1, np.nan, X), y), "NaN"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y + 5), "label"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, rows=[np.arange(5), np.arange(6)], shared_order=True),
     "shared_order"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, validation_data=(X, y), validation_rows=[[0], [1]]),
     "not both"),
    (lambda X, y: fastnn.Population(small(), size=2).fit(X, y, early_stopping=fastnn.EarlyStopping()), "val"),
    (lambda X, y: fastnn.Population(small(), size=2, weight_decay=0.1).fit(X, y, optimizer=fastnn.RMSprop(lr=0.1)),
     None),
])
def test_bad_input_is_a_clear_error_before_anything_trains(call, match, rng):
    X, y = data(rng)
    if match is None:  # (every optimizer has a weight decay: this one must work)
        call(X, y)
        return
    with pytest.raises((ValueError, TypeError), match=match):
        call(X, y)


def test_a_refused_fit_changes_nothing(rng):
    X, y = data(rng)
    pop = fastnn.Population(small(), size=2)
    before = pop.params.copy()
    with pytest.raises(ValueError):
        pop.fit(X, y + 5)
    np.testing.assert_array_equal(pop.params, before)


RESUMABLE = textwrap.dedent("""
    import sys, numpy as np, fastnn
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 20)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    model = fastnn.Sequential(fastnn.Dense(20, 64, activation="tanh"), fastnn.Dropout(p_drop=0.1),
                              fastnn.Dense(64, 3), seed=0)
    pop = fastnn.Population(model, size=6, lr=np.linspace(0.01, 0.06, 6))
    pop.fit(X, y, optimizer=fastnn.SGD(lr=0.1, momentum=0.9), epochs=int(sys.argv[2]), batch_size=8,
            checkpoint_dir=sys.argv[1], resume=True, threads=2, validation_rows=[np.arange(100)] * 6,
            early_stopping=fastnn.EarlyStopping(patience=3))
    np.save(sys.argv[1] + "/params.npy", pop.params)
    np.save(sys.argv[1] + "/loss.npy", pop.history["loss"])
""")


def test_a_population_killed_with_sigkill_resumes_bit_identically(tmp_path):
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-c", RESUMABLE, str(whole), "6"], check=True, env=checkout_env(), timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", RESUMABLE, str(killed), "6"], env=checkout_env())
    try:
        deadline = time.time() + 240
        checkpoint = killed / "population.npz"
        while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # mid-epoch, after at least one epoch's checkpoint
    finally:
        proc.wait()
    assert not (killed / "params.npy").exists()
    subprocess.run([sys.executable, "-c", RESUMABLE, str(killed), "6"], check=True, env=checkout_env(), timeout=300)
    np.testing.assert_array_equal(np.load(killed / "params.npy"), np.load(whole / "params.npy"))
    np.testing.assert_array_equal(np.load(killed / "loss.npy"), np.load(whole / "loss.npy"))


def test_resume_refuses_a_checkpoint_of_another_run(rng, tmp_path):
    X, y = data(rng)
    fastnn.Population(small(), size=2).fit(X, y, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other data"):
        fastnn.Population(small(), size=2, lr=0.5).fit(X, y, epochs=2, checkpoint_dir=tmp_path, resume=True)
    (tmp_path / "population.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(ValueError, match="population.npz"):
        fastnn.Population(small(), size=2).fit(X, y, epochs=2, checkpoint_dir=tmp_path, resume=True)


ALLOCATIONS = textwrap.dedent("""
    import json, numpy as np, fastnn
    from numba.core.runtime import rtsys
    rng = np.random.default_rng(0)
    X = rng.random((4096, 32), dtype=np.float32)
    y = rng.integers(0, 10, 4096)
    model = fastnn.Sequential(fastnn.Dense(32, 64, activation="gelu"), fastnn.Dropout(p_drop=0.1),
                              fastnn.Dense(64, 10), seed=0)

    def allocations(n):
        pop = fastnn.Population(model, size=4)
        pop.fit(X[:64], y[:64], optimizer=fastnn.Adam(), batch_size=64, threads=1)  # (built: compiled, warm)
        before = rtsys.get_allocation_stats()
        pop.fit(X[:n], y[:n], batch_size=64, threads=1)
        after = rtsys.get_allocation_stats()
        return after.alloc - before.alloc, after.free - before.free

    print(json.dumps({"short": allocations(256), "long": allocations(4096)}))
""")


def test_steady_state_steps_allocate_nothing():
    # a compiled call allocates a few wrappers per array argument; 64 batches a member must
    # cost what 4 do
    out = subprocess.run([sys.executable, "-c", ALLOCATIONS], env=checkout_env(NUMBA_NRT_STATS="1"),
                         capture_output=True, text=True, check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["short"][0] == r["short"][1] and r["long"][0] == r["long"][1]
    assert r["long"][0] <= r["short"][0] + 64  # the chunks may differ in number, never per step


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 4096, 5000])
def test_members_draw_their_orders_as_numpy_does(n):
    # the compiled loop's shuffle (and its Python twin) advances a NumPy generator exactly as
    # Generator.permutation does: the orders, and the generator afterwards
    import ctypes
    from fastnn.kernels.population import shuffle
    from fastnn.kernels._jit import as_python

    for run in (shuffle, as_python(shuffle.py_func)):
        ours, numpy_ = np.random.default_rng(n), np.random.default_rng(n)
        c = ours.bit_generator.ctypes
        a = np.arange(n, dtype=np.int64)
        if run is shuffle:
            import numba

            @numba.njit
            def call(a, f32, f64, state):
                shuffle(a, f32, f64, state)
            run = call
        run(a, ctypes.cast(c.next_uint32, ctypes.c_void_p).value, ctypes.cast(c.next_uint64, ctypes.c_void_p).value,
            c.state_address)
        np.testing.assert_array_equal(a, numpy_.permutation(n))
        assert ours.integers(0, 2**62) == numpy_.integers(0, 2**62)


def test_a_batch_never_outgrows_the_rows(rng):
    X, y = data(rng, n=8)
    pop = fastnn.Population(small(), size=2)
    pop.fit(X, y, batch_size=10**11)  # (as Sequential.fit: one batch of every row, nothing allocated for more)
    alone = small(seed=1)
    alone.fit(X, y, batch_size=10**11)
    assert_same_params(pop[1], alone)


def test_a_damaged_checkpoint_is_refused_and_changes_nothing(rng, tmp_path):
    X, y = data(rng)
    pop = fastnn.Population(small(), size=2)
    pop.fit(X, y, epochs=1, checkpoint_dir=tmp_path)
    path = tmp_path / "population.npz"
    with np.load(path) as f:
        arrays = dict(f)
    for name, value in (("lr", np.array([np.nan, 0.1])), ("steps", -np.ones((2, 1), np.int64)),
                        ("status", np.array([0, 9]))):
        np.savez(path, **{**arrays, name: value})
        again = fastnn.Population(small(), size=2)
        before = again.params.copy(), again._rngs[0].bit_generator.state
        with pytest.raises(ValueError, match="population.npz"):
            again.fit(X, y, epochs=2, checkpoint_dir=tmp_path, resume=True)
        np.testing.assert_array_equal(again.params, before[0])
        assert again._rngs[0].bit_generator.state == before[1]
    meta = json.loads(str(arrays["meta"]))
    for damaged in ({**meta, "failures": [{"member": 5}]}, {**meta, "rngs": [{"state": 1}] * 2},
                    {**meta, "rules": [[None]]}):
        np.savez(path, **{**arrays, "meta": np.array(json.dumps(damaged))})
        with pytest.raises(ValueError, match="damaged"):
            fastnn.Population(small(), size=2).fit(X, y, epochs=2, checkpoint_dir=tmp_path, resume=True)
