"""The ``fastnn`` command line."""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

OPTIMIZERS = ("adam", "adamw", "sgd")


def _hidden(text: str):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers such as 256,128, got {text!r}")
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be >= 1, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def _free_name(stem: str) -> pathlib.Path:
    """``stem.npz``, or ``stem-2.npz``, ... : the first name not taken (never overwrite)."""
    path, k = pathlib.Path(f"{stem}.npz"), 1
    while path.exists():
        k += 1
        path = pathlib.Path(f"{stem}-{k}.npz")
    return path


def _load_data(data):
    from .datasets import load_mnist, load_mnist_5k
    if data is None:
        return load_mnist_5k(), "bundled digits (4,000 train / 1,000 test)"
    (X, y), (Xt, yt) = load_mnist(data)
    return ((X, y), (Xt, yt)), f"MNIST from {data} ({len(y):,} train / {len(yt):,} test)"


def cmd_train(args) -> int:
    import fastnn

    if args.out is not None and args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite it or choose another --out", file=sys.stderr)
        return 2
    if args.threads:
        fastnn.set_num_threads(args.threads)
    ((X, y), (Xt, yt)), what = _load_data(args.data)
    sizes = [784, *args.hidden, 10]
    layers = [fastnn.Dense(a, b, activation=args.activation) for a, b in zip(sizes[:-2], sizes[1:-1])]
    model = fastnn.Sequential(*layers, fastnn.Dense(sizes[-2], 10), seed=args.seed)
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    optimizer = {"adam": lambda: fastnn.Adam(lr=lr), "adamw": lambda: fastnn.AdamW(lr=lr),
                 "sgd": lambda: fastnn.SGD(lr=lr, momentum=0.9)}[args.optimizer]()
    print(f"training {'-'.join(map(str, sizes))} {args.activation} with {optimizer} on {what}")
    start = time.perf_counter()
    model.fit(X, y, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size, verbose=1)
    seconds = time.perf_counter() - start
    scores = model.evaluate(Xt, yt)
    print(f"test accuracy {scores['accuracy']:.2%} (loss {scores['loss']:.4f}) after {args.epochs} epochs "
          f"in {seconds:.1f} s")
    out = args.out if args.out is not None else _free_name("fastnn-model")
    model.save(out)
    print(f"saved {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastnn", description="Fast multi-layer perceptrons on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a digit classifier (bundled digits unless --data)")
    train.add_argument("--data", type=pathlib.Path, help="folder of the four MNIST IDX files")
    train.add_argument("--hidden", type=_hidden, default=[256, 128], help="hidden sizes (default 256,128)")
    train.add_argument("--activation", default="relu",
                       choices=["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "identity"])
    train.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    train.add_argument("--lr", type=_positive(float), help="learning rate (adam 1e-3, sgd 0.05)")
    train.add_argument("--epochs", type=_positive(int), default=10)
    train.add_argument("--batch-size", type=_positive(int), default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=_positive(int), help="threads for kernels and BLAS")
    train.add_argument("--out", type=pathlib.Path, help="where to save the model (default: a new fastnn-model*.npz)")
    train.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    train.set_defaults(run=cmd_train)

    bench = sub.add_parser("bench", help="time the training step beside NumPy, PyTorch and JAX")
    bench.add_argument("--threads", type=_positive(int), help="threads for every contender (default: all cores)")
    bench.add_argument("--cases", help="comma-separated case names (default: all); see fastnn.peers.CASES")
    bench.add_argument("--contenders", help="comma-separated, from fastnn,numpy,torch,jax (default: all installed)")
    bench.add_argument("--rounds", type=_positive(int), default=10, help="interleaved rounds (default 10)")
    bench.add_argument("--json", type=pathlib.Path, help="also write the results to this JSON file")
    bench.set_defaults(run=lambda a: __import__("fastnn.bench", fromlist=["main"]).main(a))

    prof = sub.add_parser("profile", help="time each kernel of a training step")
    prof.add_argument("--sizes", type=_hidden, default=[784, 256, 128, 10], help="layer sizes (default 784,256,128,10)")
    prof.add_argument("--activation", default="relu", choices=["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "identity"])
    prof.add_argument("--batch-size", type=_positive(int), default=128)
    prof.add_argument("--steps", type=_positive(int), default=200)
    prof.add_argument("--loss", default="softmax_cross_entropy", choices=["softmax_cross_entropy", "mse"])
    prof.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="sgd means momentum 0.9")
    prof.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    prof.add_argument("--threads", type=_positive(int))
    prof.set_defaults(run=lambda a: __import__("fastnn.profile", fromlist=["main"]).main(a))

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as e:  # bad input or files: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
