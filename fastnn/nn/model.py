"""Sequential: a stack of layers (Dense, LayerNorm, Residual blocks, Dropout) trained by the
compiled kernels.

The model keeps every parameter in one flat buffer (and every gradient in another), so an
optimizer updates all layers in one kernel call; ``Dense.W``/``Dense.b`` (and every other
kind's parameters) are views into it.
Its ``Engine`` (``fastnn.engine``) holds the compiled training path: the kernels its layers
use, their workspaces and the compiled drivers.
"""
from __future__ import annotations

import json
import os
import threading
import weakref
import zipfile

import numpy as np

from ..io.files import Archive, atomic_write, parse_json
from ..engine.core import Engine, raw_rows_of
from .fingerprint import Fingerprint
from ..kernels._checks import all_finite, positive, positive_int
from .layers import Dense, Dropout, LayerKind, check_chain, from_architecture, graph, walk
from .losses import CLASSIFIERS, check_loss, prepare_targets, row_weights
from .optim import Adam, Optimizer, from_name
from ..io.tabular import check_columns, column_names
from ..engine.threads import one_blas_thread
from . import training
from .training import DivergenceError

FORMAT_VERSION = 4  # 2 added the loss, the training rows' fingerprint, the command line's preparation; 3 the
# column names (feature_names_in_); 4 layer kinds besides Dense. Versions 1 to 3 load. A model of Dense and
# Dropout layers only is written as version 3, which fastnn versions before 4 read too.
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


class Sequential:
    """A feed-forward network of layers.

    Parameters
    ----------
    *layers : Dense, LayerNorm, Residual or Dropout
        The layers in order; each layer's ``in_features`` must equal the previous layer's
        ``out_features``. A Dropout drops the outputs of the layer before it while training.
    seed : int
        Seeds ``np.random.default_rng``, which initialises the layers in order and then
        shuffles the data in ``fit``.
    dtype : float32 or float64
        Dtype of parameters and computation.
    loss : str, optional
        The model's loss (its task), as ``fit`` takes it. Without it the first ``fit`` or
        ``train_step`` sets it. ``evaluate``, ``predict_proba`` and ``score`` use it, and
        ``save`` keeps it.

    Attributes
    ----------
    loss : str or None
        The canonical loss name (``"softmax_cross_entropy"``, ``"binary_cross_entropy"``, ``"mse"``).
    optimizer : Optimizer or None
        The optimizer of the last ``fit``/``train_step``, reused by the next one when it names none.
    history : dict or None
        The last ``fit``'s history, also when it was interrupted or diverged.
    preparation : fastnn.tabular.Preparation or None
        How the command line prepared raw rows for this model (input scaling, class labels,
        target scaling); saved with it. None for a model trained from Python. A model with a
        preparation takes raw rows and raw labels in ``predict``, ``predict_proba``,
        ``evaluate`` and ``score`` (``predict`` of a regression gives raw units), as the
        command line and the ONNX export do; ``fit``, ``train_step`` and ``loss_and_grad``,
        which work on the network's own inputs, refuse it.
    feature_names_in_ : ndarray of str or None
        The column names of the table the model was first fitted on (a pandas DataFrame, or a
        CSV's header on the command line), in order; saved with it. Later tables with names
        must have exactly these columns in this order (a ValueError names the difference);
        plain arrays are taken in this order.

    The seam to fastnn's own parts (the training loop, checkpoints, MPI, export, profile); a
    user does not need it, and no part uses the model's underscore names:
    ``engine`` (the compiled path; ``engine.params``/``engine.grads`` are the flat buffers),
    ``rng`` (shuffles and splits; checkpoints save its state), ``nodes`` (the compiled path's
    layers: ``kernels.kinds.graph``), ``dense_layers`` (its Dense layers, in order),
    ``architecture()``, ``resolve_loss``, ``checked_data``, ``checked_inputs``, ``check_writable``,
    ``resolve_optimizer`` and ``optimizer_name``, ``record_rows``, ``evaluate_rows``,
    ``refuse_prepared``, ``train_alone``/``training_lock`` and ``divergence``.

    Examples
    --------
    >>> model = Sequential(Dense(784, 128, activation="relu"), Dense(128, 10), seed=0)
    >>> history = model.fit(X, y, epochs=5)  # doctest: +SKIP  (Adam(lr=1e-3), cross-entropy)
    >>> history = model.fit(X, y, optimizer=SGD(lr=0.05, momentum=0.9), epochs=5)  # doctest: +SKIP
    """

    def __init__(self, *layers, seed=0, dtype=np.float32, loss=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer, e.g. Sequential(Dense(784, 10))")
        check_chain(layers, "layer")
        seen = set()
        for i, layer in enumerate(layers):
            for inner in walk([layer]):
                if getattr(inner, "placed", False):
                    raise ValueError(f"layer {i} already belongs to a model; create a new {type(layer).__name__} "
                                     f"for each model")
                if isinstance(inner, LayerKind):  # (a Dropout holds no numbers: one may serve twice)
                    if id(inner) in seen:
                        raise ValueError(f"layer {i}: one {type(inner).__name__} appears twice in this model; each "
                                         f"place needs a layer of its own (its own numbers)")
                    seen.add(id(inner))
        if np.dtype(dtype) not in _DTYPES.values():
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.layers = tuple(layers)
        self.dtype = np.dtype(dtype)
        self.seed = _check_seed(seed)
        # dropout masks are keyed on this (an int64), the optimizer step, the layer and the element
        self._mask_seed = (int(seed) if isinstance(seed, (int, np.integer)) and 0 <= seed < 2**63
                           else int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> np.uint64(1)))
        self.nodes = tuple(graph(self.layers))  # (what the engine runs: blocks flattened, dropout on its layer)
        size = sum(node.layer.param_count() for node in self.nodes)
        self._flat_params = np.zeros(size, self.dtype)
        self._flat_grads = np.zeros(size, self.dtype)
        self._bind()
        self.loss = None
        self.optimizer = None
        self.history = None
        self.preparation = None
        self.feature_names_in_ = None
        self._fingerprint = Fingerprint()  # of the rows fit trained on (see evaluate)
        if loss is not None:
            self.loss = self._check_head(check_loss(loss))
        self.rng = np.random.default_rng(seed)
        for node in self.nodes:
            node.layer.init_params(self.rng)

    def _bind(self):
        """Make the layers' parameters (``Dense.W``, ...), ``parameters()`` and the engine views of
        the flat buffers."""
        self.nodes = tuple(graph(self.layers))
        self.dense_layers = tuple(node.layer for node in self.nodes if isinstance(node.layer, Dense))
        self._params = self._views(self._flat_params)
        self._grads = self._views(self._flat_grads)
        at = 0
        for node in self.nodes:
            size = node.layer.param_count()
            node.layer.attach(self._flat_params[at:at + size])
            node.layer.placed = True
            at += size
        self.engine = Engine(self.nodes, self._flat_params, self._flat_grads, self._mask_seed)
        self.training_lock = threading.Lock()  # held by fit, train_step and loss_and_grad (``_train_alone``)

    def __getstate__(self):
        # views do not survive a copy or a pickle: keep the flat buffers, rebuild the views
        state = self.__dict__.copy()
        for key in ("_params", "_grads", "engine", "_step", "_fingerprinted", "training_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        if "preparation" in state:  # (pickled before it became a property)
            state["_preparation"] = state.pop("preparation")
        for old, new in (("_rng", "rng"), ("_dense", "dense_layers"), ("_optimizer_name", "optimizer_name")):
            if old in state:  # (pickled before these became the documented interface)
                state[new] = state.pop(old)
        self.__dict__.update(state)
        self._bind()

    def _views(self, flat):
        views, start = [], 0
        for node in self.nodes:
            for shape in node.layer.params().values():
                size = int(np.prod(shape))
                views.append(flat[start:start + size].reshape(shape))
                start += size
        return views

    _preparation = None
    feature_names_in_ = None  # (also what a model pickled before the names were kept has)

    @property
    def preparation(self):
        """How raw rows become the network's inputs (see the class docstring), or None."""
        return self._preparation

    @preparation.setter
    def preparation(self, value):
        self._preparation = value
        self._step = None  # (train_step's cached build checks it again)

    @property
    def in_features(self):
        return self.nodes[0].layer.in_features

    @property
    def out_features(self):
        return self.nodes[-1].layer.out_features

    def parameters(self):
        """Every layer's parameters in order (``[W0, b0, W1, b1, ...]`` for Dense layers; a
        LayerNorm's weight and bias): writable views; ``p[...] = v`` changes the model."""
        return list(self._params)

    # -- the task: loss and optimizer ----------------------------------------------------

    def _check_head(self, loss):
        if loss == "binary_cross_entropy" and getattr(self.nodes[-1].layer, "activation", None) == "sigmoid":
            raise ValueError("binary_cross_entropy takes logits and applies the sigmoid itself (as PyTorch's "
                             "BCEWithLogitsLoss and Keras' from_logits=True), so a last layer with "
                             "activation='sigmoid' would apply it twice: drop the last layer's activation")
        return loss

    def resolve_loss(self, loss, store=False):
        """The canonical loss for a call: ``loss`` if given (it must agree with the model's),
        else the model's, else softmax cross-entropy. ``store`` makes it the model's loss."""
        if loss is None:
            loss = self.loss or "softmax_cross_entropy"
        else:
            loss = check_loss(loss)
            if self.loss is not None and loss != self.loss:
                raise ValueError(f"this model's loss is {self.loss!r} (set by its first fit or its constructor), "
                                 f"not {loss!r}: leave loss= out to use the model's, or build a new model for "
                                 f"another task")
        self._check_head(loss)
        if store and self.loss is None:
            self.loss = loss
        return loss

    def resolve_optimizer(self, optimizer):
        """The optimizer for a call, kept on the model: the one given; a new one for a name
        ("adam", "adamw", "sgd"), unless the model's is one it made for the same name; with
        none, the model's, or a new Adam(lr=1e-3) (PyTorch's, Keras' and scikit-learn's default)."""
        if optimizer is None:
            if self.optimizer is None:
                self.optimizer, self.optimizer_name = Adam(), "adam"
            return self.optimizer
        if isinstance(optimizer, str):
            name = optimizer.lower()
            if self.optimizer is None or getattr(self, "optimizer_name", None) != name:
                self.optimizer, self.optimizer_name = from_name(name), name
            return self.optimizer
        _check_optimizer(optimizer)
        self.optimizer, self.optimizer_name = optimizer, None
        return optimizer

    _fingerprinted = None  # a weak reference to the last array whose rows were fingerprinted

    def record_rows(self, X):
        """Add the rows ``fit`` trains on to the fingerprint (once per array: scikit-learn's
        estimators call fit once per epoch with the same one)."""
        if self._fingerprinted is None or self._fingerprinted() is not X:
            self._fingerprint.add(X)
            self._fingerprinted = weakref.ref(X)

    def seen_in_training(self, X):
        """The estimated share of the rows of ``X`` that this model was trained on (from the
        fingerprint ``fit`` keeps of its training rows), or None when ``X`` has too few rows to
        tell. Rows are compared as the model reads them (its dtype)."""
        return self._fingerprint.share_seen(self._inputs(X, check_finite=False))

    def count_params(self):
        """The number of trainable numbers (weights and biases), as Keras' ``count_params``."""
        return int(self._flat_params.size)

    def summary(self, print_fn=print):
        """Print each layer, its output shape and parameter count, and the total (Keras' ``summary``)."""
        rows = [("layer", "output shape", "parameters")]

        def add(layers, indent):
            for i, layer in enumerate(layers):
                count = sum(inner.param_count() for inner in walk([layer]) if isinstance(inner, LayerKind))
                rows.append((f"{indent}{i}: {layer.summary()}", rows[-1][1] if isinstance(layer, Dropout)
                             else f"(None, {layer.out_features})", f"{count:,}"))
                add(getattr(layer, "inner", None) or (), indent + "    ")
        add(self.layers, "")
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        line = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
        rule = "-" * (sum(widths) + 4)
        text = [line(rows[0]), rule, *map(line, rows[1:]), rule,
                f"total parameters: {self.count_params():,} ({self.dtype.name}, "
                f"{self._flat_params.nbytes / 1024:,.1f} KiB); loss: {self.loss or 'not set yet'}"]
        print_fn("\n".join(text))

    # -- checks and conversion, once per call -------------------------------------------

    def _inputs(self, X, name="X", check_finite=True):
        """``X`` as the network reads it: checked, converted once, column names compared with
        ``feature_names_in_``, and raw rows prepared (``preparation``)."""
        if type(X) is not np.ndarray:
            X = self._unnamed(X, name)
        elif (self._preparation is None and X.dtype == self.dtype and X.ndim == 2 and X.shape[0]
              and X.shape[1] == self.in_features and X.flags.c_contiguous and X.flags.aligned):
            if check_finite and not all_finite(X):  # the per-step fast path: nothing to convert
                raise ValueError(f"{name} contains NaN or inf; remove or impute those values first")
            return X
        if self._preparation is not None:
            X = self._preparation.inputs(self._rows(X, name, np.float64, check_finite), self.dtype)
        return self._rows(X, name, self.dtype, check_finite)

    def checked_inputs(self, X, name="X"):
        """``X`` as the network reads it (see ``predict``): the seam for parts that run the
        model's network on rows of their own (populations)."""
        return self._inputs(X, name)

    def _rows(self, X, name, dtype, check_finite):
        if (type(X) is np.ndarray and X.dtype == dtype and X.ndim == 2 and X.shape[0]
                and X.shape[1] == self.in_features and X.flags.c_contiguous and X.flags.aligned):
            X_ok = X  # the per-step fast path: nothing to convert
        else:
            if not isinstance(X, np.ndarray):
                X = np.asarray(X)
            if X.dtype.kind not in "iuf":
                raise TypeError(f"{name} must be numeric (int or float), got dtype {X.dtype}")
            if X.ndim != 2:
                raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
            if X.shape[1] != self.in_features:
                raise ValueError(f"{name} has {X.shape[1]} features per row but the first layer expects "
                                 f"{self.in_features}")
            if X.shape[0] == 0:
                raise ValueError(f"{name} is empty (0 rows); pass at least one sample")
            X_ok = np.require(X, dtype=dtype, requirements=("C", "A"))  # dtype, byte order, layout
        if check_finite and not all_finite(X_ok):
            raise ValueError(f"{name} contains NaN or inf; remove or impute those values first")
        return X_ok

    def _unnamed(self, X, name):
        """A table's values as an array, after checking its column names against the model's."""
        names = column_names(X)
        if names is not None and self.feature_names_in_ is not None:
            check_columns(names, self.feature_names_in_, name)
        return X if isinstance(X, np.ndarray) else np.asarray(X)

    def checked_data(self, X, y, loss, check_finite=True):
        X = self._inputs(X, check_finite=check_finite)
        prep = self._preparation
        if prep is not None and prep.classes is not None:
            y = prep.labels(np.asarray(y))  # raw labels (text too) -> class indices; an unknown label is named
        # (a prepared regression's raw targets stay float64, as its outputs: see _outputs)
        dtype = np.float64 if prep is not None and prep.target_mean is not None else self.dtype
        return X, prepare_targets(loss, y, X.shape[0], self.out_features, dtype, check=check_finite)

    def _weights(self, loss, y, n, sample_weight, class_weight=None):
        if sample_weight is None and class_weight is None:
            return self.engine.ones[:n] if n <= self.engine.ones.shape[0] else np.ones(n, self.dtype)
        return row_weights(loss, y, n, self.dtype, sample_weight, class_weight)

    def check_writable(self, params=True):
        """Training writes the flat parameter and gradient buffers in place: refuse read-only ones."""
        if not ((self._flat_params.flags.writeable or not params) and self._flat_grads.flags.writeable):
            raise ValueError("this model's parameters are read-only (their buffer's flags.writeable is False); "
                             "training writes them in place: train a copy (copy.deepcopy(model)) instead")

    def refuse_prepared(self, call):
        if self._preparation is not None:
            raise ValueError(f"this model keeps the preparation the command line trained it with (its input scaling"
                             f"{', class labels' if self._preparation.classes is not None else ', target scaling'}), "
                             f"so predict, evaluate and score take raw rows; {call} works on the network's own "
                             f"inputs and is refused for such a model. Train a new model from Python, or set "
                             f"model.preparation = None and give it prepared rows (model.preparation.inputs(X))")

    def train_alone(self):
        """Take the training lock, or refuse: training writes the parameters, gradients and
        workspace in place, so two trainings of one model at once would race. (Predicting
        needs no lock: see ``fastnn.engine``.) The caller releases it."""
        if not self.training_lock.acquire(False):
            raise self._busy()

    @staticmethod
    def _busy():
        return RuntimeError("this model is being trained already (fit, train_step or loss_and_grad in another "
                            "thread, or called from a callback of its own fit): train one model from one thread at "
                            "a time, or train a copy (copy.deepcopy(model))")

    def divergence(self, X, y, loss, optimizer):
        """The error for a step the kernels refused: bad inputs if they explain it, else divergence."""
        self._inputs(X)  # raises for NaN or inf in X
        prepare_targets(loss, y, X.shape[0], self.out_features, self.dtype)  # and for bad targets
        return DivergenceError.at(optimizer.step_count + 1, lr=optimizer.lr, dtype=self.dtype)

    # -- the step -------------------------------------------------------------------------

    def loss_and_grad(self, X, y, loss=None, sample_weight=None, training=True, l2=0.0, loss_cap=0.0):
        """Mean loss on ``(X, y)`` and its gradient with respect to every parameter.

        ``loss`` defaults to the model's (see ``fit``); ``sample_weight`` weighs the rows.
        ``training``: with Dropout layers, True drops as the first training step does (the
        masks of step 0: a fixed function, which finite differences can check); False is the
        evaluation-mode loss and gradient, with no dropout (what ``evaluate`` scores). ``l2``
        and ``loss_cap``: the L2 penalty on the weight matrices and the cap on a row's
        cross-entropy, as in ``fit``.

        Returns
        -------
        loss : float
        grads : list of ndarray
            New arrays matching ``parameters()`` in order and shape.
        """
        self.refuse_prepared("loss_and_grad")
        if not isinstance(training, (bool, np.bool_)):
            raise TypeError(f"training must be True or False, got {training!r}")
        loss = self.resolve_loss(loss)
        X, y = self.checked_data(X, y, loss)
        w = self._weights(loss, y, X.shape[0], sample_weight)
        self.check_writable(params=False)  # (it writes gradients only)
        engine = self.engine
        gradients, objective, drivers = engine.gradients_fn(loss)
        objective = engine.penalised(objective, positive("l2", l2, allow_zero=True),
                                     positive("loss_cap", loss_cap, allow_zero=True))
        net = engine.net if training else engine.evaluation_net()
        self.train_alone()
        try:
            ws = engine.workspace(X.shape[0])
            value = gradients(net, ws, objective, drivers, X, raw_rows_of(y), w, 0)
            return float(value), [g.copy() for g in self._grads]
        finally:
            self.training_lock.release()

    def train_step(self, X, y, loss=None, optimizer=None, sample_weight=None):
        """One optimizer update on the batch ``(X, y)``; returns the batch loss before it.

        ``loss`` and ``optimizer`` as in ``fit`` (defaults: the model's, else cross-entropy and
        Adam(lr=1e-3)). A batch whose ``sample_weight`` sums to 0 makes no update.

        Raises ``DivergenceError`` when the loss, a gradient or the update would be NaN or inf:
        no parameter changes and the step is not counted (an update that overflows with finite
        gradients leaves the optimizer's buffers having taken in this gradient where it stayed
        finite; see ``fastnn.kernels.optimizers``). Raises ``ValueError`` when the inputs explain
        it (NaN in X, a label out of range).
        """
        step = self._step
        if step is None or not ((loss is None or loss == step[0]) and (
                step[1] is optimizer or (optimizer is None and step[1] is self.optimizer))):
            step = self._build_step(loss, optimizer)
        loss, optimizer, fn, objective, drivers = step
        # types, shapes and layout here; content (labels in range, finite values) is checked by
        # the kernels, and a refused step is diagnosed below
        X, y = self.checked_data(X, y, loss, check_finite=False)
        self.check_writable()
        n = X.shape[0]
        engine = self.engine
        lock = self.training_lock
        if not lock.acquire(False):  # (_train_alone, inline: this is the per-step path)
            raise self._busy()
        try:
            ws = engine.workspace(n)
            w = engine.ones[:n] if sample_weight is None else row_weights(loss, y, n, self.dtype, sample_weight)
            # the compiled step counts itself in the optimizer (opt.steps): nothing to update after it
            args = (engine.net, ws, objective, optimizer.compiled(engine), drivers, X, raw_rows_of(y), w, optimizer.lr)
            if n in engine.serial_rows:
                with one_blas_thread():
                    value = fn(*args)
            else:
                value = fn(*args)
        finally:
            lock.release()
        if not value >= 0.0:  # NaN (refused) or BAD_TARGET
            raise self.divergence(X, y, loss, optimizer)
        return value

    _step = None  # (loss, optimizer, compiled step, objective, drivers) of the last train_step

    def _build_step(self, loss, optimizer):
        self.refuse_prepared("train_step")
        loss = self.resolve_loss(loss, store=True)
        optimizer = self.resolve_optimizer(optimizer)
        engine = self.engine
        fn, objective, drivers = engine.step_fn(loss, optimizer)
        self._step = (loss, optimizer, fn, objective, drivers)
        return self._step

    # -- training loop -------------------------------------------------------------------

    def fit(self, X, y, loss=None, optimizer=None, epochs=1, batch_size=32,
            validation_data=None, shuffle=True, verbose=0, lr_schedule=None, checkpoint_dir=None, resume=False,
            validation_split=0.0, early_stopping=None, callbacks=(), sample_weight=None, class_weight=None,
            l2=0.0, loss_cap=0.0):
        """Train for ``epochs`` passes over ``(X, y)`` in mini-batches.

        Parameters
        ----------
        X : array (N, in_features)
        y : class labels (N,) or one-hot rows (N, out) for softmax cross-entropy; 0/1 labels
            (N, out), or (N,) for one output, for binary cross-entropy; targets (N, out) for mse
        loss : str, optional
            ``"softmax_cross_entropy"`` (one class per row), ``"binary_cross_entropy"`` (one or
            more independent 0/1 labels per row, on logits: the last layer has no sigmoid) or
            ``"mse"``; Keras' names ``"sparse_categorical_crossentropy"``,
            ``"categorical_crossentropy"``, ``"binary_crossentropy"`` and
            ``"mean_squared_error"`` mean the same. Default: the model's loss, else softmax
            cross-entropy; the first ``fit`` stores it with the model.
        optimizer : SGD, Adam or AdamW, or "adam", "adamw", "sgd", optional
            Default: the model's optimizer from an earlier call, else ``Adam(lr=1e-3)``
            (PyTorch's, Keras' and scikit-learn's default), kept on the model. A name gets the
            defaults of ``fastnn.optim.from_name`` (PyTorch's; SGD lr 0.01 as Keras).
        epochs, batch_size : int > 0
            The last partial batch is trained on, not dropped.
        validation_data : (X_val, y_val), optional
            Evaluated after each epoch.
        validation_split : float in [0, 1)
            Hold out this fraction of (X, y), drawn at random with the model's seeded generator
            (not the last rows), as validation data.
        shuffle : bool
            Reshuffle the rows each epoch with the model's seeded generator.
        verbose : 0 (silent) or 1 (a tqdm progress bar per epoch)
        lr_schedule : fastnn.schedules.Constant, StepDecay or Cosine, optional
            Multiplies the optimizer's ``lr`` per step, over the steps of this call.
        checkpoint_dir : path, optional
            After every epoch, write ``checkpoint_dir/checkpoint.npz`` (atomically): parameters,
            optimizer state, the shuffling generator's state, the epoch and the history.
        resume : bool
            Continue from the checkpoint in ``checkpoint_dir`` if there is one: a run killed
            at any moment and resumed ends with the same parameters as an uninterrupted one.
        early_stopping : fastnn.EarlyStopping, optional
            Stop when the monitored metric stops improving (and restore the best parameters).
        callbacks : sequence of callables ``(epoch, history) -> bool``
            Called after each epoch (1-based epoch); returning True stops training.
        sample_weight : array (N,) of numbers >= 0, optional
            Row weights: a batch's loss is sum(w_i l_i) / sum(w_i), the convention of PyTorch's
            ``weight=`` and scikit-learn (Keras divides by the batch size instead). A batch whose
            weights sum to 0 makes no update (it still counts as a step of the optimizer).
        class_weight : dict {class index: weight} or "balanced", optional
            Multiplies each row's weight by its class's (scikit-learn's "balanced":
            N / (classes * rows of the class)); for class labels only.
        l2 : float >= 0
            An L2 penalty on the weight matrices (not the biases), scikit-learn's ``alpha``:
            each batch's loss gains ``l2/2 * sum(W^2) / sum(w)`` (w: the batch's row weights, so
            its rows for a plain mean), and the history's loss includes it. 0: none.
        loss_cap : float >= 0
            Each row's cross-entropy (each label's, for binary cross-entropy) counts at most this
            much in the reported loss, as in scikit-learn (``-log(eps)``: it clips probabilities
            at machine epsilon) and Keras (``-log(1e-7)``); the gradient is never capped. 0: none.

        Raises
        ------
        DivergenceError
            When a step's loss or gradients become NaN or inf; the model keeps the parameters
            of the last finite step.

        Returns
        -------
        history : dict of per-epoch lists: ``loss``, ``lr`` (the learning rate of the epoch's
            last step), plus ``accuracy`` for the cross-entropies (for binary cross-entropy the
            share of labels right, Keras' binary accuracy), plus ``val_loss`` and
            ``val_accuracy`` with validation data. Also kept as ``model.history``, which holds
            the finished epochs when training stops early (Ctrl-C raises KeyboardInterrupt
            after the last finished step, as Keras does).
        """

        self.refuse_prepared("fit")
        self.train_alone()
        try:
            plan = training.plan(self, X, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                                 validation_data=validation_data, shuffle=shuffle, verbose=verbose,
                                 lr_schedule=lr_schedule, checkpoint_dir=checkpoint_dir, resume=resume,
                                 validation_split=validation_split, early_stopping=early_stopping,
                                 callbacks=callbacks, sample_weight=sample_weight, class_weight=class_weight,
                                 l2=l2, loss_cap=loss_cap)
            return training.run(self, plan, training.CompiledEpochs(self, plan))
        finally:
            self.training_lock.release()

    # -- inference -----------------------------------------------------------------------

    def predict(self, X, batch_size=1024):
        """Last-layer outputs (logits for a classifier), shape (N, out_features); for a model
        with a preparation, from raw rows, and a regression's outputs in raw units. Safe from
        any number of threads at once."""
        return self._outputs(self._inputs(X), positive_int("batch_size", batch_size))

    def _outputs(self, X, batch_size=1024):
        """The outputs for rows the network reads (``_inputs``), in the targets' raw units."""
        out = self.engine.predict(X, batch_size)
        prep = self._preparation
        if prep is not None and prep.target_mean is not None:
            out = prep.outputs(out)  # float64: raw units may need more digits than the network's dtype
        return out

    def predict_proba(self, X, batch_size=1024):
        """Probabilities, shape (N, out_features): the softmax of the logits for softmax
        cross-entropy (the default), each logit's sigmoid for binary cross-entropy; an error
        for a regression (mse) model, whose outputs are not probabilities."""
        loss = self.loss or "softmax_cross_entropy"
        if loss not in CLASSIFIERS:
            raise ValueError(f"this model's loss is {loss!r} (regression): its outputs are not probabilities; "
                             f"use predict")
        out = self.predict(X, batch_size)
        return softmax(out) if loss == "softmax_cross_entropy" else sigmoid(out)

    def evaluate_rows(self, X, y, loss, w=None):
        out = self._outputs(X)
        w = np.ones(X.shape[0], self.dtype) if w is None else w
        if not w.sum() > 0:
            raise ValueError("the sample weights sum to 0: there is nothing to evaluate")
        if out.dtype == self.dtype:
            value = self.engine.loss(loss, out, y, w)
        else:  # a prepared regression, in raw units and float64: the weighted mean squared error
            value = np.average(np.mean((out - y) ** 2, axis=1), weights=w)
        scores = {"loss": float(value)}
        if loss in CLASSIFIERS:
            scores["accuracy"] = float(np.average(count_right(loss, out, y), weights=w))
        return scores

    def _overlap(self, X, scores):
        if self._fingerprint.hashes.size:
            scores["seen_in_training"] = self._fingerprint.share_seen(X)
        return scores

    def evaluate(self, X, y, loss=None, sample_weight=None, class_weight=None):
        """``{"loss": mean loss}``, plus ``"accuracy"`` for the cross-entropies (for binary
        cross-entropy the share of labels right: Keras' binary accuracy). ``loss`` defaults to
        the model's; the rows are weighed as in ``fit``. For a model trained by ``fit``, also
        ``"seen_in_training"``: the estimated share of these rows it was trained on (see
        ``seen_in_training``); scores on training rows say little about new data. A model with a
        preparation takes raw rows and raw labels, and a regression's loss is in raw units."""
        loss = self.resolve_loss(loss)
        X, y = self.checked_data(X, y, loss)
        scores = self.evaluate_rows(X, y, loss, row_weights(loss, y, X.shape[0], self.dtype, sample_weight, class_weight))
        return self._overlap(X, scores)

    def score(self, X, y, sample_weight=None):
        """One number, higher is better, from the model's loss: accuracy for the cross-entropies
        (as ``evaluate``), the coefficient of determination R^2 for mse and poisson (of the
        rates, exp of the outputs; scikit-learn's ``score``, averaged uniformly over outputs)."""
        loss = self.resolve_loss(None)
        X, y = self.checked_data(X, y, loss)
        w = row_weights(loss, y, X.shape[0], self.dtype, sample_weight)
        out = self._outputs(X)
        if loss in CLASSIFIERS:
            return float(np.average(count_right(loss, out, y), weights=w))
        if loss == "poisson":  # the outputs are log rates; R^2 of the rates, as scikit-learn's score
            out = np.exp(out.astype(np.float64))
        mean = np.average(y, axis=0, weights=w)
        residual = np.average((y - out) ** 2, axis=0, weights=w)
        total = np.average((y - mean) ** 2, axis=0, weights=w)
        r2 = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), np.where(residual > 0, 0.0, 1.0))
        return float(np.mean(r2))

    # -- files ---------------------------------------------------------------------------

    def save(self, path):
        """Write the model to exactly ``path`` (an ``.npz`` archive, no pickle).

        The file is written to a temporary name beside ``path`` and renamed over it, so an
        existing file is never left half-written. A new file gets the mode a plain write would
        give it under the current umask; a replaced file keeps its mode.
        """
        path = os.fspath(path)
        plain = all(isinstance(layer, (Dense, Dropout)) for layer in self.layers)
        arch = {"format": "fastnn.Sequential", "version": 3 if plain else FORMAT_VERSION, **self.architecture(),
                "seed": self.seed if isinstance(self.seed, int) else None, "loss": self.loss,
                "fingerprint_stride": self._fingerprint.stride}
        arrays = {f"param_{i}": p for i, p in enumerate(self._params)}
        arrays["fingerprint"] = self._fingerprint.hashes
        if self.preparation is not None:
            arrays.update({f"prep_{k}": v for k, v in vars(self.preparation).items() if v is not None})
        if self.feature_names_in_ is not None:
            arrays["feature_names"] = np.array([str(c) for c in self.feature_names_in_], dtype=str)
        with atomic_write(path) as f:
            np.savez(f, architecture=np.array(json.dumps(arch)), **arrays)

    def to_onnx(self, path, *, opset=17, probabilities=False):
        """Export the network to an ONNX file at ``path`` (replaced if it exists) and return the
        ``onnx.ModelProto``: input ``input`` (batch, in_features) in the model's dtype, a dynamic
        batch; output ``logits`` (``output`` for regression), or with ``probabilities=True`` the
        softmax or sigmoid that ``predict_proba`` gives, as ``probabilities``; for a classifier
        also ``label``. A model trained by the command line takes raw rows: its input scaling,
        class labels and target scaling are part of the graph. Needs the ``onnx`` extra; see
        ``fastnn.export``."""
        from ..integrations.onnx import model_to_onnx
        return model_to_onnx(self, path, opset=opset, probabilities=probabilities)

    def architecture(self):
        return {"dtype": self.dtype.name, "layers": [layer.architecture() for layer in self.layers]}

    def __repr__(self):
        lines = [f"  ({i}): " + repr(layer).replace("\n", "\n  ") for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"


def softmax(logits):
    """Row-wise softmax, in place on ``logits`` (a float array (N, C)), which it returns."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def sigmoid(logits):
    """Element-wise logistic function, in place on ``logits`` (which it returns); no overflow."""
    e = np.exp(-np.abs(logits))
    np.divide(np.where(logits >= 0, 1.0, e), 1.0 + e, out=logits)
    return logits


def count_right(loss, out, y):
    """Per row: 1 when the class is right (softmax), the share of labels right (binary)."""
    if loss == "softmax_cross_entropy":
        return out.argmax(axis=1) == y
    return np.mean((out > 0) == (y >= 0.5), axis=1)


MAX_LAYERS = 10_000  # layers a model file may declare (the JSON is read before anything is allocated)
MAX_JSON_BYTES = 1 << 20


def layers_of(arch, path):
    """The layers a model file's architecture declares, every field checked before any is built."""
    def bad(why):
        return ValueError(f"{path} is not a valid fastnn model file: {why}")

    if not isinstance(arch, dict) or arch.get("format") != "fastnn.Sequential":
        raise bad("it is not a fastnn model")
    version = arch.get("version")
    if version not in (1, 2, 3, FORMAT_VERSION) or isinstance(version, bool):
        shown = repr(version) if isinstance(version, (int, float, type(None))) else repr(str(version)[:20])
        raise bad(f"format version {shown}; this fastnn reads 1 to {FORMAT_VERSION}")
    if arch.get("dtype") not in _DTYPES:
        raise bad(f"dtype {str(arch.get('dtype'))[:20]!r}")
    specs = arch.get("layers")
    if not isinstance(specs, list) or not 0 < len(specs) <= MAX_LAYERS:
        raise bad(f"it must declare 1 to {MAX_LAYERS:,} layers")
    layers = []
    for k, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise bad(f"layer {k} is not a description of a layer")
        try:
            layers.append(from_architecture(spec))
        except (TypeError, ValueError) as e:
            raise bad(f"layer {k}: {e}") from None
    if sum(1 for _ in walk(layers)) > MAX_LAYERS:
        raise bad(f"it must declare 1 to {MAX_LAYERS:,} layers")
    if version < 4 and any(getattr(layer, "name", "dense") != "dense" for layer in walk(layers)
                           if isinstance(layer, LayerKind)):
        raise bad(f"format version {version} has only Dense and Dropout layers")
    if arch.get("loss") is not None and not isinstance(arch.get("loss"), str):
        raise bad("its loss is not a name")
    seed = arch.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise bad("its seed is not an integer >= 0")
    stride = arch.get("fingerprint_stride", 1)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= 2**62:
        raise bad("its fingerprint stride is not a positive integer")
    return layers


PREPARATION_FIELDS = ("input_mean", "input_scale", "classes", "target_mean", "target_scale", "target", "target_at")


def load(path) -> Sequential:
    """Read a model written by ``Sequential.save``. Never unpickles, and checks the archive,
    its description and every member's declared shape and size before reading or allocating
    anything (a damaged or hostile file is a ValueError naming it, and costs nothing)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a fastnn model file: it is not an .npz archive (a model is one, written by "
                         f"Sequential.save), or the archive is cut short")
    with Archive(path, "fastnn model file") as archive:
        names = set(archive.members)
        if "architecture" not in names:
            if "meta" in names and "params" in names:
                raise ValueError(f"{path} is a fastnn training checkpoint, not a model: continue training with "
                                 f"model.fit(..., checkpoint_dir=<its folder>, resume=True) on a model of the same "
                                 f"layers, then model.save(...)")
            raise ValueError(f"{path} is an .npz archive but not a fastnn model: it holds {sorted(names)[:5]}, "
                             f"where Sequential.save writes 'architecture' and 'param_0', 'param_1', ...")
        text = archive.read("architecture", shape=(), kinds="U", max_bytes=4 * MAX_JSON_BYTES)
        arch = parse_json(str(text), path, "fastnn model file")
        layers = layers_of(arch, path)
        dtype = _DTYPES[arch["dtype"]]
        owners = [(node.layer, name, shape) for node in graph(layers) for name, shape in node.layer.params().items()]
        expected = {f"param_{i}": shape for i, (_, _, shape) in enumerate(owners)}
        allowed = set(expected) | {"architecture", "fingerprint", "feature_names"} | {f"prep_{k}" for k in
                                                                                       PREPARATION_FIELDS}
        unknown = sorted(names - allowed)
        if unknown:
            raise ValueError(f"{path} is not a valid fastnn model file: it holds members {unknown[:5]} that a model "
                             f"file does not have (refused unread)")
        missing = sorted(set(expected) - names)
        if missing:
            raise ValueError(f"{path} is not a valid fastnn model file: it lacks {missing[:5]}")
        for name, shape in expected.items():  # every parameter's header, before the model is allocated
            got, got_dtype, _, offset = archive.header(name)
            if got != shape or got_dtype != dtype:
                raise ValueError(f"{path} is not a valid fastnn model file: {name} is {got_dtype}{got}, expected "
                                 f"{dtype}{shape}")
            held = archive.members[name].file_size - offset
            if held != dtype.itemsize * int(np.prod(shape, dtype=object)):
                raise ValueError(f"{path} is not a valid fastnn model file: {name} declares {dtype}{shape} but holds "
                                 f"{held:,} bytes")
        try:
            model = Sequential(*layers, seed=arch.get("seed") or 0, dtype=dtype, loss=arch.get("loss"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a valid fastnn model file: {e}") from None
        n_in, n_out = model.in_features, model.out_features
        if "fingerprint" in names:
            from .fingerprint import CAPACITY
            model._fingerprint = Fingerprint(archive.read("fingerprint", shape=(None,), dtype=np.uint64,
                                                          max_bytes=8 * CAPACITY), arch.get("fingerprint_stride", 1))
        prep = {k: archive.read(f"prep_{k}", kinds="fiuU", max_bytes=64 * (n_in + n_out + 1024))
                for k in PREPARATION_FIELDS if f"prep_{k}" in names}
        if prep:
            from ..io.tabular import Preparation
            try:
                model.preparation = Preparation(**prep)
                model.preparation.check(n_in, n_out, model.loss)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path} is not a valid fastnn model file: its preparation is damaged ({e})") from None
        if "feature_names" in names:
            feature_names = archive.read("feature_names", shape=(n_in,), kinds="U", max_bytes=4096 * (n_in + 1))
            if len(set(feature_names.tolist())) != n_in:
                raise ValueError(f"{path} is not a valid fastnn model file: its column names are not {n_in} distinct "
                                 f"names")
            model.feature_names_in_ = np.array(feature_names.tolist(), dtype=object)
        for name, p in zip(expected, model._params):
            a = archive.read(name, shape=p.shape, dtype=dtype)
            if not all_finite(a):
                bad = np.argwhere(~np.isfinite(a))[0]
                owner, what, _ = owners[int(name[6:])]
                what = {"W": "weights", "b": "biases"}.get(what, what)
                place = next(k for k, top in enumerate(layers) if any(inner is owner for inner in walk([top])))
                where = f"layer {place}'s {what}" if layers[place] is owner else \
                    f"the {what} of {owner.summary()} in layer {place}"
                raise ValueError(f"{path} is not a usable fastnn model: {name} ({where}) holds NaN or inf (first at "
                                 f"{tuple(int(i) for i in bad)}); it cannot give finite predictions. Retrain it, or "
                                 f"go back to an earlier file or checkpoint")
            p[...] = a
    return model


def _check_seed(seed):
    """A seed ``np.random.default_rng`` takes: None, an integer >= 0 (of any size), or a sequence
    of them; refused here, where it is given, rather than at the first step."""
    if seed is None:
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer, list, tuple, np.ndarray)) or (
            isinstance(seed, np.ndarray) and seed.dtype.kind not in "iu"):
        raise TypeError(f"seed must be None or an integer >= 0, got {type(seed).__name__} {seed!r}")
    try:
        np.random.SeedSequence(seed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"seed must be None or an integer >= 0 (or a sequence of them), got {seed!r}: {e}") from None
    return int(seed) if isinstance(seed, np.integer) else seed


def _check_optimizer(optimizer):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastnn optimizer such as fastnn.SGD(lr=0.05) or fastnn.Adam(), "
                        f"got {type(optimizer).__name__}")



