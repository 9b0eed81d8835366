"""Optimizers, each defined once (``fastnn/kernels/optimizers.py``): PyTorch's steps on every
switch, state rows by name, and every face (fit by name, checkpoints, the command line,
``fastnn profile``) reading the registry."""
import json
import pathlib

import numpy as np
import pytest

import fastnn
from fastnn import cli
from fastnn.kernels.optimizers import RULES
from fastnn.optim import CLASSES, from_name

VALUES = pathlib.Path(__file__).resolve().parent / "fixtures" / "optimizer_values.npz"
EXAMPLES = [(name, k) for name, rule in RULES.items() for k in range(len(rule.examples))]
# |fastnn - PyTorch| <= bound * max(1, |PyTorch|) after each of five steps
BOUND = {np.float32: 1e-5, np.float64: 1e-12}


def pytorch_run(name, k, dtype):
    values = np.load(VALUES)
    key = f"{name}.{k}.{np.dtype(dtype).name}"
    assert f"{key}.p" in values, f"no PyTorch steps for {name!r}: run tests/fixtures/make_optimizer_values.py"
    settings = json.loads(str(values[f"{name}.{k}.settings"]))
    assert settings == json.loads(json.dumps(RULES[name].examples[k])), "examples changed: rerun the script"
    rows = {row: values[f"{key}.{row}"] for row in RULES[name].rows if f"{key}.{row}" in values}
    return settings, values["start"].astype(dtype), values["grads"].astype(dtype), values[f"{key}.p"], rows


def replay(optimizer, start, grads):
    """(parameters, {row: buffer}) after each step of ``optimizer`` from ``start``."""
    p = start.copy()
    ps, states = [], []
    for g in grads:
        optimizer.step([p], [g])
        ps.append(p.copy())
        states.append({row: buffers[0].copy() for row, buffers in optimizer.state.items()})
    return ps, states


def assert_near(got, expected, dtype, what):
    err = np.abs(got.astype(np.float64) - expected) / np.maximum(1.0, np.abs(expected.astype(np.float64)))
    assert err.max() <= BOUND[dtype], f"{what}: off by {err.max():.3g} (relative to max(1, |PyTorch|))"


def compare(name, k, dtype, optimizer=None):
    settings, start, grads, expected_p, expected_rows = pytorch_run(name, k, dtype)
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    ps, states = replay(optimizer or CLASSES[RULES[name].title](**settings), start, grads)
    for t in range(len(grads)):
        assert set(states[t]) == set(expected_rows), f"step {t + 1}: rows {sorted(states[t])}"
        assert_near(ps[t], expected_p[t], dtype, f"{name} {settings} p after step {t + 1}")
        for row, values in expected_rows.items():
            assert_near(states[t][row], values[t], dtype, f"{name} {settings} {row} after step {t + 1}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, k", EXAMPLES, ids=[f"{n}-{k}" for n, k in EXAMPLES])
def test_every_optimizer_steps_as_pytorch_on_every_switch(name, k, dtype):
    compare(name, k, dtype)


def test_a_swapped_state_row_order_fails_the_comparison(monkeypatch):
    """The buffers are compared by name: a class that reads its rows in another order than the
    kernel writes them (the defect the registry removes) is caught."""
    rule = RULES["rmsprop"]
    k = next(i for i, s in enumerate(rule.examples) if s["momentum"] and s["centered"])
    optimizer = CLASSES["RMSprop"](**rule.examples[k])
    optimizer.kernel()  # the kernel, with its rows in the definition's order
    monkeypatch.setattr(type(optimizer), "_buffers", property(lambda self: tuple(reversed(rule.rows_for(
        self.settings())))))
    with pytest.raises(AssertionError, match="square_avg|grad_avg|momentum_buffer"):
        compare("rmsprop", k, np.float64, optimizer)


def test_rmsprop_has_pytorchs_defaults_and_checks():
    opt = fastnn.RMSprop()
    assert opt.settings() == dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False)
    assert from_name("RMSprop").settings() == opt.settings()
    assert opt._buffers == ("square_avg",)
    opt.centered, opt.momentum = True, 0.5
    assert opt._buffers == ("square_avg", "momentum_buffer", "grad_avg")
    for name, bad in (("alpha", 1.0), ("alpha", -0.1), ("eps", -1.0), ("momentum", float("nan")), ("lr", 0.0)):
        with pytest.raises(ValueError, match=name):
            fastnn.RMSprop(**{name: bad})
    with pytest.raises(TypeError, match="betas"):
        fastnn.RMSprop(betas=(0.9, 0.99))


@pytest.mark.parametrize("name", list(RULES))
def test_every_optimizer_by_name_trains_checkpoints_and_resumes_bit_for_bit(name, tmp_path, rng):
    X = rng.standard_normal((96, 5)).astype(np.float32)
    y = (X[:, 0] > X[:, 1]).astype(np.int64)

    def net():
        return fastnn.Sequential(fastnn.Dense(5, 12, activation="tanh"), fastnn.Dense(12, 2), seed=1)

    whole = net()
    history = whole.fit(X, y, epochs=6, batch_size=16, optimizer=name)
    assert history["loss"][-1] < history["loss"][0]
    first = net()
    first.fit(X, y, epochs=3, batch_size=16, optimizer=name, checkpoint_dir=tmp_path)
    resumed = net()
    resumed.fit(X, y, epochs=6, batch_size=16, optimizer=name, checkpoint_dir=tmp_path, resume=True)
    for a, b in zip(resumed.parameters(), whole.parameters()):
        np.testing.assert_array_equal(a, b)


def test_state_dict_round_trips_rows_by_name(rng):
    opt = fastnn.RMSprop(momentum=0.9, centered=True)
    p, g = rng.standard_normal(7), rng.standard_normal(7)
    opt.step([p], [g])
    saved = opt.state_dict()
    assert {"square_avg.0", "momentum_buffer.0", "grad_avg.0"} <= set(saved)
    again = fastnn.RMSprop()
    again.load_state_dict(saved)
    assert again.settings() == opt.settings() and again.step_count == 1
    for row in opt.state:
        np.testing.assert_array_equal(again.state[row][0], opt.state[row][0])


def test_every_face_offers_every_optimizer(capsys):
    commands = cli.parser()._subparsers._group_actions[0].choices
    for command in ("train", "profile"):
        [option] = [a for a in commands[command]._actions if a.dest == "optimizer"]
        assert tuple(option.choices) == tuple(RULES), command
    assert {name: type(from_name(name)).__name__ for name in RULES} == {n: r.title for n, r in RULES.items()}
    assert all(getattr(fastnn, rule.title) is CLASSES[rule.title] for rule in RULES.values())
    assert cli.main(["profile", "--sizes", "12,8,3", "--batch-size", "8", "--steps", "3",
                     "--optimizer", "rmsprop"]) == 0
    assert "RMSprop" in capsys.readouterr().out


def test_a_state_dict_of_another_optimizer_is_refused_and_changes_nothing():
    opt = fastnn.RMSprop(lr=0.05)
    with pytest.raises(ValueError, match=r"lacks \['alpha', 'eps', 'centered'\]: it is not a RMSprop's"):
        opt.load_state_dict(fastnn.SGD(lr=0.1, momentum=0.9).state_dict())
    assert opt.settings() == fastnn.RMSprop(lr=0.05).settings()
    old = fastnn.Adam(lr=0.01).state_dict()
    del old["eps_after_correction"]  # (saved before it existed: loads with its default)
    again = fastnn.Adam()
    again.load_state_dict(old)
    assert again.lr == 0.01 and again.eps_after_correction is True
