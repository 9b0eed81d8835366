"""Whole training steps: kernels vs reference, a hand-worked example, and real learning."""
from collections import defaultdict

import numpy as np
import pytest

import fastnn
from fastnn.testing import finite_difference, reference_train, targets

OPTIMIZERS = {
    "sgd": lambda: fastnn.SGD(lr=0.1),
    "sgd-momentum-wd": lambda: fastnn.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda: fastnn.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: fastnn.Adam(lr=1e-2, weight_decay=1e-2),
    "adamw": lambda: fastnn.AdamW(lr=1e-2),
    "rmsprop": lambda: fastnn.RMSprop(lr=1e-2),
    "rmsprop-every-switch": lambda: fastnn.RMSprop(lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-2),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "binary_cross_entropy"])
def test_five_training_steps_match_the_reference(name, loss, dtype, rng):
    make_opt = OPTIMIZERS[name]
    acts = ["relu", "gelu", "tanh"]
    model = fastnn.Sequential(fastnn.Dense(12, 16, activation="relu"), fastnn.Dense(16, 8, activation="gelu"),
                              fastnn.Dense(8, 3, activation="tanh"), seed=3, dtype=dtype)
    batches = []
    for n in (8, 8, 5):  # includes a partial batch
        X = rng.standard_normal((n, 12)).astype(dtype)
        y = targets(rng, loss, n, 3, dtype)
        batches.append((X, y))
    start = [p.copy() for p in model.parameters()]
    opt = make_opt()
    losses = [model.train_step(*batches[t % 3], loss=loss, optimizer=opt) for t in range(5)]
    ref_losses, ref_params = reference_train(start, acts, batches, loss, opt.rule.name, opt.settings(), 5)
    loose = {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(losses, ref_losses, **loose)
    for p, r in zip(model.parameters(), ref_params):
        np.testing.assert_allclose(p, r, **loose)
        assert p.dtype == dtype


def tiny_model(W, b, dtype=np.float64):
    model = fastnn.Sequential(fastnn.Dense(2, 2), seed=0, dtype=dtype)
    model.parameters()[0][...] = W
    model.parameters()[1][...] = b
    return model


def test_hand_worked_example():
    # One linear layer 2 -> 2, softmax cross-entropy, x = [1, 2], label 1.
    W = np.array([[0.1, 0.2], [0.3, 0.4]])
    x = np.array([[1.0, 2.0]])
    y = np.array([1])
    model = tiny_model(W, np.zeros(2))
    # z = x @ W = [1*0.1 + 2*0.3, 1*0.2 + 2*0.4] = [0.7, 1.0]
    np.testing.assert_allclose(model.predict(x), [[0.7, 1.0]], rtol=1e-15)
    # softmax: e^0.7 = 2.0137527, e^1 = 2.7182818, sum 4.7320345 -> p = [0.4255575, 0.5744425]
    np.testing.assert_allclose(model.predict_proba(x), [[0.42555748, 0.57444252]], rtol=1e-7)
    # loss = -log p[1] = log(4.7320345) - 1.0 = 0.5543552
    loss, (dW, db) = model.loss_and_grad(x, y)
    assert loss == pytest.approx(0.55435524, rel=1e-7)
    # dz = p - onehot = [0.4255575, -0.4255575]; dW = x.T @ dz; db = dz
    np.testing.assert_allclose(db, [0.42555748, -0.42555748], rtol=1e-7)
    np.testing.assert_allclose(dW, [[0.42555748, -0.42555748], [0.85111496, -0.85111496]], rtol=1e-7)
    # the loss is a mean over rows: the same row twice gives the same loss and gradient
    loss2, (dW2, _) = model.loss_and_grad(np.vstack([x, x]), np.array([1, 1]))
    assert loss2 == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(dW2, dW, rtol=1e-14)

    # SGD lr 0.1: W - 0.1 dW
    model.train_step(x, y, optimizer=fastnn.SGD(lr=0.1))
    np.testing.assert_allclose(model.parameters()[0], [[0.05744425, 0.24255575], [0.21488850, 0.48511150]],
                               rtol=1e-7)
    # SGD, momentum 0.9 and weight decay 0.5, two steps from W:
    #   g1 = dW + 0.5 W = [[0.47555748, -0.32555748], [1.00111496, -0.65111496]]; v1 = g1; W1 = W - 0.1 v1
    #   = [[0.05244425, 0.23255575], [0.19988850, 0.46511150]]
    model = tiny_model(W, np.zeros(2))
    opt = fastnn.SGD(lr=0.1, momentum=0.9, weight_decay=0.5)
    model.train_step(x, y, optimizer=opt)
    np.testing.assert_allclose(model.parameters()[0], [[0.05244425, 0.23255575], [0.19988850, 0.46511150]],
                               rtol=1e-7)
    np.testing.assert_allclose(opt.state["momentum_buffer"][0][:4], [0.47555748, -0.32555748, 1.00111496, -0.65111496],
                               rtol=1e-7)

    # Adam, first step: m_hat = g, v_hat = g^2, so p <- p - lr * g / (|g| + eps): a step of lr against the sign
    model = tiny_model(W, np.zeros(2))
    model.train_step(x, y, optimizer=fastnn.Adam(lr=0.1))
    np.testing.assert_allclose(model.parameters()[0], [[0.0, 0.3], [0.2, 0.5]], atol=1e-8)
    # eps goes after the square root: with eps = 0.42555748 (= |g| for row 0), row 0 moves half as far
    model = tiny_model(W, np.zeros(2))
    model.train_step(x, y, optimizer=fastnn.Adam(lr=0.1, eps=0.42555748))
    np.testing.assert_allclose(model.parameters()[0][0], [0.05, 0.25], rtol=1e-7)
    # AdamW decays first: p <- p (1 - lr wd), here 1 - 0.1*0.5 = 0.95, then the Adam step
    model = tiny_model(W, np.zeros(2))
    model.train_step(x, y, optimizer=fastnn.AdamW(lr=0.1, weight_decay=0.5))
    np.testing.assert_allclose(model.parameters()[0], [[0.095 - 0.1, 0.19 + 0.1], [0.285 - 0.1, 0.38 + 0.1]],
                               atol=1e-8)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_xor_is_learned_with_one_hidden_layer(act, seed):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    # 16 units: with 8, one relu seed in ten loses units to the dead zone and stalls at 75%
    model = fastnn.Sequential(fastnn.Dense(2, 16, activation=act), fastnn.Dense(16, 2), seed=seed)
    model.fit(X, y, optimizer=fastnn.Adam(lr=0.05), epochs=300, batch_size=4)
    assert model.evaluate(X, y)["accuracy"] == 1.0
    np.testing.assert_array_equal(model.predict(X).argmax(axis=1), y)


def test_sin_is_fitted_with_one_hidden_layer():
    x = np.linspace(-np.pi, np.pi, 256).reshape(-1, 1)
    y = np.sin(x)
    model = fastnn.Sequential(fastnn.Dense(1, 32, activation="tanh"), fastnn.Dense(32, 1), seed=0, dtype=np.float64)
    model.fit(x, y, loss="mse", optimizer=fastnn.Adam(lr=0.01), epochs=600, batch_size=32)
    assert model.evaluate(x, y, loss="mse")["loss"] < 1e-3
    assert np.max(np.abs(model.predict(x) - y)) < 0.1


def test_fit_lowers_the_loss_and_trains_the_last_partial_batch(rng):
    X = rng.standard_normal((50, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = fastnn.Sequential(fastnn.Dense(4, 8, activation="relu"), fastnn.Dense(8, 2), seed=0)
    opt = fastnn.SGD(lr=0.1)
    history = model.fit(X, y, optimizer=opt, epochs=5, batch_size=16, validation_data=(X, y))
    assert set(history) == {"loss", "lr", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 5 for v in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert opt.step_count == 5 * 4  # 16 + 16 + 16 + 2: the partial batch is a step too


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "binary_cross_entropy"])
def test_fit_is_the_same_sequence_of_train_steps(shuffle, loss, rng):
    def make():
        return fastnn.Sequential(fastnn.Dense(6, 9, activation="gelu"), fastnn.Dense(9, 3), seed=4)
    X = rng.standard_normal((37, 6)).astype(np.float32)
    y = targets(rng, loss, 37, 3, np.float32)
    fitted, stepped = make(), make()
    opt_a, opt_b = fastnn.Adam(lr=1e-2), fastnn.Adam(lr=1e-2)
    history = fitted.fit(X, y, loss=loss, optimizer=opt_a, epochs=3, batch_size=8, shuffle=shuffle)
    order_rng = stepped.rng  # fit shuffles with the model's generator, after initialisation
    losses = []
    for epoch in range(3):
        order = order_rng.permutation(37) if shuffle else np.arange(37)
        total = 0.0
        for start in range(0, 37, 8):
            idx = order[start:start + 8]
            total += stepped.train_step(X[idx], y[idx], loss=loss, optimizer=opt_b) * len(idx)
        losses.append(total / 37)
    assert opt_a.step_count == opt_b.step_count == 15
    for p, q in zip(fitted.parameters(), stepped.parameters()):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-12)


def test_validation_split_holds_out_random_rows_and_records_metrics(rng):
    X = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = (X[:, 0] > 50).astype(np.int64)
    model = fastnn.Sequential(fastnn.Dense(1, 4, activation="tanh"), fastnn.Dense(4, 2), seed=0)
    seen = []
    history = model.fit(X, y, optimizer=fastnn.Adam(), epochs=2, batch_size=10, validation_split=0.2,
                        callbacks=[lambda epoch, h: seen.append((epoch, len(h["val_loss"]))) or False])
    assert set(history) == {"loss", "lr", "accuracy", "val_loss", "val_accuracy"} and seen == [(1, 1), (2, 2)]
    # the rows fit held out: the plan's split, and the rows the recorded val_loss was computed on
    from fastnn import training
    probe = fastnn.Sequential(fastnn.Dense(1, 4, activation="tanh"), fastnn.Dense(4, 2), seed=0)
    plan = training.plan(probe, X, y, loss="softmax_cross_entropy", optimizer=fastnn.Adam(), epochs=1,
                         batch_size=10, validation_split=0.2)
    held, kept = plan.validation[0][:, 0].astype(int), plan.X[:, 0].astype(int)
    assert len(held) == 20 and sorted(np.concatenate([held, kept]).tolist()) == list(range(100))
    assert not np.array_equal(np.sort(held), np.arange(80, 100))  # not simply the last 20 rows
    scores = model.evaluate(X[held], y[held])
    assert history["val_loss"][-1] == pytest.approx(scores["loss"], rel=1e-6)
    assert history["val_accuracy"][-1] == scores["accuracy"]
    others = np.setdiff1d(np.arange(100), held)[:20]
    assert model.evaluate(X[others], y[others])["loss"] != pytest.approx(scores["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="validation_split must be a number in"):
        model.fit(X, y, optimizer=fastnn.Adam(), validation_split=1.5)
    with pytest.raises(ValueError, match="not both"):
        model.fit(X, y, optimizer=fastnn.Adam(), validation_split=0.1, validation_data=(X, y))


def test_a_callback_returning_true_stops_training():
    X = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    history = model.fit(X, np.zeros(20, np.int64), optimizer=fastnn.SGD(lr=0.1), epochs=10,
                        callbacks=[lambda epoch, h: epoch == 3])
    assert len(history["loss"]) == 3


def test_early_stopping_restores_the_best_epoch():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 10)).astype(np.float32)
    y = rng.integers(0, 2, 200)  # noise: validation loss soon rises as the model overfits
    model = fastnn.Sequential(fastnn.Dense(10, 64, activation="relu"), fastnn.Dense(64, 2), seed=0)
    snapshots = []
    stopper = fastnn.EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    history = model.fit(X, y, optimizer=fastnn.Adam(lr=0.01), epochs=100, batch_size=16, validation_split=0.3,
                        early_stopping=stopper, callbacks=[lambda e, h: snapshots.append(model._flat_params.copy())])
    assert stopper.stopped_epoch == len(history["loss"]) < 100
    best = int(np.argmin(history["val_loss"]))
    assert stopper.best_epoch == best + 1
    np.testing.assert_array_equal(model._flat_params, snapshots[best])
    with pytest.raises(ValueError, match="which this fit does not record"):
        model.fit(X, y, optimizer=fastnn.Adam(), epochs=2, early_stopping=fastnn.EarlyStopping())


def dropout_model(seed=0, dtype=np.float32):
    return fastnn.Sequential(fastnn.Dense(6, 12, activation="tanh"), fastnn.Dropout(0.3),
                             fastnn.Dense(12, 8, activation="sigmoid"), fastnn.Dropout(0.5), fastnn.Dense(8, 3),
                             seed=seed, dtype=dtype)


def test_dropout_is_off_in_predict_and_on_in_training(rng):
    model = dropout_model()
    X = rng.standard_normal((50, 6)).astype(np.float32)
    plain = fastnn.Sequential(fastnn.Dense(6, 12, activation="tanh"), fastnn.Dense(12, 8, activation="sigmoid"),
                              fastnn.Dense(8, 3), seed=0)
    for p, q in zip(plain.parameters(), model.parameters()):
        p[...] = q
    np.testing.assert_array_equal(model.predict(X), plain.predict(X))
    y = rng.integers(0, 3, 50)
    assert model.loss_and_grad(X, y)[0] != plain.loss_and_grad(X, y)[0]
    assert repr(model).splitlines()[2] == "  (1): Dropout(p_drop=0.3)"


def test_dropout_gradients_match_finite_differences(rng):
    # loss_and_grad draws the masks of step 0, so the loss is a fixed function of the parameters
    model = dropout_model(dtype=np.float64)
    X, y = rng.standard_normal((10, 6)), rng.integers(0, 3, 10)
    _, grads = model.loss_and_grad(X, y)
    for p, g in zip(model.parameters(), grads):
        original = p.copy()

        def f(v, p=p):
            p[...] = v
            return model.loss_and_grad(X, y)[0]

        numeric = finite_difference(f, original)
        p[...] = original
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7)


def test_dropout_training_paths_agree_and_files_round_trip(rng, tmp_path):
    X, y = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    from fastnn.kernels._compose import raw_rows_of
    from fastnn.profile import timed_step

    fitted, stepped, by_kernel = dropout_model(), dropout_model(), dropout_model()
    oa, ob, oc = fastnn.Adam(lr=0.01), fastnn.Adam(lr=0.01), fastnn.Adam(lr=0.01)
    fitted.fit(X, y, optimizer=oa, epochs=2, batch_size=8, shuffle=False)
    step, groups = timed_step(by_kernel, "softmax_cross_entropy", oc, defaultdict(lambda: [0, 0.0, 0, 0]))
    ws = by_kernel.engine.workspace(8)
    for t in range(10):
        rows = slice((t % 5) * 8, (t % 5) * 8 + 8)
        stepped.train_step(X[rows], y[rows], optimizer=ob)
        # the same step run as Python, kernel by kernel (what fastnn profile times)
        net, objective, opt, drivers = groups
        step(net, ws, objective, opt, drivers, X[rows], raw_rows_of(y[rows]), by_kernel.engine.ones[:8], 0.01)
    for p, q, r in zip(fitted.parameters(), stepped.parameters(), by_kernel.parameters()):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(p, r)
    fitted.save(tmp_path / "d.npz")
    same = fastnn.load(tmp_path / "d.npz")
    assert repr(same) == repr(fitted)
    np.testing.assert_array_equal(same.predict(X), fitted.predict(X))


@pytest.mark.parametrize("layers, message", [
    (lambda: [fastnn.Dropout(0.2), fastnn.Dense(3, 2)], "between two layers"),
    (lambda: [fastnn.Dense(3, 2), fastnn.Dropout(0.2)], "between two layers"),
    (lambda: [fastnn.Dense(3, 4), fastnn.Dropout(0.2), fastnn.Dropout(0.1), fastnn.Dense(4, 2)], "between two layers"),
])
def test_dropout_placement_errors(layers, message):
    with pytest.raises(ValueError, match=message):
        fastnn.Sequential(*layers())
    with pytest.raises(ValueError, match=r"p_drop must be a probability in \[0, 1\)"):
        fastnn.Dropout(1.0)


def test_changing_an_optimizer_switch_between_steps_takes_effect(rng):
    # momentum -> Nesterov momentum picks another compiled update kernel
    X, y = rng.standard_normal((16, 5)).astype(np.float32), rng.integers(0, 3, 16)

    def make():
        return fastnn.Sequential(fastnn.Dense(5, 8, activation="tanh"), fastnn.Dense(8, 3), seed=2)

    switched, fresh = make(), make()
    opt_a, opt_b = fastnn.SGD(lr=0.1, momentum=0.9), fastnn.SGD(lr=0.1, momentum=0.9)
    for model, opt in ((switched, opt_a), (fresh, opt_b)):
        model.train_step(X, y, optimizer=opt)
    opt_a.nesterov = True
    switched.train_step(X, y, optimizer=opt_a)
    state = opt_b.state_dict()
    again = fastnn.SGD(lr=0.1, momentum=0.9, nesterov=True)
    again.load_state_dict({**state, "nesterov": True})
    fresh.train_step(X, y, optimizer=again)
    for p, q in zip(switched.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(p, q)
