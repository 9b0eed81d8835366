"""``fit`` in pieces, shared by ``Sequential.fit`` and ``fastnn.distributed.fit``:

- ``plan``: check the arguments, convert the data once, split off validation rows, restore a
  checkpoint; returns a ``Plan``;
- ``run``: the epoch loop. Each epoch's batches are run by a *runner*: ``CompiledEpochs``
  (one process: the compiled epoch loop, returning to Python about ten times a second for
  the progress bar) or the distributed runner (an allreduce per batch);
- ``end_of_epoch``: history, validation, progress bar, checkpoint, early stopping, callbacks.
"""
from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..io import checkpoint
from .callbacks import EarlyStopping
from ..engine.core import raw_rows_of
from ..kernels._checks import positive, positive_int
from ..kernels.train import OK, Epoch
from .losses import CLASSIFIERS, class_weights, row_weights
from ..io.tabular import check_columns, column_names
from .schedules import Constant, Schedule
from ..engine.threads import one_blas_thread


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the parameters were not updated.

    ``epoch`` and ``step`` (1-based, the step within the epoch) say where; ``epoch`` is None
    for ``train_step``, whose ``step`` is then the optimizer's step number.
    """

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step

    @classmethod
    def at(cls, step, epoch=None, steps=None, lr=None, dtype=None):
        """The error for a refused step: optimizer step ``step``, or step ``step`` of ``steps`` in
        ``epoch`` of ``fit``; ``lr`` (the step's learning rate) is named when ``dtype`` cannot
        hold it."""
        where = (f"in epoch {epoch} at step {step} of {steps}; the model keeps the parameters of the last finite "
                 f"step" if epoch is not None else f"at optimizer step {step}; the parameters were not updated")
        why = "Lower the learning rate or check the data."
        if lr is not None and dtype is not None and not float(lr) <= float(np.finfo(dtype).max):
            why = f"The learning rate {lr:g} is beyond {np.dtype(dtype).name}'s range: lower it."
        return cls(f"the loss, its gradients or the parameters' update became NaN or inf {where}. {why}",
                   epoch=epoch, step=step)


CHUNK_SECONDS = 0.1  # the compiled epoch returns to Python this often (progress bar, Ctrl-C)
EXPLOSION = 100.0  # warn when an epoch's mean loss exceeds this many times the run's first loss


class LossExplosionWarning(RuntimeWarning):
    """The training loss grew far above where it started: the learning rate is likely too high."""


@dataclass
class Plan:
    X: np.ndarray
    y: np.ndarray
    w: np.ndarray  # row weights
    loss: str
    optimizer: object
    epochs: int
    batch_size: int
    shuffle: bool
    verbose: int
    lr_schedule: Schedule
    validation: tuple | None
    checkpoint_dir: object
    settings: dict
    early_stopping: EarlyStopping | None
    callbacks: tuple
    history: dict = field(default_factory=dict)
    first_epoch: int = 0
    first_loss: float | None = None  # the loss of this run's first step (the explosion rule's yardstick)
    warned: bool = False
    stopped: bool = False  # early stopping or a callback ended the run
    run_rng: dict | None = None  # the shuffling generator's state as the run began (it drew the split)
    interrupts: object = None  # the run's Ctrl-C handling (``Interrupts``), while it runs
    l2: float = 0.0  # scikit-learn's L2 penalty on the weight matrices (the estimators')
    loss_cap: float = 0.0  # the cap on a row's cross-entropy (scikit-learn's clipping; 0: none)

    def run_state(self):
        """What a checkpoint keeps of the run besides the model and optimizer, by name."""
        state = {"stopped": self.stopped, "run_rng": self.run_rng, "first_loss": self.first_loss,
                 "warned": self.warned}
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state_dict()
        return state

    def resume_state(self, state):
        """Continue from ``run_state()`` as a checkpoint kept it (older checkpoints kept less)."""
        self.stopped = bool(state.get("stopped", False))
        self.first_loss = state.get("first_loss")
        self.warned = bool(state.get("warned", False))

    @property
    def batches(self):
        return -(-self.X.shape[0] // self.batch_size)

    @property
    def classify(self):
        return self.loss in CLASSIFIERS

    def learning_rates(self, epoch, out=None):
        """Each batch's learning rate in ``epoch``: the optimizer's lr times the schedule."""
        batches = self.batches
        lr = float(self.optimizer.lr)
        if type(self.lr_schedule) is Constant:  # (the common case, without the arrays: 2 us a call)
            if out is None:
                return np.full(batches, lr)
            out.fill(lr)
            return out
        t = epoch * batches + np.arange(batches)
        return np.multiply(self.lr_schedule.factors(t, self.epochs * batches), lr, out=out)


def plan(model, X, y, *, loss, optimizer, epochs, batch_size, validation_data=None, shuffle=True, verbose=0,
         lr_schedule=None, checkpoint_dir=None, resume=False, validation_split=0.0, early_stopping=None,
         callbacks=(), settings=None, sample_weight=None, class_weight=None, l2=0.0, loss_cap=0.0):
    """Check every argument of ``fit`` and prepare the run; raises before anything is trained,
    and a refused call changes nothing. The model keeps the loss (if it had none) and the
    optimizer. ``l2``: scikit-learn's L2 penalty (alpha) on the weight matrices, added to the
    training loss; ``loss_cap``: the cap on a row's cross-entropy (see ``Sequential.fit``)."""
    loss = model.resolve_loss(loss)
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    names = column_names(X)  # (a DataFrame's: compared with the model's in _data, kept by a first fit)
    X, y = model.checked_data(X, y, loss)
    w = row_weights(loss, y, X.shape[0], model.dtype, sample_weight)  # (class weights below, from training rows)
    model.check_writable()
    if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if validation_split and validation_data is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables (epoch, history) -> bool, got {cb!r}")
    l2 = positive("l2", l2, allow_zero=True)
    loss_cap = positive("loss_cap", loss_cap, allow_zero=True)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"early_stopping must be a fastnn.EarlyStopping, got {type(early_stopping).__name__}")
    if lr_schedule is None:
        lr_schedule = Constant()
    elif not isinstance(lr_schedule, Schedule):
        raise TypeError(f"lr_schedule must be a fastnn.schedules schedule such as Cosine(), "
                        f"got {type(lr_schedule).__name__}")
    moves = resume or validation_split  # (what may move the generator before training starts)
    rng_before = model.rng.bit_generator.state if moves else None
    try:
        if names is not None and validation_data is not None and isinstance(validation_data, (tuple, list)) \
                and validation_data and column_names(validation_data[0]) is not None:
            check_columns(column_names(validation_data[0]), names, "validation_data's X")
        p = _plan(model, X, y, w, loss, optimizer, epochs, batch_size, validation_data, shuffle, verbose,
                  lr_schedule, checkpoint_dir, resume, validation_split, early_stopping, callbacks,
                  {**(settings or {}), **({"l2": l2} if l2 else {}), **({"loss_cap": loss_cap} if loss_cap else {})},
                  sample_weight, class_weight)
        p.l2, p.loss_cap = l2, loss_cap
        if names is not None and model.feature_names_in_ is None:
            model.feature_names_in_ = names
        return p
    except BaseException:
        if moves:
            model.rng.bit_generator.state = rng_before  # (a resumed run's split may have moved it)
        raise


def _plan(model, X, y, w, loss, optimizer, epochs, batch_size, validation_data, shuffle, verbose, lr_schedule,
          checkpoint_dir, resume, validation_split, early_stopping, callbacks, settings, sample_weight,
          class_weight):
    if resume:  # the split is drawn from the generator as the run began, so a resumed run holds out the same rows
        start = checkpoint.run_start(checkpoint_dir)
        if start is not None:
            model.rng.bit_generator.state = start
    run_rng = model.rng.bit_generator.state if checkpoint_dir is not None else None  # (kept by checkpoints)
    if validation_split:
        held = int(round(validation_split * X.shape[0]))
        if held < 1 or held >= X.shape[0]:
            raise ValueError(f"validation_split={validation_split} of {X.shape[0]} rows leaves an empty "
                             f"training or validation set")
        rows = model.rng.permutation(X.shape[0])  # a random hold-out, not the last rows
        held_rows, kept_rows = np.sort(rows[:held]), np.sort(rows[held:])
        validation_data = (X[held_rows], y[held_rows], w[held_rows])
        X, y, w = np.ascontiguousarray(X[kept_rows]), np.ascontiguousarray(y[kept_rows]), w[kept_rows]
    if class_weight is not None:  # one table from the training rows, for training and validation rows alike
        class_weight = class_weights(loss, y, class_weight)
        w = row_weights(loss, y, X.shape[0], model.dtype, w, class_weight)
    validation = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a pair (X_val, y_val) or (X_val, y_val, sample_weight_val)")
        Xv, yv = model.checked_data(*validation_data[:2], loss)
        wv = validation_data[2] if len(validation_data) == 3 else None
        validation = (Xv, yv, row_weights(loss, yv, Xv.shape[0], model.dtype, wv, class_weight))
    if validation is not None and not validation[2].sum() > 0:
        raise ValueError("the validation rows' weights sum to 0: there is nothing to validate on")
    if not w.sum() > 0:
        raise ValueError("the sample weights sum to 0: there is nothing to train on")
    run_settings = {"epochs": epochs, "batch_size": batch_size, "loss": loss, "samples": X.shape[0],
                    "shuffle": bool(shuffle), "schedule": repr(lr_schedule), "validation": validation is not None,
                    **(settings or {})}
    if sample_weight is not None or class_weight is not None:  # a resumed run must weigh rows alike
        run_settings["weights"] = hashlib.sha256(np.ascontiguousarray(w, np.float64).tobytes()).hexdigest()[:16]
    if early_stopping is not None:  # a resumed run must stop by the same rule
        run_settings["early_stopping"] = repr(early_stopping)
    previous = model.optimizer, getattr(model, "optimizer_name", None)
    optimizer = model.resolve_optimizer(optimizer)
    p = Plan(X, y, w, loss, optimizer, epochs, batch_size, bool(shuffle), verbose,
             lr_schedule, validation, checkpoint_dir, run_settings, early_stopping, tuple(callbacks))
    p.run_rng = run_rng
    p.history = {"loss": [], "lr": []}
    if p.classify:
        p.history["accuracy"] = []
    if validation is not None:
        p.history["val_loss"] = []
        if p.classify:
            p.history["val_accuracy"] = []
    if early_stopping is not None:
        early_stopping.start()
    if resume:
        try:
            restored = checkpoint.load(checkpoint_dir, model, optimizer, model.rng, run_settings,
                                       extendable=lr_schedule.extendable, early_stopping=early_stopping)
        except BaseException:
            model.optimizer, model.optimizer_name = previous  # a refused fit keeps no optimizer of its own
            raise
        if restored is not None:
            p.first_epoch, p.history, state = restored
            p.history.setdefault("lr", [])
            p.resume_state(state)
    model.resolve_loss(loss, store=True)
    model.history = p.history
    model.record_rows(X)
    return p


try:  # the signal module's own functions, without the enum conversions that cost 20 us a fit
    import _signal as _signals
except ImportError:  # (another Python)
    _signals = signal
SIGINT = int(signal.SIGINT)


class Interrupts:
    """Ctrl-C during ``fit``, taken at safe points. Inside ``deferred()`` blocks (an epoch's
    compiled chunks and its end: history, validation, early stopping, callbacks, checkpoint) the
    signal is noted, and the run raises ``KeyboardInterrupt`` where the model, its optimizer,
    its history and its checkpoint agree: after the chunk of batches that was running, or after
    a finished epoch is recorded and checkpointed. Elsewhere (compiling, say) it raises at once,
    and so does a second Ctrl-C. Only the main thread receives signals, and only Python's
    default handler is replaced (a program's own SIGINT handler stays in charge)."""

    def __init__(self):
        self.pending = False
        self.critical = 0
        self._previous = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and _signals.getsignal(SIGINT) is signal.default_int_handler):
            self._previous = _signals.signal(SIGINT, self._note)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            _signals.signal(SIGINT, self._previous)
            self._previous = None

    def _note(self, signum, frame):
        if self.pending or not self.critical:
            raise KeyboardInterrupt
        self.pending = True

    @contextlib.contextmanager
    def deferred(self):
        self.critical += 1
        try:
            yield
        finally:
            self.critical -= 1

    def check(self):
        """Raise KeyboardInterrupt if Ctrl-C came: call where stopping leaves everything agreeing."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


def run(model, p, runner):
    """Train epochs ``p.first_epoch .. p.epochs - 1`` with ``runner``; returns the history."""
    with Interrupts() as p.interrupts:
        if p.checkpoint_dir is not None and p.first_epoch == 0 and not p.history["loss"]:
            with p.interrupts.deferred():  # the start, so that a run stopped in its first epoch resumes exactly
                checkpoint.save(p.checkpoint_dir, model, p.optimizer, model.rng, 0, p.history, p.settings,
                                p.run_state())
            p.interrupts.check()
        for epoch in range(p.first_epoch, p.epochs):
            if p.stopped:  # (resumed from the checkpoint of a run that had stopped)
                break
            bar = _progress(p, epoch) if p.verbose else None
            try:
                runner.build(bar, epoch)  # (compiling: Ctrl-C stops it at once)
                with p.interrupts.deferred():
                    loss_sum, correct, weight = runner.epoch(epoch, bar)
                    end_of_epoch(model, p, epoch, float(loss_sum / weight), float(correct / weight), bar)
            except BaseException:
                if bar is not None:
                    bar.close()
                raise
            p.interrupts.check()
    stopper = p.early_stopping
    if stopper is not None and stopper.restore_best and stopper.best_params is not None:
        model.engine.params[...] = stopper.best_params
    return p.history


def end_of_epoch(model, p, epoch, loss, accuracy, bar):
    """Record the epoch, evaluate, early stopping and callbacks, then the checkpoint (of all of
    it, whether the run stops included); sets ``p.stopped`` when training should stop."""
    history = p.history
    history["loss"].append(loss)
    history["lr"].append(float(p.learning_rates(epoch)[-1]))
    if p.classify:
        history["accuracy"].append(accuracy)
    if p.first_loss is not None and loss > EXPLOSION * p.first_loss and not p.warned:
        p.warned = True
        warnings.warn(f"the training loss grew from {p.first_loss:.4g} (the first step) to {loss:.4g} (epoch "
                      f"{epoch + 1}): the learning rate {history['lr'][-1]:.4g} is likely too high; lower it",
                      LossExplosionWarning, stacklevel=4)
    if p.validation is not None:
        Xv, yv, wv = p.validation
        scores = model.evaluate_rows(Xv, yv, p.loss, wv)
        history["val_loss"].append(scores["loss"])
        if p.classify:
            history["val_accuracy"].append(scores["accuracy"])
    if bar is not None:
        bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in history.items()})
        bar.close()
    stop = p.early_stopping is not None and p.early_stopping(epoch + 1, history, model.engine.params)
    for cb in p.callbacks:
        stop |= bool(cb(epoch + 1, history))
    p.stopped = bool(stop)
    if p.checkpoint_dir is not None:
        checkpoint.save(p.checkpoint_dir, model, p.optimizer, model.rng, epoch + 1, history, p.settings,
                        p.run_state())
    return p.stopped


class CompiledEpochs:
    """Runs an epoch's batches in the compiled loop (``kernels.train.train_epoch``)."""

    def __init__(self, model, p):
        self.model, self.p = model, p
        rows = min(p.batch_size, p.X.shape[0])
        engine = model.engine
        self.ws = engine.workspace(rows)
        self.serial = rows in engine.serial_rows
        X, y = raw_rows_of(p.X), raw_rows_of(p.y)  # the compiled loop moves rows as bytes
        self.epoch_args = Epoch(X, y, p.w, np.empty(0, np.int64), p.shuffle, p.batch_size, np.empty(p.batches),
                                np.empty((rows, X.shape[1]), np.uint8), np.empty((rows, y.shape[1]), np.uint8),
                                np.empty(rows, model.dtype), *(np.zeros(p.batches) for _ in range(3)))
        self.fn = None

    def build(self, bar, epoch):
        """Compile (or load) the epoch loop, once."""
        if self.fn is not None:
            return
        engine = self.model.engine
        announce = None
        if bar is not None:
            announce = lambda: bar.set_description(f"epoch {epoch + 1}/{self.p.epochs} (compiling)")  # noqa: E731
        self.fn, objective, self.drivers = engine.epoch_fn(self.p.loss, self.p.optimizer, announce=announce)
        self.objective = engine.penalised(objective, self.p.l2, self.p.loss_cap)
        if bar is not None and engine.last_build["compiled"]:
            bar.set_description(f"epoch {epoch + 1}/{self.p.epochs}")
            bar.reset(total=self.p.X.shape[0])  # the rate should not count the compilation

    def epoch(self, epoch, bar):
        p, model = self.p, self.model
        self.build(bar, epoch)
        engine, optimizer = model.engine, p.optimizer
        n, batches = p.X.shape[0], p.batches
        args = self.epoch_args
        p.learning_rates(epoch, out=args.lr)
        if p.shuffle:
            args = args._replace(order=model.rng.permutation(n))
        first, chunk = 0, 1
        while first < batches:
            stop = min(first + chunk, batches)
            start = time.perf_counter()
            opt = optimizer.compiled(engine)
            with one_blas_thread() if self.serial else contextlib.nullcontext():
                # (the compiled loop counts its steps in the optimizer itself)
                done, status = self.fn(engine.net, self.ws, self.objective, opt, self.drivers, args, first, stop)
            if p.first_loss is None:  # the first step with a loss (a batch of weight 0 has none)
                weighed = args.losses[first:first + done][args.losses[first:first + done] > 0]
                p.first_loss = float(weighed[0]) if weighed.size else None
            if status != OK:
                raise DivergenceError.at(first + done + 1, epoch + 1, batches, lr=args.lr[first + done],
                                         dtype=model.dtype)
            if bar is not None:
                bar.update(min(stop * p.batch_size, n) - min(first * p.batch_size, n))
                bar.set_postfix(loss=f"{args.losses[stop - 1]:.4f}", refresh=False)
            per_batch = (time.perf_counter() - start) / (stop - first)
            chunk = max(1, int(CHUNK_SECONDS / max(per_batch, 1e-9)))
            first = stop
            if first < batches and p.interrupts is not None:
                p.interrupts.check()  # (after the last chunk, run() first records the finished epoch)
        # sums in one order, whatever the chunks were (their length is timed)
        return float(np.dot(args.losses, args.weights)), float(args.correct.sum()), float(args.weights.sum())


def _progress(p, epoch):
    from tqdm.auto import tqdm

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: a cold build forks a compiling child only without threads

    return Bar(total=p.X.shape[0], desc=f"epoch {epoch + 1}/{p.epochs}", unit="sample", leave=True)
