"""Optimizers with PyTorch's names, defaults and formulas (see ``fastnn.kernels.optimizers``).

An optimizer's state is created on its first step and belongs to the parameters it was
first given; ``lr`` is a plain attribute that may be changed between steps.
"""
from __future__ import annotations

import numpy as np

from .kernels import _checks
from .kernels.train import ADAM, SGD as SGD_CODE, optimizer_update


class Optimizer:
    """Base class: state buffers shaped like the parameters, and a step counter."""

    _buffers: tuple = ()
    _hyper: tuple = ()
    _code = None

    def __init__(self):
        self.step_count = 0
        self.state = None  # {buffer name: [flat array per parameter]}, created on the first step
        self._hyper_values = np.zeros(8)  # what the kernel reads; refilled each step

    def _fill_hyper(self):
        raise NotImplementedError

    def _prepare(self, params):
        """Create the state on the first step; check it fits ``params`` afterwards."""
        _checks.positive("lr", self.lr)
        if self.state is None:
            self.state = {}
        for bufs in self.state.values():
            if [(b.size, b.dtype) for b in bufs] != [(p.size, p.dtype) for p in params]:
                raise ValueError("this optimizer's state belongs to parameters of other sizes or dtypes; "
                                 "use one optimizer per model")
        for name in self._buffers:  # created on the first step that needs them
            if name not in self.state:
                self.state[name] = [np.zeros(p.size, p.dtype) for p in params]
        self._fill_hyper()

    def _kernel_args(self, i, p):
        """(code, hyper, state1, state2, step) for parameter array ``i``, as the kernels take them;
        step is the number of the step about to be taken (callers count it afterwards)."""
        bufs = [self.state[name][i] for name in self._buffers]
        empty = p[:0]
        bufs += [empty] * (2 - len(bufs))
        return self._code, self._hyper_values, bufs[0], bufs[1], self.step_count + 1

    def step(self, params, grads):
        """Update each array of ``params`` in place from the matching array of ``grads``."""
        if len(params) != len(grads):
            raise ValueError(f"got {len(params)} parameter arrays but {len(grads)} gradient arrays")
        for i, (p, g) in enumerate(zip(params, grads)):
            if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray) or p.shape != g.shape:
                raise ValueError(f"params[{i}] and grads[{i}] must be arrays of one shape, got "
                                 f"{getattr(p, 'shape', p)} and {getattr(g, 'shape', g)}")
            _checks.float_array(f"params[{i}]", p)
            _checks.writable(f"params[{i}]", p)
        self._prepare(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            flat = p.reshape(-1)
            code, hyper, state1, state2, t = self._kernel_args(i, flat)
            optimizer_update(code, flat, np.ascontiguousarray(g, p.dtype).reshape(-1), hyper, state1, state2, t)
        self.step_count += 1

    def state_dict(self) -> dict:
        """Hyper-parameters, the step count and state buffers as a flat ``{name: value}`` dict."""
        d = {name: getattr(self, name) for name in self._hyper}
        d["step_count"] = self.step_count
        for name, bufs in (self.state or {}).items():
            for i, a in enumerate(bufs):
                d[f"{name}.{i}"] = a.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore what ``state_dict`` returned (hyper-parameters, step count and buffers)."""
        for name in self._hyper:
            setattr(self, name, d[name])
        self.step_count = int(d["step_count"])
        state = {}
        for key in d:
            name, _, index = key.rpartition(".")
            if name and index.isdigit():
                state.setdefault(name, {})[int(index)] = np.array(d[key])
        self.state = {name: [bufs[i] for i in range(len(bufs))] for name, bufs in state.items()} or None

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    ``g <- g + weight_decay*p; v <- momentum*v + g; p <- p - lr*v`` (Nesterov:
    ``p <- p - lr*(g + momentum*v)``), as ``torch.optim.SGD`` with dampening 0.
    """

    _hyper = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__()
        self.lr = _checks.positive("lr", lr)
        self.momentum = _checks.positive("momentum", momentum, allow_zero=True)
        self.weight_decay = _checks.positive("weight_decay", weight_decay, allow_zero=True)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)

    _code = SGD_CODE

    @property
    def _buffers(self):
        return ("momentum_buffer",) if self.momentum else ()

    def _fill_hyper(self):
        h = self._hyper_values
        h[0], h[1], h[2], h[3] = self.lr, self.momentum, self.weight_decay, self.nesterov


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``): bias-corrected moments, eps added after the square root;
    ``weight_decay`` is added to the gradient (L2), unlike ``AdamW``."""

    _hyper = ("lr", "betas", "eps", "weight_decay")
    _buffers = ("exp_avg", "exp_avg_sq")
    _decoupled = False
    _code = ADAM

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__()
        self.lr = _checks.positive("lr", lr)
        b1, b2 = (float(b) for b in betas)
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {b!r}")
        self.betas = (b1, b2)
        self.eps = _checks.positive("eps", eps, allow_zero=True)
        self.weight_decay = _checks.positive("weight_decay", weight_decay, allow_zero=True)

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.betas = tuple(float(b) for b in self.betas)

    def _fill_hyper(self):
        h = self._hyper_values
        h[0], h[1], h[2], h[3], h[4], h[5] = (self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                                              self._decoupled)


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay ``p <- p*(1 - lr*wd)``."""

    _decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr, betas, eps, weight_decay)
