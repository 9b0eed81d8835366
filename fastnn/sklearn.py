"""scikit-learn estimators backed by fastnn: ``MLPClassifier`` and ``MLPRegressor``.

Constructor parameters keep the names of ``sklearn.neural_network.MLPClassifier`` where they
mean the same thing. The solver is always Adam (scikit-learn's default).
- The classifier trains float32 input in float32 (faster) and anything else in float64; the
  regressor always trains in float64, so a target's scale does not cost it precision.
- ``alpha`` (L2 penalty) becomes Adam weight decay ``alpha / batch_size``: scikit-learn adds
  ``alpha * W / batch_size`` to each batch gradient; here it applies to the biases too.
- ``tol`` and ``n_iter_no_change`` stop training as scikit-learn does: on the training loss,
  or on the validation score with ``early_stopping=True`` (then the best epoch is restored).
Requires scikit-learn (``pip install "fastnn[sklearn]"``); fastnn itself does not.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from .callbacks import EarlyStopping
from .layers import Dense
from .kernels._checks import positive, positive_int
from .model import Sequential, softmax
from .optim import Adam

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "leaky_relu": "leaky_relu", "gelu": "gelu"}


class _BaseMLP(BaseEstimator):
    _loss = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", alpha=0.0001, batch_size="auto",
                 learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None, tol=1e-4,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, verbose=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.verbose = verbose

    # -- building -------------------------------------------------------------------------

    def _check_params(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        sizes = [self.hidden_layer_sizes] if np.isscalar(self.hidden_layer_sizes) else list(self.hidden_layer_sizes)
        for s in sizes:
            positive_int("hidden_layer_sizes", s)
        for name in ("alpha", "tol"):
            positive(name, getattr(self, name), allow_zero=True)
        positive("learning_rate_init", self.learning_rate_init)
        positive_int("max_iter", self.max_iter)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            positive_int("batch_size (or 'auto')", self.batch_size)
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction!r}")
        return [int(s) for s in sizes]

    def _batch(self, n):
        return min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)

    def _build(self, n_features, n_outputs, hidden, dtype):
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        sizes = [n_features, *hidden, n_outputs]
        act = _ACTIVATIONS[self.activation]
        layers = [Dense(a, b, activation=act) for a, b in zip(sizes[:-2], sizes[1:-1])]
        self.model_ = Sequential(*layers, Dense(sizes[-2], n_outputs), seed=seed, dtype=dtype)
        self.optimizer_ = None
        self.loss_curve_ = []
        self.n_iter_ = 0

    def _train(self, X, y, epochs, batch_size):
        if self.optimizer_ is None:
            self.optimizer_ = Adam(lr=self.learning_rate_init, weight_decay=self.alpha / batch_size)
        self.optimizer_.lr = self.learning_rate_init
        stopper, split = None, 0.0
        if epochs > 1:
            monitor = ("val_accuracy" if self._loss == "softmax_cross_entropy" else "val_loss") \
                if self.early_stopping else "loss"
            stopper = EarlyStopping(monitor=monitor, patience=self.n_iter_no_change - 1, min_delta=self.tol,
                                    restore_best=self.early_stopping)
            split = self.validation_fraction if self.early_stopping and len(X) >= 4 else 0.0
            if split == 0.0 and self.early_stopping:
                stopper = None
        history = self.model_.fit(X, y, loss=self._loss, optimizer=self.optimizer_, epochs=epochs,
                                  batch_size=batch_size, shuffle=self.shuffle, verbose=int(bool(self.verbose)),
                                  validation_split=split, early_stopping=stopper)
        self.loss_curve_ += history["loss"]
        self.n_iter_ += len(history["loss"])
        if "val_accuracy" in history:
            self.validation_scores_ = history["val_accuracy"]
        return self

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64))
        return self.model_.predict(X)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by fastnn (softmax cross-entropy, Adam).

    Parameters mirror ``sklearn.neural_network.MLPClassifier``: ``hidden_layer_sizes``,
    ``activation`` ("identity", "logistic", "tanh", "relu"; also "leaky_relu", "gelu"),
    ``alpha``, ``batch_size``, ``learning_rate_init``, ``max_iter``, ``shuffle``,
    ``random_state``, ``tol``, ``early_stopping``, ``validation_fraction``,
    ``n_iter_no_change``, ``verbose``. ``classes_`` may hold any label values.
    """

    _loss = "softmax_cross_entropy"

    def _encode(self, y):
        check_classification_targets(y)
        index = np.searchsorted(self.classes_, y)
        if np.any(index >= len(self.classes_)) or np.any(self.classes_[np.minimum(index, len(self.classes_) - 1)] != y):
            raise ValueError(f"y has labels {sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))} not "
                             f"among classes_ {self.classes_.tolist()}")
        return index.astype(np.int64)

    def fit(self, X, y):
        """Train from scratch for up to ``max_iter`` epochs; returns self."""
        hidden = self._check_params()
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64), reset=True)
        self.classes_ = unique_labels(y)
        if len(self.classes_) < 2:
            raise ValueError(f"Classifier can't train when only one class is present: {self.classes_.tolist()}")
        self._build(X.shape[1], len(self.classes_), hidden, X.dtype)
        return self._train(X, self._encode(y), int(self.max_iter), self._batch(len(X)))

    def partial_fit(self, X, y, classes=None):
        """One epoch on (X, y), keeping the model and the optimizer state of earlier calls.

        The first call needs ``classes``: every label that will ever appear.
        """
        first = not hasattr(self, "model_")
        hidden = self._check_params()
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64), reset=first)
        if first:
            if classes is None:
                raise ValueError("the first call to partial_fit needs classes=, every label that will appear")
            self.classes_ = unique_labels(classes)
            if len(self.classes_) < 2:
                raise ValueError("Classifier can't train when only one class is present")
            self._build(X.shape[1], len(self.classes_), hidden, X.dtype)
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(f"classes {list(classes)} differ from the first call's {self.classes_.tolist()}")
        return self._train(X, self._encode(y), 1, self._batch(len(X)))

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) in the order of ``classes_``."""
        return softmax(self._predict_raw(X))

    def predict(self, X):
        """The most likely class label for each row."""
        best = self._predict_raw(X).argmax(axis=1)  # checks fitted first
        return self.classes_[best]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained by fastnn (mean squared error, Adam).

    Parameters as ``MLPClassifier``; the output layer is linear.
    """

    _loss = "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = False
        return tags

    def _targets(self, y):
        y = np.asarray(y, dtype=np.float64)  # the model converts it to its own dtype
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def fit(self, X, y):
        """Train from scratch for up to ``max_iter`` epochs; returns self."""
        hidden = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, reset=True, multi_output=True, y_numeric=True)
        self._y_ndim = np.ndim(y)
        y2 = self._targets(y)
        self._build(X.shape[1], y2.shape[1], hidden, X.dtype)
        return self._train(X, y2, int(self.max_iter), self._batch(len(X)))

    def partial_fit(self, X, y):
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
        return self._train(X, y2, 1, self._batch(len(X)))

    def predict(self, X):
        """Predicted targets: (n_samples,) when fitted on 1-D y, else (n_samples, n_outputs)."""
        out = self._predict_raw(X)
        return out[:, 0] if self._y_ndim == 1 else out
