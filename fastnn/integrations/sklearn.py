"""scikit-learn estimators backed by fastnn: ``MLPClassifier`` and ``MLPRegressor``.

Constructor parameters, fitted attributes and rules are those of
``sklearn.neural_network.MLPClassifier``/``MLPRegressor``, so the same settings give comparable
results, on scaled data or not:
- **Initialisation** as scikit-learn's (``_init_coef``): weights and biases uniform in
  +-sqrt(6 / (fan_in + fan_out)), with 2 in place of 6 for ``activation="logistic"``, drawn from
  ``random_state`` in scikit-learn's order (``fastnn.Sequential`` keeps He/Glorot by activation).
- **L2 penalty** as scikit-learn's: ``alpha/2 * sum(W^2)`` over the weight matrices only (not
  the biases), divided by each batch's number of rows, or its sum of sample weights; in the
  loss (so ``loss_curve_`` includes it) and in the gradient (``Sequential.fit(l2=...)``).
- ``solver``: "adam" (default), "sgd" (``momentum``, ``nesterovs_momentum``; ``learning_rate``
  "constant", "invscaling" lr = learning_rate_init / (t_ + 1)^power_t after each epoch,
  "adaptive" lr / 5 whenever ``n_iter_no_change`` epochs pass without improving by ``tol``),
  or "lbfgs": full-batch L-BFGS (SciPy's L-BFGS-B) on the fused loss and gradient, with
  ``max_iter`` iterations, ``max_fun`` evaluations and ``tol`` as scikit-learn's; it sets
  ``loss_``, and no ``loss_curve_``.
- The stochastic solvers run one ``fit`` with scikit-learn's epoch rules in a per-epoch hook
  (``tol``/``n_iter_no_change`` on the training loss, or with ``early_stopping`` on the
  validation score: accuracy, or R^2; the best epoch's weights kept), so an estimator pays
  little over the network it wraps. ``max_iter`` reached first gives ``ConvergenceWarning``.
- ``warm_start``, ``partial_fit`` (stochastic solvers), ``sample_weight``.
- Binary problems train one logistic output (binary cross-entropy), as scikit-learn does;
  more classes a softmax output (``out_activation_``).
- ``MLPRegressor(loss=...)``: "squared_error" (half the mean squared error, as scikit-learn's)
  or "poisson" (half the Poisson deviance with a log link: the network's output is the log of
  the rate, and ``predict`` gives the rate).
- The classifier trains float32 input in float32 (faster) and anything else in float64; the
  regressor always trains in float64, so a target's scale does not cost it precision.
- Threads: from ``fastnn.set_num_threads`` and threadpoolctl or joblib limits, never from the
  clock. A fit called from a thread other than the main one (joblib's threading backend, a
  thread pool) runs BLAS on one thread, so concurrent fits do not fight over the cores.
Requires scikit-learn (``pip install "fastnn-cpu[sklearn]"``, or ``pip install ".[sklearn]"`` in a
checkout); fastnn itself does not.
"""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ..nn.layers import Dense
from ..kernels._checks import positive, positive_int
from ..kernels.activations import REGISTRY as ACTIVATIONS
from ..nn.model import Sequential, sigmoid, softmax
from ..nn.optim import SGD, Adam

# scikit-learn's names, and every activation fastnn has under its own name
_ACTIVATIONS = {"logistic": "sigmoid", **{name: name for name in ACTIVATIONS}}
_SCHEDULES = ("constant", "invscaling", "adaptive")


class _BaseMLP(BaseEstimator):
    _loss = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun

    # -- building -------------------------------------------------------------------------

    # the network's loss is this factor times scikit-learn's: fastnn's mse is the mean squared
    # error, scikit-learn's "squared_error" half of it (so alpha and the learning rate follow)
    _loss_scale = 1.0

    def _check_params(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in ("lbfgs", "sgd", "adam"):
            raise ValueError(f"solver must be 'lbfgs', 'sgd' or 'adam', got {self.solver!r}")
        if self.learning_rate not in _SCHEDULES:
            raise ValueError(f"learning_rate must be one of {list(_SCHEDULES)}, got {self.learning_rate!r}")
        sizes = [self.hidden_layer_sizes] if np.isscalar(self.hidden_layer_sizes) else list(self.hidden_layer_sizes)
        for s in sizes:
            positive_int("hidden_layer_sizes", s)
        for name in ("alpha", "tol", "momentum", "power_t", "epsilon"):
            positive(name, getattr(self, name), allow_zero=True)
        positive("learning_rate_init", self.learning_rate_init)
        positive_int("max_iter", self.max_iter)
        positive_int("max_fun", self.max_fun)
        positive_int("n_iter_no_change", self.n_iter_no_change)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            positive_int("batch_size (or 'auto')", self.batch_size)
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction!r}")
        if self.momentum > 1:
            raise ValueError(f"momentum must lie in [0, 1], got {self.momentum!r}")
        for name in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        return [int(s) for s in sizes]

    def _batch(self, n):
        return min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)

    def _build(self, n_features, n_outputs, hidden, dtype):
        """A new network with scikit-learn's initialisation, drawn from ``random_state`` in its order."""
        self._random_state = check_random_state(self.random_state)
        sizes = [n_features, *hidden, n_outputs]
        factor = 2.0 if self.activation == "logistic" else 6.0
        start = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            start.append(self._random_state.uniform(-bound, bound, (fan_in, fan_out)))
            start.append(self._random_state.uniform(-bound, bound, fan_out))
        seed = int(self._random_state.randint(2**31 - 1))  # (the shuffling's)
        act = _ACTIVATIONS[self.activation]
        layers = [Dense(a, b, activation=act) for a, b in zip(sizes[:-2], sizes[1:-1])]
        self.model_ = Sequential(*layers, Dense(sizes[-2], n_outputs), seed=seed, dtype=dtype, loss=self._loss)
        for p, value in zip(self.model_.parameters(), start):
            p[...] = value
        self.optimizer_ = None
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(sizes)
        self._no_improvement_count = 0
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self.best_loss_ = np.inf
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None

    def _optimizer(self):
        if self.optimizer_ is None:
            lr = self.learning_rate_init * self._lr_factor()
            if self.solver == "sgd":
                self.optimizer_ = SGD(lr=lr, momentum=self.momentum,
                                      nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
            else:
                # scikit-learn's placement of epsilon; scaled with the loss, so that the steps are its own
                self.optimizer_ = Adam(lr=lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon * self._loss_scale,
                                       eps_after_correction=False)
        return self.optimizer_

    def _loss_cap(self):
        """scikit-learn's log loss clips probabilities to [eps, 1 - eps] of the data's dtype: a
        row's loss is at most -log(eps), which its stopping rules see (0: a regression's none)."""
        if self._loss in ("softmax_cross_entropy", "binary_cross_entropy"):
            return float(-np.log(np.finfo(self.model_.dtype).eps))
        return 0.0

    def _lr_factor(self):
        """SGD on a loss ``_loss_scale`` times scikit-learn's takes steps that much smaller to take
        scikit-learn's steps (Adam does not see a gradient's scale)."""
        return 1.0 / self._loss_scale if self.solver == "sgd" else 1.0

    @property
    def coefs_(self):
        """The weight matrices, (n_in, n_out) per layer: views into the network."""
        check_is_fitted(self, "model_")
        return [layer.W for layer in self.model_.dense_layers]

    @property
    def intercepts_(self):
        """The bias vectors, one per layer: views into the network."""
        check_is_fitted(self, "model_")
        return [layer.b for layer in self.model_.dense_layers]

    def _train(self, X, y, epochs, batch_size, sample_weight=None, incremental=False):
        """scikit-learn's training: L-BFGS, or its epoch loop (``_fit_stochastic``) as one fastnn
        ``fit`` whose per-epoch hook applies the learning-rate schedule and the stopping rules."""
        with _threads_for_this_call():
            if self.solver == "lbfgs":
                return self._fit_lbfgs(X, y, sample_weight)
            return self._fit_stochastic(X, y, epochs, batch_size, sample_weight, incremental)

    def _fit_stochastic(self, X, y, epochs, batch_size, sample_weight, incremental):
        if not incremental:  # as scikit-learn: every fit (warm or not) gets a new optimizer and count
            self.optimizer_, self._no_improvement_count = None, 0
        optimizer = self._optimizer()
        validation = None
        early = self.early_stopping and not incremental
        if early:
            stratify = y if self._loss != "mse" and y.ndim == 1 else None
            split = train_test_split(X, y, *(() if sample_weight is None else (sample_weight,)),
                                     random_state=self._random_state, test_size=self.validation_fraction,
                                     stratify=stratify)
            X, Xv, y, yv = split[:4]
            if sample_weight is not None:
                sample_weight = split[4]
            validation = (Xv, yv)
        rows, stopped = X.shape[0], [False]
        lr_factor = self._lr_factor()

        def set_lr(lr):
            # scikit-learn's momentum keeps the learning rate inside the velocity (v <- mu v - lr g),
            # PyTorch's outside (v <- mu v + g; p <- p - lr v): so that a new rate applies to new
            # gradients only, as in scikit-learn, the buffer is rescaled by old / new
            state = optimizer.state
            if state is not None and "momentum_buffer" in state:
                for buffer in state["momentum_buffer"]:
                    buffer *= optimizer.lr / lr
            optimizer.lr = lr

        def end_of_epoch(epoch, history):
            self.n_iter_ += 1
            self.t_ += rows
            self.loss_curve_.append(history["loss"][-1] / self._loss_scale)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_curve_[-1]:.8f}")
            self.loss_ = self.loss_curve_[-1]
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                set_lr(self.learning_rate_init / (self.t_ + 1) ** self.power_t * lr_factor)
            if incremental:
                return False
            self._update_no_improvement_count(validation)
            if self._no_improvement_count > self.n_iter_no_change:
                if self.solver == "sgd" and self.learning_rate == "adaptive" and optimizer.lr / lr_factor > 1e-6:
                    set_lr(optimizer.lr / 5.0)
                    self._no_improvement_count = 0
                    return False
                stopped[0] = True
                return True
            return False

        self.model_.fit(X, y, optimizer=optimizer, epochs=epochs, batch_size=batch_size, shuffle=self.shuffle,
                        sample_weight=sample_weight, callbacks=[end_of_epoch], l2=self.alpha * self._loss_scale,
                        loss_cap=self._loss_cap())
        if not incremental and not stopped[0] and self.n_iter_ >= self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          f"optimization hasn't converged yet.", ConvergenceWarning)
        if early and self.best_params is not None:
            for p, best in zip(self.model_.parameters(), self.best_params):
                p[...] = best
        return self

    def _fit_lbfgs(self, X, y, sample_weight):
        """scikit-learn's ``_fit_lbfgs``: SciPy's L-BFGS-B over all parameters, full batch."""
        import scipy.optimize

        model = self.model_
        params = model.parameters()
        sizes = np.cumsum([p.size for p in params])[:-1]
        scale, l2, cap = self._loss_scale, self.alpha * self._loss_scale, self._loss_cap()

        def loss_and_grad(theta):
            for p, part in zip(params, np.split(theta, sizes)):
                p[...] = part.reshape(p.shape)
            value, grads = model.loss_and_grad(X, y, sample_weight=sample_weight, l2=l2, loss_cap=cap)
            return value / scale, np.concatenate([g.ravel() for g in grads]).astype(np.float64) / scale

        result = scipy.optimize.minimize(
            loss_and_grad, np.concatenate([p.ravel() for p in params]).astype(np.float64), method="L-BFGS-B",
            jac=True, options={"maxfun": int(self.max_fun), "maxiter": int(self.max_iter), "gtol": self.tol,
                               **_lbfgs_quiet()})
        if result.status != 0:
            warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) (status={result.status}): "
                          f"{result.message}. Increase the number of iterations (max_iter) or scale the data.",
                          ConvergenceWarning)
        self.n_iter_ = min(int(result.nit), int(self.max_iter))
        self.loss_ = float(result.fun)
        for p, part in zip(params, np.split(result.x, sizes)):
            p[...] = part.reshape(p.shape)
        return self

    _best_params = None

    def _update_no_improvement_count(self, validation):
        if validation is not None:
            score = self._score_rows(*validation)
            self.validation_scores_.append(score)
            improved = score >= self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self.best_params = [p.copy() for p in self.model_.parameters()]
        else:
            loss = self.loss_curve_[-1]
            improved = loss <= self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, loss)
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1

    def to_onnx(self, path=None, *, opset=17):
        """Export the fitted estimator to ONNX (written to ``path`` when given) and return the
        ``onnx.ModelProto``: input ``input`` in the network's dtype (float32 for a classifier fitted
        on float32 data, else float64); outputs ``label`` (this estimator's ``classes_``, text
        included) and ``probabilities`` (a tensor, no ZipMap), or ``variable`` for the regressor.
        A Pipeline holding the estimator exports with ``skl2onnx.to_onnx`` (fastnn registers its
        converter when skl2onnx is installed). Needs the ``onnx`` extra."""
        from .onnx import estimator_to_onnx
        return estimator_to_onnx(self, path, opset=opset)

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64))
        return self.model_.predict(X)

    def _weights(self, X, sample_weight):
        return None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=np.float64)


def _stochastic(estimator):
    """``partial_fit`` exists for the stochastic solvers only, as in scikit-learn."""
    if estimator.solver == "lbfgs":
        raise AttributeError("partial_fit is only available for stochastic optimizers; lbfgs is not stochastic")
    return True


def _lbfgs_quiet():
    """SciPy's option that silences L-BFGS-B: ``iprint`` before SciPy 1.15 deprecated it."""
    import scipy
    major, minor = (int(v) for v in scipy.__version__.split(".")[:2])
    return {} if (major, minor) >= (1, 15) else {"iprint": -1}


class _threads_for_this_call:
    """A fit called from a thread other than the main one (joblib's threading backend, a pool)
    runs BLAS on one thread: concurrent fits then keep a core each instead of fighting over
    both. Decided by where the call comes from, never by the clock, so a fit's thread count
    (and rounding) is the same in every run."""

    def __enter__(self):
        import threading

        from ..engine.threads import one_blas_thread
        self._inner = one_blas_thread() if threading.current_thread() is not threading.main_thread() else None
        if self._inner is not None:
            self._inner.__enter__()

    def __exit__(self, *exc):
        if self._inner is not None:
            self._inner.__exit__(*exc)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by fastnn.

    Parameters and fitted attributes as ``sklearn.neural_network.MLPClassifier`` (see the
    module docstring for what differs); ``activation`` also takes every name in ``fastnn.ACTIVATIONS`` ("gelu", "silu", ...).
    Two classes train one logistic output (binary cross-entropy), more a softmax output
    (softmax cross-entropy). ``classes_`` may hold any label values.
    """

    def _setup(self, classes):
        self.classes_ = classes
        if len(classes) < 2:
            raise ValueError(f"Classifier can't train when only one class is present: {classes.tolist()}")
        binary = len(classes) == 2
        self._loss = "binary_cross_entropy" if binary else "softmax_cross_entropy"
        self.out_activation_ = "logistic" if binary else "softmax"
        return 1 if binary else len(classes)

    def _encode(self, y):
        check_classification_targets(y)
        index = np.searchsorted(self.classes_, y)
        if np.any(index >= len(self.classes_)) or np.any(self.classes_[np.minimum(index, len(self.classes_) - 1)] != y):
            raise ValueError(f"y has labels {sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))} not "
                             f"among classes_ {self.classes_.tolist()}")
        return index.astype(np.int64) if self._loss == "softmax_cross_entropy" else index.astype(np.float64)

    def _score_rows(self, X, y):
        return float(np.mean(self._decode(self.model_.predict(X)) == self._decode_labels(y)))

    def _decode_labels(self, encoded):
        return encoded.astype(np.int64)

    def _decode(self, raw):
        """Class indices from the network's outputs."""
        return (raw[:, 0] > 0).astype(np.int64) if self._loss == "binary_cross_entropy" else raw.argmax(axis=1)

    def fit(self, X, y, sample_weight=None):
        """Train for up to ``max_iter`` epochs (from scratch, or on from the fitted network with
        ``warm_start=True``); returns self."""
        hidden = self._check_params()
        warm = self.warm_start and hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64), reset=not warm)
        if warm:
            if not np.array_equal(unique_labels(y), self.classes_) and not set(unique_labels(y)) <= set(self.classes_):
                raise ValueError(f"warm_start: y has classes {unique_labels(y).tolist()}, the fitted model "
                                 f"{self.classes_.tolist()}")
        else:
            outputs = self._setup(unique_labels(y))
            self._build(X.shape[1], outputs, hidden, X.dtype)
        return self._train(X, self._encode(y), int(self.max_iter), self._batch(len(X)), self._weights(X, sample_weight))

    @available_if(_stochastic)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch on (X, y), keeping the model and the optimizer state of earlier calls.

        The first call needs ``classes``: every label that will ever appear.
        """
        first = not hasattr(self, "model_")
        hidden = self._check_params()
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64), reset=first)
        if first:
            if classes is None:
                raise ValueError("the first call to partial_fit needs classes=, every label that will appear")
            self._build(X.shape[1], self._setup(unique_labels(classes)), hidden, X.dtype)
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(f"classes {list(classes)} differ from the first call's {self.classes_.tolist()}")
        return self._train(X, self._encode(y), 1, self._batch(len(X)), self._weights(X, sample_weight),
                           incremental=True)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) in the order of ``classes_``."""
        raw = self._predict_raw(X)
        if self._loss == "binary_cross_entropy":
            p = sigmoid(raw[:, 0].astype(np.float64))
            return np.column_stack([1.0 - p, p])
        return softmax(raw)

    def predict(self, X):
        """The most likely class label for each row."""
        raw = self._predict_raw(X)  # checks fitted first
        return self.classes_[self._decode(raw)]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained by fastnn. Parameters (``loss`` first, as in
    scikit-learn 1.7 and later) and fitted attributes as ``sklearn.neural_network.MLPRegressor``:
    ``loss="squared_error"`` (half the mean squared error, a linear output) or ``"poisson"``
    (half the Poisson deviance, an exponential output: counts and rates >= 0)."""

    _LOSSES = {"squared_error": ("mse", "identity", 2.0), "poisson": ("poisson", "exp", 1.0)}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun)
        self.loss = loss

    @property
    def _loss(self):
        return self._LOSSES[self.loss][0] if self.loss in self._LOSSES else None

    @property
    def _loss_scale(self):
        return self._LOSSES[self.loss][2]

    @property
    def out_activation_(self):
        return self._LOSSES[self.loss][1]

    def _check_params(self):
        if self.loss not in self._LOSSES:
            raise ValueError(f"loss must be one of {sorted(self._LOSSES)}, got {self.loss!r}")
        return super()._check_params()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = False
        return tags

    def _targets(self, y):
        y = np.asarray(y, dtype=np.float64)  # the model converts it to its own dtype
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _score_rows(self, X, y):
        from sklearn.metrics import r2_score
        return float(r2_score(y, self._rates(self.model_.predict(X))))

    def _rates(self, out):
        """Predictions from the network's outputs: the outputs, or for Poisson their exponential."""
        return np.exp(out) if self.loss == "poisson" else out

    def fit(self, X, y, sample_weight=None):
        """Train for up to ``max_iter`` epochs (from scratch, or on from the fitted network with
        ``warm_start=True``); returns self."""
        hidden = self._check_params()
        warm = self.warm_start and hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=not warm, multi_output=True, y_numeric=True)
        y2 = self._targets(y)
        if self.loss == "poisson" and np.any(y2 < 0):
            raise ValueError("loss='poisson' needs targets >= 0 (counts or rates)")
        if warm:
            if y2.shape[1] != self.model_.out_features:
                raise ValueError(f"warm_start: y has {y2.shape[1]} outputs, the fitted model {self.model_.out_features}")
        else:
            self._y_ndim = np.ndim(y)
            self._build(X.shape[1], y2.shape[1], hidden, X.dtype)
        return self._train(X, y2, int(self.max_iter), self._batch(len(X)), self._weights(X, sample_weight))

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch on (X, y), keeping the model and the optimizer state of earlier calls."""
        first = not hasattr(self, "model_")
        hidden = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first, multi_output=True, y_numeric=True)
        y2 = self._targets(y)
        if first:
            self._y_ndim = np.ndim(y)
            self._build(X.shape[1], y2.shape[1], hidden, X.dtype)
        elif y2.shape[1] != self.model_.out_features:
            raise ValueError(f"y has {y2.shape[1]} outputs, the first call had {self.model_.out_features}")
        return self._train(X, y2, 1, self._batch(len(X)), self._weights(X, sample_weight), incremental=True)

    def predict(self, X):
        """Predicted targets: (n_samples,) when fitted on 1-D y, else (n_samples, n_outputs)."""
        out = self._rates(self._predict_raw(X))
        return out[:, 0] if self._y_ndim == 1 else out


if importlib.util.find_spec("skl2onnx") is not None:  # so that skl2onnx.to_onnx(pipeline) knows these estimators
    from .onnx import register_skl2onnx
    register_skl2onnx(MLPClassifier, MLPRegressor)
