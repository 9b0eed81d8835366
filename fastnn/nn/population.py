"""Populations: many networks of one architecture trained together, on every core.

A ``Population`` holds M members, each a network of its model's layers with its own
parameters, seed, learning rate, weight decay, L2 penalty, rows and row weights. ``fit``
trains them in one compiled loop (``fastnn.kernels.population``): Python threads each run it
over their own members, GIL released, BLAS on one thread, so a population of small networks
feeds every core where one of them could not, and threads never wait for each other inside a
step. A member steps exactly as its network alone would (``pop[i]``, trained by
``Sequential.fit`` with the same seed, rows and settings, gives the same numbers up to the BLAS
thread count); members never share a number, so results do not depend on the thread count.

Members fail alone: a member whose step is not finite keeps its last finite parameters, is
frozen and reported (``failures``, a warning); the others go on. Stopping is per member too
(``EarlyStopping``, ``NoImprovement``).
"""
from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import json
import os
import threading
import time
import warnings

import numpy as np

from ..engine.core import raw_rows_of
from ..engine.threads import one_blas_thread
from ..io.files import Archive, atomic_write, parse_json
from ..kernels import population as kernels
from ..kernels._checks import positive_int
from ..kernels.kinds import from_architecture
from ..kernels.train import BAD_TARGETS, DIVERGED, OK
from .callbacks import EarlyStopping, NoImprovement
from .losses import CLASSIFIERS, row_weights
from .model import DivergenceError, Sequential, count_right, sigmoid, softmax, layers_of
from .optim import Adam, Optimizer
from .schedules import Constant, Schedule

FORMAT = "fastnn.Population"
VERSION = 1
CHUNK_SECONDS = 0.1  # the compiled loop returns to Python this often (Ctrl-C, progress)
MAX_MEMBERS = 1 << 16  # (each member is built as a network of its own: ~0.2 ms)


class MemberDivergedWarning(RuntimeWarning):
    """Members of a population diverged and were frozen at their last finite parameters."""


def _per_member(name, value, size, default, check=None):
    """``value`` as M float64 numbers: one for all, or one per member."""
    if value is None:
        value = default
    a = np.asarray(value, dtype=np.float64) if not isinstance(value, (str, bytes)) else None
    if a is None or a.ndim > 1 or (a.ndim == 1 and a.shape[0] != size):
        raise ValueError(f"{name} must be one number or {size} numbers (one per member), got {value!r}"[:300])
    a = np.broadcast_to(a, (size,)).copy()
    if not np.all(np.isfinite(a)) or (check == "positive" and not np.all(a > 0)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and {'> 0' if check == 'positive' else '>= 0'}, got {value!r}"[:300])
    return a


class Population:
    """M networks of one architecture and dtype, trained together (see the module docstring).

    Parameters
    ----------
    model : Sequential
        The architecture, dtype and loss every member has; its own numbers are not used (each
        member is initialised from its seed), and it is never changed.
    size : int, optional
        The number of members M (or give ``seeds``).
    seeds : sequence of int, optional
        Each member's seed: it initialises the member's parameters, orders its rows in ``fit``
        and keys its dropout masks exactly as ``Sequential(..., seed=seed)`` would. Default:
        0, 1, ..., M - 1.
    lr, weight_decay : number or sequence of M numbers, optional
        Each member's learning rate and weight decay; default: the optimizer's, in ``fit``.
    l2 : number or sequence of M numbers
        Each member's L2 penalty on its weight matrices (scikit-learn's alpha, see ``fit``).
    params : array (M, P), optional
        Each member's starting parameters (flat, in ``Sequential.parameters()`` order) instead
        of its seed's.

    Attributes
    ----------
    history : dict of (M, epochs) arrays or None
        Per member and epoch of the last ``fit``: "loss", "accuracy" (classifiers), "val_loss"
        and "val_accuracy" with validation; NaN where a member did not train.
    status : (M,) array of str
        "ok", "stopped" (a stopping rule), "diverged" (frozen at its last finite parameters).
    failures : list of dict
        The members that diverged: member, epoch and step (1-based), learning rate.
    batch_losses : (M, batches) array or None
        Each member's loss on each batch of the last epoch ``fit`` ran (0 where it ran none).

    Examples
    --------
    >>> pop = Population(Sequential(Dense(8, 64, activation="tanh"), Dense(64, 4)), size=32,
    ...                  lr=np.geomspace(1e-3, 1e-1, 32))   # doctest: +SKIP
    >>> pop.fit(X, y, optimizer=SGD(lr=0.01, momentum=0.9), epochs=5, batch_size=64)  # doctest: +SKIP
    >>> best = pop[pop.best("val_loss")]                     # doctest: +SKIP  (a Sequential)
    """

    def __init__(self, model, size=None, *, seeds=None, lr=None, weight_decay=None, l2=0.0, params=None):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastnn.Sequential, got {type(model).__name__}")
        model.refuse_prepared("Population")
        if seeds is None:
            if size is None:
                raise ValueError("give the member count (size=...) or each member's seed (seeds=[...])")
            size = positive_int("size", size)
            seeds = list(range(size))
        else:
            seeds = [int(s) if isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) else s
                     for s in seeds]
            if any(not isinstance(s, int) or not 0 <= s < 2**63 for s in seeds):
                raise ValueError(f"seeds must be integers from 0 to 2**63 - 1, got {seeds!r}"[:300])
            if size is not None and positive_int("size", size) != len(seeds):
                raise ValueError(f"size={size} but {len(seeds)} seeds were given")
            size = len(seeds)
        if not 0 < size <= MAX_MEMBERS:
            raise ValueError(f"a population needs 1 to {MAX_MEMBERS:,} members, got {size}")
        self.size = size
        self.seeds = np.array(seeds, np.int64)
        self.dtype = model.dtype
        self._arch = model.architecture()
        self.loss = model.loss
        self.feature_names_in_ = model.feature_names_in_
        self.lr = None if lr is None else _per_member("lr", lr, size, None, "positive")
        self.weight_decay = None if weight_decay is None else _per_member("weight_decay", weight_decay, size, None)
        self.l2 = _per_member("l2", l2, size, 0.0)
        # each member's network alone, as Sequential(seed=s) makes it: its numbers, its shuffling
        # generator (after initialising), its dropout seed
        self._model = self._network(int(self.seeds[0]))  # the compiled path every member runs
        P = self._model.count_params()
        if params is not None:
            params = np.asarray(params)
            if params.shape != (size, P) or params.dtype.kind not in "iuf":
                raise ValueError(f"params must be an array ({size}, {P}): each member's flat parameters, got "
                                 f"{params.dtype} {params.shape}")
            if not np.all(np.isfinite(params)):
                raise ValueError("params contains NaN or inf")
        self._params = np.empty((size, P), self.dtype)
        self._grads = np.zeros((size, P), self.dtype)
        self._rngs, mask_seeds = [], []
        for m, seed in enumerate(seeds):
            member = self._network(seed) if m else self._model
            self._params[m] = member.engine.params if params is None else params[m]
            self._rngs.append(member.rng)
            mask_seeds.append(member.engine.seed)
        self._mask_seeds = np.array(mask_seeds, np.int64)
        self.optimizer = None  # the optimizer of the last fit: its kind and settings; state per member below
        self._state = None  # (M, S, P)
        self._steps = np.zeros((size, 1), np.int64)
        self._status = np.full(size, OK, np.int64)
        self._stopped = np.zeros(size, bool)
        self.failures = []
        self.history = None
        self.batch_losses = None
        self._lock = threading.Lock()

    def _network(self, seed):
        layers = [from_architecture(spec) for spec in self._arch["layers"]]
        model = Sequential(*layers, seed=seed, dtype=self.dtype, loss=self.loss)
        model.feature_names_in_ = self.feature_names_in_
        return model

    # -- members ------------------------------------------------------------------------

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        """Member ``i`` as a standalone ``Sequential`` (a copy: training it leaves the population alone)."""
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"members are indexed by an integer, got {i!r}")
        if not -self.size <= i < self.size:
            raise IndexError(f"member {i} of a population of {self.size}")
        i = int(i) % self.size
        model = self._network(int(self.seeds[i]))
        model.engine.params[...] = self._params[i]
        model.rng = copy.deepcopy(self._rngs[i])
        return model

    @property
    def params(self):
        """Every member's flat parameters, (M, P): a read-only view."""
        view = self._params.view()
        view.flags.writeable = False
        return view

    @property
    def status(self):
        """Each member's state after the last fit: "ok", "stopped" (a stopping rule), "diverged"
        or "bad targets" (frozen at its last finite parameters; a next ``fit`` trains it again)."""
        names = np.array(["ok"] * self.size, dtype=object)
        names[self._stopped] = "stopped"
        names[self._status == DIVERGED] = "diverged"
        names[self._status == BAD_TARGETS] = "bad targets"
        return names

    def _healthy(self):
        return np.flatnonzero(self._status == OK)

    # -- training -------------------------------------------------------------------------

    def fit(self, X, y, loss=None, optimizer=None, epochs=1, batch_size=32, *, rows=None, shuffle=True,
            shared_order=False, sample_weight=None, validation_data=None, validation_rows=None,
            early_stopping=None, stopping=None, lr_schedule=None, checkpoint_dir=None, resume=False, threads=None,
            verbose=0):
        """Train every member for ``epochs`` passes over its rows in mini-batches of ``batch_size``.

        ``X``, ``y``, ``loss``, ``batch_size``, ``shuffle``, ``lr_schedule`` as ``Sequential.fit``.

        optimizer : fastnn optimizer, optional
            Its kind and settings for every member (default: Adam(lr=1e-3)); each member's
            ``lr`` and ``weight_decay`` (the population's) replace the optimizer's. A second
            ``fit`` with the same optimizer (or none) continues each member's state.
        rows : sequence of M index arrays, optional
            Each member's training rows of X (a fold's rows; a bootstrap sample, repeats
            allowed); default: every row. Members run full batches of their own rows, so
            members with more rows run more batches.
        shared_order : bool
            All members see the rows in one order (needs the same rows for every member);
            default: each member its own, drawn from its seed.
        sample_weight : (N,) or (M, N) array, optional
            Row weights for all members, or one row of weights per member.
        validation_data : (X_val, y_val) or (X_val, y_val, w_val), optional
            Scored for every member after each epoch ("val_loss", "val_accuracy").
        validation_rows : sequence of M index arrays, optional
            Each member's held-out rows of X, scored the same way (a fold's held-out rows).
        early_stopping : EarlyStopping, optional
            Each member stops by this rule on its own history (and restores its best epoch).
        stopping : NoImprovement, optional
            scikit-learn's rule (``tol``, ``n_iter_no_change``, adaptive learning rate), per member.
        checkpoint_dir, resume : as ``Sequential.fit``: the population's state after each epoch,
            and a resumed run continues bit-identically.
        threads : int, optional
            Python threads, each running its own members (default: ``fastnn.get_num_threads``).

        Returns ``history`` (see the class).
        """
        if not self._lock.acquire(False):
            raise RuntimeError("this population is being trained already (fit in another thread)")
        try:
            run = _Run(self, X, y, loss, optimizer, epochs, batch_size, rows, shuffle, shared_order, sample_weight,
                       validation_data, validation_rows, early_stopping, stopping, lr_schedule, checkpoint_dir,
                       resume, threads, verbose)
            return run.run()
        finally:
            self._lock.release()

    # -- predictions and scores -----------------------------------------------------------

    def _members(self, members):
        if members is None:
            return np.arange(self.size)
        members = np.asarray(members)
        if members.dtype.kind not in "iu" or members.ndim != 1 or members.size == 0 or \
                np.any(members < 0) or np.any(members >= self.size):
            raise ValueError(f"members must be indices of members 0 to {self.size - 1}, got {members!r}"[:300])
        return members

    def predict(self, X, out=None, members=None, batch_size=1024):
        """Each member's outputs, (M, N, out_features) (logits for a classifier), into ``out``
        when given (an array of that shape and the population's dtype). Safe from several
        threads at once."""
        X = self._model.checked_inputs(X)
        batch_size = positive_int("batch_size", batch_size)
        which = self._members(members)
        shape = (which.size, X.shape[0], self._model.out_features)
        if out is None:
            out = np.empty(shape, self.dtype)
        elif not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == self.dtype
                  and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"out must be a writable C-contiguous {self.dtype.name} array of shape {shape}")
        elif np.may_share_memory(out, X):
            raise ValueError("out overlaps X")
        engine = self._model.engine
        forward = engine.forward_fn()
        net = engine.evaluation_net()
        n = X.shape[0]
        ws = engine.inference_workspace(min(batch_size, n))
        for k, m in enumerate(which):
            member = net._replace(params=self._params[m], grads=self._grads[m])
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                forward(member, ws, X[start:stop], False, 0)
                out[k, start:stop] = engine.output(ws, stop - start)
        return out

    def predict_proba(self, X, members=None):
        """Each member's probabilities, (M, N, out_features)."""
        loss = self._classifier()
        out = self.predict(X, members=members)
        for k in range(out.shape[0]):
            softmax(out[k]) if loss == "softmax_cross_entropy" else sigmoid(out[k])
        return out

    def ensemble_proba(self, X, members=None):
        """The ensemble's probabilities, (N, out_features): the mean of the members'
        (default: every member that did not diverge)."""
        if members is None:
            members = self._healthy()
            if members.size == 0:
                raise ValueError("every member diverged: there is no ensemble to predict with")
        return self.predict_proba(X, members).mean(axis=0, dtype=np.float64).astype(self.dtype)

    def ensemble_predict(self, X, members=None):
        """The ensemble's prediction: the class of the highest mean probability (classifiers),
        or the mean output (regression)."""
        if (self.loss or "softmax_cross_entropy") in CLASSIFIERS:
            proba = self.ensemble_proba(X, members)
            return proba.argmax(axis=1) if self.loss != "binary_cross_entropy" else (proba > 0.5).astype(np.int64)
        if members is None:
            members = self._healthy()
            if members.size == 0:
                raise ValueError("every member diverged: there is no ensemble to predict with")
        return self.predict(X, members=members).mean(axis=0, dtype=np.float64)

    def _classifier(self):
        loss = self.loss or "softmax_cross_entropy"
        if loss not in CLASSIFIERS:
            raise ValueError(f"this population's loss is {loss!r} (regression): its outputs are not probabilities")
        return loss

    def evaluate(self, X, y, loss=None, sample_weight=None, members=None):
        """Per member ``{"loss": (M,), "accuracy": (M,)}`` (accuracy for classifiers)."""
        loss = self._model.resolve_loss(loss if loss is not None else self.loss)
        X, y = self._model.checked_data(X, y, loss)
        w = row_weights(loss, y, X.shape[0], self.dtype, sample_weight)
        if not w.sum() > 0:
            raise ValueError("the sample weights sum to 0: there is nothing to evaluate")
        return self._scores(X, y, w, loss, self._members(members))

    def _scores(self, X, y, w, loss, which):
        out = self.predict(X, members=which)
        engine = self._model.engine
        scores = {"loss": np.array([engine.loss(loss, out[k], y, w) for k in range(which.size)])}
        if loss in CLASSIFIERS:
            scores["accuracy"] = np.array([np.average(count_right(loss, out[k], y), weights=w)
                                           for k in range(which.size)])
        return scores

    def best(self, by="val_loss"):
        """The index of the member with the best value of ``by`` (a history key: losses
        smallest, accuracies largest) at its best epoch, among those that did not diverge.
        ``pop[pop.best()]`` is that network as it ended: its best epoch's parameters when it
        trained with ``EarlyStopping(restore_best=True)``, else its last epoch's."""
        if self.history is None or by not in self.history:
            raise ValueError(f"no history of {by!r}: fit first{' with validation' if by.startswith('val') else ''}")
        values = self.history[by]
        sign = -1.0 if by.endswith("accuracy") else 1.0
        best = np.where(np.isnan(values), np.inf, sign * values).min(axis=1)
        best = np.where(self._status == OK, best, np.inf)
        if not np.isfinite(best).any():
            raise ValueError(f"no member has a finite {by!r}")
        return int(np.argmin(best))

    # -- files ----------------------------------------------------------------------------

    def save(self, path):
        """Write the population to exactly ``path`` (an ``.npz`` archive, no pickle), atomically."""
        meta = {"format": FORMAT, "version": VERSION, "architecture": self._arch, "loss": self.loss,
                "status": self.status.tolist()}
        arrays = {"params": self._params, "seeds": self.seeds, "l2": self.l2}
        if self.feature_names_in_ is not None:
            arrays["feature_names"] = np.array([str(c) for c in self.feature_names_in_], dtype=str)
        for name in ("lr", "weight_decay"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        with atomic_write(os.fspath(path)) as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path):
        """Read a population written by ``save``, every member checked before anything is allocated."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no population file {path}")
        what = "fastnn population file"
        with Archive(path, what) as archive:
            if "meta" not in archive.members:
                raise ValueError(f"{path} is not a {what}: it has no description ('meta')")
            meta = parse_json(str(archive.read("meta", shape=(), kinds="U", max_bytes=1 << 24)), path, what)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"{path} is not a {what} this fastnn reads (format {FORMAT} version {VERSION})")
            arch = meta.get("architecture")
            if not isinstance(arch, dict):
                raise ValueError(f"{path} is not a valid {what}: its architecture is missing")
            layers = layers_of({**arch, "format": "fastnn.Sequential", "version": 4, "loss": meta.get("loss")}, path)
            dtype = np.dtype(arch["dtype"])
            model = Sequential(*layers, dtype=dtype, loss=meta.get("loss"))
            size = archive.header("seeds")[0]
            if len(size) != 1 or not 0 < size[0] <= MAX_MEMBERS:
                raise ValueError(f"{path} is not a valid {what}: its member count is {size}")
            M, P = size[0], model.count_params()
            allowed = {"meta", "params", "seeds", "l2", "lr", "weight_decay", "feature_names"}
            if set(archive.members) - allowed:
                raise ValueError(f"{path} is not a valid {what}: it holds members "
                                 f"{sorted(set(archive.members) - allowed)[:5]} (refused unread)")
            seeds = archive.read("seeds", shape=(M,), dtype=np.int64)
            params = archive.read("params", shape=(M, P), dtype=dtype)
            settings = {name: archive.read(name, shape=(M,), dtype=np.float64)
                        for name in ("l2", "lr", "weight_decay") if name in archive.members}
            names = None
            if "feature_names" in archive.members:
                names = archive.read("feature_names", shape=(model.in_features,), kinds="U",
                                     max_bytes=4096 * (model.in_features + 1)).tolist()
                if len(set(names)) != model.in_features:
                    raise ValueError(f"{path} is not a valid {what}: its column names are not distinct")
            status = meta.get("status")
            if not isinstance(status, list) or len(status) != M or any(
                    s not in ("ok", "diverged", "stopped", "bad targets") for s in status):
                raise ValueError(f"{path} is not a valid {what}: its members' status is damaged")
            try:
                pop = cls(model, seeds=seeds.tolist(), params=params, **settings)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path} is not a valid {what}: {e}") from None
        status = np.array(status)
        if names is not None:
            pop.feature_names_in_ = pop._model.feature_names_in_ = np.array(names, dtype=object)
        pop._status[status == "diverged"] = DIVERGED
        pop._status[status == "bad targets"] = BAD_TARGETS
        pop._stopped[status == "stopped"] = True
        return pop

    def __repr__(self):
        return f"Population({self.size} x {self._model.engine.describe()}, {self.dtype.name})"


class _Run:
    """One ``Population.fit``: its checked arguments, buffers and epoch loop."""

    def __init__(self, pop, X, y, loss, optimizer, epochs, batch_size, rows, shuffle, shared_order, sample_weight,
                 validation_data, validation_rows, early_stopping, stopping, lr_schedule, checkpoint_dir, resume,
                 threads, verbose):
        self.pop = pop
        model = pop._model
        M = pop.size
        self.loss = loss = model.resolve_loss(loss if loss is not None else pop.loss)
        self.keep_loss = pop.loss is None  # (a first fit names the population's task, as Sequential's)
        self.epochs = positive_int("epochs", epochs)
        self.batch_size = positive_int("batch_size", batch_size)
        X, y = model.checked_data(X, y, loss)
        N = X.shape[0]
        self.X, self.y = X, y
        self.shuffle, self.shared_order = bool(shuffle), bool(shared_order)
        self.rows = self._rows("rows", rows, N, M)
        self.every_row = rows is None  # (each member's rows are 0..N-1: its order is its permutation)
        if self.shared_order and rows is not None and any(not np.array_equal(r, self.rows[0]) for r in self.rows):
            raise ValueError("shared_order=True needs the same rows for every member")
        self.w = self._weights(sample_weight, N, M)
        self.validation = None
        if validation_data is not None and validation_rows is not None:
            raise ValueError("pass validation_data or validation_rows, not both")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a pair (X_val, y_val) or (X_val, y_val, sample_weight_val)")
            Xv, yv = model.checked_data(*validation_data[:2], loss)
            wv = row_weights(loss, yv, Xv.shape[0], pop.dtype, validation_data[2] if len(validation_data) == 3
                             else None)
            if not wv.sum() > 0:
                raise ValueError("the validation rows' weights sum to 0: there is nothing to validate on")
            self.validation = (Xv, yv, wv)
        self.validation_rows = None if validation_rows is None else self._rows("validation_rows", validation_rows, N, M)
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a fastnn.EarlyStopping, got {type(early_stopping).__name__}")
        if stopping is not None and not isinstance(stopping, NoImprovement):
            raise TypeError(f"stopping must be a fastnn.NoImprovement, got {type(stopping).__name__}")
        scored = self.validation is not None or self.validation_rows is not None
        for rule in (early_stopping, stopping):
            if rule is not None and rule.monitor.startswith("val") and not scored:
                raise ValueError(f"{type(rule).__name__} monitors {rule.monitor!r}: pass validation_data or "
                                 f"validation_rows")
            if rule is not None and rule.monitor.endswith("accuracy") and loss not in CLASSIFIERS:
                raise ValueError(f"{type(rule).__name__} monitors {rule.monitor!r}, which a regression has not")
        self.early = [copy.deepcopy(early_stopping) for _ in range(M)] if early_stopping is not None else None
        self.stopping = [copy.deepcopy(stopping) for _ in range(M)] if stopping is not None else None
        for rules in (self.early, self.stopping):
            for rule in rules or ():
                rule.start()
        if lr_schedule is None:
            lr_schedule = Constant()
        elif not isinstance(lr_schedule, Schedule):
            raise TypeError(f"lr_schedule must be a fastnn.schedules schedule, got {type(lr_schedule).__name__}")
        self.schedule = lr_schedule
        if threads is None:
            from ..engine.threads import get_num_threads
            threads = get_num_threads()["numba"]
        self.threads = positive_int("threads", threads)
        self.verbose = verbose
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        self.checkpoint_dir, self.resume, self.digest = checkpoint_dir, bool(resume), None
        self.optimizer, self.hyper = self._optimizer(optimizer)

    @staticmethod
    def _rows(name, rows, N, M):
        if rows is None:
            return [np.arange(N, dtype=np.int64)] * M
        if isinstance(rows, np.ndarray) and rows.ndim == 2:
            rows = list(rows)
        if not isinstance(rows, (list, tuple)) or len(rows) != M:
            raise ValueError(f"{name} must be {M} index arrays (one per member), got "
                             f"{len(rows) if isinstance(rows, (list, tuple)) else type(rows).__name__}")
        out = []
        for m, r in enumerate(rows):
            r = np.asarray(r)
            if r.ndim != 1 or r.size == 0 or r.dtype.kind not in "iu":
                raise ValueError(f"{name}[{m}] must be a non-empty 1-D array of row indices, got {r.dtype} {r.shape}")
            if r.min() < 0 or r.max() >= N:
                raise ValueError(f"{name}[{m}] holds row {int(r.min() if r.min() < 0 else r.max())}, outside 0 to "
                                 f"{N - 1}")
            out.append(r.astype(np.int64))
        return out

    def _weights(self, sample_weight, N, M):
        pop = self.pop
        if sample_weight is None:
            w = np.ones((1, N), pop.dtype)
        else:
            sw = np.asarray(sample_weight)
            if sw.ndim == 2:
                if sw.shape != (M, N):
                    raise ValueError(f"sample_weight must be (N,) = ({N},) or (M, N) = ({M}, {N}), got {sw.shape}")
                w = np.stack([row_weights(self.loss, self.y, N, pop.dtype, row) for row in sw])
            else:
                w = row_weights(self.loss, self.y, N, pop.dtype, sw)[None, :]
        totals = (np.broadcast_to(w.sum(axis=1, dtype=np.float64), (M,)) if self.every_row else
                  [w[0 if w.shape[0] == 1 else m, r].sum(dtype=np.float64) for m, r in enumerate(self.rows)])
        for m, total in enumerate(totals):
            if not total > 0:
                raise ValueError(f"member {m}'s rows weigh 0 in all: it has nothing to train on")
        return np.ascontiguousarray(w)

    def _optimizer(self, optimizer):
        pop = self.pop
        if optimizer is None:
            optimizer = pop.optimizer if pop.optimizer is not None else Adam()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastnn optimizer such as fastnn.SGD(lr=0.05), "
                            f"got {type(optimizer).__name__}")
        settings, rule = optimizer.settings(), optimizer.rule
        if pop.weight_decay is not None and "weight_decay" not in settings:
            raise ValueError(f"{type(optimizer).__name__} has no weight_decay; the population's weight_decay "
                             f"needs an optimizer that has one")
        # one optimizer's constants for all, each member's weight decay in its column (lr goes per step)
        hyper = np.tile(rule.constant_values(settings), (pop.size, 1))
        if pop.weight_decay is not None:
            column = rule.constants.index("weight_decay")
            for value in np.unique(pop.weight_decay):  # (checked as the constructor checks it)
                member = {**settings, "weight_decay": float(value)}
                rule.check(member, "weight_decay")
                if rule.kernel(member) is not optimizer.kernel():
                    raise ValueError(f"a weight decay of {value:g} needs another {type(optimizer).__name__} kernel: "
                                     f"one optimizer kind and switches per population")
            hyper[:, column] = pop.weight_decay
        rows = len(rule.rows_for(settings))
        P = pop._params.shape[1]
        # a new optimizer (or other switches) starts each member's state afresh: in run(), once
        # nothing can refuse the call any more
        self.fresh = optimizer is not pop.optimizer or pop._state is None or pop._state.shape != (pop.size, rows, P)
        self.state_shape = (pop.size, rows, P)
        return optimizer, hyper

    def base_lr(self):
        pop = self.pop
        return pop.lr if pop.lr is not None else np.full(pop.size, float(self.optimizer.lr))

    # -- the loop -------------------------------------------------------------------------

    def run(self):
        pop, M = self.pop, self.pop.size
        engine = pop._model.engine
        fn, objective, drivers = engine.population_fn(self.loss, self.optimizer)
        before = pop.optimizer, pop._state, pop._steps.copy()
        if self.fresh:
            pop.optimizer, pop._state = self.optimizer, np.zeros(self.state_shape, pop.dtype)
            pop._steps[:] = 0
        if (pop.l2 > 0).any():
            objective = objective._replace(penalty=engine.penalty_address())
        self.fn, self.objective, self.drivers = fn, objective, drivers
        counts = np.array([r.size for r in self.rows], np.int64)
        self.batches = -(-counts // self.batch_size)
        B = int(self.batches.max())
        row_at = np.zeros(M + 1, np.int64)
        np.cumsum(counts, out=row_at[1:])
        base = np.concatenate(self.rows)  # (without shuffling, also each epoch's rows)
        order = base.copy() if not (self.shuffle and not self.shared_order) else np.empty_like(base)
        self.lr = self.base_lr().copy()  # each member's rate now (the adaptive rule lowers it)
        self.members = kernels.Members(
            params=pop._params, grads=pop._grads, seeds=pop._mask_seeds, hyper=self.hyper, state=pop._state,
            steps=pop._steps, l2=pop.l2.copy(), lr=np.zeros((M, B)), rows=order, row_at=row_at,
            base=base[:0] if self.every_row else base, generators=self._generators(), w=self.w,
            active=np.ones(M, np.int64), status=pop._status, failed_at=np.full(M, -1, np.int64),
            losses=np.zeros((M, B)), weights=np.zeros((M, B)), correct=np.zeros((M, B)))
        self.history = {key: np.full((M, self.epochs), np.nan) for key in self._keys() + ["lr"]}
        first_epoch = 0
        if self.checkpoint_dir is not None:
            try:
                os.makedirs(self.checkpoint_dir, exist_ok=True)
                if self.resume:
                    first_epoch = self._restore()
            except BaseException:  # a refused resume changes nothing
                pop.optimizer, pop._state = before[:2]
                pop._steps[...] = before[2]
                raise
        if first_epoch == 0:  # (a new fit trains every member again, diverged ones from their last finite step)
            pop._stopped[:] = False
            pop._status[:] = OK
            pop.failures = []
        self.members.active[:] = ~pop._stopped & (pop._status == OK)
        X, y = self.X, raw_rows_of(self.y)
        T = max(1, min(self.threads, M))
        C = min(self.batch_size, int(counts.max()))  # (a batch never holds more rows than a member has)
        self.scratch = [(_workspace(engine, C), kernels.Scratch(np.empty((C, X.shape[1]), pop.dtype),
                                                                np.empty((C, y.shape[1]), np.uint8),
                                                                np.empty(C, pop.dtype))) for _ in range(T)]
        pool = concurrent.futures.ThreadPoolExecutor(T - 1) if T > 1 else None
        try:
            with one_blas_thread():
                for epoch in range(first_epoch, self.epochs):
                    self._epoch(epoch, X, y, pool)
                    if self._end_of_epoch(epoch):
                        break
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        self._finish()
        pop.history = self.history
        pop.batch_losses = self.members.losses
        if self.keep_loss:
            pop.loss = pop._model.loss = self.loss
        return self.history

    def _keys(self):
        keys = ["loss"] + (["accuracy"] if self.loss in CLASSIFIERS else [])
        if self.validation is not None or self.validation_rows is not None:
            keys += ["val_" + k for k in keys]
        return keys

    def _order(self, first_member, stop_member, shared):
        """One order for every member (``shared_order``): member m's rows through it, for the
        members this thread trains. (Own orders are drawn by the compiled loop itself.)"""
        members = self.members
        for m in range(first_member, stop_member):
            if members.active[m]:
                np.take(self.rows[m], shared, out=members.rows[members.row_at[m]:members.row_at[m + 1]])

    def _generators(self):
        """Each member's generator as the compiled loop calls it: the addresses of its
        next_uint32 and next_uint64 and of its state (NumPy's ``bit_generator.ctypes``); all 0
        when the loop draws no order (no shuffling, or one order for all from Python). The
        population keeps the generators alive."""
        import ctypes

        table = np.zeros((self.pop.size, 3), np.int64)
        if self.shuffle and not self.shared_order:
            for m, rng in enumerate(self.pop._rngs):
                c = rng.bit_generator.ctypes
                table[m] = (ctypes.cast(c.next_uint32, ctypes.c_void_p).value,
                            ctypes.cast(c.next_uint64, ctypes.c_void_p).value, c.state_address)
        return table

    def _split(self, first, stop):
        """Members split into contiguous ranges of about equal work, one per thread."""
        work = np.where(self.members.active == 1, np.minimum(self.batches, stop) - first, 0).clip(0)
        T = len(self.scratch)
        if work.sum() == 0:
            return []
        ends = np.searchsorted(np.cumsum(work), np.arange(1, T) * work.sum() / T, side="left") + 1
        bounds = [0, *sorted(set(int(e) for e in ends if 0 < e < self.pop.size)), self.pop.size]
        return list(zip(bounds[:-1], bounds[1:]))

    def _epoch(self, epoch, X, y, pool):
        pop, members = self.pop, self.members
        B = members.lr.shape[1]
        steps = self.epochs * self.batches
        if type(self.schedule) is Constant:  # each member's learning rate for each of its batches
            members.lr[...] = self.lr[:, None]
        else:
            for m in range(pop.size):
                b = int(self.batches[m])
                members.lr[m, :b] = self.schedule.factors(epoch * b + np.arange(b), int(steps[m])) * self.lr[m]
        for buffer in (members.losses, members.weights, members.correct):
            buffer.fill(0.0)
        members.failed_at.fill(-1)
        shared = None
        if self.shuffle and self.shared_order:  # (one draw, from member 0's generator)
            shared = pop._rngs[0].permutation(self.rows[0].size)
        first, chunk = 0, 1
        try:
            self._chunks(first, chunk, B, X, y, pool, shared)
        finally:
            self.failed_now = self._record_failures(epoch)

    def _chunks(self, first, chunk, B, X, y, pool, shared):
        members = self.members
        while first < B:
            stop = min(first + chunk, B)
            start = time.perf_counter()
            ranges = self._split(first, stop)
            args = (self.objective, self.optimizer_tuple(), self.drivers, members, X, y)
            order = first == 0 and shared is not None  # (each thread puts its members' rows in order)
            futures = [pool.submit(self._run_range, k, a, b, first, stop, args, order, shared) for k, (a, b) in
                       enumerate(ranges[1:], 1)] if ranges else []
            try:
                if ranges:
                    self._run_range(0, *ranges[0], first, stop, args, order, shared)
            finally:
                for f in futures:
                    f.result()
            per_batch = (time.perf_counter() - start) / (stop - first)
            chunk = max(1, int(CHUNK_SECONDS / max(per_batch, 1e-9)))
            first = stop

    def optimizer_tuple(self):
        from ..kernels.train import Optimizer as Compiled
        engine = self.pop._model.engine
        return Compiled(engine.update_address(self.optimizer.kernel()), self.hyper[0], self.pop._state[0],
                        self.pop._steps[0])

    def _run_range(self, k, first_member, stop_member, first, stop, args, order, shared):
        if order:
            self._order(first_member, stop_member, shared)
        objective, opt, drivers, members, X, y = args
        ws, scratch = self.scratch[k]
        net = self.pop._model.engine.net
        return self.fn(net, ws, objective, opt, drivers, members, X, y, scratch, self.batch_size, first_member,
                       stop_member, first, stop)

    def _end_of_epoch(self, epoch):
        """History, failures, validation and stopping for each member; the checkpoint. Returns
        True when no member trains on."""
        pop, members, h = self.pop, self.members, self.history
        failed = self.failed_now
        ran = members.active.astype(bool) | failed
        h["lr"][ran, epoch] = self.lr[ran]
        done = ran & ~failed  # (batches a member did not run weigh 0)
        total = np.where(done, members.weights.sum(axis=1), 1.0)
        h["loss"][done, epoch] = (np.einsum("mb,mb->m", members.losses, members.weights) / total)[done]
        if "accuracy" in h:
            h["accuracy"][done, epoch] = (members.correct.sum(axis=1) / total)[done]
        scored = np.flatnonzero(members.active == 1)
        if scored.size and (self.validation is not None or self.validation_rows is not None):
            self._validate(epoch, scored)
        for m in scored:
            monitor_history = {k: v[m, :epoch + 1].tolist() for k, v in h.items()}
            params = pop._params[m]
            if self.early is not None and self.early[m](epoch, monitor_history, params):
                self._stop(m)
            if self.stopping is not None:
                verdict = self.stopping[m].step(monitor_history, params, self.lr[m])
                if verdict == "stop":
                    self._stop(m)
                elif verdict == "lower":
                    self._lower_lr(m)
        if self.checkpoint_dir is not None:
            self._checkpoint(epoch)
        if self.verbose:
            active = int(members.active.sum())
            print(f"epoch {epoch + 1}/{self.epochs}: mean loss {np.nanmean(h['loss'][:, epoch]):.4f}, "
                  f"{active} of {pop.size} members training")
        return not members.active.any()

    def _record_failures(self, epoch):
        """Name the members whose step was refused in this epoch (the compiled loop froze them
        and set their status); returns which. Also after an interruption (``_epoch``)."""
        members, pop = self.members, self.pop
        failed = members.failed_at >= 0
        for m in np.flatnonzero(failed):
            b = int(members.failed_at[m])
            pop.failures.append({"member": int(m), "epoch": epoch + 1, "step": b + 1, "lr": float(members.lr[m, b]),
                                 "why": "bad targets" if members.status[m] == BAD_TARGETS else "diverged"})
        members.failed_at[failed] = -1
        return failed

    def _stop(self, m):
        self.members.active[m] = 0
        self.pop._stopped[m] = True

    def _lower_lr(self, m):
        """scikit-learn's adaptive rate: lr / 5; the momentum buffer scaled so that the new rate
        applies to new gradients only (as the estimators do)."""
        old = self.lr[m]
        self.lr[m] = old / 5.0
        state = self.pop._state[m]
        buffers = self.optimizer.rule.rows_for(self.optimizer.settings())
        if "momentum_buffer" in buffers:
            state[buffers.index("momentum_buffer")] *= 5.0

    def _validate(self, epoch, which):
        pop, h = self.pop, self.history
        if self.validation is not None:
            scores = pop._scores(*self.validation, self.loss, which)
            for key, values in scores.items():
                h["val_" + key][which, epoch] = values
        else:
            for m in which:
                r = self.validation_rows[m]
                w = self.w[0 if self.w.shape[0] == 1 else m, r]
                if not w.sum() > 0:
                    continue
                scores = pop._scores(self.X[r], self.y[r], w, self.loss, np.array([m]))
                for key, values in scores.items():
                    h["val_" + key][m, epoch] = values[0]

    def _finish(self):
        pop = self.pop
        for rules in (self.early, self.stopping):
            for m, rule in enumerate(rules or ()):
                if pop._status[m] == OK and getattr(rule, "restore_best", False) and rule.best_params is not None:
                    pop._params[m] = rule.best_params
        if pop.failures:
            shown = "; ".join(f"member {f['member']} in epoch {f['epoch']} at step {f['step']} (lr {f['lr']:g})"
                              for f in pop.failures[:10])
            more = f" and {len(pop.failures) - 10} more" if len(pop.failures) > 10 else ""
            failed = int((pop._status != OK).sum())
            message = (f"{failed} of {pop.size} members diverged (NaN or inf loss, gradient or update) and were "
                       f"frozen at their last finite parameters: {shown}{more}. Lower their learning rates.")
            if not (pop._status == OK).any():
                f = pop.failures[0]
                raise DivergenceError("every member " + message.split(" members ", 1)[1], f["epoch"], f["step"])
            warnings.warn(message, MemberDivergedWarning, stacklevel=3)

    # -- checkpoints ----------------------------------------------------------------------

    def _settings(self):
        """What a resumed run must share with the run it continues (a digest, once per run)."""
        if self.digest is not None:
            return self.digest
        digest = hashlib.sha256()
        arrays = (self.X, self.y, self.w, *self.rows, self.pop.seeds, self.pop.l2, self.base_lr(), self.hyper,
                  *(self.validation or ()), *(self.validation_rows or ()))
        for a in arrays:
            digest.update(np.ascontiguousarray(a).tobytes())
        text = json.dumps([self.loss, self.epochs, self.batch_size, self.shuffle, self.shared_order,
                           repr(self.schedule), type(self.optimizer).__name__, self.pop._arch, self.pop.dtype.name,
                           repr(self.early[0]) if self.early else None,
                           repr(self.stopping[0]) if self.stopping else None, self.validation is not None,
                           self.validation_rows is not None], sort_keys=True, default=str)
        digest.update(text.encode())
        self.digest = digest.hexdigest()
        return self.digest

    def _path(self):
        return os.path.join(os.fspath(self.checkpoint_dir), "population.npz")

    def _checkpoint(self, epoch):
        pop = self.pop
        meta = {"format": FORMAT + ".checkpoint", "version": VERSION, "epoch": epoch + 1, "settings": self._settings(),
                "rngs": [g.bit_generator.state for g in pop._rngs], "failures": pop.failures,
                "rules": [[r.state_dict() if hasattr(r, "state_dict") else None for r in rules]
                          for rules in (self.early or [], self.stopping or [])]}
        arrays = {"params": pop._params, "state": pop._state, "steps": pop._steps, "status": pop._status,
                  "stopped": pop._stopped, "lr": self.lr, **{f"history_{k}": v for k, v in self.history.items()}}
        for kind, rules in (("early", self.early), ("stopping", self.stopping)):
            for m, rule in enumerate(rules or ()):
                if rule.best_params is not None:
                    arrays[f"best_{kind}_{m}"] = rule.best_params
        for rules in meta["rules"]:
            for state in rules:
                if state is not None:
                    state.pop("best_params", None)
        with atomic_write(self._path()) as f:
            np.savez(f, meta=np.array(json.dumps(meta, default=_plain)), **arrays)

    def _restore(self):
        """Continue from the checkpoint (the first epoch to run), or 0 when there is none."""
        path = self._path()
        if not os.path.exists(path):
            return 0
        pop, M = self.pop, self.pop.size
        what = "fastnn population checkpoint"
        with Archive(path, what) as archive:
            if "meta" not in archive.members:
                raise ValueError(f"{path} is not a {what}")
            meta = parse_json(str(archive.read("meta", shape=(), kinds="U", max_bytes=1 << 28)), path, what)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT + ".checkpoint" or \
                    meta.get("version") != VERSION:
                raise ValueError(f"{path} is not a {what} this fastnn reads")
            if meta.get("settings") != self._settings():
                raise ValueError(f"{path} was written by a run with other data, members or settings; resume with "
                                 f"the same arguments, or use another checkpoint_dir")
            epoch = meta.get("epoch")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 < epoch <= self.epochs:
                raise ValueError(f"{path} is not a valid {what}: its epoch is {epoch!r}")
            arrays = {"params": (pop._params.shape, pop.dtype), "state": (pop._state.shape, pop.dtype),
                      "steps": (pop._steps.shape, np.int64), "status": ((M,), np.int64), "stopped": ((M,), bool),
                      "lr": ((M,), np.float64),
                      **{f"history_{k}": (v.shape, np.float64) for k, v in self.history.items()}}
            read = {name: archive.read(name, shape=shape, dtype=dtype) for name, (shape, dtype) in arrays.items()}
            rngs = meta.get("rngs")
            if not isinstance(rngs, list) or len(rngs) != M:
                raise ValueError(f"{path} is not a valid {what}: its generators are damaged")
            try:
                for state in rngs:  # (each tried on a scratch generator: nothing changes before all pass)
                    type(pop._rngs[0].bit_generator)().state = state
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                raise ValueError(f"{path} is not a valid {what}: its generators are damaged ({e})") from None
            rules = meta.get("rules")
            kinds = (("early", self.early or []), ("stopping", self.stopping or []))
            if not (isinstance(rules, list) and len(rules) == 2
                    and all(isinstance(r, list) and len(r) == len(mine) for r, (_, mine) in zip(rules, kinds))):
                raise ValueError(f"{path} is not a valid {what}: its stopping rules are damaged")
            best = {f"best_{kind}_{m}": archive.read(f"best_{kind}_{m}", shape=(pop._params.shape[1],), dtype=pop.dtype)
                    for kind, mine in kinds for m in range(len(mine)) if f"best_{kind}_{m}" in archive.members}
        failures = meta.get("failures")
        keys = {"member": int, "epoch": int, "step": int, "lr": (int, float), "why": str}
        if not (isinstance(failures, list) and len(failures) <= M and all(
                isinstance(f, dict) and set(f) == set(keys) and all(isinstance(f[k], t) for k, t in keys.items())
                and 0 <= f["member"] < M for f in failures)):
            raise ValueError(f"{path} is not a valid {what}: its list of failed members is damaged")
        if not (np.all(np.isfinite(read["lr"])) and np.all(read["lr"] > 0) and np.all(read["steps"] >= 0)):
            raise ValueError(f"{path} is not a valid {what}: its learning rates or step counts are damaged")
        if not np.isin(read["status"], (OK, DIVERGED, BAD_TARGETS)).all():
            raise ValueError(f"{path} is not a valid {what}: its members' status is damaged")
        if not all(np.all(np.isfinite(read[k])) for k in ("params", "state")):
            raise ValueError(f"{path} is not a usable {what}: it holds NaN or inf parameters")
        states = []
        for (kind, mine), saved in zip(kinds, rules):
            for m, (rule, state) in enumerate(zip(mine, saved)):
                fresh = copy.deepcopy(rule)
                try:
                    fresh.load_state_dict({**state, "best_params": best.get(f"best_{kind}_{m}")})
                except (TypeError, ValueError, KeyError, AttributeError) as e:
                    raise ValueError(f"{path} is not a valid {what}: its stopping rules are damaged ({e})") from None
                states.append((rule, fresh))
        for rule, fresh in states:  # (everything checked: from here on nothing can fail)
            rule.__dict__.update(fresh.__dict__)
        for g, state in zip(pop._rngs, rngs):
            g.bit_generator.state = state
        pop._params[...] = read["params"]
        pop._state[...] = read["state"]
        pop._steps[...] = read["steps"]
        pop._status[...] = read["status"]
        pop._stopped[...] = read["stopped"]
        self.lr[...] = read["lr"]
        for k, v in self.history.items():
            v[...] = read[f"history_{k}"]
        pop.failures = list(failures)
        return epoch


def _plain(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _workspace(engine, rows):
    """A workspace of its own for one thread's members (``train.Workspace``)."""
    from ..kernels.train import Workspace
    return Workspace(np.empty(rows * engine.width, engine.dtype), np.empty(rows * engine.width, engine.dtype),
                     np.empty(rows * engine.z_width, engine.dtype))
