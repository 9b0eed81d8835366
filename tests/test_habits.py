"""What Keras, PyTorch and scikit-learn users expect: defaults, names, a model that knows its task,
binary and multi-label classification, row and class weights, inspection, extending and
interrupting a run, and a warning when the loss explodes."""
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest

import fastnn
from fastnn.checkpoint import CheckpointError
from fastnn.testing import finite_difference, reference_loss_and_grad
from fastnn.training import LossExplosionWarning


def blobs(n=96, classes=3, features=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features)) * 3
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.standard_normal((n, features))).astype(np.float32), y


def net(inputs=4, outputs=3, seed=0, **kw):
    return fastnn.Sequential(fastnn.Dense(inputs, 8, activation="tanh"), fastnn.Dense(8, outputs), seed=seed, **kw)


# -- defaults and names ------------------------------------------------------------------

def test_fit_without_an_optimizer_uses_one_adam_kept_and_reused():
    X, y = blobs()
    model = net()
    model.fit(X, y, epochs=2)
    opt = model.optimizer
    assert type(opt) is fastnn.Adam and opt.lr == 1e-3 and opt.betas == (0.9, 0.999)
    steps = opt.step_count
    assert steps == 2 * 3  # 96 rows in batches of 32
    model.fit(X, y)
    model.train_step(X[:8], y[:8])
    assert model.optimizer is opt and opt.step_count == steps + 3 + 1  # its moments carry on
    # the same as passing that Adam explicitly, step for step
    twin = net()
    explicit = fastnn.Adam(lr=1e-3)
    twin.fit(X, y, optimizer=explicit, epochs=2)
    twin.fit(X, y, optimizer=explicit)
    twin.train_step(X[:8], y[:8], optimizer=explicit)
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("name,kind,lr", [("adam", fastnn.Adam, 1e-3), ("AdamW", fastnn.AdamW, 1e-3),
                                          ("sgd", fastnn.SGD, 0.01)])
def test_optimizer_names_give_the_documented_defaults(name, kind, lr):
    X, y = blobs()
    model = net()
    model.fit(X, y, optimizer=name)
    opt = model.optimizer
    assert type(opt) is kind and opt.lr == lr
    if kind is fastnn.AdamW:
        assert opt.weight_decay == 1e-2
    model.fit(X, y, optimizer=name.lower())
    assert model.optimizer is opt  # the same name continues with the same optimizer
    model.fit(X, y, optimizer="adam" if name.lower() != "adam" else "sgd")
    assert model.optimizer is not opt


@pytest.mark.parametrize("alias,canonical", [("sparse_categorical_crossentropy", "softmax_cross_entropy"),
                                             ("categorical_crossentropy", "softmax_cross_entropy"),
                                             ("binary_crossentropy", "binary_cross_entropy"),
                                             ("mean_squared_error", "mse")])
def test_keras_loss_names_mean_fastnns_losses(alias, canonical, rng):
    X = rng.standard_normal((16, 4)).astype(np.float32)
    y = {"softmax_cross_entropy": rng.integers(0, 3, 16), "binary_cross_entropy": rng.integers(0, 2, (16, 3)),
         "mse": rng.standard_normal((16, 3))}[canonical]
    if alias == "categorical_crossentropy":
        y = np.eye(3)[y]
    a, b = net(), net()
    assert a.loss_and_grad(X, y, loss=alias)[0] == b.loss_and_grad(X, y, loss=canonical)[0]
    a.fit(X, y, loss=alias)
    assert a.loss == canonical


# -- the model knows its task -------------------------------------------------------------

def test_the_first_fit_stores_the_loss_and_later_calls_use_it(tmp_path, rng):
    X = rng.standard_normal((40, 4)).astype(np.float32)
    Y = rng.standard_normal((40, 3)).astype(np.float32)
    model = net()
    assert model.loss is None
    model.fit(X, Y, loss="mse", epochs=2)
    assert model.loss == "mse"
    scores = model.evaluate(X, Y)  # no loss needed any more
    assert set(scores) == {"loss", "seen_in_training"} and scores["seen_in_training"] == 1.0  # its own rows
    assert scores["loss"] == pytest.approx(np.mean((model.predict(X) - Y) ** 2), rel=1e-5)
    model.fit(X, Y)  # mse again
    with pytest.raises(ValueError, match=r"this model's loss is 'mse' .* not 'softmax_cross_entropy'"):
        model.evaluate(X, Y[:, 0].astype(int), loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"'mse' \(regression\): its outputs are not probabilities; use predict"):
        model.predict_proba(X)
    r2 = model.score(X, Y)
    resid, total = ((Y - model.predict(X)) ** 2).sum(axis=0), ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    assert r2 == pytest.approx(np.mean(1 - resid / total), rel=1e-5)
    model.save(tmp_path / "m.npz")
    loaded = fastnn.load(tmp_path / "m.npz")
    assert loaded.loss == "mse" and loaded.evaluate(X, Y) == model.evaluate(X, Y)


def test_a_loss_given_to_the_constructor_is_the_models():
    X, y = blobs()
    model = net(loss="sparse_categorical_crossentropy")
    assert model.loss == "softmax_cross_entropy"
    with pytest.raises(ValueError, match="this model's loss is 'softmax_cross_entropy'"):
        model.fit(X, y.astype(np.float32)[:, None].repeat(3, axis=1), loss="mse")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        net(loss="hinge")


@pytest.mark.parametrize("version", [1, 2])
def test_model_files_of_versions_1_and_2_still_load(tmp_path, version):
    model = net()
    path = tmp_path / f"v{version}.npz"
    arch = {"format": "fastnn.Sequential", "version": version, **model.architecture(), "seed": 0}
    extra = {}
    if version == 2:  # the loss, the training rows' fingerprint and a command line's preparation
        arch.update(loss="softmax_cross_entropy", fingerprint_stride=1)
        extra = {"fingerprint": np.zeros(0, np.uint64), "prep_input_mean": np.zeros(4),
                 "prep_input_scale": np.full(4, 2.0), "prep_classes": np.array(["a", "b", "c"])}
    np.savez(path, architecture=np.array(json.dumps(arch)),
             **{f"param_{i}": p for i, p in enumerate(model.parameters())}, **extra)
    loaded = fastnn.load(path)
    assert loaded.loss == (None if version == 1 else "softmax_cross_entropy") and loaded.feature_names_in_ is None
    for p, q in zip(model.parameters(), loaded.parameters()):
        np.testing.assert_array_equal(p, q)
    if version == 2:  # raw rows: halved by the scaling, then the network
        X = np.random.default_rng(0).standard_normal((5, 4))
        np.testing.assert_array_equal(loaded.predict(X), model.predict((X / 2.0).astype(np.float32)))
    model.save(tmp_path / "v3.npz")
    with zipfile.ZipFile(tmp_path / "v3.npz") as z:
        assert json.loads(np.load(z.open("architecture.npy")).item())["version"] == 3


def test_float_labels_that_are_whole_numbers_are_class_labels_and_others_say_use_mse():
    X, y = blobs()
    a, b = net(), net()
    assert a.loss_and_grad(X, y.astype(np.float64))[0] == b.loss_and_grad(X, y)[0]
    with pytest.raises(ValueError, match=r"not whole numbers \(such as \d+\.5\).*use loss='mse'"):
        a.fit(X, y + 0.5)


def test_one_hot_targets_train_like_labels_and_soft_labels_are_refused():
    X, y = blobs()
    a, b = net(), net()
    ha = a.fit(X, y, epochs=2)
    hb = b.fit(X, np.eye(3, dtype=np.float32)[y], loss="categorical_crossentropy", epochs=2)
    assert ha == hb
    assert b.evaluate(X, np.eye(3)[y]) == a.evaluate(X, y)
    soft = np.full((len(y), 3), 1 / 3)
    with pytest.raises(ValueError, match="one-hot rows .* soft labels are not supported"):
        b.fit(X, soft)


# -- binary and multi-label ---------------------------------------------------------------

def multilabel(n=200, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)).astype(np.float32)
    Y = (X[:, :k] + 0.3 * rng.standard_normal((n, k)) > 0).astype(np.float32)  # label j: feature j > 0
    return X, Y


def test_binary_cross_entropy_learns_binary_and_multi_label_tasks():
    X, Y = multilabel()
    model = net(outputs=3)
    history = model.fit(X, Y, loss="binary_crossentropy", epochs=30, optimizer=fastnn.Adam(lr=0.01))
    assert model.loss == "binary_cross_entropy"
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    out = model.predict(X)
    share_right = np.mean((out > 0) == (Y > 0.5))  # Keras' binary accuracy: the mean over labels
    scores = model.evaluate(X, Y)
    assert scores["accuracy"] == pytest.approx(share_right) and scores["accuracy"] > 0.85
    assert history["accuracy"][-1] > 0.85
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-out.astype(np.float64))), rtol=1e-6)
    # one output: labels of shape (N,), booleans or integers
    one = net(outputs=1)
    h1 = one.fit(X, Y[:, 0] > 0.5, loss="binary_cross_entropy", epochs=30, optimizer=fastnn.Adam(lr=0.01))
    assert h1["accuracy"][-1] > 0.85
    with pytest.raises(ValueError, match=r"0/1 labels .* for regression use loss='mse'"):
        one.fit(X, Y[:, 0] * 2)


def test_binary_cross_entropy_refuses_a_sigmoid_output_layer():
    model = fastnn.Sequential(fastnn.Dense(4, 1, activation="sigmoid"))
    X, Y = multilabel(k=1)
    with pytest.raises(ValueError, match="would apply it twice: drop the last layer's activation"):
        model.fit(X, Y, loss="binary_crossentropy")
    with pytest.raises(ValueError, match="would apply it twice"):
        fastnn.Sequential(fastnn.Dense(4, 1, activation="sigmoid"), loss="binary_cross_entropy")


def test_binary_cross_entropy_model_gradient_matches_the_reference_and_finite_differences(rng):
    model = fastnn.Sequential(fastnn.Dense(3, 5, activation="gelu"), fastnn.Dense(5, 2), seed=1, dtype=np.float64)
    X, Y = rng.standard_normal((6, 3)), (rng.random((6, 2)) < 0.5).astype(np.float64)
    value, grads = model.loss_and_grad(X, Y, loss="binary_cross_entropy")
    rvalue, rgrads = reference_loss_and_grad([p.copy() for p in model.parameters()], ["gelu", "identity"], X, Y,
                                             "binary_cross_entropy")
    assert value == pytest.approx(rvalue, rel=1e-12)
    for g, r in zip(grads, rgrads):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13)
    W = model.parameters()[0]
    original = W.copy()

    def f(v):
        W[...] = v
        return model.loss_and_grad(X, Y, loss="binary_cross_entropy")[0]
    numeric = finite_difference(f, original)
    W[...] = original
    np.testing.assert_allclose(grads[0], numeric, rtol=1e-6, atol=1e-9)


# -- row and class weights ------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy", "mse"])
def test_integer_sample_weights_equal_repeated_rows(loss, rng):
    X = rng.standard_normal((12, 4)).astype(np.float64)
    y = {"softmax_cross_entropy": rng.integers(0, 3, 12), "binary_cross_entropy": rng.integers(0, 2, (12, 3)),
         "mse": rng.standard_normal((12, 3))}[loss]
    w = rng.integers(0, 4, 12)
    w[0] = 1
    weighted, repeated = net(dtype=np.float64), net(dtype=np.float64)
    # one batch per step, no shuffling: the weighted mean is the mean over repeated rows
    weighted.fit(X, y, loss=loss, sample_weight=w, batch_size=12, epochs=3, shuffle=False)
    repeated.fit(np.repeat(X, w, axis=0), np.repeat(y, w, axis=0), loss=loss, batch_size=int(w.sum()), epochs=3,
                 shuffle=False)
    for p, q in zip(weighted.parameters(), repeated.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)
    assert weighted.evaluate(X, y, sample_weight=w)["loss"] == pytest.approx(
        repeated.evaluate(np.repeat(X, w, axis=0), np.repeat(y, w, axis=0))["loss"], rel=1e-10)


def test_class_weight_is_a_sample_weight_per_class():
    X, y = blobs()
    table = {0: 1.0, 1: 3.0, 2: 0.5}
    a, b = net(), net()
    a.fit(X, y, class_weight=table, epochs=2)
    b.fit(X, y, sample_weight=np.array([table[c] for c in y]), epochs=2)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)
    counts = np.bincount(y)
    c, d = net(), net()
    c.fit(X, y, class_weight="balanced")
    d.fit(X, y, sample_weight=len(y) / (3 * counts[y]))
    for p, q in zip(c.parameters(), d.parameters()):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="class_weight needs class labels"):
        net().fit(X, np.ones((len(y), 3)), loss="mse", class_weight={0: 2.0})


def test_a_batch_of_weight_zero_makes_no_update():
    X, y = blobs(n=8)
    model = net()
    before = [p.copy() for p in model.parameters()]
    model.train_step(X, y, sample_weight=np.zeros(8))  # Adam would move on zero gradients
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)
    w = np.zeros(8)
    w[:4] = 1.0  # with batches of 4: the second batch weighs nothing
    a, b = net(), net()
    a.fit(X, y, sample_weight=w, batch_size=4, shuffle=False, optimizer=fastnn.Adam(lr=0.01))
    b.fit(X[:4], y[:4], batch_size=4, shuffle=False, optimizer=fastnn.Adam(lr=0.01))
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="sample weights sum to 0"):
        net().fit(X, y, sample_weight=np.zeros(8))
    with pytest.raises(ValueError, match="sample_weight must be finite and >= 0"):
        net().fit(X, y, sample_weight=-np.ones(8))
    with pytest.raises(ValueError, match=r"sample_weight must be 8 numbers"):
        net().fit(X, y, sample_weight=np.ones(7))


# -- inspection ----------------------------------------------------------------------------

def test_summary_lists_layers_shapes_and_parameter_counts():
    model = fastnn.Sequential(fastnn.Dense(784, 128, activation="relu"), fastnn.Dropout(0.2), fastnn.Dense(128, 10))
    lines = []
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert text.splitlines()[0].split() == ["layer", "output", "shape", "parameters"]
    assert model.count_params() == 784 * 128 + 128 + 128 * 10 + 10 == 101_770
    assert "Dense(784, 128, relu)" in text and "(None, 128)" in text and "100,480" in text
    assert "Dropout(0.2)" in text and "1,290" in text and "total parameters: 101,770" in text


def test_fit_is_silent_by_default(capsys):
    X, y = blobs()
    net().fit(X, y, epochs=2)
    out, err = capsys.readouterr()
    assert out == "" and "epoch" not in err  # verbose=0: no progress bar (a first compile may announce itself)


def test_history_is_kept_on_the_model_with_the_learning_rate_per_epoch():
    X, y = blobs()
    model = net()
    history = model.fit(X, y, epochs=4, optimizer=fastnn.SGD(lr=0.1),
                        lr_schedule=fastnn.StepDecay(step_size=6, gamma=0.5))  # 3 steps per epoch
    assert model.history is history
    assert history["lr"] == [0.1, 0.1, 0.05, 0.05]  # the lr of each epoch's last step: 0.1 * 0.5^(t // 6)


# -- extending and interrupting -------------------------------------------------------------

def test_a_finished_run_resumed_with_more_epochs_continues_it(tmp_path):
    X, y = blobs()
    whole = net()
    whole.fit(X, y, epochs=5, optimizer=fastnn.SGD(lr=0.1, momentum=0.9))
    short = net()
    short.fit(X, y, epochs=3, optimizer=fastnn.SGD(lr=0.1, momentum=0.9), checkpoint_dir=tmp_path)
    again = net()
    history = again.fit(X, y, epochs=5, optimizer=fastnn.SGD(lr=0.1, momentum=0.9), checkpoint_dir=tmp_path,
                        resume=True)
    assert len(history["loss"]) == 5
    for p, q in zip(whole.parameters(), again.parameters()):
        np.testing.assert_array_equal(p, q)
    cosine = tmp_path / "cosine"
    net().fit(X, y, epochs=2, checkpoint_dir=cosine, lr_schedule=fastnn.Cosine())
    with pytest.raises(CheckpointError, match="depends on the run's length, so it cannot be extended"):
        net().fit(X, y, epochs=4, checkpoint_dir=cosine, lr_schedule=fastnn.Cosine(), resume=True)


@pytest.mark.parametrize("verbose", [0, 1])
def test_ctrl_c_stops_fit_quickly_and_keeps_the_finished_epochs(tmp_path, verbose):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys, time, numpy as np, fastnn
        # as in a terminal: a job started in the background (CI, nohup) inherits SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rng = np.random.default_rng(0)
        X, y = rng.random((20000, 64), dtype=np.float32), rng.integers(0, 10, 20000)
        model = fastnn.Sequential(fastnn.Dense(64, 256, activation="relu"), fastnn.Dense(256, 10))
        model.fit(X[:64], y[:64])  # compiled before the clock starts
        class Announce:
            def __call__(self, epoch, history):
                print("epoch", epoch, flush=True)
        try:
            model.fit(X, y, epochs=1000, batch_size=16, verbose={verbose}, callbacks=[Announce()])
        except KeyboardInterrupt:
            print("interrupted", time.perf_counter(), len(model.history["loss"]),
                  bool(np.all(np.isfinite(model.parameters()[0]))), flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        while True:
            line = proc.stdout.readline()
            assert line, "the training process ended before its second epoch"
            if line.startswith("epoch") and int(line.split()[1]) >= 2:
                break
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        words = ["no", "interrupted", "line"]
        for line in proc.stdout:  # (an epoch that ended as the signal came may print first)
            if line.startswith("interrupted"):
                words = line.split()
                break
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert words[0] == "interrupted"
    assert float(words[1]) - sent < 0.5  # (perf_counter is one clock across processes on Linux)
    assert int(words[2]) >= 2 and words[3] == "True"


# -- a loss that explodes --------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from fastnn.datasets import load_mnist_5k
    (X, y), _ = load_mnist_5k()
    return X[:2000], y[:2000]


@pytest.mark.parametrize("optimizer", [fastnn.SGD(lr=1e6), fastnn.Adam(lr=1e10)], ids=["sgd-1e6", "adam-1e10"])
def test_an_exploding_loss_warns_once_naming_the_learning_rate(digits, optimizer):
    X, y = digits
    model = fastnn.Sequential(fastnn.Dense(784, 32, activation="relu"), fastnn.Dense(32, 10))
    with pytest.warns(LossExplosionWarning, match=re.escape(f"learning rate {optimizer.lr:.4g} is likely too high")) \
            as seen:
        try:
            model.fit(X, y, optimizer=optimizer, epochs=3, batch_size=64)
        except fastnn.DivergenceError:
            pass  # NaN or inf still raises; the warning came first
    assert len([w for w in seen if issubclass(w.category, LossExplosionWarning)]) == 1


def test_a_normal_run_on_the_digits_does_not_warn(digits):
    X, y = digits
    model = fastnn.Sequential(fastnn.Dense(784, 32, activation="relu"), fastnn.Dense(32, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossExplosionWarning)
        history = model.fit(X, y, optimizer=fastnn.SGD(lr=0.1, momentum=0.9), epochs=3, batch_size=64)
    assert history["accuracy"][-1] > 0.8


# -- found in review --------------------------------------------------------------------------

def test_a_model_pickled_after_fit_trains_in_another_process(tmp_path):
    # the model keeps its optimizer, whose compiled tuple holds a kernel address of this process
    import pickle
    X, y = blobs()
    model = net()
    model.fit(X, y)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    code = ("import pickle, sys, numpy as np\n"
            f"m = pickle.loads(open({str(tmp_path / 'm.pkl')!r}, 'rb').read())\n"
            "rng = np.random.default_rng(0)\n"
            "h = m.fit(rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64))\n"
            "print(m.optimizer.step_count, len(h['loss']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(3 + 2), "1"]  # the optimizer carried on from its 3 steps


def test_a_first_batch_of_weight_zero_is_not_the_explosion_yardstick():
    X, y = blobs()
    w = np.ones(len(y))
    w[:32] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossExplosionWarning)
        net().fit(X, y, sample_weight=w, batch_size=32, shuffle=False, epochs=2)


def test_weights_are_checked_before_anything_trains(tmp_path):
    X, y = blobs()
    model = net()
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="validation rows' weights sum to 0"):
        model.fit(X, y, validation_data=(X, y, np.zeros(len(y))))
    with pytest.raises(ValueError, match="row weights overflow float32"):
        model.fit(X, y, sample_weight=np.full(len(y), 1e39))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)
    assert model.optimizer is None  # a refused fit keeps no optimizer
    model.fit(X, y, sample_weight=np.ones(len(y)), checkpoint_dir=tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="another training run"):
        net().fit(X, y, sample_weight=np.arange(len(y)) % 3, checkpoint_dir=tmp_path, epochs=1, resume=True)


def test_one_output_labels_say_what_shape_they_need():
    X, y = blobs()
    model = fastnn.Sequential(fastnn.Dense(4, 1))
    with pytest.raises(ValueError, match=r"y must have shape \(96,\) \(one label per row of X\), got \(96, 1\)"):
        model.loss_and_grad(X, np.zeros((96, 1), int), loss="softmax_cross_entropy")


@pytest.mark.parametrize("class_weight", ["balanced", {0: 3.0, 2: 0.5}])
def test_held_out_rows_weigh_as_training_rows_of_their_class(class_weight):
    # one class-weight table, from the training rows, for training and validation rows alike
    # (validation_split once applied the class weights to the held-out rows twice)
    from fastnn import training
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((400, 4)).astype(np.float32), rng.choice(3, 400, p=[0.6, 0.3, 0.1])
    for split in (dict(validation_split=0.2), dict(validation_data=(X[:50], y[:50]))):
        p = training.plan(net(), X, y, loss=None, optimizer=None, epochs=1, batch_size=32,
                          class_weight=class_weight, **split)
        Xv, yv, wv = p.validation
        for c in range(3):
            train_w, val_w = np.unique(p.w[p.y == c]), np.unique(wv[yv == c])
            assert len(train_w) == 1 and np.array_equal(val_w, train_w), (split, c, train_w, val_w)
        if class_weight == "balanced":  # n / (classes * rows of the class), over the training rows
            counts = np.bincount(p.y, minlength=3)
            np.testing.assert_allclose([p.w[p.y == c][0] for c in range(3)], len(p.y) / (3 * counts), rtol=1e-6)


# -- quiet surprises for PyTorch and Keras users ------------------------------------------------

def test_assigning_a_layers_weights_sets_the_models_parameters():
    X, y = blobs()
    model = net()
    layer = model.layers[0]
    W = np.arange(layer.W.size, dtype=np.float64).reshape(layer.W.shape) / 100
    layer.W = W
    layer.b = np.full(layer.b.shape, 0.5)
    np.testing.assert_array_equal(model.parameters()[0], W.astype(np.float32))
    np.testing.assert_array_equal(model.parameters()[1], 0.5)
    assert np.shares_memory(layer.W, model.parameters()[0])  # still the model's view
    twin = net()
    twin.parameters()[0][...], twin.parameters()[1][...] = W, 0.5
    np.testing.assert_array_equal(model.predict(X), twin.predict(X))  # the model computes with them
    with pytest.raises(ValueError, match=r"has shape \(4, 8\); got \(8, 4\)"):
        layer.W = W.T
    with pytest.raises(ValueError, match="must be finite"):
        layer.b = np.full(layer.b.shape, np.nan)
    with pytest.raises(AttributeError, match="once the layer is in a model"):
        fastnn.Dense(3, 2).W = np.zeros((3, 2))


def test_loss_and_grad_gives_the_evaluation_loss_without_dropout():
    X, y = blobs()
    dropped = fastnn.Sequential(fastnn.Dense(4, 16, activation="relu"), fastnn.Dropout(0.5), fastnn.Dense(16, 3),
                                seed=1)
    plain = fastnn.Sequential(fastnn.Dense(4, 16, activation="relu"), fastnn.Dense(16, 3), seed=1)
    loss, grads = dropped.loss_and_grad(X, y, training=False)
    loss_plain, grads_plain = plain.loss_and_grad(X, y)
    assert loss == loss_plain == pytest.approx(dropped.evaluate(X, y)["loss"], rel=1e-6)
    for g, h in zip(grads, grads_plain):
        np.testing.assert_array_equal(g, h)
    assert dropped.loss_and_grad(X, y)[0] != loss  # training mode drops (step 0's masks)
    with pytest.raises(TypeError, match="training must be True or False"):
        dropped.loss_and_grad(X, y, training="no")


@pytest.mark.parametrize("seed", [2**63, 2**63 + 1, 2**64 + 7, [1, 2, 3]])
def test_any_seed_numpy_takes_trains(seed):
    X, y = blobs()
    model = fastnn.Sequential(fastnn.Dense(4, 8, activation="relu"), fastnn.Dropout(0.3), fastnn.Dense(8, 3),
                              seed=seed)
    model.fit(X, y, epochs=2)
    assert np.isfinite(model.history["loss"]).all()
    again = fastnn.Sequential(fastnn.Dense(4, 8, activation="relu"), fastnn.Dropout(0.3), fastnn.Dense(8, 3),
                              seed=seed)
    again.fit(X, y, epochs=2)
    assert again.history == model.history  # the seed keys everything, masks included


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("0", TypeError)])
def test_a_seed_numpy_refuses_is_refused_where_it_is_given(seed, error):
    with pytest.raises(error, match="seed must be None or an integer >= 0"):
        fastnn.Sequential(fastnn.Dense(4, 3), seed=seed)


def test_optimizer_settings_that_contradict_each_other_are_refused_on_assignment():
    opt = fastnn.SGD(lr=0.1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        opt.nesterov = True
    opt = fastnn.SGD(lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="momentum 0 with nesterov=True"):
        opt.momentum = 0.0
    opt.nesterov = False
    opt.momentum = 0.0  # in this order it is fine


def test_a_refused_state_dict_leaves_the_optimizer_as_it_was():
    opt = fastnn.Adam(lr=0.01)
    X, y = blobs()
    net().train_step(X, y, optimizer=opt)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"betas\[1\] must lie in \[0, 1\)"):
        opt.load_state_dict({**before, "lr": 0.5, "betas": (0.9, 1.5), "step_count": 7})
    after = opt.state_dict()
    assert after.keys() == before.keys() and opt.lr == 0.01 and opt.step_count == 1
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_layer_weights_beyond_the_dtype_are_refused():
    model = net()
    with pytest.raises(ValueError, match="must be finite in float32"):
        model.layers[0].W = np.full(model.layers[0].W.shape, 1e39)
    assert np.isfinite(model.parameters()[0]).all()


def test_a_numpy_array_seed_works_as_numpy_takes_it():
    X, y = blobs()
    a = fastnn.Sequential(fastnn.Dense(4, 3), seed=np.array([1, 2]))
    b = fastnn.Sequential(fastnn.Dense(4, 3), seed=[1, 2])
    a.fit(X, y, epochs=1)
    b.fit(X, y, epochs=1)
    np.testing.assert_array_equal(a.parameters()[0], b.parameters()[0])
    with pytest.raises(TypeError, match="seed must be None or an integer"):
        fastnn.Sequential(fastnn.Dense(4, 3), seed=np.array([1.5]))


def test_a_version_1_checkpoint_with_early_stopping_still_resumes(tmp_path):
    from fastnn import checkpoint
    X, y = blobs()
    args = dict(epochs=4, batch_size=16, validation_split=0.25, checkpoint_dir=tmp_path,
                early_stopping=fastnn.EarlyStopping(patience=10))
    model = net()
    model.fit(X, y, **{**args, "epochs": 2})
    with np.load(tmp_path / "checkpoint.npz") as f:  # as version 1 wrote it: no early stopping, no run state
        arrays = {k: f[k] for k in f.files if k != "early_stopping.best_params"}
    meta = json.loads(str(arrays["meta"]))
    meta["settings"] = {k: v for k, v in meta["settings"].items() if k not in ("early_stopping", "epochs")}
    meta["settings"]["epochs"] = 4
    meta.update(version=1, early_stopping=None, run={})
    np.savez(tmp_path / "checkpoint.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    resumed = net()
    resumed.fit(X, y, resume=True, **args)
    assert len(resumed.history["loss"]) == 4 and checkpoint.VERSION == 2
