"""Checkpoints for ``fit(..., checkpoint_dir=..., resume=True)``: everything needed to continue
training exactly where it stopped, in one ``.npz`` written atomically, with no pickle.

Arrays: ``params`` (the model's flat parameters), ``optimizer.<buffer>.<i>`` and, with early
stopping that keeps the best weights, ``early_stopping.best_params``. Everything else is JSON in
``meta``: the architecture, the fit settings it belongs to, the completed epochs, whether the
run stopped (early stopping or a callback), the history, the optimizer's scalars, the
shuffling generator's state after the epoch and at the start of the run (which drew the
validation split), early stopping's state and the loss-explosion rule's yardstick. A checkpoint
is written after everything an epoch ends with (validation, early stopping, callbacks), so a
run resumed from it continues exactly as the uninterrupted run would, and a run that had
stopped trains nothing more. Version 1 files (before the stop, the start state and early
stopping's state were kept) still load.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from .files import atomic_write, parse_json, remove_stale

FILENAME = "checkpoint.npz"
VERSION = 2


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


def save(directory, model, optimizer, rng, epoch, history, settings, run=None):
    """Write ``directory/checkpoint.npz`` atomically (the previous one survives any failure).
    ``run``: what else the run's state holds, by name (``stopped``, ``run_rng``,
    ``first_loss``, ``warned``, ``early_stopping``: an EarlyStopping's ``state_dict()``)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run = dict(run or {})
    opt_state = optimizer.state_dict()
    arrays = {f"optimizer.{k}": v for k, v in opt_state.items() if isinstance(v, np.ndarray)}
    stopper = run.pop("early_stopping", None)
    if stopper is not None:
        stopper = dict(stopper)
        best = stopper.pop("best_params")
        if best is not None:
            arrays["early_stopping.best_params"] = best
    meta = {"format": "fastnn.checkpoint", "version": VERSION, "epoch": epoch, "history": history,
            "architecture": model.architecture(), "settings": settings,
            "optimizer": {"type": type(optimizer).__name__,
                          "scalars": {k: v for k, v in opt_state.items() if not isinstance(v, np.ndarray)}},
            "rng": rng.bit_generator.state, "run": run, "early_stopping": stopper}
    with atomic_write(directory / FILENAME) as f:
        np.savez(f, meta=np.array(json.dumps(_json_safe(meta))), params=model.engine.params, **arrays)


MAX_META_BYTES = 64 << 20  # the JSON description: the history grows by a few numbers an epoch


def _meta(archive, path):

    names = set(archive.members)
    if "meta" not in names or "params" not in names:
        raise CheckpointError(f"{path} is not a fastnn checkpoint: it holds {sorted(names)[:5]}")
    meta = parse_json(str(archive.read("meta", shape=(), kinds="U", max_bytes=4 * MAX_META_BYTES)), path,
                      "fastnn checkpoint")
    if not isinstance(meta, dict) or meta.get("format") != "fastnn.checkpoint" or meta.get("version") not in (1, VERSION):
        raise CheckpointError(f"{path} is not a fastnn checkpoint of version 1 to {VERSION}")
    return meta


def _archive(path):
    from .files import Archive

    return Archive(path, "fastnn checkpoint", error=CheckpointError)


def run_start(directory):
    """The shuffling generator's state at the start of the run that wrote the checkpoint in
    ``directory`` (it drew the validation split), or None (no checkpoint, or a version 1 one)."""
    path = pathlib.Path(directory) / FILENAME
    if not path.exists():
        return None
    try:
        with _archive(path) as archive:
            meta = _meta(archive, path)
    except ValueError as e:  # (parse_json's: a checkpoint error all the same)
        raise CheckpointError(str(e)) from None
    run = meta.get("run")
    return run.get("run_rng") if isinstance(run, dict) else None


def load(directory, model, optimizer, rng, settings, extendable=False, early_stopping=None):
    """Restore a checkpoint into ``model``, ``optimizer``, ``rng`` and ``early_stopping``; returns
    ``(completed epochs, history, run)`` (``run`` as ``save`` took it: ``stopped``,
    ``first_loss``, ...), or None when there is no checkpoint yet. Everything is checked before
    anything is restored: a refused checkpoint changes nothing.

    A run may be resumed with more epochs than it was started with (extended) when its
    learning-rate schedule does not depend on the run's length (``extendable``)."""
    path = pathlib.Path(directory) / FILENAME
    remove_stale(path)  # what a save killed midway left
    if not path.exists():
        return None
    try:
        with _archive(path) as archive:
            meta = _meta(archive, path)
            expected = model.engine.params
            shape = (None,) * expected.ndim
            allowed = {"meta", "params", "early_stopping.best_params"}
            unknown = [k for k in archive.members if k not in allowed and not k.startswith("optimizer.")]
            if unknown:
                raise CheckpointError(f"{path} holds members {sorted(unknown)[:5]} a checkpoint does not have "
                                      f"(refused unread)")
            files = {k: archive.read(k, shape=shape, kinds="f", max_bytes=expected.nbytes)
                     for k in archive.members if k != "meta"}
        return _restore(path, meta, files, model, optimizer, rng, settings, extendable, early_stopping)
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid fastnn checkpoint: {type(e).__name__} {e}") from None


def _restore(path, meta, files, model, optimizer, rng, settings, extendable, early_stopping):
    if meta["version"] == 1:  # (written before a run's settings named its early-stopping rule)
        settings = {k: v for k, v in settings.items() if k != "early_stopping"}
    if meta["architecture"] != model.architecture():
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
    epoch = meta["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= settings["epochs"]:
        raise CheckpointError(f"{path}: its epoch count {epoch!r} is not one of this run's")
    expected = model.engine.params
    params = files.pop("params")
    if params.shape != expected.shape or params.dtype != expected.dtype:
        raise CheckpointError(f"{path}: parameters are {params.dtype}{params.shape}, expected "
                              f"{expected.dtype}{expected.shape}")
    best = files.pop("early_stopping.best_params", None)
    for name, a in (("parameters", params), ("early stopping's best parameters", best)):
        if a is not None and not (a.shape == expected.shape and a.dtype == expected.dtype and np.all(np.isfinite(a))):
            raise CheckpointError(f"{path}: its {name} are damaged (NaN, inf, or not {expected.dtype}{expected.shape})")
    for k, a in files.items():
        if k.startswith("optimizer.") and not (a.shape == expected.shape and a.dtype == expected.dtype
                                               and np.all(np.isfinite(a))):
            raise CheckpointError(f"{path}: the optimizer's {k[len('optimizer.'):]} is damaged (NaN, inf, or not "
                                  f"{expected.dtype}{expected.shape})")
    history = meta["history"]
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        raise CheckpointError(f"{path}: its history is not a record of epochs")
    stopper_state = meta.get("early_stopping")
    if (stopper_state is not None) != (early_stopping is not None and meta["version"] >= 2):
        raise CheckpointError(f"{path} was written {'with' if stopper_state is not None else 'without'} early "
                              f"stopping; resume with the same early_stopping")
    # (everything checked above; restoring below changes the model, optimizer, generator, stopper)
    before = optimizer.state_dict(), rng.bit_generator.state
    try:
        optimizer.load_state_dict({**meta["optimizer"]["scalars"],
                                   **{k[len("optimizer."):]: v for k, v in files.items()
                                      if k.startswith("optimizer.")}})
        rng.bit_generator.state = meta["rng"]
        if stopper_state is not None:
            early_stopping.load_state_dict({**stopper_state, "best_params": best})
    except (ValueError, TypeError, KeyError) as e:
        optimizer.load_state_dict(before[0])
        rng.bit_generator.state = before[1]
        raise CheckpointError(f"{path} is not a valid fastnn checkpoint: {e}") from None
    model.engine.params[...] = params
    return epoch, history, dict(meta.get("run") or {})
