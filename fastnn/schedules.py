"""Learning-rate schedules for ``fit``: evaluated per step inside the compiled epoch loop.

Each schedule multiplies the optimizer's ``lr`` by a factor of the step number t, counted
from 0 over one ``fit`` call (``fastnn.kernels.train.lr_factor`` has the formulas).
"""
from __future__ import annotations

import numpy as np

from .kernels.train import CONSTANT, COSINE, STEP_DECAY


class Schedule:
    """Base class; ``as_array(total_steps)`` is what the compiled loop reads."""

    def as_array(self, total_steps: int) -> np.ndarray:
        raise NotImplementedError

    def factor(self, t: int, total_steps: int) -> float:
        """The multiplier at step t (0-based), computed by the same code as in training."""
        from .kernels.train import lr_factor
        return float(lr_factor(self.as_array(total_steps), t))


class Constant(Schedule):
    """The optimizer's ``lr`` at every step."""

    def as_array(self, total_steps):
        return np.array([CONSTANT, 0, 0, 0, total_steps], dtype=np.float64)

    def __repr__(self):
        return "Constant()"


class StepDecay(Schedule):
    """Multiply ``lr`` by ``gamma`` every ``step_size`` steps (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def as_array(self, total_steps):
        return np.array([STEP_DECAY, self.step_size, self.gamma, 0, total_steps], dtype=np.float64)

    def __repr__(self):
        return f"StepDecay(step_size={self.step_size}, gamma={self.gamma})"


class Cosine(Schedule):
    """Linear warm-up over ``warmup_steps``, then half a cosine from ``lr`` down to
    ``min_factor * lr`` at the last step of the ``fit`` call."""

    def __init__(self, warmup_steps: int = 0, min_factor: float = 0.0):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not 0 <= min_factor <= 1:
            raise ValueError(f"min_factor must lie in [0, 1], got {min_factor!r}")
        self.warmup_steps, self.min_factor = int(warmup_steps), float(min_factor)

    def as_array(self, total_steps):
        return np.array([COSINE, self.warmup_steps, 0, self.min_factor, total_steps], dtype=np.float64)

    def __repr__(self):
        return f"Cosine(warmup_steps={self.warmup_steps}, min_factor={self.min_factor})"
