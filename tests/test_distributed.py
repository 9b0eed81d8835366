"""Data-parallel training over MPI: real ranks started with mpiexec on this machine."""
import inspect
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn

from .conftest import require

require("mpi4py")
MPIEXEC = pathlib.Path(sys.executable).parent / "mpiexec"
ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import os, sys, numpy as np, fastnn
    from fastnn import distributed
    fastnn.set_num_threads(1)
    comm, rank, size = distributed.world()
    out, batch, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((203, 12)), rng.integers(0, 4, 203)
    width = 10 + (rank if mode == "mismatch" else 0)
    model = (kinds_network() if mode == "kinds" else
             fastnn.Sequential(fastnn.Dense(12, width, activation="tanh"), fastnn.Dense(width, 4), seed=5,
                               dtype=np.float64))

    def train():
        if mode == "fail" and rank == size - 1:
            raise RuntimeError("this rank failed on purpose")
        if mode == "overflow":  # finite loss and bias gradient, but dW = x * dz overflows float32
            one = fastnn.Sequential(fastnn.Dense(1, 1), seed=0)
            before = one.parameters()[0].copy()
            try:
                distributed.fit(one, np.full((8, 1), 3e19, np.float32), np.zeros((8, 1), np.float32), loss="mse",
                                optimizer=fastnn.SGD(lr=0.1), batch_size=4)
            except fastnn.DivergenceError as e:
                assert (one.parameters()[0] == before).all(), "a refused step changed W"
                print(f"rank {rank} refused: {e}", flush=True)
                return {"loss": []}
            raise AssertionError("the overflowing weight gradient was applied")
        if mode == "kill":  # one rank dies in the middle of training; the other would wait forever
            epochs = 100_000  # minutes of training: the kill after 1 s always lands mid-run
            if rank == size - 1:
                import threading, time
                threading.Thread(target=lambda: (time.sleep(1.0), os.kill(os.getpid(), 9)), daemon=True).start()
        elif mode.startswith("ckpt"):  # checkpoints every epoch; "ckpt-stop" dies after the second;
            # "-own": a checkpoint folder per rank (per machine), where only rank 0's is ever written
            from fastnn import checkpoint
            save = checkpoint.save

            def save_then_maybe_die(directory, model_, opt_, rng_, epoch, *rest):
                save(directory, model_, opt_, rng_, epoch, *rest)
                if mode.startswith("ckpt-stop") and epoch == 2:
                    raise SystemExit("stopping after the checkpoint of epoch 2")
            checkpoint.save = save_then_maybe_die
            folder = os.path.dirname(out) + "/ck-" + sys.argv[4] + (f"-rank{rank}" if mode.endswith("-own") else "")
            return distributed.fit(model, X, y, optimizer=fastnn.Adam(lr=1e-2), epochs=4, batch_size=batch,
                                   checkpoint_dir=folder, resume=True)
        elif mode in WEIGHTED:
            targets, loss, w, classes = weighted(mode, X, y)
            return distributed.fit(model, X, targets, loss=loss, sample_weight=w, class_weight=classes,
                                   optimizer=fastnn.Adam(lr=1e-2), epochs=3, batch_size=batch, shuffle=True)
        else:
            epochs = 3
        return distributed.fit(model, X, y, optimizer=fastnn.Adam(lr=1e-2), epochs=epochs, batch_size=batch,
                               shuffle=True, lr_schedule=fastnn.Cosine(warmup_steps=3))

    history = distributed.abort_on_error(train)
    if mode.startswith("ckpt"):  # a resumed run's model.history holds every epoch, restored ones too
        history = model.history
        mine = np.concatenate([p.ravel() for p in model.parameters()])
        assert all(np.array_equal(mine, theirs) for theirs in comm.allgather(mine)), "the ranks' parameters differ"
    if rank == 0 and mode != "overflow":
        np.save(out, np.concatenate([p.ravel() for p in model.parameters()] + [np.array(history["loss"])]
                                    + [np.array(history.get("accuracy", []))]))
""")

WEIGHTED = ("weighted", "binary")


def weighted(mode, X, y):
    # row weights with zeros (some shards of a batch weigh nothing); cross-entropy with class
    # weights, or binary cross-entropy on one-hot rows: (y, loss, sample_weight, class_weight)
    w = np.random.default_rng(1).random(len(y)) * (np.arange(len(y)) % 5 != 0)
    if mode == "weighted":
        return y, "softmax_cross_entropy", w, {0: 2.0, 3: 0.5}
    return np.eye(4)[y], "binary_cross_entropy", w, None


def kinds_network():
    return fastnn.Sequential(fastnn.Dense(12, 16, activation="relu"), fastnn.LayerNorm(16),
                             fastnn.Residual(fastnn.Dense(16, 16, activation="tanh"), fastnn.LayerNorm(16),
                                             fastnn.Dense(16, 16)),
                             fastnn.Dense(16, 4), seed=5, dtype=np.float64)


# the ranks' script gets the same functions
SCRIPT = SCRIPT.replace("\nwidth = ", f"\n{inspect.getsource(kinds_network)}\nwidth = ", 1)
SCRIPT = SCRIPT.replace("\ndef train():", f"\nWEIGHTED = {WEIGHTED!r}\n{inspect.getsource(weighted)}\n\ndef train():", 1)


def run_ranks(tmp_path, ranks, batch, mode="ok", timeout=120, tag="a"):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out-{ranks}-{tag}.npy"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([str(MPIEXEC), "-n", str(ranks), sys.executable, str(script), str(out), str(batch), mode,
                           tag],
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc, out


def one_process(batch, mode="ok"):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((203, 12)), rng.integers(0, 4, 203)
    model = (kinds_network() if mode == "kinds" else
             fastnn.Sequential(fastnn.Dense(12, 10, activation="tanh"), fastnn.Dense(10, 4), seed=5, dtype=np.float64))
    if mode in WEIGHTED:
        targets, loss, w, classes = weighted(mode, X, y)
        history = model.fit(X, targets, loss=loss, sample_weight=w, class_weight=classes,
                            optimizer=fastnn.Adam(lr=1e-2), epochs=3, batch_size=batch, shuffle=True)
    else:
        history = model.fit(X, y, optimizer=fastnn.Adam(lr=1e-2), epochs=3, batch_size=batch, shuffle=True,
                            lr_schedule=fastnn.Cosine(warmup_steps=3))
    return np.concatenate([p.ravel() for p in model.parameters()] + [np.array(history["loss"])]
                          + [np.array(history.get("accuracy", []))])


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_equal_one_process_with_the_global_batch(tmp_path, ranks):
    # 2 ranks x 16 rows = one process with batch 32; 3 ranks split 32 rows 10/11/11, and the
    # last batch of each epoch (11 rows) 3/4/4: still one process's numbers
    proc, out = run_ranks(tmp_path, ranks, 32)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(out), one_process(32), rtol=1e-9, atol=1e-12)


def test_a_network_of_layer_kinds_trains_across_ranks_as_in_one_process(tmp_path):
    # LayerNorm and a residual block: their gradients allreduced as the Dense layers' are
    proc, out = run_ranks(tmp_path, 2, 32, mode="kinds")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(out), one_process(32, mode="kinds"), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", WEIGHTED)
def test_weighted_ranks_equal_one_process(tmp_path, mode):
    # each rank's shard weighed by its share of the batch's weight: 3 ranks are one process
    proc, out = run_ranks(tmp_path, 3, 32, mode=mode)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(out), one_process(32, mode), rtol=1e-9, atol=1e-12)


def test_a_failing_rank_stops_every_rank_with_a_clear_error(tmp_path):
    proc, _ = run_ranks(tmp_path, 2, 32, mode="fail", timeout=60)
    assert proc.returncode != 0
    assert "fastnn rank 1: RuntimeError: this rank failed on purpose" in proc.stderr


def test_a_killed_rank_ends_the_job_instead_of_hanging(tmp_path):
    proc, _ = run_ranks(tmp_path, 2, 32, mode="kill", timeout=60)  # a hang would time out
    assert proc.returncode != 0
    assert "BAD TERMINATION" in proc.stdout + proc.stderr and "signal 9" in (proc.stdout + proc.stderr).lower()


def test_bad_configuration_is_a_clear_error(tmp_path):
    proc, _ = run_ranks(tmp_path, 3, 2, timeout=60)
    assert proc.returncode != 0 and "batch_size=2 is smaller than the 3 ranks" in proc.stderr
    proc, _ = run_ranks(tmp_path, 2, 32, mode="mismatch", timeout=60)
    assert proc.returncode != 0 and "the model differs between ranks" in proc.stderr


def test_an_overflowing_weight_gradient_is_refused_on_every_rank(tmp_path):
    proc, _ = run_ranks(tmp_path, 2, 32, mode="overflow", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rank 0 refused: the loss, its gradients or the parameters' update became NaN or inf in epoch 1 at step 1" in proc.stdout
    assert "rank 1 refused" in proc.stdout


def test_shards_differ_by_at_most_one_row():
    from fastnn.distributed import shard

    for size in (1, 2, 3, 7):
        for start, stop in ((0, 32), (32, 43), (5, 12)):
            parts = [shard(start, stop, r, size) for r in range(size)]
            assert parts[0][0] == start and parts[-1][1] == stop
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            lengths = [b - a for a, b in parts]
            assert max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize("folders", ["", "-own"])
def test_checkpoint_and_resume_across_ranks(tmp_path, folders):
    # "-own": every rank names its own folder, as on machines without a shared disk; only rank 0
    # writes, so on resume rank 1 finds nothing: every rank must resume from rank 0's checkpoint
    proc, plain = run_ranks(tmp_path, 2, 32, mode="ckpt" + folders, tag="plain")
    assert proc.returncode == 0, proc.stderr
    proc, _ = run_ranks(tmp_path, 2, 32, mode="ckpt-stop" + folders, tag="resumed")
    assert proc.returncode != 0 and "stopping after the checkpoint of epoch 2" in proc.stderr
    assert not (tmp_path / "out-2-resumed.npy").exists()
    if folders:
        assert not (tmp_path / "ck-resumed-rank1").exists()
    proc, resumed = run_ranks(tmp_path, 2, 32, mode="ckpt" + folders, tag="resumed", timeout=60)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(resumed), np.load(plain))
