"""Optimizers with PyTorch's names, defaults and formulas, each made from its one definition in
``fastnn.kernels.optimizers`` (``RULES``): hyper-parameters, state rows and formula by name.

An optimizer's state is created on its first step and belongs to the parameters it was
first given; ``lr`` and the other hyper-parameters are plain attributes that may be changed
between steps, and are checked whenever they change (a NaN, inf or negative learning rate is
refused at the assignment, not found later in the parameters). The step count lives in a
small array that the compiled step advances as it applies each update.
"""
from __future__ import annotations

import inspect

import numpy as np

from ..kernels import _checks
from ..kernels._compose import run
from ..kernels import optimizers as _kernels
from ..kernels.optimizers import REQUIRED, RULES, check_value
from ..kernels.train import Optimizer as _Compiled


class Optimizer:
    """Base class: state buffers shaped like the parameters, and a step counter. Each subclass
    is made from a definition (``rule``, see ``fastnn.kernels.optimizers``)."""

    rule = None  # its definition
    _hyper: tuple = ()  # constructor arguments, for repr and state_dict

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
        constructor's), alone and then with the others already set."""
        value = check_value(self.rule.hyper[self._hyper.index(name)], value)
        values = {n: self.__dict__[n] for n in self._hyper if n in self.__dict__}
        self.rule.check({**values, name: value}, name)
        return value

    def __getattr__(self, name):
        # (only for names not set): the kernel's constants by name, e.g. Adam's beta1 and beta2
        rule = type(self).rule
        if rule is not None and name in rule.constants and name not in self._hyper:
            return float(self._hyper_array()[rule.constants.index(name)])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def settings(self) -> dict:
        """The hyper-parameters, by name."""
        return {name: getattr(self, name) for name in self._hyper}

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
        """Names of the state buffers (rows of each state array), as the definition keeps them
        for the present switches."""
        return self.rule.rows_for(self.settings())

    @property
    def state(self):
        """``{buffer name: [flat array per parameter array]}``, or None before the first step."""
        if self._state is None:
            return None
        return {name: [s[k] for s in self._state] for k, name in enumerate(self._buffers)}

    def kernel(self):
        """The compiled update kernel for this optimizer's settings (``fastnn.kernels.optimizers``)."""
        return self.rule.kernel(self.settings())

    def _hyper_array(self):
        return self.rule.constant_values(self.settings())

    def _prepare(self, params):
        """Create the state on the first step; check it fits ``params`` afterwards."""
        _checks.positive("lr", self.lr)
        rows = len(self._buffers)
        if self._state is None:
            self._state = [np.zeros((rows, p.size), p.dtype) for p in params]
        elif ([(s.shape, s.dtype) for s in self._state] != [((rows, p.size), p.dtype) for p in params]):
            raise ValueError("this optimizer's state belongs to parameters of other sizes or dtypes (or its "
                             "momentum was switched on or off); use one optimizer per model")

    def compiled(self, engine):
        """The tuple the compiled step reads for a model (its engine): the address of the update
        kernel, the constants, the state. Rebuilt when a constant or a switch changed (which
        may pick another kernel) or for another model's parameters; otherwise kept."""
        t = self._tuple
        if t is None or self._owner is not engine.params:
            self._prepare((engine.params,))
            t = self._tuple = _Compiled(engine.update_address(self.kernel()), self._hyper_array(), self._state[0],
                                        self._steps)
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
        kernel = self.kernel()
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
                raise _kernels.refused(f"{type(self).__name__}.step")
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
        # all in place first, then checked together (Nesterov, momentum); a name added after states
        # were saved (the definition's ``added_later``) takes its default, any other must be there
        missing = [name for name in self._hyper if name not in d and name not in self.rule.added_later]
        if missing or "step_count" not in d:
            raise ValueError(f"this state dict lacks {missing or ['step_count']}: it is not a {type(self).__name__}'s "
                             f"(saved by another optimizer?)")
        defaults = {h.name: h.default for h in self.rule.hyper}
        values = _kernels.settings(self.rule, {name: d[name] if name in d else defaults[name] for name in self._hyper})
        for name, value in values.items():
            object.__setattr__(self, name, value)
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


def _optimizer_class(rule) -> type:
    """The public class of one definition: its constructor takes the definition's
    hyper-parameters, in order, with their defaults."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(h.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 **({} if h.default is REQUIRED else {"default": h.default})) for h in rule.hyper]
    signature = inspect.Signature(params)

    def __init__(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{rule.title}{str(signature).replace('self, ', '')}: {e}") from None
        bound.apply_defaults()
        Optimizer.__init__(self)
        for name, value in list(bound.arguments.items())[1:]:  # in order: a switch after what it needs
            setattr(self, name, value)

    __init__.__signature__ = signature
    namespace = {"rule": rule, "_hyper": tuple(h.name for h in rule.hyper), "__init__": __init__,
                 "__doc__": rule.__doc__, "__module__": __name__, "__qualname__": rule.title}
    if hasattr(rule, "decoupled"):
        namespace["decoupled"] = rule.decoupled
    return type(rule.title, (Optimizer,), namespace)


CLASSES = {rule.title: _optimizer_class(rule) for rule in RULES.values()}  # "SGD": fastnn.SGD, ...
globals().update(CLASSES)


def from_name(name: str, **settings) -> Optimizer:
    """A new optimizer for one of ``RULES``'s names (any case), with the defaults a model's
    ``fit(optimizer=name)`` gives it (SGD: lr 0.01, as Keras; PyTorch's SGD has none) and
    ``settings`` on top."""
    rule = RULES.get(name.lower()) if isinstance(name, str) else None
    if rule is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {list(RULES)}, or an optimizer such as "
                         f"fastnn.SGD(lr=0.05, momentum=0.9)")
    return CLASSES[rule.title](**{**rule.by_name, **settings})
