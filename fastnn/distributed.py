"""Data-parallel training over MPI (the ``mpi`` extra: mpi4py and an MPI library).

Every rank holds the whole model and the whole data set:
- rank 0 broadcasts the initial parameters, and each epoch's row order;
- each global batch of B rows is split into one contiguous shard per rank (sizes differ by at
  most one row); each rank computes its shard's mean gradient with the compiled
  forward/backward, weights it by (shard rows / B), and one in-place ``Allreduce`` (sum) on
  the flat gradient buffer gives every rank the gradient of the whole batch, so an uneven
  split equals one process;
- every rank applies the same compiled optimizer update, so the replicas stay identical;
- losses and accuracies are reduced the same way; only rank 0 prints and writes files.

Run with ``mpiexec -n 2 python script.py`` or ``mpiexec -n 2 fastnn train --distributed``.
Dropout masks are keyed on each rank's row within its shard, so with Dropout a distributed run
draws other (equally valid) masks than one process would; without Dropout the two agree.
An exception on any rank aborts the whole job (``MPI.Abort``), so no rank is left waiting in
a collective; a rank killed from outside is detected by ``mpiexec``, which ends the others.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np

from .kernels.train import _count_correct, _forward_backward, lr_factor, optimizer_update
from .model import _LOSS_CODES, DivergenceError, _check_optimizer, _positive_count
from .schedules import Constant


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError('distributed training needs mpi4py and an MPI library: pip install "fastnn[mpi]"') from None
    return MPI


def world():
    """``(comm, rank, size)`` of ``MPI.COMM_WORLD``."""
    comm = _mpi().COMM_WORLD
    return comm, comm.Get_rank(), comm.Get_size()


def shard(start, stop, rank, size):
    """Rows [a, b) of the global batch [start, stop) that ``rank`` of ``size`` trains on."""
    m = stop - start
    return start + (rank * m) // size, start + ((rank + 1) * m) // size


def abort_on_error(fn):
    """Run ``fn()``; on an exception print it with the rank and abort every rank (no hangs)."""
    MPI = _mpi()
    try:
        return fn()
    except BaseException as e:
        rank = MPI.COMM_WORLD.Get_rank()
        print(f"fastnn rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        # Abort tears every rank down at once; with MPICH 4.3 the launcher sometimes had not yet
        # forwarded this rank's stderr, and the message was lost. Give it a moment first.
        time.sleep(0.5)
        MPI.COMM_WORLD.Abort(1)
        raise


def _agree(comm, what, value):
    """Check that every rank has the same ``value``; raise on all ranks if not."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    digests = comm.allgather(digest)
    if len(set(digests)) != 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ValueError(f"{what} differs between ranks (ranks {bad} differ from rank 0); every rank must run "
                         f"the same model and settings")


def fit(model, X, y, loss="softmax_cross_entropy", optimizer=None, epochs=1, batch_size=32, shuffle=True,
        verbose=0, lr_schedule=None, checkpoint_dir=None, resume=False, comm=None, timings=None):
    """Train ``model`` data-parallel on all ranks of ``comm`` (default ``MPI.COMM_WORLD``).

    Arguments as ``Sequential.fit``; ``batch_size`` is the global batch, which must be at least
    the number of ranks. Every rank must call this with the same model, data and settings.
    Returns the history (the same on every rank): ``loss``, plus ``accuracy`` for
    cross-entropy, per epoch, over all ranks' rows. A dict passed as ``timings`` receives
    ``steps`` and ``allreduce_s`` (this rank's seconds inside the gradient Allreduce).
    """
    from . import checkpoint

    MPI = _mpi()
    comm = comm or MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    _check_optimizer(optimizer)
    epochs = _positive_count("epochs", epochs)
    batch_size = _positive_count("batch_size", batch_size)
    if batch_size < size:
        raise ValueError(f"batch_size={batch_size} is smaller than the {size} ranks: every rank needs rows; "
                         f"use a global batch of at least {size}")
    X, y = model._data(X, y, loss)
    n = X.shape[0]
    lr_schedule = lr_schedule or Constant()
    settings = {"epochs": epochs, "batch_size": batch_size, "loss": loss, "samples": n, "shuffle": bool(shuffle),
                "schedule": repr(lr_schedule), "validation": False, "ranks": size}
    _agree(comm, "the model", model._architecture())
    _agree(comm, "the training settings", {**settings, "optimizer": repr(optimizer)})
    comm.Bcast(model._flat_params, root=0)  # one starting point for every replica
    history = {"loss": []}
    classify = loss == "softmax_cross_entropy"
    if classify:
        history["accuracy"] = []
    first_epoch = 0
    if resume and checkpoint_dir is not None:
        restored = checkpoint.load(checkpoint_dir, model, optimizer, model._rng, settings)
        if restored is not None:
            first_epoch, history = restored
    loss_code = _LOSS_CODES[loss]
    local_capacity = -(-batch_size // size)
    ws = model._workspace(local_capacity)
    labels, targets = model._targets(loss, y)
    o_last = model.out_features
    x_buf = np.empty((local_capacity, X.shape[1]), model.dtype)
    batches = -(-n // batch_size)
    schedule = lr_schedule.as_array(epochs * batches)
    grads = model._flat_grads
    stats = np.zeros(2)  # (loss * rows, correct rows) of this rank, reduced each step
    bias_rows = np.concatenate([np.arange(row[3], row[3] + row[1]) for row in model._layout])
    optimizer._prepare((model._flat_params,))
    base_lr = optimizer._hyper_values[0]
    for epoch in range(first_epoch, epochs):
        order = model._rng.permutation(n) if shuffle else np.arange(n)
        comm.Bcast(order, root=0)
        total = np.zeros(2)
        for b in range(batches):
            start, stop = b * batch_size, min((b + 1) * batch_size, n)
            lo, hi = shard(start, stop, rank, size)
            m = hi - lo
            code, hyper, state1, state2, step = optimizer._kernel_args(0, model._flat_params)
            hyper[0] = base_lr * lr_factor(schedule, epoch * batches + b)
            stats[:] = 0.0
            if m:
                rows = order[lo:hi]
                xb = x_buf[:m]
                np.take(X, rows, axis=0, out=xb)
                lb = labels[rows] if labels.size else labels
                tb = targets.reshape(n, o_last)[rows].reshape(-1) if targets.size else targets
                value = _forward_backward(xb, lb, tb, loss_code, model._layout, model._flat_params, grads,
                                          ws.outs, ws.zs, ws.douts, model._drops, model._mask_seed, step)
                grads *= m / (stop - start)  # weight by shard size: the sum over ranks is the batch mean
                stats[0] = value * m
                if classify:
                    logits = ws.views(model._dense, model._layout, m)[0][-1]
                    stats[1] = _count_correct(logits, lb)
            else:
                grads[...] = 0.0
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
            if timings is not None:
                timings["allreduce_s"] = timings.get("allreduce_s", 0.0) + time.perf_counter() - t
                timings["steps"] = timings.get("steps", 0) + 1
            comm.Allreduce(MPI.IN_PLACE, stats, op=MPI.SUM)
            if not (np.isfinite(stats[0]) and np.isfinite(grads[bias_rows]).all()):  # as _train_step checks
                hyper[0] = base_lr
                raise DivergenceError(f"the loss or its gradients became NaN or inf in epoch {epoch + 1} at step "
                                      f"{b + 1} of {batches}; the parameters were not updated",
                                      epoch=epoch + 1, step=b + 1)
            optimizer_update(code, model._flat_params, grads, hyper, state1, state2, step)
            optimizer.step_count = step
            total += stats
        hyper[0] = base_lr
        history["loss"].append(float(total[0] / n))
        if classify:
            history["accuracy"].append(float(total[1] / n))
        if verbose and rank == 0:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()),
                  flush=True)
        if checkpoint_dir is not None and rank == 0:
            checkpoint.save(checkpoint_dir, model, optimizer, model._rng, epoch + 1, history, settings)
        comm.Barrier()  # the checkpoint is complete before anyone runs ahead
    return history
