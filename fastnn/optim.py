"""Optimizers with PyTorch's names, defaults and formulas (see ``fastnn.kernels.optimizers``).

An optimizer's state is created on its first step and belongs to the parameters it was
first given; ``lr`` and the other hyper-parameters are plain attributes that may be changed
between steps, and are checked whenever they change (a NaN, inf or negative learning rate is
refused at the assignment, not found later in the parameters). The step count lives in a
small array that the compiled step advances as it applies each update.
"""
from __future__ import annotations

import numpy as np

from .kernels import _checks
from .kernels._compose import run
from .kernels import optimizers as _kernels
from .kernels.train import Optimizer as _Compiled


class Optimizer:
    """Base class: state buffers shaped like the parameters, and a step counter."""

    _hyper: tuple = ()  # constructor arguments, for repr and state_dict
    _kernel_hyper: tuple = ()  # the kernel's constants, in its order

    def __init__(self):
        self._steps = np.zeros(1, np.int64)  # the step count, advanced by the compiled step itself
        self._state = None  # per parameter array: an (S, P) array, one row per buffer
        self._tuple = None  # what the compiled step reads, for self._owner (a model's flat parameters)
        self._owner = None

    def __setattr__(self, name, value):
        if name in self._hyper:
            value = self._checked(name, value)
        object.__setattr__(self, name, value)
        if name in self._hyper and name != "lr":  # a constant or switch the kernel reads; lr goes per step
            object.__setattr__(self, "_tuple", None)

    def _checked(self, name, value):
        """``value`` for the hyper-parameter ``name``, checked (every assignment, not only the
        constructor's): subclasses check their own names and defer ``lr`` to this."""
        if name == "lr":
            return _checks.positive("lr", value)
        return value

    @property
    def step_count(self) -> int:
        """Steps taken (the next update is step ``step_count + 1``: Adam's bias correction and
        the dropout masks use it)."""
        return int(self._steps[0])

    @step_count.setter
    def step_count(self, value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"step_count must be an integer >= 0, got {value!r}")
        self._steps[0] = value

    def __setstate__(self, state):
        if "step_count" in state:  # (pickled before the count moved into an array)
            state["_steps"] = np.array([state.pop("step_count")], np.int64)
        self.__dict__.update(state)

    def __getstate__(self):
        # the compiled tuple holds a kernel's address, valid in this process only: a copy or an
        # unpickled optimizer builds its own on its first step
        state = self.__dict__.copy()
        state["_tuple"], state["_owner"] = None, None
        return state

    @property
    def _buffers(self) -> tuple:
        """Names of the state buffers (rows of each state array)."""
        return ()

    @property
    def state(self):
        """``{buffer name: [flat array per parameter array]}``, or None before the first step."""
        if self._state is None:
            return None
        return {name: [s[k] for s in self._state] for k, name in enumerate(self._buffers)}

    def _kernel(self):
        """The compiled update kernel for this optimizer's settings (``fastnn.kernels.optimizers``)."""
        raise NotImplementedError

    def _hyper_array(self):
        return np.array([float(getattr(self, name)) for name in self._kernel_hyper], dtype=np.float64)

    def _prepare(self, params):
        """Create the state on the first step; check it fits ``params`` afterwards."""
        _checks.positive("lr", self.lr)
        rows = len(self._buffers)
        if self._state is None:
            self._state = [np.zeros((rows, p.size), p.dtype) for p in params]
        elif ([(s.shape, s.dtype) for s in self._state] != [((rows, p.size), p.dtype) for p in params]):
            raise ValueError("this optimizer's state belongs to parameters of other sizes or dtypes (or its "
                             "momentum was switched on or off); use one optimizer per model")

    def _compiled(self, engine):
        """The tuple the compiled step reads for a model (its engine): the address of the update
        kernel, the constants, the state. Rebuilt when a constant or a switch changed (which
        may pick another kernel) or for another model's parameters; otherwise kept."""
        t = self._tuple
        if t is None or self._owner is not engine.params:
            self._prepare((engine.params,))
            t = self._tuple = _Compiled(engine.update_address(self), self._hyper_array(), self._state[0], self._steps)
            self._owner = engine.params
        return t

    def step(self, params, grads):
        """Update each array of ``params`` in place from the matching array of ``grads`` (which
        are not modified). All or nothing: when any new value would be NaN or inf, every array
        and the optimizer's state are left as they were and ``UpdateRefused`` (a
        FloatingPointError) is raised."""
        if len(params) != len(grads):
            raise ValueError(f"got {len(params)} parameter arrays but {len(grads)} gradient arrays")
        for i, (p, g) in enumerate(zip(params, grads)):
            if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray) or p.shape != g.shape:
                raise ValueError(f"params[{i}] and grads[{i}] must be arrays of one shape, got "
                                 f"{getattr(p, 'shape', p)} and {getattr(g, 'shape', g)}")
            _checks.float_array(f"params[{i}]", p)
            _checks.writable(f"params[{i}]", p)
            _checks.no_overlap(f"params[{i}]", p, (f"grads[{i}]", g))
        self._prepare(params)
        kernel = self._kernel()
        hyper = self._hyper_array()
        saved = [s.copy() for s in self._state]
        olds = []  # each kernel leaves the old parameters in its copy of the gradient
        for p, g, state in zip(params, grads, self._state):
            old = np.array(g, dtype=p.dtype, order="C", copy=True).reshape(-1)
            olds.append(old)
            if not run(kernel, _kernels.signature(p.dtype), p.reshape(-1), old, state, hyper, float(self.lr),
                       self.step_count + 1):
                for q, before in zip(params, olds):  # (each kernel left the old parameters in its gradient)
                    q.reshape(-1)[...] = before
                for s, before in zip(self._state, saved):
                    s[...] = before
                raise _kernels._refused(f"{type(self).__name__}.step")
        self._steps[0] += 1

    def state_dict(self) -> dict:
        """Hyper-parameters, the step count and state buffers as a flat ``{name: value}`` dict."""
        d = {name: getattr(self, name) for name in self._hyper}
        d["step_count"] = self.step_count
        for name, bufs in (self.state or {}).items():
            for i, a in enumerate(bufs):
                d[f"{name}.{i}"] = a.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore what ``state_dict`` returned (hyper-parameters, step count and buffers). A dict
        that is refused (a value out of range) leaves the optimizer as it was."""
        before, steps = self.__dict__.copy(), self.step_count
        try:
            self._load_state_dict(d)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            self._steps[0] = steps
            raise

    def _load_state_dict(self, d):
        for name in self._hyper:  # all in place first, then each checked with the others (Nesterov, momentum)
            object.__setattr__(self, name, d[name] if name in d or name != "eps_after_correction" else True)
        for name in self._hyper:
            object.__setattr__(self, name, self._checked(name, getattr(self, name)))
        self.step_count = int(d["step_count"])
        found = {}
        for key in d:
            name, _, index = key.rpartition(".")
            if name and index.isdigit():
                found.setdefault(name, {})[int(index)] = np.asarray(d[key])
        if not found or not self._buffers:
            self._state = None  # created (with no buffers) on the next step
        else:
            count = len(found[self._buffers[0]])
            self._state = [np.stack([found[name][i] for name in self._buffers]) for i in range(count)]
        self._tuple = None

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    ``g <- g + weight_decay*p; v <- momentum*v + g; p <- p - lr*v`` (Nesterov:
    ``p <- p - lr*(g + momentum*v)``), as ``torch.optim.SGD`` with dampening 0.
    """

    _hyper = ("lr", "momentum", "weight_decay", "nesterov")
    _kernel_hyper = _kernels.SGD_HYPER

    def __init__(self, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__()
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov

    def _checked(self, name, value):
        if name in ("momentum", "weight_decay"):
            value = _checks.positive(name, value, allow_zero=True)
            if name == "momentum" and value == 0 and getattr(self, "nesterov", False):
                raise ValueError("momentum 0 with nesterov=True: Nesterov momentum needs momentum > 0 (set "
                                 "nesterov = False first)")
            return value
        if name == "nesterov":
            if value and not getattr(self, "momentum", 0):
                raise ValueError("nesterov=True needs momentum > 0")
            return bool(value)
        return super()._checked(name, value)

    @property
    def _buffers(self):
        return ("momentum_buffer",) if self.momentum else ()

    def _kernel(self):
        return _kernels.sgd_kernel(self.momentum != 0.0, self.nesterov)


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``): bias-corrected moments, eps added after the square root;
    ``weight_decay`` is added to the gradient (L2), unlike ``AdamW``. ``eps_after_correction``:
    True adds eps to the bias-corrected sqrt(v) (PyTorch); False to sqrt(v) before the
    correction (scikit-learn's MLPs, Keras 2), which its estimators use."""

    _hyper = ("lr", "betas", "eps", "weight_decay", "eps_after_correction")
    _kernel_hyper = _kernels.ADAM_HYPER
    _buffers = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, eps_after_correction=True):
        super().__init__()
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.eps_after_correction = eps_after_correction

    def _checked(self, name, value):
        if name == "betas":
            b1, b2 = (float(b) for b in value)
            for which, b in (("betas[0]", b1), ("betas[1]", b2)):
                if not 0.0 <= b < 1.0:
                    raise ValueError(f"{which} must lie in [0, 1), got {b!r}")
            return (b1, b2)
        if name in ("eps", "weight_decay"):
            return _checks.positive(name, value, allow_zero=True)
        if name == "eps_after_correction":
            return bool(value)
        return super()._checked(name, value)

    def _kernel(self):
        return _kernels.adam_kernel(self.decoupled)

    @property
    def beta1(self):
        return self.betas[0]

    @property
    def beta2(self):
        return self.betas[1]



class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay ``p <- p*(1 - lr*wd)``."""

    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr, betas, eps, weight_decay)


# Names a model's fit and train_step accept in place of an optimizer, with the defaults each gets:
# Adam and AdamW as in PyTorch and Keras (lr 1e-3; AdamW weight decay 1e-2 as PyTorch's), SGD
# at Keras' lr 0.01 (PyTorch's SGD has no default lr).
NAMED = {"adam": lambda: Adam(), "adamw": lambda: AdamW(), "sgd": lambda: SGD(lr=0.01)}


def from_name(name: str) -> Optimizer:
    """A new optimizer for one of ``NAMED``'s names (any case)."""
    make = NAMED.get(name.lower()) if isinstance(name, str) else None
    if make is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(NAMED)}, or an optimizer such as "
                         f"fastnn.SGD(lr=0.05, momentum=0.9)")
    return make()
