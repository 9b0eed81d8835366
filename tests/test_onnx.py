"""ONNX export, checked by running the graphs in ONNX Runtime against fastnn's own predictions."""
import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn.testing import ACTIVATIONS, product_scale

from .conftest import require

onnx = require("onnx")
ort = require("onnxruntime")

FASTNN = pathlib.Path(sys.executable).parent / "fastnn"
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# standard operators ONNX Runtime runs in both dtypes at opset 17 (no Gelu: opset 20; no
# LeakyRelu: float only)
# operators ONNX Runtime (1.16 on) runs in float32 and float64 at opset 17: not its Softplus, Elu,
# Selu (float32 only) or Mish (opset 18), which the activations compose from these
ALLOWED_OPS = {"MatMul", "Add", "Sub", "Mul", "Div", "Max", "Min", "Neg", "Abs", "Exp", "Log", "Where", "Relu",
               "Sigmoid", "Tanh", "Softmax", "ArgMax", "Identity", "Gather", "Greater", "Cast", "Squeeze", "Concat"}


def session(path_or_proto):
    source = path_or_proto.SerializeToString() if hasattr(path_or_proto, "SerializeToString") else str(path_or_proto)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def output_scale(model, X):
    """Per element of the network's output, the size of what it was computed from: |x| @ |W| + |b|
    carried through the layers (what rounding errors grow with)."""
    s = np.abs(X.astype(np.float64))
    for layer in model.dense_layers:
        s = product_scale(s, layer.W) + np.abs(layer.b.astype(np.float64))
    return np.maximum(s, 1.0)


def assert_within_scale(actual, expected, scale, dtype):
    bound = TOLERANCE[np.dtype(dtype)] * scale
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    assert np.all(err <= bound), f"max error {err.max():.3g}, worst relative to its bound {(err / bound).max():.3g}"


SHAPES = [(1, [4], 3), (5, [7, 3], 1), (3, [], 4), (6, [8], 2)]  # inputs, hidden, outputs: 1 input, 1 output


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, [s[0], *s[1], s[2]])))
def test_every_activation_runs_in_onnx_runtime_as_in_fastnn(act, shape, dtype, rng, tmp_path):
    inputs, hidden, outputs = shape
    sizes = [inputs, *hidden, outputs]
    layers = [fastnn.Dense(a, b, activation=act) for a, b in zip(sizes[:-1], sizes[1:])]
    if len(layers) > 1:
        layers.insert(1, fastnn.Dropout(0.3))  # the identity in the graph, as in predict
    model = fastnn.Sequential(*layers, seed=3, dtype=dtype)
    for p in model.parameters():
        p[...] = rng.standard_normal(p.shape) * 1.5  # beyond the initial scale: saturated units too
    X = (rng.standard_normal((1000, inputs)) * 2).astype(dtype)
    logits_proto = model.to_onnx(tmp_path / "logits.onnx")
    assert {n.op_type for n in logits_proto.graph.node} <= ALLOWED_OPS
    got, label = session(tmp_path / "logits.onnx").run(None, {"input": X})
    assert got.dtype == dtype and label.dtype == np.int64
    expected = model.predict(X)
    scale = output_scale(model, X)
    assert_within_scale(got, expected, scale, dtype)
    # the label is the largest logit's column wherever rounding cannot swap the top two (an
    # activation on the last layer makes many exact or near ties: gelu's and relu's zeros)
    top = np.sort(expected.astype(np.float64), axis=1)
    clear = np.ones(len(X), bool) if outputs == 1 else (
        top[:, -1] - top[:, -2] > 2 * TOLERANCE[np.dtype(dtype)] * scale.max(axis=1))
    np.testing.assert_array_equal(label[clear], expected.argmax(axis=1)[clear])
    model.to_onnx(tmp_path / "proba.onnx", probabilities=True)
    proba, _ = session(tmp_path / "proba.onnx").run(None, {"input": X})
    # a probability moves by at most about the logits' error
    assert_within_scale(proba, model.predict_proba(X), output_scale(model, X), dtype)


@pytest.mark.parametrize("outputs", [1, 3])
def test_binary_cross_entropy_models_export_sigmoids_and_labels(outputs, dtype, rng, tmp_path):
    model = fastnn.Sequential(fastnn.Dense(4, 6, activation="tanh"), fastnn.Dense(6, outputs), seed=0, dtype=dtype,
                              loss="binary_cross_entropy")
    X = rng.standard_normal((500, 4)).astype(dtype)
    model.to_onnx(tmp_path / "m.onnx", probabilities=True)
    proba, label = session(tmp_path / "m.onnx").run(None, {"input": X})
    assert_within_scale(proba, model.predict_proba(X), output_scale(model, X), dtype)
    expected = (model.predict(X) > 0).astype(np.int64)
    np.testing.assert_array_equal(label, expected[:, 0] if outputs == 1 else expected)


def test_a_regression_model_exports_its_outputs_and_refuses_probabilities(rng, tmp_path):
    model = fastnn.Sequential(fastnn.Dense(3, 5, activation="gelu"), fastnn.Dense(5, 2), seed=0, loss="mse")
    X = rng.standard_normal((200, 3)).astype(np.float32)
    proto = model.to_onnx(tmp_path / "r.onnx")
    assert [o.name for o in proto.graph.output] == ["output"]
    (out,) = session(tmp_path / "r.onnx").run(None, {"input": X})
    assert_within_scale(out, model.predict(X), output_scale(model, X), np.float32)
    with pytest.raises(ValueError, match="regression.*no probabilities to export"):
        model.to_onnx(tmp_path / "p.onnx", probabilities=True)


@pytest.mark.parametrize("opset", [13, 17])
def test_layernorm_and_residual_blocks_run_in_onnx_runtime_as_in_fastnn(opset, dtype, rng, tmp_path):
    model = fastnn.Sequential(fastnn.Dense(6, 16, activation="relu"), fastnn.LayerNorm(16), fastnn.Dropout(0.2),
                              fastnn.Residual(fastnn.Dense(16, 16, activation="gelu"), fastnn.LayerNorm(16, eps=1e-3),
                                              fastnn.Residual(fastnn.Dense(16, 16, activation="tanh")),
                                              fastnn.Dense(16, 16)),
                              fastnn.Dense(16, 4), seed=2, dtype=dtype)
    for p in model.parameters():  # off the start, so that LayerNorm's weight and bias count
        p[...] += (rng.standard_normal(p.shape) * 0.3).astype(dtype)
    X = (rng.standard_normal((300, 6)) * 3).astype(dtype)
    proto = model.to_onnx(tmp_path / "k.onnx", opset=opset, probabilities=True)
    assert {node.op_type for node in proto.graph.node} <= ALLOWED_OPS | {"Sqrt"}
    proba, label = session(tmp_path / "k.onnx").run(None, {"input": X})
    np.testing.assert_allclose(proba, model.predict_proba(X), rtol=0, atol=TOLERANCE[np.dtype(dtype)] * 10)
    np.testing.assert_array_equal(label, model.predict(X).argmax(axis=1))


def test_a_float32_layernorm_exports_its_float64_statistics(rng, tmp_path):
    # rows of large mean: a graph summing in float32 changed labels (1e5: 0.5%, 1.7e9: all)
    model = fastnn.Sequential(fastnn.LayerNorm(8), fastnn.Dense(8, 4), seed=0)
    for p in model.parameters():
        p[...] += rng.standard_normal(p.shape).astype(np.float32)
    X = np.concatenate([rng.standard_normal((200, 8)) * 10 + offset for offset in (0.0, 1e5, 1.7e9)]).astype(np.float32)
    proba, label = session(model.to_onnx(tmp_path / "n.onnx", probabilities=True)).run(None, {"input": X})
    np.testing.assert_allclose(proba, model.predict_proba(X), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(label, model.predict(X).argmax(axis=1))


def test_the_file_is_checked_has_a_dynamic_batch_and_old_runtimes_read_it(tmp_path):
    model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    model.to_onnx(tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8 and [o.version for o in proto.opset_import] == [17]  # ONNX Runtime 1.10+
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 3
    s = session(tmp_path / "m.onnx")
    for n in (1, 7, 1000):
        assert s.run(None, {"input": np.ones((n, 3), np.float32)})[0].shape == (n, 2)


@pytest.fixture(scope="module")
def digits():
    from fastnn.datasets import load_mnist_5k
    return load_mnist_5k()


def test_a_digits_model_keeps_its_test_accuracy_to_the_last_digit(digits, tmp_path):
    (X, y), (Xt, yt) = digits
    model = fastnn.Sequential(fastnn.Dense(784, 64, activation="relu"), fastnn.Dense(64, 10), seed=0)
    model.fit(X, y, epochs=3, batch_size=64)
    model.to_onnx(tmp_path / "d.onnx", probabilities=True)
    proba, label = session(tmp_path / "d.onnx").run(None, {"input": Xt})
    assert np.mean(label == yt) == model.evaluate(Xt, yt)["accuracy"]
    np.testing.assert_array_equal(label, model.predict(Xt).argmax(axis=1))


def test_a_scikit_learn_pipeline_with_a_scaler_exports_with_skl2onnx(digits):
    require("sklearn")
    skl2onnx = require("skl2onnx")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastnn.sklearn import MLPClassifier

    (X, y), (Xt, yt) = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=5, random_state=0))
    with pytest.warns(Warning):
        pipe.fit(X, names[y])
    proto = skl2onnx.to_onnx(pipe, X[:1], target_opset=17)  # (opset 17: readable by ONNX Runtime 1.16 too)
    s = session(proto)
    assert [o.name for o in s.get_outputs()] == ["label", "probabilities"]  # tensors, no ZipMap
    label, proba = s.run(None, {s.get_inputs()[0].name: Xt})
    assert np.mean(label == names[yt]) == pipe.score(Xt, names[yt])
    np.testing.assert_allclose(proba, pipe.predict_proba(Xt), atol=1e-5)


@pytest.mark.parametrize("binary", [False, True])
def test_estimators_export_their_own_classes(binary, rng, tmp_path):
    require("sklearn")
    from sklearn.exceptions import NotFittedError

    from fastnn.sklearn import MLPClassifier, MLPRegressor

    X = rng.standard_normal((200, 3))
    y = np.where(X[:, 0] > 0, "yes", "no") if binary else np.array(["a", "b", "c"])[(X[:, 0] > 0) + (X[:, 1] > 0) * 1]
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0)
    with pytest.raises(NotFittedError):
        clf.to_onnx(tmp_path / "c.onnx")
    with pytest.warns(Warning):
        clf.fit(X, y)
    clf.to_onnx(tmp_path / "c.onnx")
    label, proba = session(tmp_path / "c.onnx").run(None, {"input": X})
    np.testing.assert_array_equal(label, clf.predict(X))
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=1e-12, atol=1e-13)
    with pytest.warns(Warning):
        reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=10, random_state=0).fit(X, X[:, 0])
    reg.to_onnx(tmp_path / "r.onnx")
    (out,) = session(tmp_path / "r.onnx").run(None, {"input": X})
    np.testing.assert_allclose(out[:, 0], reg.predict(X), rtol=1e-12, atol=1e-12)


def command(*argv, cwd):
    return subprocess.run([str(FASTNN), *argv], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_the_export_command_round_trip_with_a_tables_preparation(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3)) * [1, 10, 100] + [0, 50, -500]
    names = np.array(["low", "mid", "high"])
    y = names[(X[:, 0] > -0.5).astype(int) + (X[:, 0] > 0.5)]
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "level"])
        w.writerows([[*map(str, row), label] for row, label in zip(X, y)])
    assert command("train", "--data", "t.csv", "--epochs", "30", "--out", "t.npz", cwd=tmp_path).returncode == 0
    proc = command("export", "t.npz", "t.onnx", "--probabilities", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == (
        "wrote t.onnx: opset 17, input 'input' (float32, batch x 3), outputs probabilities, label; the input scaling "
        "and class labels are in the graph")
    proba, label = session(tmp_path / "t.onnx").run(None, {"input": X.astype(np.float32)})  # raw rows
    predicted = list(csv.reader(command("predict", "t.npz", "t.csv", cwd=tmp_path).stdout.splitlines()))
    assert label.tolist() == [row[0] for row in predicted[1:]]
    np.testing.assert_allclose(proba, np.array([[float(v) for v in row[1:]] for row in predicted[1:]]), atol=2e-6)
    proc = command("export", "t.npz", "t.onnx", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == ("error: t.onnx exists; pass --force to overwrite it or "
                                                            "choose another name")
    assert command("export", "t.npz", "t.onnx", "--force", cwd=tmp_path).returncode == 0


def test_without_the_extra_the_export_says_how_to_install_it(tmp_path):
    fastnn.Sequential(fastnn.Dense(3, 2)).save(tmp_path / "m.npz")
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from fastnn import cli\n"
            f"sys.exit(cli.main(['export', {str(tmp_path / 'm.npz')!r}, {str(tmp_path / 'm.onnx')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        'error: ONNX export needs the onnx package: pip install "fastnn-cpu[onnx]" (in a checkout of fastnn: '
        'pip install ".[onnx]")')
    assert not (tmp_path / "m.onnx").exists()
