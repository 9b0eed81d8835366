"""Activations, each defined once (``fastnn/kernels/activations.py``): PyTorch's values, the
honesty of ``needs_z``, every name list reading the registry, and each activation end to end.

The kernel, reference, finite-difference, fuzz, ONNX and vectorisation tests take every name
in the registry by themselves (``fastnn.testing.ACTIVATIONS``)."""
import ast
import pathlib
import re

import numpy as np
import pytest

import fastnn
import fastnn.kernels as K
from fastnn import cli
from fastnn.kernels.activations import REGISTRY
from fastnn.testing import ACTIVATIONS

ROOT = pathlib.Path(__file__).resolve().parents[1]
VALUES = pathlib.Path(__file__).resolve().parent / "fixtures" / "activation_values.npz"
# |fastnn - PyTorch| <= bound * max(1, |PyTorch|): a few float32 ulps (the float32 exp and tanh
# approximations, derivatives from y), float64 to ~20 ulps
BOUND = {np.float32: 2e-6, np.float64: 1e-13}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_gives_pytorchs_values_and_derivatives(act, dtype):
    values = np.load(VALUES)
    key = f"{act}.{np.dtype(dtype).name}"
    assert f"{key}.y" in values, f"no PyTorch values for {act!r}: run tests/fixtures/make_activation_values.py"
    z = values["z"].astype(dtype).reshape(1, -1)
    y = K.activation_forward(z, act)
    dz = K.activation_backward(np.ones_like(z), y, z, act)
    for name, got, expected in (("y", y, values[f"{key}.y"]), ("dz", dz, values[f"{key}.dz"])):
        assert expected.dtype == dtype
        err = np.abs(got[0].astype(np.float64) - expected) / np.maximum(1.0, np.abs(expected.astype(np.float64)))
        worst = int(err.argmax())
        assert err[worst] <= BOUND[dtype], f"{act} {name} at z={z[0, worst]}: {got[0, worst]} vs {expected[worst]}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_needs_z_says_whether_the_derivative_reads_the_pre_activation(act, dtype, rng):
    """An activation that reads z but does not say so would get y in its place in every fused
    layer; one that says so without reading it would cost a buffer."""
    z = (rng.standard_normal((4, 50)) * 3).astype(dtype)
    y = K.activation_forward(z, act)
    dy = np.ones_like(z)
    right = K.activation_backward(dy, y, z, act)
    with_y = K.activation_backward(dy, y, y.copy(), act)  # what a layer without a z buffer passes
    if REGISTRY[act].needs_z:
        assert not np.allclose(with_y, right), f"{act} says it needs z, but its derivative is the same from y"
    else:
        np.testing.assert_array_equal(K.activation_backward(dy, y, np.full_like(z, np.nan), act), right)


def activation_lists(tree):
    """Literal lists, tuples, sets, dict keys and strings (code to run, comma-joined names) that
    name 5 or more activations: lists meant to hold them all (a test may pick a few)."""
    names = set(REGISTRY)
    for node in ast.walk(tree):
        items = None
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        if items is not None:
            found = {e.value for e in items if isinstance(e, ast.Constant) and e.value in names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found = (set(node.value.split(",")) | set(re.findall(r"[\"'](\w+)[\"']", node.value))) & names
        else:
            continue
        if len(found) >= 5:
            yield node.lineno, sorted(found)


def test_no_list_of_activation_names_is_kept_by_hand():
    """Command line, estimators, peers, benchmarks and tests read the registry: a list written
    out by hand misses the next activation without a word."""
    kept = []
    for folder in ("fastnn", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "activations.py" and path.parent.name == "kernels":
                continue
            for line, found in activation_lists(ast.parse(path.read_text(), str(path))):
                kept.append(f"{path.relative_to(ROOT)}:{line} {found}")
    assert not kept, "lists of activation names kept by hand (read fastnn.ACTIVATIONS instead):\n" + "\n".join(kept)


def test_the_check_finds_a_list_kept_by_hand():
    five = ACTIVATIONS[1:6]
    source = (f"CHOICES = {list(five)}\n"
              f"EVERY = {','.join(five)!r}\n"
              f"CODE = {'for a in ' + repr(five) + ': pass'!r}\n"
              f"A_FEW = {five[:3]}\n")
    tree = ast.parse(source)
    assert [line for line, _ in activation_lists(tree)] == [1, 2, 3]


def test_every_face_offers_every_activation():
    commands = cli.parser()._subparsers._group_actions[0].choices
    for command in ("train", "profile"):
        [option] = [a for a in commands[command]._actions if a.dest == "activation"]
        assert tuple(option.choices) == ACTIVATIONS, command
    from fastnn.sklearn import _ACTIVATIONS
    assert set(ACTIVATIONS) <= set(_ACTIVATIONS) and _ACTIVATIONS["logistic"] == "sigmoid"
    assert fastnn.ACTIVATIONS == ACTIVATIONS


def test_weights_start_as_each_activation_asks():
    for act, expected_std in (("selu", np.sqrt(1 / 400)), ("silu", np.sqrt(2 / 400)), ("mish", np.sqrt(2 / 400))):
        model = fastnn.Sequential(fastnn.Dense(400, 300, activation=act), fastnn.Dense(300, 2), seed=0)
        assert model.layers[0].W.std() == pytest.approx(expected_std, rel=0.02), act
    glorot = fastnn.Sequential(fastnn.Dense(400, 300, activation="sigmoid"), fastnn.Dense(300, 2), seed=0)
    assert np.abs(glorot.layers[0].W).max() <= np.sqrt(6 / 700)


NEW = ACTIVATIONS[6:]  # the activations added after the first six


@pytest.mark.parametrize("act", NEW)
def test_a_new_activation_trains_saves_loads_and_resumes(act, tmp_path, rng):
    X = rng.standard_normal((120, 6)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)

    def net():
        return fastnn.Sequential(fastnn.Dense(6, 16, activation=act), fastnn.Dense(16, 8, activation=act),
                                 fastnn.Dense(8, 2), seed=2)

    whole = net()
    history = whole.fit(X, y, epochs=6, batch_size=16, optimizer="adam")
    assert history["loss"][-1] < history["loss"][0]
    whole.save(tmp_path / "m.npz")
    loaded = fastnn.load(tmp_path / "m.npz")
    assert [layer.activation for layer in loaded.layers] == [act, act, "identity"]
    np.testing.assert_array_equal(loaded.predict(X), whole.predict(X))
    first = net()
    first.fit(X, y, epochs=3, batch_size=16, optimizer="adam", checkpoint_dir=tmp_path / "ck")
    resumed = net()
    resumed.fit(X, y, epochs=6, batch_size=16, optimizer="adam", checkpoint_dir=tmp_path / "ck", resume=True)
    for a, b in zip(resumed.parameters(), whole.parameters()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("act", NEW)
def test_a_new_activation_in_the_estimators(act):
    from sklearn.datasets import load_iris
    from fastnn.sklearn import MLPClassifier

    X, y = load_iris(return_X_y=True)
    est = MLPClassifier((16,), activation=act, max_iter=300, random_state=0).fit(X, y)
    assert est.score(X, y) > 0.9
    assert est.model_.layers[0].activation == act


def test_a_new_activation_from_the_command_line(tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert cli.main(["train", "--epochs", "2", "--hidden", "16", "--activation", "mish", "--out", str(model)]) == 0
    assert fastnn.load(model).layers[0].activation == "mish"
    assert "mish" in capsys.readouterr().out
