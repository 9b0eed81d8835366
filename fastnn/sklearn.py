"""scikit-learn estimators backed by fastnn: ``MLPClassifier`` and ``MLPRegressor``.

Constructor parameters, fitted attributes and stopping rules are those of
``sklearn.neural_network.MLPClassifier``/``MLPRegressor``, wherever fastnn can honour them:
- ``solver``: "adam" (default) or "sgd" (with ``momentum`` and ``nesterovs_momentum``);
  "lbfgs" (full-batch quasi-Newton) is refused with a clear error.
- ``learning_rate`` (sgd only, as scikit-learn): "constant"; "invscaling", lr =
  learning_rate_init / (t_ + 1)^power_t after each epoch (t_: samples seen); "adaptive", lr
  divided by 5 whenever the loss (or validation score) has not improved by ``tol`` for
  ``n_iter_no_change`` epochs, stopping below 1e-6.
- ``tol``/``n_iter_no_change``/``early_stopping``/``validation_fraction``: scikit-learn's
  rules, on the training loss or (early stopping) on the validation score: accuracy, or R^2
  for the regressor; with early stopping the best epoch's weights are kept. A ``max_iter`` that
  ends training first gives scikit-learn's ``ConvergenceWarning``.
- ``warm_start``: ``fit`` continues from the fitted network; ``sample_weight`` in ``fit``.
- Binary problems train one logistic output (binary cross-entropy), as scikit-learn does;
  more classes a softmax output (``out_activation_``).
- ``alpha`` (L2 penalty) becomes weight decay ``alpha / batch_size`` on the gradient, as
  scikit-learn adds ``alpha * W / batch_size``; here it applies to the biases too, and with
  ``sample_weight`` it stays ``alpha / batch_size`` (scikit-learn divides by the batch's sum of
  weights). The early-stopping score is unweighted, as scikit-learn's.
- ``loss_curve_``: each epoch's mean training loss in scikit-learn's terms: log-loss, or half the
  squared error for the regressor, plus 0.5 * alpha * sum(W^2) / batch_size (scikit-learn adds
  that term per batch with the batch's weights; here with the epoch's last weights).
- The classifier trains float32 input in float32 (faster) and anything else in float64; the
  regressor always trains in float64, so a target's scale does not cost it precision.
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
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .layers import Dense
from .kernels._checks import positive, positive_int
from .model import Sequential, sigmoid, softmax
from .optim import SGD, Adam

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu", "gelu": "gelu"}
_SCHEDULES = ("constant", "invscaling", "adaptive")


class _BaseMLP(BaseEstimator):
    _loss = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10):
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

    # -- building -------------------------------------------------------------------------

    def _check_params(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' (full-batch quasi-Newton) is not available in fastnn, which trains by "
                             "mini-batch gradient steps; use solver='adam' or 'sgd'")
        if self.solver not in ("adam", "sgd"):
            raise ValueError(f"solver must be 'adam' or 'sgd', got {self.solver!r}")
        if self.learning_rate not in _SCHEDULES:
            raise ValueError(f"learning_rate must be one of {list(_SCHEDULES)}, got {self.learning_rate!r}")
        sizes = [self.hidden_layer_sizes] if np.isscalar(self.hidden_layer_sizes) else list(self.hidden_layer_sizes)
        for s in sizes:
            positive_int("hidden_layer_sizes", s)
        for name in ("alpha", "tol", "momentum", "power_t", "epsilon"):
            positive(name, getattr(self, name), allow_zero=True)
        positive("learning_rate_init", self.learning_rate_init)
        positive_int("max_iter", self.max_iter)
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
        self._random_state = check_random_state(self.random_state)
        seed = int(self._random_state.randint(2**31 - 1))
        sizes = [n_features, *hidden, n_outputs]
        act = _ACTIVATIONS[self.activation]
        layers = [Dense(a, b, activation=act) for a, b in zip(sizes[:-2], sizes[1:-1])]
        self.model_ = Sequential(*layers, Dense(sizes[-2], n_outputs), seed=seed, dtype=dtype, loss=self._loss)
        self.optimizer_ = None
        self.loss_curve_ = []
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(sizes)
        self.best_loss_ = np.inf
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None

    def _optimizer(self, batch_size):
        if self.optimizer_ is None:
            decay = self.alpha / batch_size
            if self.solver == "sgd":
                self.optimizer_ = SGD(lr=self.learning_rate_init, momentum=self.momentum, weight_decay=decay,
                                      nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
            else:
                self.optimizer_ = Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                                       weight_decay=decay)
        return self.optimizer_

    @property
    def coefs_(self):
        """The weight matrices, (n_in, n_out) per layer: views into the network."""
        check_is_fitted(self, "model_")
        return self.model_.parameters()[::2]

    @property
    def intercepts_(self):
        """The bias vectors, one per layer: views into the network."""
        check_is_fitted(self, "model_")
        return self.model_.parameters()[1::2]

    def _curve_loss(self, loss, batch_size):
        """fastnn's epoch loss in scikit-learn's terms (see the module docstring)."""
        if self._loss == "mse":
            loss = 0.5 * loss
        return loss + 0.5 * self.alpha * sum(float(np.dot(W.ravel(), W.ravel())) for W in self.coefs_) / batch_size

    def _train(self, X, y, epochs, batch_size, sample_weight=None, incremental=False):
        """scikit-learn's epoch loop (``_fit_stochastic``): one fastnn epoch at a time, then the
        learning-rate schedule and the stopping rules."""
        if not incremental:  # as scikit-learn: every fit (warm or not) gets a new optimizer and count
            self.optimizer_, self._no_improvement_count = None, 0
        optimizer = self._optimizer(batch_size)
        model = self.model_
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
        for _ in range(epochs):
            history = model.fit(X, y, optimizer=optimizer, epochs=1, batch_size=batch_size, shuffle=self.shuffle,
                                verbose=int(bool(self.verbose)), sample_weight=sample_weight)
            self.n_iter_ += 1
            self.t_ += X.shape[0]
            self.loss_curve_.append(self._curve_loss(history["loss"][-1], batch_size))
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                optimizer.lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
            if incremental:
                continue
            self._update_no_improvement_count(validation)
            if self._no_improvement_count > self.n_iter_no_change:
                if self.solver == "sgd" and self.learning_rate == "adaptive" and optimizer.lr > 1e-6:
                    optimizer.lr /= 5.0
                    self._no_improvement_count = 0
                    continue
                break
        else:
            if not incremental and self.n_iter_ >= self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              f"optimization hasn't converged yet.", ConvergenceWarning)
        if early and self._best_params is not None:
            model._flat_params[...] = self._best_params
        return self

    _best_params = None

    def _update_no_improvement_count(self, validation):
        if validation is not None:
            score = self._score_rows(*validation)
            self.validation_scores_.append(score)
            improved = score >= self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self.model_._flat_params.copy()
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
        from .export import estimator_to_onnx
        return estimator_to_onnx(self, path, opset=opset)

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64))
        return self.model_.predict(X)

    def _weights(self, X, sample_weight):
        return None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=np.float64)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by fastnn.

    Parameters and fitted attributes as ``sklearn.neural_network.MLPClassifier`` (see the
    module docstring for what differs); ``activation`` also takes "leaky_relu" and "gelu".
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
    """A multi-layer perceptron regressor trained by fastnn (mean squared error), with a linear
    output layer. Parameters and fitted attributes as ``sklearn.neural_network.MLPRegressor``."""

    _loss = "mse"
    out_activation_ = "identity"

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
        return float(r2_score(y, self.model_.predict(X)))

    def fit(self, X, y, sample_weight=None):
        """Train for up to ``max_iter`` epochs (from scratch, or on from the fitted network with
        ``warm_start=True``); returns self."""
        hidden = self._check_params()
        warm = self.warm_start and hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=not warm, multi_output=True, y_numeric=True)
        y2 = self._targets(y)
        if warm:
            if y2.shape[1] != self.model_.out_features:
                raise ValueError(f"warm_start: y has {y2.shape[1]} outputs, the fitted model {self.model_.out_features}")
        else:
            self._y_ndim = np.ndim(y)
            self._build(X.shape[1], y2.shape[1], hidden, X.dtype)
        return self._train(X, y2, int(self.max_iter), self._batch(len(X)), self._weights(X, sample_weight))

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
        out = self._predict_raw(X)
        return out[:, 0] if self._y_ndim == 1 else out


if importlib.util.find_spec("skl2onnx") is not None:  # so that skl2onnx.to_onnx(pipeline) knows these estimators
    from .export import register_skl2onnx
    register_skl2onnx()
