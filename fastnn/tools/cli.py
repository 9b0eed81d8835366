"""The ``fastnn`` command line."""
from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import time
import warnings

import numpy as np

from ..kernels._checks import positive, positive_int
from ..kernels.activations import REGISTRY as ACTIVATIONS
from ..kernels.optimizers import RULES
from ..nn.optim import from_name
from ..nn.training import LossExplosionWarning

OPTIMIZERS = tuple(RULES)  # every optimizer's name, from its definition


def _sizes(option: str, example: str):
    """An argparse type for ``option``: comma-separated layer sizes >= 1, such as ``example``."""
    def parse(text):
        try:
            sizes = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be comma-separated integers such as {example}, "
                                             f"got {text!r}") from None
        if not sizes or any(s < 1 for s in sizes):
            raise argparse.ArgumentTypeError(f"{option} sizes must be integers >= 1, got {text!r}")
        return sizes
    parse.__name__ = "sizes"
    return parse


_hidden = _sizes("--hidden", "256,128")


def _positive(kind):
    """An argparse type: a number > 0 of ``kind``, checked as the library checks its arguments."""
    def parse(text):
        try:
            value = kind(text)
            return positive_int("value", value) if kind is int else positive("value", value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} > 0, got {text!r}") from None
    parse.__name__ = kind.__name__  # (argparse names the type in its messages)
    return parse


def _free_name(stem: str) -> pathlib.Path:
    """``stem.npz``, or ``stem-2.npz``, ... : the first name not taken (never overwrite)."""
    path, k = pathlib.Path(f"{stem}.npz"), 1
    while path.exists():
        k += 1
        path = pathlib.Path(f"{stem}-{k}.npz")
    return path


# Default recipes. Full MNIST: chosen on a 50,000/10,000 split of the training set (never on
# the test set): 98.28% median validation accuracy over 3 seeds in about 3.6 s of training
# (2 threads). The bundled digits: a plain Adam run, about 94% on their test split.
RECIPES = {
    "mnist": dict(optimizer="adam", lr=2e-3, epochs=8, batch_size=128, schedule="cosine"),
    "bundled": dict(optimizer="adam", lr=1e-3, epochs=10, batch_size=64, schedule="constant"),
    "table": dict(optimizer="adam", lr=1e-3, epochs=30, batch_size=32, schedule="constant"),  # a user's own data
}
HIDDEN = {"mnist": [256, 128], "bundled": [256, 128], "table": [64, 64]}


def _own_data(path) -> bool:
    return path is not None and path.suffix.lower() in (".npz", ".csv")


def _load_data(data):
    from ..io.datasets import load_mnist, load_mnist_5k
    if data is None:
        return load_mnist_5k(), "bundled digits (4,000 train / 1,000 test)", "bundled"
    (X, y), (Xt, yt) = load_mnist(data)
    return ((X, y), (Xt, yt)), f"MNIST from {data} ({len(y):,} train / {len(yt):,} test)", "mnist"


def _plot(draw, *args):
    """Draw a picture if matplotlib is there; otherwise say how to get it (numbers still print)."""
    from .plots import MissingPlotExtra
    try:
        draw(*args)
        print(f"wrote {args[-1]}")
        return 0
    except MissingPlotExtra as e:
        print(f"no picture: {e}", file=sys.stderr)
        return 1


def _setup(args, kind, inputs=784, outputs=10, loss="softmax_cross_entropy"):
    """The model, optimizer, schedule and recipe that ``fastnn train`` uses for ``args``."""
    import fastnn

    recipe = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in RECIPES[kind].items()}
    sizes = [inputs, *(args.hidden or HIDDEN[kind]), outputs]
    layers = [fastnn.Dense(a, b, activation=args.activation) for a, b in zip(sizes[:-2], sizes[1:-1])]
    model = fastnn.Sequential(*layers, fastnn.Dense(sizes[-2], outputs), seed=args.seed, loss=loss)
    lr = recipe["lr"]
    name = recipe["optimizer"]
    optimizer = from_name(name, lr=lr, **({"momentum": 0.9} if name == "sgd" else {}))  # (the recipe's SGD)
    schedule = fastnn.Cosine() if recipe["schedule"] == "cosine" else fastnn.Constant()
    return model, optimizer, schedule, recipe, sizes


def cmd_train(args) -> int:
    import fastnn
    from ..kernels._jit import compile_seconds
    from . import plots

    if args.out is not None and args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite it or choose another --out", file=sys.stderr)
        return 2
    if args.out is not None and not args.out.absolute().parent.is_dir():  # before training, not after
        raise FileNotFoundError(f"cannot write {args.out}: the folder {args.out.absolute().parent} does not exist; "
                                f"create it first")
    if args.distributed and _own_data(args.data):
        raise ValueError("--distributed trains on the digits (bundled or MNIST); train your own table without it")
    if args.distributed:
        from ..integrations import mpi as distributed
        return distributed.abort_on_error(lambda: _train_distributed(args))
    if args.threads:
        fastnn.set_num_threads(args.threads)
    if _own_data(args.data):
        return _train_table(args)
    ((X, y), (Xt, yt)), what, kind = _load_data(args.data)
    model, optimizer, schedule, recipe, sizes = _setup(args, kind)
    print(f"training {'-'.join(map(str, sizes))} {args.activation} with {optimizer}, {schedule}, "
          f"batch {recipe['batch_size']}, {recipe['epochs']} epochs on {what}")
    compiled_before = compile_seconds()
    start = time.perf_counter()
    history, explosions = _fit_watched(model, X, y, optimizer, recipe, schedule, args,
                                       validation=(Xt, yt) if args.plot else None)
    seconds = time.perf_counter() - start
    scores = model.evaluate(Xt, yt)
    compile_s = compile_seconds() - compiled_before  # fit's and evaluate's, 0 once cached
    print(f"test accuracy {scores['accuracy']:.2%} (loss {scores['loss']:.4f}) after {recipe['epochs']} epochs: "
          f"{seconds - min(compile_s, seconds):.1f} s of training"
          + (f", {compile_s:.1f} s of compiling (cached for the next run)" if compile_s else ""))
    return _save_unless_failed(model, args, _failed_to_learn(explosions, scores["accuracy"], yt), history, plots)


def _fit_watched(model, X, y, optimizer, recipe, schedule, args, validation=None):
    """``fit`` as ``fastnn train`` runs it: a progress bar, checkpoints, and the loss-explosion
    warnings collected (they decide whether the run failed to learn)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LossExplosionWarning)
        history = model.fit(X, y, optimizer=optimizer, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                            verbose=1, lr_schedule=schedule, validation_data=validation,
                            checkpoint_dir=args.checkpoint_dir, resume=args.resume)
    return history, [w.message for w in caught if issubclass(w.category, LossExplosionWarning)]


def _train_table(args) -> int:
    """``fastnn train --data FILE.npz|FILE.csv``: the user's own table, classified or regressed."""
    from . import plots
    from ..io import tabular

    table = tabular.read_table(args.data, args.target)
    task, why = tabular.infer_task(table.y)
    if args.task is not None:
        print(f"task: {args.task} (--task; without it: {task}, as {why})")
        task = args.task
    else:
        other = "regress" if task == "classify" else "classify"
        print(f"task: {task}, as {why}; override with --task {other}")
    if task == "regress" and table.y.dtype.kind not in "biuf":
        raise tabular.DataError(f"--task regress needs numeric labels; {args.data}'s are text")
    X, y, Xt, yt = table.X, table.y, table.X_test, table.y_test
    if Xt is None:
        train_rows, test_rows = tabular.holdout(len(X), 0.2, seed=args.seed)
        X, y, Xt, yt = X[train_rows], y[train_rows], X[test_rows], y[test_rows]
        print(f"no test set in {args.data.name}: holding out a seeded 20% ({len(yt):,} of {len(table.y):,} rows, "
              f"--seed {args.seed}) to test on")
    prep = tabular.Preparation.fit(X, np.concatenate([y, yt]) if task == "classify" else y, task)
    classify = task == "classify"
    outputs = len(prep.classes) if classify else 1
    model, optimizer, schedule, recipe, sizes = _setup(args, "table", X.shape[1], outputs,
                                                       "softmax_cross_entropy" if classify else "mse")
    if table.columns is not None:
        prep.target = np.array(str(table.target))
    elif isinstance(table.target, (int, np.integer)):
        prep.target_at = np.array(int(table.target))
    targets = prep.labels if classify else prep.targets
    Xp, yp = prep.inputs(X, model.dtype), targets(y)
    Xtp, ytp = prep.inputs(Xt, model.dtype), targets(yt)
    print(f"training {'-'.join(map(str, sizes))} {args.activation} with {optimizer}, batch {recipe['batch_size']}, "
          f"{recipe['epochs']} epochs on {args.data.name} ({len(X):,} train / {len(Xt):,} test rows"
          + (f", {outputs} classes" if classify else "") + "); inputs standardised"
          + ("" if classify else ", target standardised"))
    history, explosions = _fit_watched(model, Xp, yp, optimizer, recipe, schedule, args,
                                       validation=(Xtp, ytp) if args.plot else None)
    # from here on the model takes raw rows and labels, as it will after saving
    model.preparation = prep
    model.feature_names_in_ = None if table.columns is None else np.array(table.columns, dtype=object)
    if classify:
        accuracy = model.evaluate(Xt, yt)["accuracy"]
        print(f"test accuracy {accuracy:.2%} ({len(yt):,} rows)")
        failed = _failed_to_learn(explosions, accuracy, ytp)
    else:
        pred = model.predict(Xt)[:, 0]
        rmse, r2 = _regression_scores(pred, np.asarray(yt, np.float64))
        print(f"test RMSE {rmse:.4g}, R^2 {r2:.4f} ({len(yt):,} rows)")
        failed = "; ".join([str(explosions[0])] if explosions else []
                           + ([f"R^2 {r2:.4f} on the test rows: no better than predicting the mean"] if r2 <= 0 else []))
    return _save_unless_failed(model, args, failed, history, plots)


def _regression_scores(pred, y):
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    total = float(np.sum((y - y.mean()) ** 2))
    return rmse, (1.0 - float(np.sum((pred - y) ** 2)) / total) if total > 0 else 0.0


def _save_unless_failed(model, args, failed, history, plots):
    if failed and not args.force:
        print(f"error: training failed to learn: {failed}; nothing saved (--force saves the model anyway)",
              file=sys.stderr)
        return 1
    out = args.out if args.out is not None else _free_name("fastnn-model")
    model.save(out)
    print(f"saved {out}")
    if failed:
        print(f"warning: training failed to learn: {failed} (saved anyway: --force)", file=sys.stderr)
    if args.plot:
        return _plot(plots.training_curves, history, args.plot)
    return 0


def _failed_to_learn(explosions, accuracy, y_test):
    """Why a run failed to learn ("" if it did not): the loss exploded (the habits rule), or the
    test accuracy is no better than always answering the most frequent class."""
    reasons = [str(explosions[0])] if explosions else []
    chance = np.bincount(np.asarray(y_test)).max() / len(y_test)
    if accuracy <= chance + 0.01:
        reasons.append(f"the test accuracy {accuracy:.2%} is at chance (always the most frequent class: {chance:.2%})")
    return "; ".join(reasons)


def _train_distributed(args) -> int:
    """``mpiexec -n R fastnn train --distributed``: data-parallel over R ranks; rank 0 reports."""
    import fastnn
    from ..integrations import mpi as distributed

    comm, rank, size = distributed.world()
    fastnn.set_num_threads(args.threads or 1)  # one thread per rank: ranks must not oversubscribe cores
    ((X, y), (Xt, yt)), what, kind = _load_data(args.data)
    model, optimizer, schedule, recipe, sizes = _setup(args, kind)
    if rank == 0:
        print(f"training {'-'.join(map(str, sizes))} {args.activation} on {size} ranks, global batch "
              f"{recipe['batch_size']}, {recipe['epochs']} epochs, {optimizer}, {schedule}, on {what}")
    comm.Barrier()
    start = time.perf_counter()
    distributed.fit(model, X, y, optimizer=optimizer, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                    verbose=1, lr_schedule=schedule)
    seconds = time.perf_counter() - start
    if rank == 0:
        scores = model.evaluate(Xt, yt)
        print(f"test accuracy {scores['accuracy']:.2%} after {recipe['epochs']} epochs: {seconds:.1f} s of training "
              f"on {size} ranks ({recipe['epochs'] * len(y) / seconds:,.0f} samples/s)")
        out = args.out if args.out is not None else _free_name("fastnn-model")  # --out was checked at start
        model.save(out)
        print(f"saved {out}")
    return 0


def _check_overlap(model, X, args) -> bool:
    """Say how many evaluation rows the model was trained on; False (refuse) above 1% unless
    --allow-overlap: scores on training rows say little about new data."""
    share = model.seen_in_training(X)
    if share is None:
        print("share of these rows seen in training: too few rows to tell")
        return True
    print(f"share of these rows seen in training: {share:.1%}")
    if share > 0.01 and not args.allow_overlap:
        print(f"error: {share:.1%} of the evaluation rows are rows {args.model.name} was trained on, so its score "
              f"here would overstate how it does on new data; evaluate on held-out rows, or pass --allow-overlap",
              file=sys.stderr)
        return False
    return True


def cmd_evaluate(args) -> int:
    import fastnn

    model = fastnn.load(args.model)
    if model.preparation is not None or _own_data(args.data):
        return _evaluate_table(model, args)
    if model.in_features != 784 or model.out_features != 10:
        raise ValueError(f"{args.model} maps {model.in_features} inputs to {model.out_features} outputs; "
                         f"a digit classifier maps 784 to 10")
    (_, (Xt, yt)), what, _ = _load_data(args.data)
    if not _check_overlap(model, Xt, args):
        return 1
    pred = model.predict(Xt).argmax(axis=1)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (yt, pred), 1)
    print(f"{args.model} on the test images of {what}: accuracy {np.mean(pred == yt):.2%}")
    print("confusion matrix (rows: true digit, columns: predicted)")
    print("      " + "".join(f"{c:>6}" for c in range(10)))
    for r in range(10):
        print(f"{r:>6}" + "".join(f"{v:>6}" for v in confusion[r]))
    return 0


def _table_rows(model, args, labels):
    """The raw rows (and labels) of ``--data`` for ``model``: a CSV's columns matched to the
    model's by name (``tabular.read_rows``), with a note on stderr for what was dropped or
    assumed. The model prepares raw rows itself."""
    from ..io import tabular

    if args.data is None:
        raise ValueError(f"{args.model} was trained on a table: give its rows with --data FILE.npz|FILE.csv")
    prep = model.preparation
    label_name = None if prep is None or prep.target is None else str(prep.target)
    label_at = None if prep is None or prep.target_at is None else int(prep.target_at)
    names = None if model.feature_names_in_ is None else [str(c) for c in model.feature_names_in_]
    table, notes = tabular.read_rows(args.data, features=model.in_features, names=names, target=args.target,
                                     label_name=label_name, label_at=label_at, labels=labels)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return table


def _evaluate_table(model, args) -> int:
    table = _table_rows(model, args, labels=True)
    X = table.X
    if not _check_overlap(model, X, args):
        return 1
    if model.loss == "mse":
        rmse, r2 = _regression_scores(model.predict(X)[:, 0], np.asarray(table.y, np.float64))
        print(f"{args.model} on {args.data.name} ({len(X):,} rows): RMSE {rmse:.4g}, R^2 {r2:.4f}")
        return 0
    y = table.y if model.preparation is not None else np.asarray(table.y, np.int64)
    accuracy = model.evaluate(X, y)["accuracy"]
    print(f"{args.model} on {args.data.name} ({len(X):,} rows): accuracy {accuracy:.2%}")
    return 0


def cmd_predict(args) -> int:
    import fastnn

    if args.out is not None and args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite it or choose another --out", file=sys.stderr)
        return 2
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".npy"):
        raise ValueError(f"--out {args.out}: predictions are written as .csv or .npy")
    model = fastnn.load(args.model)
    X = _table_rows(model, args, labels=False).X
    prep = model.preparation
    if model.loss == "mse":
        values = model.predict(X)  # (raw units: the model keeps its target scaling)
        header = ["prediction"] if values.shape[1] == 1 else [f"prediction_{j}" for j in range(values.shape[1])]
        rows, array = values.tolist(), values[:, 0] if values.shape[1] == 1 else values
    else:
        proba = model.predict_proba(X).astype(np.float64)
        if proba.shape[1] == 1:  # one sigmoid output: two classes
            proba = np.column_stack([1.0 - proba[:, 0], proba[:, 0]])
        classes = prep.classes if prep is not None else np.arange(proba.shape[1])
        labels = classes[proba.argmax(axis=1)]
        header = ["label", *(f"p_{c}" for c in classes.tolist())]
        rows = [[label, *p] for label, p in zip(labels.tolist(), proba.tolist())]
        array = labels
    if args.out is not None and args.out.suffix.lower() == ".npy":
        from ..io.files import atomic_write
        with atomic_write(args.out) as f:
            np.save(f, np.asarray(array), allow_pickle=False)
        print(f"wrote {len(X):,} predictions to {args.out}")
        return 0
    import csv
    import io
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows])
    if args.out is None:
        sys.stdout.write(text.getvalue())
        return 0
    from ..io.files import atomic_write
    with atomic_write(args.out) as f:
        f.write(text.getvalue().encode())
    print(f"wrote {len(X):,} predictions to {args.out}")
    return 0


def cmd_export(args) -> int:
    import fastnn

    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite it or choose another name", file=sys.stderr)
        return 2
    model = fastnn.load(args.model)
    proto = model.to_onnx(args.out, opset=args.opset, probabilities=args.probabilities)
    outputs = ", ".join(o.name for o in proto.graph.output)
    print(f"wrote {args.out}: opset {args.opset}, input 'input' ({model.dtype.name}, batch x {model.in_features}), "
          f"outputs {outputs}" + ("; the input scaling and class labels are in the graph" if model.preparation
                                   is not None else ""))
    return 0


def cmd_approx(args) -> int:
    from . import plots, story

    if args.expr:
        target, name = story.parse_expression(args.expr), args.expr
        interval = tuple(args.interval) if args.interval else (-1.0, 1.0)
    else:
        fn, default = story.BUILTIN_TARGETS[args.target]
        target, name, interval = fn, args.target, tuple(args.interval) if args.interval else default
    widths = [2 ** k for k in range(7)]
    print(f"fitting {name} on [{interval[0]:.3g}, {interval[1]:.3g}] with one hidden tanh layer")
    start = time.perf_counter()
    x, y, fits = story.approximate(target, interval, widths, epochs=args.epochs, seed=args.seed)
    print(f"{'neurons':>8} {'MSE':>11} {'max error':>10} {'max error near 0':>17}")
    for fit in fits:
        print(f"{fit['width']:>8} {fit['mse']:>11.3e} {fit['max_error']:>10.4f} {fit['max_error_near_jump']:>17.4f}")
    print(f"{len(widths)} fits in {time.perf_counter() - start:.2f} s; MSE fell {fits[0]['mse'] / fits[-1]['mse']:.0f}x "
          f"from 1 to {widths[-1]} neurons")
    kept = [f["width"] for f in fits if f["kept_narrower"]]
    print(f"({story.HOW}" + (f"; widths {kept} kept the narrower fit" if kept else "") + ")")
    if args.target == "step" and not args.expr:
        print("The step jumps from 0 to 1 at x = 0. Every network here is a continuous function, so "
              "near the jump it must pass through the values in between: its error there stays about 0.5 "
              "however many neurons it has, while the MSE still falls as the steep part gets narrower.")
    if args.plot:
        return _plot(plots.approximation, x, y, fits, f"{name}: one hidden layer of 1 to {widths[-1]} neurons",
                     args.plot)
    return 0


def cmd_linear(args) -> int:
    import fastnn
    from . import story

    (X, y), (Xt, yt) = _load_data(None)[0]
    results = {}
    for label, make in (("relu network 784-256-128-10", lambda: story.digits_network("relu")),
                        ("identity network 784-256-128-10", lambda: story.digits_network("identity")),
                        ("one linear layer 784-10", lambda: fastnn.Sequential(fastnn.Dense(784, 10), seed=0))):
        model = make()
        model.fit(X, y, optimizer=fastnn.Adam(lr=1e-3), epochs=args.epochs, batch_size=64)
        results[label] = model
        print(f"{label:<34} test accuracy {model.evaluate(Xt, yt)['accuracy']:.2%}")
    identity = results["identity network 784-256-128-10"]
    W, b = story.collapse(identity)
    gap = np.max(np.abs(Xt @ W + b - identity.predict(Xt)))
    print(f"The identity network is one linear map: W = W0 W1 W2 ({W.shape[0]}x{W.shape[1]}) and "
          f"b = (b0 W1 + b1) W2 + b2 reproduce its outputs to {gap:.1e} (float32 rounding).")
    print(f"XOR with one hidden layer: relu {story.xor_accuracy('relu'):.0%}, "
          f"identity {story.xor_accuracy('identity'):.0%} (a linear map can get at most 3 of the 4 points right)")
    return 0


def cmd_show_weights(args) -> int:
    import fastnn
    from . import plots

    model = fastnn.load(args.model)
    first = model.nodes[0].layer
    if not isinstance(first, fastnn.Dense):
        raise ValueError(f"{args.model} starts with {first.summary()}; show-weights draws the weights of a first "
                         f"Dense layer, which see the pixels")
    W = first.W
    if W.shape[0] != 784:
        raise ValueError(f"{args.model} takes {W.shape[0]} inputs; show-weights draws 28x28 = 784-pixel inputs")
    norms = np.linalg.norm(W, axis=0)
    print(f"{W.shape[1]} first-layer neurons; weight norms from {norms.min():.3f} to {norms.max():.3f}")
    if args.plot is None:
        print("pass --plot FILE.png to draw each neuron's weights as a 28x28 image")
        return 0
    chosen = _neurons(args.neurons, W.shape[1])
    print(f"drawing neurons {args.neurons or f'0-{len(chosen) - 1}'} ({len(chosen)} of {W.shape[1]}); "
          f"--neurons chooses others, such as 64-127 or 3,5,7")
    return _plot(lambda W_, path: plots.first_layer_weights(W_, path, chosen), W[:, chosen], args.plot)


def _neurons(spec, count, default=64):
    """Neuron numbers from "0-63", "3,5,7" or "10-20,40" (default: the first 64)."""
    if spec is None:
        return list(range(min(count, default)))
    chosen = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise ValueError(f"--neurons takes numbers and ranges such as 0-63 or 3,5,7, got {spec!r}") from None
        if not 0 <= first <= last < count:
            raise ValueError(f"--neurons {spec}: the first layer has neurons 0 to {count - 1}")
        chosen += range(first, last + 1)
    return chosen


def parser() -> argparse.ArgumentParser:
    """The command line's parser: every subcommand and option."""
    parser = argparse.ArgumentParser(prog="fastnn", description="Fast multi-layer perceptrons on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a network: the bundled digits, MNIST, or your own .npz/.csv (--data)")
    train.add_argument("--data", type=pathlib.Path,
                       help="a folder of the four MNIST IDX files, or your own data: an .npz (X, y, optionally "
                            "X_test, y_test) or a .csv (numeric features and a label column)")
    train.add_argument("--target", help="the .csv's label column: a header name or a column number (default: last)")
    train.add_argument("--task", choices=["classify", "regress"],
                       help="default: classify text labels and up to 50 distinct whole numbers, regress the rest")
    train.add_argument("--hidden", type=_hidden, help="hidden sizes (default 256,128 for digits, 64,64 for your data)")
    train.add_argument("--activation", default="relu", choices=list(ACTIVATIONS))
    train.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam")
    train.add_argument("--lr", type=_positive(float), help="learning rate (default 2e-3 on MNIST, 1e-3 bundled)")
    train.add_argument("--epochs", type=_positive(int), help="default 8 on MNIST, 10 on the bundled digits")
    train.add_argument("--batch-size", type=_positive(int), help="default 128 on MNIST, 64 on the bundled digits")
    train.add_argument("--schedule", choices=["constant", "cosine"], help="default cosine on MNIST, constant bundled")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=_positive(int), help="threads for kernels and BLAS")
    train.add_argument("--out", type=pathlib.Path, help="where to save the model (default: a new fastnn-model*.npz)")
    train.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    train.add_argument("--plot", type=pathlib.Path, help="draw loss and accuracy per epoch to this PNG")
    train.add_argument("--checkpoint-dir", type=pathlib.Path,
                       help="write a checkpoint after every epoch (atomically) to this folder")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over MPI ranks: mpiexec -n 2 fastnn train --distributed")
    train.set_defaults(run=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a saved model (digits: accuracy and confusion matrix)")
    evaluate.add_argument("model", type=pathlib.Path)
    evaluate.add_argument("--data", type=pathlib.Path,
                          help="folder of MNIST IDX files (default: the bundled test split), or an .npz/.csv table")
    evaluate.add_argument("--target", help="the .csv's label column (default: last)")
    evaluate.add_argument("--allow-overlap", action="store_true",
                          help="evaluate even when more than 1%% of the rows were training rows")
    evaluate.set_defaults(run=cmd_evaluate)

    predict = sub.add_parser("predict", help="predictions of a saved model for the rows of an .npz (X) or .csv")
    predict.add_argument("model", type=pathlib.Path)
    predict.add_argument("data", type=pathlib.Path)
    predict.add_argument("--out", type=pathlib.Path, help="a .csv or .npy file (default: CSV on standard output)")
    predict.add_argument("--target", help="the .csv's label column, dropped if present (default: last)")
    predict.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    predict.set_defaults(run=cmd_predict)

    export = sub.add_parser("export", help="write a saved model as an ONNX graph (the onnx extra)")
    export.add_argument("model", type=pathlib.Path)
    export.add_argument("out", type=pathlib.Path, help="the .onnx file to write")
    export.add_argument("--opset", type=_positive(int), default=17, help="ONNX opset (default 17)")
    export.add_argument("--probabilities", action="store_true",
                        help="end in the softmax or sigmoid that predict_proba gives (default: the logits)")
    export.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    export.set_defaults(run=cmd_export)

    approx = sub.add_parser("approx", help="universal approximation: fit a 1-D function with 1 to 64 neurons")
    approx.add_argument("target", nargs="?", default="sin", choices=sorted(importlib.import_module("fastnn.tools.story").BUILTIN_TARGETS))
    approx.add_argument("--expr", help='an expression in x instead, e.g. "x**2 + sin(3*x)"')
    approx.add_argument("--interval", type=float, nargs=2, metavar=("LO", "HI"))
    approx.add_argument("--epochs", type=_positive(int), default=3000)
    approx.add_argument("--seed", type=int, default=0)
    approx.add_argument("--plot", type=pathlib.Path, help="draw the target and the fits to this PNG")
    approx.set_defaults(run=cmd_approx)

    linear = sub.add_parser("linear", help="relu vs identity activations: why non-linearity matters")
    linear.add_argument("--epochs", type=_positive(int), default=10)
    linear.set_defaults(run=cmd_linear)

    show = sub.add_parser("show-weights", help="draw each first-layer neuron's weights as a 28x28 image")
    show.add_argument("model", type=pathlib.Path)
    show.add_argument("--plot", type=pathlib.Path)
    show.add_argument("--neurons", help="which neurons to draw: 0-63 (the default), 3,5,7 or 10-20,40")
    show.set_defaults(run=cmd_show_weights)

    bench = sub.add_parser("bench", help="time the training step beside NumPy, PyTorch and JAX")
    bench.add_argument("--threads", type=_positive(int), help="threads for every contender (default: all cores)")
    bench.add_argument("--cases", help="comma-separated case names (default: all); see fastnn.peers.CASES")
    bench.add_argument("--contenders", help="comma-separated, from fastnn,numpy,torch,jax (default: all installed)")
    bench.add_argument("--rounds", type=_positive(int), default=10, help="interleaved rounds (default 10)")
    bench.add_argument("--json", type=pathlib.Path, help="also write the results to this JSON file")
    bench.add_argument("--population", action="store_true",
                       help="time populations of small networks (fastnn.Population) beside a loop of fits, JAX vmap "
                            "and torch.func; cases and contenders from fastnn.tools.bench_population")
    bench.add_argument("--busy", type=_positive(int), default=0,
                       help="with --population: this many spinning processes beside each contender (default 0)")
    bench.set_defaults(run=lambda a: importlib.import_module(
        "fastnn.tools.bench_population" if a.population else "fastnn.tools.bench").main(a))

    prof = sub.add_parser("profile", help="time each kernel of a training step")
    prof.add_argument("--sizes", type=_sizes("--sizes", "784,256,128,10"), default=[784, 256, 128, 10],
                      help="layer sizes (default 784,256,128,10)")
    prof.add_argument("--activation", default="relu", choices=list(ACTIVATIONS))
    prof.add_argument("--batch-size", type=_positive(int), default=128)
    prof.add_argument("--steps", type=_positive(int), default=200)
    prof.add_argument("--loss", default="softmax_cross_entropy", choices=["softmax_cross_entropy", "mse"])
    prof.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="sgd means momentum 0.9")
    prof.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    prof.add_argument("--threads", type=_positive(int))
    prof.set_defaults(run=lambda a: importlib.import_module("fastnn.tools.profile").main(a))
    return parser


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, ImportError) as e:  # bad input, files, a missing extra: a message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # DivergenceError: nothing was saved
        print(f"error: {e} Nothing was saved.", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory (a smaller --batch-size or model, or more memory)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # a bug of fastnn's: one line, with what to report, never a traceback
        print(f"error: {type(e).__name__}: {e} (this is a fastnn bug: please report the command and this line; "
              f"FASTNN_TRACEBACK=1 shows where it happened)", file=sys.stderr)
        if os.environ.get("FASTNN_TRACEBACK") == "1":
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
