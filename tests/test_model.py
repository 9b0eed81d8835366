"""The public API contract: names, shapes, views, files, errors and reproducibility."""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn
from fastnn.kernels.optimizers import RULES


def mnist_like_model(dtype=np.float32, seed=0):
    return fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
                             fastnn.Dense(128, 10), seed=seed, dtype=dtype)


def test_version_and_public_names_have_docstrings():
    assert isinstance(fastnn.__version__, str) and fastnn.__version__.count(".") == 2
    for name in fastnn.__all__:
        obj = getattr(fastnn, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
    for method in ("parameters", "loss_and_grad", "train_step", "fit", "predict", "predict_proba", "evaluate", "save"):
        assert getattr(fastnn.Sequential, method).__doc__, method
    for method in ("step", "state_dict", "load_state_dict"):
        assert getattr(fastnn.Optimizer, method).__doc__, method


def test_repr_lists_layers_like_pytorch():
    assert repr(mnist_like_model()) == (
        "Sequential(\n"
        "  (0): Dense(in_features=784, out_features=256, activation='relu')\n"
        "  (1): Dense(in_features=256, out_features=128, activation='relu')\n"
        "  (2): Dense(in_features=128, out_features=10, activation='identity')\n"
        ")")
    assert repr(fastnn.SGD(lr=0.05, momentum=0.9)) == "SGD(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=False)"


def test_parameters_are_writable_views_in_order(rng):
    model = mnist_like_model()
    params = model.parameters()
    assert [p.shape for p in params] == [(784, 256), (256,), (256, 128), (128,), (128, 10), (10,)]
    assert all(p.dtype == np.float32 for p in params)
    X = rng.random((3, 784)).astype(np.float32)
    before = model.predict(X)
    params[5][...] = 1.0  # p[...] = v changes the model
    np.testing.assert_allclose(model.predict(X), before + 1.0, rtol=1e-6)
    assert model.layers[2].b is not None and np.shares_memory(model.layers[2].b, params[5])


def test_initialisation_he_for_relu_glorot_otherwise_biases_zero():
    model = fastnn.Sequential(fastnn.Dense(400, 300, activation="relu"), fastnn.Dense(300, 200, activation="tanh"),
                              seed=0, dtype=np.float64)
    W0, b0, W1, b1 = model.parameters()
    assert W0.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    limit = np.sqrt(6 / 500)
    assert W1.max() <= limit and W1.min() >= -limit and W1.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    assert not b0.any() and not b1.any()
    # same seed -> same numbers in both dtypes (drawn in float64, then rounded)
    m32 = fastnn.Sequential(fastnn.Dense(400, 300, activation="relu"), fastnn.Dense(300, 200, activation="tanh"),
                            seed=0, dtype=np.float32)
    np.testing.assert_array_equal(m32.parameters()[0], W0.astype(np.float32))


def test_loss_and_grad_returns_new_arrays(rng):
    model = mnist_like_model()
    X, y = rng.random((8, 784)), rng.integers(0, 10, 8)
    loss, grads = model.loss_and_grad(X, y)
    assert isinstance(loss, float) and loss > 0
    assert [g.shape for g in grads] == [p.shape for p in model.parameters()]
    kept = [g.copy() for g in grads]
    model.loss_and_grad(X[:4], y[:4])
    for g, k in zip(grads, kept):
        np.testing.assert_array_equal(g, k)  # not overwritten by a later call


def test_optimizer_step_on_parameter_lists_matches_train_step(rng):
    X, y = rng.random((8, 784)), rng.integers(0, 10, 8)
    a, b = mnist_like_model(), mnist_like_model()
    opt_a, opt_b = fastnn.Adam(lr=1e-3), fastnn.Adam(lr=1e-3)
    for _ in range(3):
        a.train_step(X, y, optimizer=opt_a)
        _, grads = b.loss_and_grad(X, y)
        opt_b.step(b.parameters(), grads)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


def test_lr_may_change_between_steps_and_state_dict_round_trips(rng):
    X, y = rng.random((8, 784)), rng.integers(0, 10, 8)
    model = mnist_like_model()
    opt = fastnn.SGD(lr=0.05, momentum=0.9)
    model.train_step(X, y, optimizer=opt)
    opt.lr = 0.0001
    snapshot = [p.copy() for p in model.parameters()]
    saved = opt.state_dict()
    model.train_step(X, y, optimizer=opt)
    after_small_lr = [p.copy() for p in model.parameters()]
    assert max(np.abs(p - s).max() for p, s in zip(after_small_lr, snapshot)) < 1e-3
    # restore parameters and optimizer state: the same step gives the same numbers
    for p, s in zip(model.parameters(), snapshot):
        p[...] = s
    fresh = fastnn.SGD(lr=1.0)
    fresh.load_state_dict(saved)
    assert fresh.lr == 0.0001 and fresh.momentum == 0.9
    model.train_step(X, y, optimizer=fresh)
    for p, q in zip(model.parameters(), after_small_lr):
        np.testing.assert_array_equal(p, q)


def test_one_optimizer_belongs_to_one_model(rng):
    X, y = rng.random((4, 784)), rng.integers(0, 10, 4)
    opt = fastnn.Adam()
    mnist_like_model().train_step(X, y, optimizer=opt)
    small = fastnn.Sequential(fastnn.Dense(784, 10), seed=0)
    with pytest.raises(ValueError, match="use one optimizer per model"):
        small.train_step(X, y, optimizer=opt)


def test_save_then_load_gives_bit_identical_predictions(tmp_path, rng):
    model = fastnn.Sequential(fastnn.Dense(784, 32, activation="gelu"), fastnn.Dense(32, 10, activation="sigmoid"),
                              seed=5, dtype=np.float64)
    model.fit(rng.random((64, 784)), rng.integers(0, 10, 64), optimizer=fastnn.Adam(), epochs=1)
    path = tmp_path / "model"  # a bare name: np.savez would append .npz, save must not
    model.save(path)
    assert path.exists() and not (tmp_path / "model.npz").exists()
    same = fastnn.load(path)
    assert repr(same) == repr(model) and same.dtype == np.float64
    X = rng.random((100, 784))
    np.testing.assert_array_equal(same.predict(X), model.predict(X))
    assert os.listdir(tmp_path) == ["model"]  # no temporary file left behind


def test_load_rejects_foreign_truncated_and_tampered_files(tmp_path):
    model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    good = tmp_path / "m.npz"
    model.save(good)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"is not a fastnn model file: it is not an \.npz archive .* or the archive is "
                                         r"cut short"):
        fastnn.load(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes.txt is not a fastnn model file: it is not an \.npz archive"):
        fastnn.load(text)
    foreign = tmp_path / "f.npz"
    np.savez(foreign, a=np.ones(3))
    with pytest.raises(ValueError, match=r"is an \.npz archive but not a fastnn model: it holds \['a'\], where "
                                         r"Sequential.save writes 'architecture'"):
        fastnn.load(foreign)
    model.fit(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match=r"is a fastnn training checkpoint, not a model: continue training with "
                                         r"model.fit\(\.\.\., checkpoint_dir=<its folder>, resume=True\)"):
        fastnn.load(tmp_path / "ck" / "checkpoint.npz")
    with pytest.raises(FileNotFoundError, match="no model file"):
        fastnn.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"the folder .*nodir does not exist; create it first"):
        model.save(tmp_path / "nodir" / "m.npz")
    with np.load(good) as f:
        arrays = dict(f)
    arch = json.loads(str(arrays["architecture"]))
    arch["layers"][0]["out_features"] = 3
    tampered = tmp_path / "x.npz"
    np.savez(tampered, **{**arrays, "architecture": np.array(json.dumps(arch))})
    with pytest.raises(ValueError, match=r"param_0 is float32\(3, 2\), expected float32\(3, 3\)"):
        fastnn.load(tampered)
    arch["version"] = 99
    np.savez(tampered, **{**arrays, "architecture": np.array(json.dumps(arch))})
    with pytest.raises(ValueError, match="format version 99"):
        fastnn.load(tampered)
    pickled = tmp_path / "p.npz"
    np.savez(pickled, architecture=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds pickled Python objects, which fastnn never loads"):
        fastnn.load(pickled)


def test_inputs_of_other_dtype_and_layout_are_converted(rng):
    model = mnist_like_model()
    X = rng.random((6, 784))
    y = rng.integers(0, 10, 6).astype(np.int32)
    expected = model.predict(X.astype(np.float32))
    np.testing.assert_array_equal(model.predict(np.asfortranarray(X)), expected)
    np.testing.assert_array_equal(model.predict(X.astype(">f4")), expected)
    np.testing.assert_array_equal(model.predict(X.tolist()), expected)
    assert model.evaluate(X, y)["loss"] == model.evaluate(X.astype(np.float32), y.astype(np.int64))["loss"]
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_read_only_inputs_such_as_memmaps_work(tmp_path, rng):
    X = rng.random((40, 784)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    Xm, ym = np.load(tmp_path / "X.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    a, b = mnist_like_model(), mnist_like_model()
    a.fit(Xm, ym, optimizer=fastnn.SGD(lr=0.1), epochs=2, batch_size=16)
    b.fit(X, y, optimizer=fastnn.SGD(lr=0.1), epochs=2, batch_size=16)
    np.testing.assert_array_equal(a.predict(Xm), b.predict(X))
    reg = fastnn.Sequential(fastnn.Dense(784, 2), seed=0)
    targets = np.ones((40, 2))
    targets.flags.writeable = False
    reg.fit(Xm, targets, loss="mse", optimizer=fastnn.SGD(lr=0.01), epochs=1, batch_size=16)


@pytest.mark.parametrize("call, error, message", [
    (lambda m, X, y: m.fit(X[:, :5], y, optimizer=fastnn.SGD(lr=0.1)), ValueError,
     "X has 5 features per row but the first layer expects 784"),
    (lambda m, X, y: m.fit(X, y[:3], optimizer=fastnn.SGD(lr=0.1)), ValueError, r"y must have shape \(4,\)"),
    (lambda m, X, y: m.train_step(X, y + 10, optimizer=fastnn.SGD(lr=0.1)), ValueError,
     r"y labels must lie in \[0, 10\)"),
    (lambda m, X, y: m.train_step(X, y + 0.5, optimizer=fastnn.SGD(lr=0.1)), ValueError,
     r"not whole numbers \(such as \d\.5\), so they are not class labels .* use loss='mse'"),
    (lambda m, X, y: m.train_step(X, y.astype(str), optimizer=fastnn.SGD(lr=0.1)), TypeError,
     "y must hold integer class labels"),
    (lambda m, X, y: m.train_step(np.where(X > 0.5, np.nan, X), y, optimizer=fastnn.SGD(lr=0.1)), ValueError,
     "X contains NaN or inf"),
    (lambda m, X, y: m.predict(X[0]), ValueError, r"X must be 2-D \(samples, features\), got shape \(784,\)"),
    (lambda m, X, y: m.predict(X[:0]), ValueError, "X is empty"),
    (lambda m, X, y: m.predict(np.array([["a"] * 784])), TypeError, "X must be numeric"),
    (lambda m, X, y: m.fit(X, y, optimizer=fastnn.SGD(lr=0.1), batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    (lambda m, X, y: m.fit(X, y, optimizer=fastnn.SGD(lr=0.1), epochs=-1), ValueError, "epochs must be an integer >= 1"),
    (lambda m, X, y: m.fit(X, y, optimizer=object()), TypeError, "optimizer must be a fastnn optimizer"),
    (lambda m, X, y: m.fit(X, y, optimizer="lion"), ValueError,
     re.escape(f"unknown optimizer 'lion'; expected one of {list(RULES)}")),
    (lambda m, X, y: m.fit(X, y, loss="hinge"), ValueError, r"unknown loss 'hinge'; expected one of .*binary_crossentropy"),
    (lambda m, X, y: m.loss_and_grad(X, y, loss="hinge"), ValueError, "unknown loss 'hinge'"),
    (lambda m, X, y: m.loss_and_grad(X, np.ones((4, 3)), loss="mse"), ValueError, r"y must have shape \(4, 10\)"),
])
def test_bad_input_gets_a_clear_error(call, error, message, rng):
    model = mnist_like_model()
    X, y = rng.random((4, 784)).astype(np.float32), rng.integers(0, 10, 4)
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(error, match=message):
        call(model, X, y)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)  # nothing changed


@pytest.mark.parametrize("make, message", [
    (lambda: fastnn.Dense(0, 3), "in_features must be an integer >= 1"),
    (lambda: fastnn.Dense(3, 2.5), "out_features must be an integer"),
    (lambda: fastnn.Dense(3, 2, activation="swish"), "unknown activation 'swish'"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 4), fastnn.Dense(5, 2)), "layer 1 has in_features=5 but the layer before it has out_features=4"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 4), fastnn.Dense(4, 6), fastnn.Dense(5, 2)),
     "layer 2 has in_features=5 but the layer before it has out_features=6"),
    (lambda: fastnn.Sequential(), "at least one layer"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 4), dtype=np.int32), "dtype must be float32 or float64"),
    (lambda: fastnn.SGD(lr=0), "lr must be a finite number > 0"),
    (lambda: fastnn.SGD(lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda: fastnn.Adam(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
])
def test_bad_construction_gets_a_clear_error(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_a_layer_belongs_to_one_model():
    layer = fastnn.Dense(3, 2)
    fastnn.Sequential(layer)
    with pytest.raises(ValueError, match="already belongs to a model"):
        fastnn.Sequential(layer)


TRAIN_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, fastnn
    fastnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    X, y = rng.random((300, 784)).astype(np.float32), rng.integers(0, 10, 300)
    model = fastnn.Sequential(fastnn.Dense(784, 64, activation="relu"), fastnn.Dense(64, 10), seed=7)
    model.fit(X, y, optimizer=fastnn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=32)
    print(hashlib.sha256(b"".join(p.tobytes() for p in model.parameters())).hexdigest())
""")


def test_same_seed_and_threads_give_bit_identical_parameters_across_processes():
    digests = [subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], capture_output=True, text=True, check=True,
                              timeout=300).stdout.strip() for _ in range(2)]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    namespace = {}
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(TRAIN_SCRIPT, namespace)
    fastnn.set_num_threads(int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count())))
    assert out.getvalue().strip() == digests[0]


def two_layer_data(rng, n=64):
    X = rng.random((n, 6), dtype=np.float32)
    return X, (X.sum(axis=1) > 3).astype(np.int64)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_a_copied_model_trains_saves_and_loads_its_own_weights(copier, tmp_path, rng):
    import copy
    import pickle

    X, y = two_layer_data(rng)
    model = fastnn.Sequential(fastnn.Dense(6, 8, activation="tanh"), fastnn.Dense(8, 2), seed=0)
    model.fit(X, y, optimizer=fastnn.SGD(lr=0.1), epochs=2, batch_size=16)
    original = model.predict(X)
    twin = copy.deepcopy(model) if copier == "deepcopy" else pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(twin.predict(X), original)
    twin.fit(X, y, optimizer=fastnn.SGD(lr=0.5), epochs=3, batch_size=16)
    trained = twin.predict(X)
    assert not np.array_equal(trained, original)
    np.testing.assert_array_equal(model.predict(X), original)  # the copy shares nothing with it
    # its layers, parameters() and saved file all show the weights it trained
    np.testing.assert_array_equal(twin.layers[0].W, twin.parameters()[0])
    assert np.shares_memory(twin.parameters()[0], twin._flat_params)
    twin.save(tmp_path / "twin.npz")
    np.testing.assert_array_equal(fastnn.load(tmp_path / "twin.npz").predict(X), trained)
    twin.parameters()[1][...] = 5.0  # a write through parameters() reaches the copy's training path
    assert not np.array_equal(twin.predict(X), trained)
