"""Learning-rate schedules for ``fit``: a factor on the optimizer's ``lr`` for every step.

Each schedule multiplies ``lr`` by a factor of the step number t, counted from 0 over one
``fit`` call of ``total_steps`` steps. ``fit`` computes an epoch's factors at once (NumPy)
and the compiled epoch loop reads each batch's learning rate from that array.
"""
from __future__ import annotations

import numpy as np


class Schedule:
    """Base class: ``factors(t, total_steps)`` gives the multiplier for an array of steps t.

    ``extendable``: whether the factors ignore ``total_steps``, so that a finished run resumed
    with more epochs continues the same schedule (``fit(..., resume=True)``)."""

    extendable = False

    def factors(self, t: np.ndarray, total_steps: int) -> np.ndarray:
        raise NotImplementedError

    def factor(self, t: int, total_steps: int) -> float:
        """The multiplier at step t (0-based), computed by the same code as in training."""
        return float(self.factors(np.array([t]), total_steps)[0])


class Constant(Schedule):
    """The optimizer's ``lr`` at every step."""

    extendable = True

    def factors(self, t, total_steps):
        return np.ones(len(t))

    def __repr__(self):
        return "Constant()"


class StepDecay(Schedule):
    """Multiply ``lr`` by ``gamma`` every ``step_size`` steps (``torch.optim.lr_scheduler.StepLR``):
    the factor is gamma^floor(t / step_size)."""

    extendable = True

    def __init__(self, step_size: int, gamma: float = 0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def factors(self, t, total_steps):
        return self.gamma ** np.floor(np.asarray(t) / self.step_size)

    def __repr__(self):
        return f"StepDecay(step_size={self.step_size}, gamma={self.gamma})"


class Cosine(Schedule):
    """Linear warm-up over ``warmup_steps`` (factor (t + 1) / warmup_steps), then half a cosine
    from 1 down to ``min_factor`` at the last step of the ``fit`` call."""

    def __init__(self, warmup_steps: int = 0, min_factor: float = 0.0):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not 0 <= min_factor <= 1:
            raise ValueError(f"min_factor must lie in [0, 1], got {min_factor!r}")
        self.warmup_steps, self.min_factor = int(warmup_steps), float(min_factor)

    def factors(self, t, total_steps):
        t = np.asarray(t, dtype=np.float64)
        warmup, floor = self.warmup_steps, self.min_factor
        progress = np.minimum(1.0, (t - warmup) / max(1.0, total_steps - warmup))
        decay = floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * progress))
        return np.where(t < warmup, (t + 1.0) / max(warmup, 1), decay)

    def __repr__(self):
        return f"Cosine(warmup_steps={self.warmup_steps}, min_factor={self.min_factor})"
