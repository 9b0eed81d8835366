"""Per-epoch hooks for ``fit``: early stopping, and any callable ``(epoch, history) -> bool``."""
from __future__ import annotations

import math

import numpy as np


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        A history key: "val_loss" (default), "val_accuracy", "loss" or "accuracy". Losses are
        minimised, accuracies maximised.
    patience : int
        Epochs without improvement before stopping.
    min_delta : float
        The smallest change that counts as an improvement.
    restore_best : bool
        At the end of ``fit``, put back the parameters of the best epoch.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best=True):
        if monitor not in ("val_loss", "val_accuracy", "loss", "accuracy"):
            raise ValueError(f"monitor must be val_loss, val_accuracy, loss or accuracy, got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, float(min_delta), restore_best
        self._sign = -1.0 if monitor.endswith("accuracy") else 1.0  # compare as "smaller is better"
        self.best_epoch, self.best, self.stopped_epoch, self.best_params, self._wait = None, math.inf, None, None, 0

    def start(self):
        self.best_epoch, self.best, self.stopped_epoch, self.best_params, self._wait = None, math.inf, None, None, 0

    def state_dict(self) -> dict:
        """Where a run stands, by name (what a checkpoint keeps): the best value (as "smaller is
        better"), its epoch, the epochs waited since, the epoch it stopped (or None), and the
        best epoch's parameters (an array, or None)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self._wait,
                "stopped_epoch": self.stopped_epoch, "best_params": self.best_params}

    def load_state_dict(self, state: dict) -> None:
        """Continue from what ``state_dict`` returned."""
        best = float(state["best"])
        if math.isnan(best):
            raise ValueError("an early-stopping state with a NaN best value")
        self.best, self.best_epoch, self._wait = best, state["best_epoch"], int(state["wait"])
        self.stopped_epoch = state["stopped_epoch"]
        self.best_params = None if state["best_params"] is None else np.array(state["best_params"])

    def __call__(self, epoch, history, params=None):
        if self.monitor not in history:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not record "
                             f"(it has {sorted(history)}); pass validation_data or validation_split")
        value = self._sign * history[self.monitor][-1]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best and params is not None:
                self.best_params = params.copy()
            return False
        self._wait += 1
        if self._wait > self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"restore_best={self.restore_best})")


class NoImprovement:
    """scikit-learn's stopping rule for its MLPs, for each member of a population.

    After each epoch, ``monitor`` counts as improved when it beats the best value so far by
    ``tol`` (losses: at most best - tol; accuracies: at least best + tol). After more than
    ``n_iter_no_change`` epochs in a row without improvement the member stops, or with
    ``adaptive`` its learning rate is divided by 5 and the count starts again, unless the
    rate is ``min_lr`` or below already: then it stops (scikit-learn's ``learning_rate="adaptive"``). With a
    validation monitor, the member ends with the parameters of its best epoch (scikit-learn's
    ``early_stopping``).

    Parameters
    ----------
    tol : float
    n_iter_no_change : int
    monitor : str
        "loss" (the training loss, scikit-learn's default), "val_loss" or "val_accuracy".
    adaptive : bool
    min_lr : float
    """

    def __init__(self, tol=1e-4, n_iter_no_change=10, monitor="loss", adaptive=False, min_lr=1e-6):
        if monitor not in ("loss", "val_loss", "val_accuracy"):
            raise ValueError(f"monitor must be loss, val_loss or val_accuracy, got {monitor!r}")
        for name, value in (("tol", tol), ("min_lr", min_lr)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if isinstance(n_iter_no_change, (bool, np.bool_)) or not isinstance(n_iter_no_change, (int, np.integer)) \
                or n_iter_no_change < 1:
            raise ValueError(f"n_iter_no_change must be an integer >= 1, got {n_iter_no_change!r}")
        self.tol, self.n_iter_no_change, self.monitor = float(tol), int(n_iter_no_change), monitor
        self.adaptive, self.min_lr = bool(adaptive), float(min_lr)
        self.restore_best = monitor.startswith("val")
        self._sign = -1.0 if monitor.endswith("accuracy") else 1.0
        self.start()

    def start(self):
        self.best, self.count, self.best_params = math.inf, 0, None

    def step(self, history, params, lr):
        """After an epoch: "stop", "lower" (divide the learning rate by 5) or None."""
        value = self._sign * history[self.monitor][-1]
        improved = value <= self.best - self.tol
        if value < self.best:
            self.best = value
            if self.restore_best:
                self.best_params = params.copy()
        self.count = 0 if improved else self.count + 1
        if self.count > self.n_iter_no_change:
            if self.adaptive and lr > self.min_lr:  # (scikit-learn: stop once the rate is at 1e-6 or below)
                self.count = 0
                return "lower"
            return "stop"
        return None

    def state_dict(self) -> dict:
        return {"best": self.best, "count": self.count, "best_params": self.best_params}

    def load_state_dict(self, state: dict) -> None:
        best, count = float(state["best"]), int(state["count"])
        if math.isnan(best) or count < 0:
            raise ValueError("a NoImprovement state with a NaN best value or a negative count")
        self.best, self.count = best, count
        self.best_params = None if state["best_params"] is None else np.array(state["best_params"])

    def __repr__(self):
        return (f"NoImprovement(tol={self.tol}, n_iter_no_change={self.n_iter_no_change}, monitor={self.monitor!r}, "
                f"adaptive={self.adaptive}, min_lr={self.min_lr})")
