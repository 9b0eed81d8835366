"""Checkpoints for ``fit(..., checkpoint_dir=..., resume=True)``: everything needed to continue
training exactly where it stopped, in one ``.npz`` written atomically, with no pickle.

Arrays: ``params`` (the model's flat parameters) and ``optimizer.<buffer>.<i>``. Everything
else is JSON in ``meta``: the architecture, the fit settings it belongs to, the completed
epochs, the history, the optimizer's scalars and the shuffling generator's state.
"""
from __future__ import annotations

import json
import pathlib
import zipfile

import numpy as np

from ._files import atomic_write

FILENAME = "checkpoint.npz"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable or belongs to another model or training run."""


def _json_safe(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def save(directory, model, optimizer, rng, epoch, history, settings):
    """Write ``directory/checkpoint.npz`` atomically (the previous one survives any failure)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    opt_state = optimizer.state_dict()
    arrays = {f"optimizer.{k}": v for k, v in opt_state.items() if isinstance(v, np.ndarray)}
    meta = {"format": "fastnn.checkpoint", "version": VERSION, "epoch": epoch, "history": history,
            "architecture": model._architecture(), "settings": settings,
            "optimizer": {"type": type(optimizer).__name__,
                          "scalars": {k: v for k, v in opt_state.items() if not isinstance(v, np.ndarray)}},
            "rng": rng.bit_generator.state}
    with atomic_write(directory / FILENAME) as f:
        np.savez(f, meta=np.array(json.dumps(_json_safe(meta))), params=model._flat_params, **arrays)


def load(directory, model, optimizer, rng, settings, extendable=False):
    """Restore a checkpoint into ``model``, ``optimizer`` and ``rng``; returns
    ``(completed epochs, history)``, or None when there is no checkpoint yet.

    A run may be resumed with more epochs than it was started with (extended) when its
    learning-rate schedule does not depend on the run's length (``extendable``)."""
    path = pathlib.Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            files = {k: f[k] for k in f.files}
        meta = json.loads(str(files.pop("meta")))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable fastnn checkpoint ({e})") from None
    if meta.get("format") != "fastnn.checkpoint" or meta.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a fastnn checkpoint of version {VERSION}")
    if meta["architecture"] != model._architecture():
        raise CheckpointError(f"{path} belongs to another model: {meta['architecture']['layers']}")
    saved = meta["settings"]
    if saved != settings and {**saved, "epochs": None} == {**settings, "epochs": None}:
        if not extendable:
            raise CheckpointError(f"{path} is a run of {saved['epochs']} epochs and this fit asks for "
                                  f"{settings['epochs']}: its learning-rate schedule {settings['schedule']} depends "
                                  f"on the run's length, so it cannot be extended; use a new checkpoint_dir, or "
                                  f"epochs={saved['epochs']}")
        if settings["epochs"] < meta["epoch"]:
            raise CheckpointError(f"{path} has already trained {meta['epoch']} epochs, more than epochs="
                                  f"{settings['epochs']}")
        saved = settings  # extended: the same run, continued
    if saved != settings:
        raise CheckpointError(f"{path} belongs to another training run (it has {meta['settings']}, this fit has "
                              f"{settings}); use another checkpoint_dir or resume=False")
    if meta["optimizer"]["type"] != type(optimizer).__name__:
        raise CheckpointError(f"{path} was written with {meta['optimizer']['type']}, not {type(optimizer).__name__}")
    params = files.pop("params")
    if params.shape != model._flat_params.shape or params.dtype != model._flat_params.dtype:
        raise CheckpointError(f"{path}: parameters are {params.dtype}{params.shape}, expected "
                              f"{model._flat_params.dtype}{model._flat_params.shape}")
    model._flat_params[...] = params
    optimizer.load_state_dict({**meta["optimizer"]["scalars"],
                               **{k[len("optimizer."):]: v for k, v in files.items() if k.startswith("optimizer.")}})
    rng.bit_generator.state = meta["rng"]
    return meta["epoch"], meta["history"]
