"""Sequential: a stack of Dense layers trained by the fused kernels.

The model keeps every parameter in one flat buffer (and every gradient in another), so an
optimizer updates all layers in one kernel call; ``Dense.W``/``Dense.b`` are views into it.
Activations and gradients live in workspaces allocated once per batch size.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .kernels._checks import all_finite
from .kernels.activations import NEEDS_PREACTIVATION
from .kernels.dense import _dense_backward, _dense_forward
from .kernels.train import MSE, SOFTMAX_CROSS_ENTROPY, _forward, _forward_backward, _train_epoch, _train_step
from .kernels.dropout import _dropout_backward, _dropout_forward
from .layers import Dense, Dropout
from .losses import check_loss, prepare_targets
from .optim import Optimizer
from .callbacks import EarlyStopping
from .schedules import Constant, Schedule

FORMAT_VERSION = 1
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
_LOSS_CODES = {"softmax_cross_entropy": SOFTMAX_CROSS_ENTROPY, "mse": MSE}


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; the parameters were not updated.

    ``epoch`` and ``step`` (1-based, the step within the epoch) say where; ``epoch`` is None
    for ``train_step``, whose ``step`` is then the optimizer's step number.
    """

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class _Workspace:
    """Activation buffers for batches of up to ``capacity`` rows, allocated once.

    Flat (capacity * S,) arrays, S = sum of out_features: a batch of n rows uses the first
    n * S elements, so the last partial batch of an epoch needs no buffers of its own.
    """

    def __init__(self, layers, capacity, dtype):
        self.capacity = capacity
        width = sum(layer.out_features for layer in layers)
        self.outs = np.empty(capacity * width, dtype)
        self.douts = np.empty(capacity * width, dtype)
        gelu = any(layer.code in NEEDS_PREACTIVATION for layer in layers)
        self.zs = np.empty(capacity * width if gelu else 0, dtype)

    def views(self, layers, layout, n):
        """Per-layer (out, z, dout) views for n rows, as the compiled step lays them out."""
        out, z, dout = [], [], []
        for layer, row in zip(layers, layout):
            start, size = n * row[5], n * layer.out_features
            out.append(self.outs[start:start + size].reshape(n, layer.out_features))
            dout.append(self.douts[start:start + size].reshape(n, layer.out_features))
            z.append(self.zs[start:start + size].reshape(n, layer.out_features)
                     if layer.code in NEEDS_PREACTIVATION else out[-1])
        return out, z, dout


class Sequential:
    """A feed-forward network of ``Dense`` layers.

    Parameters
    ----------
    *layers : Dense
        The layers in order; each layer's ``in_features`` must equal the previous layer's
        ``out_features``.
    seed : int
        Seeds ``np.random.default_rng``, which initialises the layers in order and then
        shuffles the data in ``fit``.
    dtype : float32 or float64
        Dtype of parameters and computation.

    Examples
    --------
    >>> model = Sequential(Dense(784, 128, activation="relu"), Dense(128, 10), seed=0)
    >>> history = model.fit(X, y, optimizer=SGD(lr=0.05, momentum=0.9), epochs=5)  # doctest: +SKIP
    """

    def __init__(self, *layers, seed=0, dtype=np.float32):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer, e.g. Sequential(Dense(784, 10))")
        dense, drops = [], []
        for i, layer in enumerate(layers):
            if isinstance(layer, Dropout):
                if not dense or i == len(layers) - 1 or isinstance(layers[i - 1], Dropout):
                    raise ValueError(f"layer {i}: a Dropout must come between two Dense layers "
                                     f"(it drops the outputs of the Dense before it)")
                drops[-1] = layer.p_drop
                continue
            if not isinstance(layer, Dense):
                raise TypeError(f"layer {i} must be a fastnn.Dense or fastnn.Dropout, got {type(layer).__name__}")
            if layer.W is not None:
                raise ValueError(f"layer {i} already belongs to a model; create a new Dense for each model")
            if dense and layer.in_features != dense[-1].out_features:
                raise ValueError(f"layer {i} has in_features={layer.in_features} but the Dense before it "
                                 f"has out_features={dense[-1].out_features}; they must match")
            dense.append(layer)
            drops.append(0.0)
        if np.dtype(dtype) not in _DTYPES.values():
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.layers = tuple(layers)
        self._dense = tuple(dense)  # the layers with numbers; dropout rides on them (self._drops)
        self._drops = np.array(drops, dtype=np.float64)
        self.dtype = np.dtype(dtype)
        self.seed = seed
        # dropout masks are keyed on this, the optimizer step, the layer and the element
        self._mask_seed = (int(seed) if isinstance(seed, (int, np.integer)) and seed >= 0
                           else int(np.random.SeedSequence(seed).generate_state(1)[0]))
        sizes = [n for layer in dense for n in (layer.in_features * layer.out_features, layer.out_features)]
        self._flat_params = np.zeros(sum(sizes), self.dtype)
        self._flat_grads = np.zeros(sum(sizes), self.dtype)
        self._params = self._views(self._flat_params)
        self._grads = self._views(self._flat_grads)
        for layer, W, b in zip(dense, self._params[::2], self._params[1::2]):
            layer.W, layer.b = W, b
        self._rng = np.random.default_rng(seed)
        for layer in dense:
            layer.init_params(self._rng)
        self._layout = _layout(self._dense)
        self._workspace_ = None
        self._no_labels = np.empty(0, np.int64)
        self._no_targets = np.empty(0, self.dtype)

    def _views(self, flat):
        views, start = [], 0
        for layer in self._dense:
            i, o = layer.in_features, layer.out_features
            views.append(flat[start:start + i * o].reshape(i, o))
            views.append(flat[start + i * o:start + i * o + o])
            start += i * o + o
        return views

    @property
    def in_features(self):
        return self._dense[0].in_features

    @property
    def out_features(self):
        return self._dense[-1].out_features

    def parameters(self):
        """``[W0, b0, W1, b1, ...]``: writable views; ``p[...] = v`` changes the model."""
        return list(self._params)

    # -- checks and conversion, once per call -------------------------------------------

    def _inputs(self, X, name="X"):
        if (type(X) is np.ndarray and X.dtype == self.dtype and X.ndim == 2 and X.shape[0]
                and X.shape[1] == self.in_features and X.flags.c_contiguous and X.flags.writeable):
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
            X_ok = np.ascontiguousarray(X, dtype=self.dtype)  # converts dtype, byte order and layout
            if not X_ok.flags.writeable:  # read-only (e.g. a memmap): kernels are compiled for writable arrays
                X_ok = X_ok.copy()
        if not all_finite(X_ok):
            raise ValueError(f"{name} contains NaN or inf; remove or impute those values first")
        return X_ok

    def _data(self, X, y, loss):
        X = self._inputs(X)
        return X, prepare_targets(loss, y, X.shape[0], self.out_features, self.dtype)

    def _workspace(self, n):
        ws = self._workspace_
        if ws is None or ws.capacity < n:
            ws = self._workspace_ = _Workspace(self._dense, n, self.dtype)
        return ws

    def _targets(self, loss, y):
        """(labels, targets) as the compiled step takes them; the unused one is empty."""
        if loss == "softmax_cross_entropy":
            return y, self._no_targets
        return self._no_labels, y.reshape(-1)

    # -- the step -------------------------------------------------------------------------

    def _loss_and_grad(self, ws, X, y, loss_kernel, step):
        """The compiled step's forward, loss and backward, called kernel by kernel from Python
        (``fastnn profile`` times each); the same kernels in the same order, on the same buffers."""
        out, z, dout = ws.views(self._dense, self._layout, X.shape[0])
        a = X
        for k, (layer, o, zz) in enumerate(zip(self._dense, out, z)):
            _dense_forward(a, layer.W, layer.b, layer.code, o, zz)
            if self._drops[k] > 0:
                _dropout_forward(o, self._drops[k], self._mask_seed, step, k)
            a = o
        loss = loss_kernel(out[-1], y, dout[-1])
        for k in range(len(self._dense) - 1, -1, -1):
            layer = self._dense[k]
            if self._drops[k] > 0:
                _dropout_backward(dout[k], self._drops[k], self._mask_seed, step, k, out[k])
            x = X if k == 0 else out[k - 1]
            dx = X[:0] if k == 0 else dout[k - 1]
            _dense_backward(dout[k], x, layer.W, out[k], z[k], layer.code,
                            self._grads[2 * k], self._grads[2 * k + 1], dx, dout[k])
        return loss

    def _step_by_kernel(self, X, y, loss, optimizer):
        """``train_step`` with every kernel called from Python, for ``fastnn profile``."""
        X, y = self._data(X, y, loss)
        value = self._loss_and_grad(self._workspace(X.shape[0]), X, y, check_loss(loss), optimizer.step_count + 1)
        optimizer.step([self._flat_params], [self._flat_grads])
        return float(value)

    def loss_and_grad(self, X, y, loss="softmax_cross_entropy"):
        """Mean loss on ``(X, y)`` and its gradient with respect to every parameter.

        Returns
        -------
        loss : float
        grads : list of ndarray
            New arrays matching ``parameters()`` in order and shape.
        """
        check_loss(loss)
        X, y = self._data(X, y, loss)
        ws = self._workspace(X.shape[0])
        value = _forward_backward(X, *self._targets(loss, y), _LOSS_CODES[loss], self._layout, self._flat_params,
                                  self._flat_grads, ws.outs, ws.zs, ws.douts, self._drops, self._mask_seed, 0)
        return float(value), [g.copy() for g in self._grads]

    def train_step(self, X, y, loss="softmax_cross_entropy", optimizer=None):
        """One optimizer update on the batch ``(X, y)``; returns the batch loss before it."""
        loss_code = _LOSS_CODES.get(loss) if isinstance(loss, str) else None
        if loss_code is None:
            check_loss(loss)
        if not isinstance(optimizer, Optimizer):
            _check_optimizer(optimizer)
        X, y = self._data(X, y, loss)
        ws = self._workspace(X.shape[0])
        labels, targets = self._targets(loss, y)
        optimizer._prepare((self._flat_params,))
        code, hyper, state1, state2, step = optimizer._kernel_args(0, self._flat_params)
        value = _train_step(X, labels, targets, loss_code, self._layout, self._flat_params, self._flat_grads,
                            ws.outs, ws.zs, ws.douts, self._drops, self._mask_seed, code, hyper, state1, state2, step)
        if value != value:  # NaN: the step was refused
            raise DivergenceError(f"the loss or its gradients became NaN or inf at optimizer step {step}; "
                                  f"the parameters were not updated. Lower the learning rate or check the data.",
                                  epoch=None, step=step)
        optimizer.step_count = step
        return value

    # -- training loop -------------------------------------------------------------------

    def fit(self, X, y, loss="softmax_cross_entropy", optimizer=None, epochs=1, batch_size=32,
            validation_data=None, shuffle=True, verbose=0, lr_schedule=None, checkpoint_dir=None, resume=False,
            validation_split=0.0, early_stopping=None, callbacks=()):
        """Train for ``epochs`` passes over ``(X, y)`` in mini-batches.

        Parameters
        ----------
        X : array (N, in_features); y : labels (N,) for cross-entropy, targets (N, out) for mse
        loss : "softmax_cross_entropy" or "mse"
        optimizer : SGD, Adam or AdamW
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

        Raises
        ------
        DivergenceError
            When a step's loss or gradients become NaN or inf; the model keeps the parameters
            of the last finite step.

        Returns
        -------
        history : dict of per-epoch lists: ``loss``, plus ``accuracy`` for cross-entropy,
            plus ``val_loss`` and ``val_accuracy`` with validation data.
        """
        check_loss(loss)
        _check_optimizer(optimizer)
        epochs = _positive_count("epochs", epochs)
        batch_size = _positive_count("batch_size", batch_size)
        X, y = self._data(X, y, loss)
        if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_split:
            held = int(round(validation_split * X.shape[0]))
            if held < 1 or held >= X.shape[0]:
                raise ValueError(f"validation_split={validation_split} of {X.shape[0]} rows leaves an empty "
                                 f"training or validation set")
            rows = self._rng.permutation(X.shape[0])  # a random hold-out, not the last rows
            validation_data = (X[np.sort(rows[:held])], y[np.sort(rows[:held])])
            X, y = np.ascontiguousarray(X[np.sort(rows[held:])]), np.ascontiguousarray(y[np.sort(rows[held:])])
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables (epoch, history) -> bool, got {cb!r}")
        if early_stopping is not None:
            if not isinstance(early_stopping, EarlyStopping):
                raise TypeError(f"early_stopping must be a fastnn.EarlyStopping, got {type(early_stopping).__name__}")
            early_stopping.start()
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv, yv = self._data(*validation_data, loss)
        classify = loss == "softmax_cross_entropy"
        history = {"loss": []}
        if classify:
            history["accuracy"] = []
        if validation_data is not None:
            history["val_loss"] = []
            if classify:
                history["val_accuracy"] = []
        n = X.shape[0]
        batches = -(-n // batch_size)
        ws = self._workspace(min(batch_size, n))
        labels, targets = self._targets(loss, y)
        x_buf = np.empty((min(batch_size, n), X.shape[1]), self.dtype)
        label_buf = np.empty(min(batch_size, n) if labels.size else 0, np.int64)
        target_buf = np.empty(min(batch_size, n) * self.out_features if targets.size else 0, self.dtype)
        batch_losses = np.empty(batches)
        no_order = np.empty(0, np.int64)
        if lr_schedule is None:
            lr_schedule = Constant()
        elif not isinstance(lr_schedule, Schedule):
            raise TypeError(f"lr_schedule must be a fastnn.schedules schedule such as Cosine(), "
                            f"got {type(lr_schedule).__name__}")
        schedule = lr_schedule.as_array(epochs * batches)
        first_epoch = 0
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        if checkpoint_dir is not None:
            from . import checkpoint
            settings = {"epochs": epochs, "batch_size": batch_size, "loss": loss, "samples": n, "shuffle": bool(shuffle),
                        "schedule": repr(lr_schedule), "validation": validation_data is not None}
            restored = checkpoint.load(checkpoint_dir, self, optimizer, self._rng, settings) if resume else None
            if restored is not None:
                first_epoch, history = restored
        # the compiled epoch returns to Python only to move the progress bar (about 20 times)
        chunk = max(1, batches // 20) if verbose else batches
        optimizer._prepare((self._flat_params,))
        for epoch in range(first_epoch, epochs):
            order = self._rng.permutation(n) if shuffle else no_order
            total_loss, correct = 0.0, 0
            bar = _progress(n, batch_size, epoch, epochs) if verbose else None
            for first in range(0, batches, chunk):
                stop = min(first + chunk, batches)
                code, hyper, state1, state2, step = optimizer._kernel_args(0, self._flat_params)
                part_loss, part_correct, bad = _train_epoch(
                    X, labels, targets, order, batch_size, first, stop, _LOSS_CODES[loss], self._layout,
                    self._flat_params, self._flat_grads, ws.outs, ws.zs, ws.douts, self._drops, self._mask_seed,
                    x_buf, label_buf, target_buf,
                    code, hyper, state1, state2, step, batch_losses, schedule, epoch * batches + first)
                if bad >= 0:
                    optimizer.step_count += bad - first
                    if bar is not None:
                        bar.close()
                    raise DivergenceError(
                        f"the loss or its gradients became NaN or inf in epoch {epoch + 1} at step {bad + 1} of "
                        f"{batches}; the model keeps the parameters of the last finite step. Lower the learning "
                        f"rate or check the data.", epoch=epoch + 1, step=bad + 1)
                optimizer.step_count += stop - first
                total_loss += part_loss
                correct += part_correct
                if bar is not None:
                    bar.update(min(stop * batch_size, n) - min(first * batch_size, n))
                    bar.set_postfix(loss=f"{batch_losses[stop - 1]:.4f}", refresh=False)
            history["loss"].append(total_loss / n)
            if classify:
                history["accuracy"].append(correct / n)
            if validation_data is not None:
                scores = self._evaluate(Xv, yv, loss)
                history["val_loss"].append(scores["loss"])
                if classify:
                    history["val_accuracy"].append(scores["accuracy"])
            if bar is not None:
                bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in history.items()})
                bar.close()
            if checkpoint_dir is not None:
                checkpoint.save(checkpoint_dir, self, optimizer, self._rng, epoch + 1, history, settings)
            stop = early_stopping is not None and early_stopping(epoch + 1, history, self._flat_params)
            for cb in callbacks:
                stop |= bool(cb(epoch + 1, history))
            if stop:
                break
        if early_stopping is not None and early_stopping.restore_best and early_stopping._best_params is not None:
            self._flat_params[...] = early_stopping._best_params
        return history

    # -- inference -----------------------------------------------------------------------

    def _predict(self, X, batch_size):
        out = np.empty((X.shape[0], self.out_features), self.dtype)
        ws = _Workspace(self._dense, min(batch_size, X.shape[0]), self.dtype)  # dropped on return
        last = self._layout[-1, 5]
        for start in range(0, X.shape[0], batch_size):
            stop = min(start + batch_size, X.shape[0])
            n = stop - start
            _forward(X[start:stop], self._layout, self._flat_params, ws.outs, ws.zs, self._drops, 0, 0, False)
            out[start:stop] = ws.outs[n * last:n * (last + self.out_features)].reshape(n, self.out_features)
        return out

    def predict(self, X, batch_size=1024):
        """Last-layer outputs (logits for a classifier), shape (N, out_features)."""
        return self._predict(self._inputs(X), _positive_count("batch_size", batch_size))

    def predict_proba(self, X, batch_size=1024):
        """Softmax of the logits: class probabilities, shape (N, out_features)."""
        logits = self.predict(X, batch_size)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    def _evaluate(self, X, y, loss):
        out = self._predict(X, 1024)
        value = check_loss(loss)(out, y, np.empty_like(out))
        scores = {"loss": float(value)}
        if loss == "softmax_cross_entropy":
            scores["accuracy"] = float(np.mean(out.argmax(axis=1) == y))
        return scores

    def evaluate(self, X, y, loss="softmax_cross_entropy"):
        """``{"loss": mean loss}``, plus ``"accuracy"`` for cross-entropy."""
        check_loss(loss)
        X, y = self._data(X, y, loss)
        return self._evaluate(X, y, loss)

    # -- files ---------------------------------------------------------------------------

    def save(self, path):
        """Write the model to exactly ``path`` (an ``.npz`` archive, no pickle).

        The file is written to a temporary name beside ``path`` and renamed over it, so an
        existing file is never left half-written.
        """
        path = os.fspath(path)
        arch = {"format": "fastnn.Sequential", "version": FORMAT_VERSION, **self._architecture(),
                "seed": self.seed if isinstance(self.seed, int) else None}
        arrays = {f"param_{i}": p for i, p in enumerate(self._params)}
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, architecture=np.array(json.dumps(arch)), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _architecture(self):
        return {"dtype": self.dtype.name,
                "layers": [{"in_features": l.in_features, "out_features": l.out_features,
                            "activation": l.activation} if isinstance(l, Dense) else {"p_drop": l.p_drop}
                           for l in self.layers]}

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"


def load(path) -> Sequential:
    """Read a model written by ``Sequential.save``; validates everything, never unpickles."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            files = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path} is not a readable fastnn model file ({e})") from None
    try:
        arch = json.loads(str(files.pop("architecture")))
        if arch.get("format") != "fastnn.Sequential":
            raise ValueError("it is not a fastnn model")
        if arch.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {arch.get('version')!r}, this fastnn reads {FORMAT_VERSION}")
        dtype = _DTYPES[arch["dtype"]]
        layers = [Dropout(s["p_drop"]) if "p_drop" in s else Dense(s["in_features"], s["out_features"], s["activation"])
                  for s in arch["layers"]]
        model = Sequential(*layers, seed=arch.get("seed") or 0, dtype=dtype)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid fastnn model file: {e}") from None
    expected = [f"param_{i}" for i in range(len(model._params))]
    if sorted(files) != sorted(expected):
        raise ValueError(f"{path} is not a valid fastnn model file: arrays {sorted(files)}, expected {expected}")
    for name, p in zip(expected, model._params):
        a = files[name]
        if a.shape != p.shape or a.dtype != dtype:
            raise ValueError(f"{path} is not a valid fastnn model file: {name} is {a.dtype}{a.shape}, "
                             f"expected {dtype}{p.shape}")
        p[...] = a
    return model


def _layout(layers):
    """(L, 6) int64: I, O, W offset, b offset, activation code, output column offset."""
    rows, offset, column = [], 0, 0
    for layer in layers:
        i, o = layer.in_features, layer.out_features
        rows.append((i, o, offset, offset + i * o, layer.code, column))
        offset += i * o + o
        column += o
    return np.array(rows, dtype=np.int64)


def _check_optimizer(optimizer):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastnn optimizer such as fastnn.SGD(lr=0.05) or fastnn.Adam(), "
                        f"got {type(optimizer).__name__}")


def _positive_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _progress(n, batch_size, epoch, epochs):
    from tqdm.auto import tqdm
    return tqdm(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="sample", leave=True)
