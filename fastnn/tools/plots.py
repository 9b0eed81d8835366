"""Pictures for the command line, drawn with matplotlib (the ``plot`` extra, Agg backend).

Without matplotlib, ``require_matplotlib`` raises ``MissingPlotExtra``, whose message says
how to install it; the commands catch it, still print their numbers, and pass it on.
"""
from __future__ import annotations

import numpy as np

from .._install import install_hint

INSTALL_HINT = "pictures need matplotlib: " + install_hint("plot")


class MissingPlotExtra(ImportError):
    """matplotlib (the ``plot`` extra) is not installed."""


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise MissingPlotExtra(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def training_curves(history, path):
    """Loss and accuracy per epoch (training, and held-out when present)."""
    plt = require_matplotlib()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax_loss.plot(epochs, history["loss"], label="training")
    if "val_loss" in history:
        ax_loss.plot(epochs, history["val_loss"], label="held-out")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, history["accuracy"], label="training")
    if "val_accuracy" in history:
        ax_acc.plot(epochs, history["val_accuracy"], label="held-out")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def approximation(x, y, fits, title, path):
    """The target and the fit of each width."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(x, y, color="black", linewidth=3, label="target")
    for fit in fits:
        ax.plot(x, fit["prediction"], linewidth=1, label=f"{fit['width']} neurons (MSE {fit['mse']:.1e})")
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def first_layer_weights(W, path, numbers=None):
    """Each column of ``W`` (a first-layer neuron's 784 weights) as a 28x28 image: what the neuron
    looks for; ``numbers`` label them (default 0, 1, ...)."""
    plt = require_matplotlib()
    count = W.shape[1]
    numbers = list(range(count)) if numbers is None else list(numbers)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < count:
            w = W[:, k].reshape(28, 28)
            limit = np.abs(w).max() or 1.0
            ax.imshow(w, cmap="RdBu_r", vmin=-limit, vmax=limit)  # red: ink there excites, blue: inhibits
            ax.set_title(str(numbers[k]), fontsize=6)
    fig.suptitle(f"first-layer weights of neurons {numbers[0]}..{numbers[-1]} ({count}; red excites, blue inhibits)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
