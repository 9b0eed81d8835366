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

from .._install import install_hint
from ..engine.core import raw_rows_of
from ..nn.model import count_right
from ..nn.training import DivergenceError


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("distributed training needs mpi4py and an MPI library: " + install_hint("mpi")) from None
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


def fit(model, X, y, loss=None, optimizer=None, epochs=1, batch_size=32, shuffle=True,
        verbose=0, lr_schedule=None, checkpoint_dir=None, resume=False, comm=None, timings=None,
        sample_weight=None, class_weight=None):
    """Train ``model`` data-parallel on all ranks of ``comm`` (default ``MPI.COMM_WORLD``).

    Arguments as ``Sequential.fit``; ``batch_size`` is the global batch, which must be at least
    the number of ranks. Every rank must call this with the same model, data and settings.
    Returns the history (the same on every rank): ``loss``, plus ``accuracy`` for
    cross-entropy, per epoch, over all ranks' rows. With ``sample_weight``/``class_weight`` each
    rank's shard gradient is weighed by its share of the batch's sum of weights, so N ranks
    compute what one process does. A dict passed as ``timings`` receives
    ``steps`` and ``allreduce_s`` (this rank's seconds inside the gradient Allreduce).
    """
    MPI = _mpi()
    comm = comm or MPI.COMM_WORLD
    size = comm.Get_size()
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and 0 < batch_size < size:
        raise ValueError(f"batch_size={batch_size} is smaller than the {size} ranks: every rank needs rows; "
                         f"use a global batch of at least {size}")
    model.refuse_prepared("distributed.fit")
    _agree(comm, "the model", model.architecture())
    model.train_alone()
    try:
        return _fit(model, X, y, comm, MPI, size, loss, optimizer, epochs, batch_size, shuffle, verbose, lr_schedule,
                    checkpoint_dir, resume, timings, sample_weight, class_weight)
    finally:
        model.training_lock.release()


def _fit(model, X, y, comm, MPI, size, loss, optimizer, epochs, batch_size, shuffle, verbose, lr_schedule,
         checkpoint_dir, resume, timings, sample_weight, class_weight):
    from ..nn import training

    plan = training.plan(model, X, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                         shuffle=shuffle, lr_schedule=lr_schedule, checkpoint_dir=checkpoint_dir, resume=False,
                         settings={"ranks": size}, sample_weight=sample_weight, class_weight=class_weight)
    _agree(comm, "the training settings", {**plan.settings, "optimizer": repr(plan.optimizer)})
    comm.Bcast(model.engine.params, root=0)  # one starting point for every replica
    rank = comm.Get_rank()
    if resume and checkpoint_dir is not None:
        _resume(model, plan, comm, rank, checkpoint_dir)
    plan.verbose = 0  # rank 0 prints a line per epoch instead of a bar
    runner = _Epochs(model, plan, comm, MPI, timings, verbose=verbose and rank == 0)
    if rank != 0:
        plan.checkpoint_dir = None  # only rank 0 writes files
    history = training.run(model, plan, runner)
    return history


def _resume(model, plan, comm, rank, checkpoint_dir):
    """Every rank resumes from rank 0's checkpoint (only rank 0 writes them, so the other
    machines may have none, or an old one): rank 0 reads and checks it, then broadcasts what it
    restored. A refused checkpoint is an error on every rank, never a rank left waiting."""
    from ..io import checkpoint

    found, error = None, None
    if rank == 0:
        try:
            restored = checkpoint.load(checkpoint_dir, model, plan.optimizer, model.rng, plan.settings,
                                       extendable=plan.lr_schedule.extendable)
            if restored is not None:
                epoch, history, state = restored
                found = {"epoch": epoch, "history": history, "state": state, "rng": model.rng.bit_generator.state,
                         "optimizer": plan.optimizer.state_dict(), "params": model.engine.params}
        except Exception as e:  # (sent to every rank, which all raise it)
            error = f"{type(e).__name__}: {e}"
    error, found = comm.bcast((error, found), root=0)
    if error is not None:
        raise checkpoint.CheckpointError(f"rank 0 could not resume from its checkpoint: {error}")
    if found is None:
        return
    if rank != 0:
        model.engine.params[...] = found["params"]
        plan.optimizer.load_state_dict(found["optimizer"])
        model.rng.bit_generator.state = found["rng"]
    plan.first_epoch, plan.history = found["epoch"], found["history"]
    plan.history.setdefault("lr", [])
    plan.resume_state(found["state"])
    model.history = plan.history


class _Epochs:
    """Runs an epoch's batches across ranks: each rank's shard through the compiled
    ``loss_and_grad``, a sum-Allreduce of the gradients, then the compiled ``apply_update``
    (finite guard and optimizer) on every rank."""

    def __init__(self, model, plan, comm, MPI, timings, verbose):
        self.model, self.plan, self.comm, self.MPI = model, plan, comm, MPI
        self.timings, self.verbose = timings, verbose
        size = comm.Get_size()
        engine = model.engine
        self.local = -(-plan.batch_size // size)
        self.ws = engine.workspace(self.local)
        self.grads_fn, self.objective, self.drivers = engine.gradients_fn(plan.loss)
        self.update_fn = engine.update_fn(plan.optimizer)
        self.y = raw_rows_of(plan.y)
        self.x_buf = np.empty((self.local, plan.X.shape[1]), model.dtype)
        self.stats = np.zeros(3)  # this rank's (loss * weight, weight of correct rows, weight) of a batch

    def build(self, bar, epoch):
        """(Everything was built in __init__.)"""

    def epoch(self, epoch, bar):
        p, model, comm, MPI = self.plan, self.model, self.comm, self.MPI
        rank, size = comm.Get_rank(), comm.Get_size()
        comm.Barrier()  # the previous epoch's checkpoint is complete before anyone runs ahead
        engine, optimizer = model.engine, p.optimizer
        n, batches = p.X.shape[0], p.batches
        order = model.rng.permutation(n) if p.shuffle else np.arange(n)
        comm.Bcast(order, root=0)
        grads, stats, total = model.engine.grads, self.stats, np.zeros(3)
        opt = optimizer.compiled(engine)
        learning_rates = p.learning_rates(epoch)
        for b in range(batches):
            start, stop = b * p.batch_size, min((b + 1) * p.batch_size, n)
            lo, hi = shard(start, stop, rank, size)
            m = hi - lo
            step = optimizer.step_count + 1
            stats[:] = 0.0
            batch_weight = p.w[order[start:stop]].sum()  # every rank holds all rows' weights
            if m:
                rows = order[lo:hi]
                xb, wb = self.x_buf[:m], p.w[rows]
                np.take(p.X, rows, axis=0, out=xb)
                value = self.grads_fn(engine.net, self.ws, self.objective, self.drivers, xb, self.y[rows], wb, step)
                shard_weight = float(wb.sum())
                # each shard's mean gradient weighed by its share of the batch's weight: the sum over
                # ranks is the batch's weighted mean, as in one process
                grads *= shard_weight / batch_weight if batch_weight > 0 else 0.0
                stats[0], stats[2] = value * shard_weight, shard_weight
                if p.classify:
                    stats[1] = float(np.dot(wb, count_right(p.loss, engine.output(self.ws, m), p.y[rows])))
            else:
                grads[...] = 0.0
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
            if self.timings is not None:
                self.timings["allreduce_s"] = self.timings.get("allreduce_s", 0.0) + time.perf_counter() - t
                self.timings["steps"] = self.timings.get("steps", 0) + 1
            comm.Allreduce(MPI.IN_PLACE, stats, op=MPI.SUM)
            lr = learning_rates[b]
            # the same finite guard and update as one process: every rank sees the same sums; a
            # batch of weight 0 makes no update, as in one process
            if batch_weight > 0:  # (the compiled update counts the step it applies)
                if not (np.isfinite(stats[0]) and self.update_fn(engine.net, opt, lr) == 1.0):
                    raise DivergenceError.at(b + 1, epoch + 1, batches, lr=lr, dtype=model.dtype)
            else:
                optimizer.step_count = step
            if p.first_loss is None and stats[2] > 0:
                p.first_loss = stats[0] / stats[2]
            total += stats
            if b + 1 < batches and p.interrupts is not None:
                p.interrupts.check()
        if self.verbose:
            parts = [f"loss {total[0] / total[2]:.4f}"] + ([f"accuracy {total[1] / total[2]:.4f}"] if p.classify else [])
            print(f"epoch {epoch + 1}/{p.epochs}: " + ", ".join(parts), flush=True)
        return total[0], total[1], total[2]
