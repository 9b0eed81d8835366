"""Layer kinds behind one interface: LayerNorm and residual blocks checked against the NumPy
twins, finite differences and PyTorch's gradients, through training, files and threads; the
layer table read by field name; calls checked when the drivers compile."""
import pathlib
import threading

import numba
import numpy as np
import pytest

import fastnn
from fastnn import Dense, Dropout, LayerNorm, Residual, Sequential
from fastnn import reference as R
from fastnn.kernels import _compose, kinds, layernorm, train
from fastnn.kernels.kind import INPUT, NO_SKIP
from fastnn.testing import assert_close, finite_difference, reference_graph_loss_and_grad, reference_train

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "layer_values.npz"
DTYPES = (np.float32, np.float64)


def networks(dtype=np.float64, seed=0):
    """Every way layers meet: a skip from the input, nested blocks, a block last, LayerNorm first."""
    return {
        "mixed": Sequential(Dense(5, 8, activation="relu"), LayerNorm(8),
                            Residual(Dense(8, 8, activation="gelu"), LayerNorm(8, eps=1e-3), Dense(8, 8)),
                            Dense(8, 3), seed=seed, dtype=dtype),
        "from the input": Sequential(Residual(Dense(5, 5, activation="tanh")), Dense(5, 3), seed=seed, dtype=dtype),
        "nested": Sequential(Dense(5, 6, activation="silu"),
                             Residual(Residual(Dense(6, 6, activation="tanh"), LayerNorm(6)), Dense(6, 6)),
                             Dense(6, 3), seed=seed, dtype=dtype),
        "block last": Sequential(LayerNorm(5), Dense(5, 3, activation="elu"), Residual(Dense(3, 3)), seed=seed,
                                 dtype=dtype),
    }


def jitter(model, rng):
    """Move every parameter off its start (LayerNorm's weight 1, bias 0) so that each counts."""
    for p in model.parameters():
        p[...] += (rng.standard_normal(p.shape) * 0.3).astype(p.dtype)


# -- LayerNorm's kernels and twin -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, o", [(1, 1), (7, 3), (64, 16), (5, 129)])
def test_layernorm_forward_and_layernorm_backward_match_the_reference(dtype, n, o):
    rng = np.random.default_rng(n * 100 + o)
    x = (rng.standard_normal((n, o)) * 3 + 2).astype(dtype)
    weight, bias = rng.standard_normal(o).astype(dtype), rng.standard_normal(o).astype(dtype)
    dout = rng.standard_normal((n, o)).astype(dtype)
    assert_close(layernorm.layernorm_forward(x, weight, bias, 1e-4), R.layernorm_forward(x, weight, bias, 1e-4),
                 scale=o, name="out")
    got, want = layernorm.layernorm_backward(dout, x, weight, 1e-4), R.layernorm_backward(dout, x, weight, 1e-4)
    for name, a, b in zip(("dweight", "dbias", "dx"), got, want):
        assert_close(a, b, scale=n * o, name=name)
    assert layernorm.layernorm_backward(dout, x, weight, need_dx=False)[2] is None


def test_layernorm_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    x, weight, bias = rng.standard_normal((4, 6)) * 2, rng.standard_normal(6), rng.standard_normal(6)
    probe = rng.standard_normal((4, 6))  # the loss sum(probe * out): dout = probe
    dweight, dbias, dx = R.layernorm_backward(probe, x, weight, 1e-3)
    loss = lambda x_, w_, b_: float(np.sum(probe * R.layernorm_forward(x_, w_, b_, 1e-3)))  # noqa: E731
    np.testing.assert_allclose(dx, finite_difference(lambda v: loss(v, weight, bias), x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dweight, finite_difference(lambda v: loss(x, v, bias), weight), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbias, finite_difference(lambda v: loss(x, weight, v), bias), rtol=1e-6, atol=1e-8)


def test_layernorm_kernel_wrappers_refuse_bad_arguments():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="eps"):
        layernorm.layernorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32), eps=0.0)
    with pytest.raises((TypeError, ValueError), match="weight"):
        layernorm.layernorm_forward(x, np.ones(5, np.float32), np.zeros(4, np.float32))
    with pytest.raises((TypeError, ValueError), match="weight"):
        layernorm.layernorm_forward(x, np.ones(4, np.float64), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="overlap"):
        layernorm.layernorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32), out=x)


# -- whole networks: reference, finite differences, kernels, PyTorch --------------------------

@pytest.mark.parametrize("name", list(networks()))
def test_reference_network_gradients_match_finite_differences(name):
    model = networks()[name]
    rng = np.random.default_rng(2)
    jitter(model, rng)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    params = [p.copy() for p in model.parameters()]
    _, grads = reference_graph_loss_and_grad(model.nodes, params, X, y, "softmax_cross_entropy")
    for k, p in enumerate(params):
        def f(v, k=k):
            trial = [q if j != k else v for j, q in enumerate(params)]
            return reference_graph_loss_and_grad(model.nodes, trial, X, y, "softmax_cross_entropy")[0]
        np.testing.assert_allclose(grads[k], finite_difference(f, p), rtol=1e-5, atol=1e-8, err_msg=f"{name} {k}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(networks()))
def test_kernels_match_the_reference_network(name, dtype):
    model = networks(dtype)[name]
    rng = np.random.default_rng(3)
    jitter(model, rng)
    X, y = rng.standard_normal((40, 5)).astype(dtype), rng.integers(0, 3, 40)
    loss, grads = model.loss_and_grad(X, y)
    want, want_grads = reference_graph_loss_and_grad(model.nodes, model.parameters(), X, y, "softmax_cross_entropy")
    assert loss == pytest.approx(want, rel=1e-5 if dtype == np.float32 else 1e-12)
    for k, (g, w) in enumerate(zip(grads, want_grads)):
        assert_close(g, w.astype(dtype), scale=40 * np.abs(w).max(), name=f"{name} grad {k}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_network_of_every_kind_matches_pytorch(dtype):
    # tests/fixtures/make_layer_values.py wrote PyTorch's logits, loss and gradients
    values = np.load(FIXTURE)
    model = Sequential(Dense(5, 16, activation="relu"), LayerNorm(16),
                       Residual(Dense(16, 16, activation="gelu"), LayerNorm(16, eps=1e-3), Dense(16, 16)),
                       Residual(Dense(16, 16, activation="tanh")), Dense(16, 3), seed=0, dtype=dtype)
    for k, p in enumerate(model.parameters()):
        p[...] = values[f"param_{k}"]
    key = np.dtype(dtype).name
    X, y = values["X"].astype(dtype), values["y"]
    assert_close(model.engine.predict(X, 64), values[f"{key}.logits"], scale=16, name="logits")
    loss, grads = model.loss_and_grad(X, y)
    assert loss == pytest.approx(float(values[f"{key}.loss"]), rel=1e-5 if dtype == np.float32 else 1e-12)
    for k, g in enumerate(grads):
        torch_grad = values[f"{key}.grad_{k}"]
        assert_close(g, torch_grad, scale=32 * max(1.0, float(np.abs(torch_grad).max())), name=f"grad {k}")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps_match_the_reference(optimizer):
    model = networks(np.float64)["mixed"]
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((16, 5)), rng.integers(0, 3, 16)) for _ in range(3)]
    opt = fastnn.nn.optim.from_name(optimizer, lr=0.05)
    start = [p.copy() for p in model.parameters()]
    losses = [model.train_step(X, y, optimizer=opt) for X, y in batches * 2]
    want_losses, want = reference_train(start, list(model.nodes), batches, "softmax_cross_entropy", optimizer,
                                        opt.settings(), 6)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-10)
    for p, w in zip(model.parameters(), want):
        np.testing.assert_allclose(p, w, rtol=1e-9, atol=1e-12)


# -- the graph and the layer table -----------------------------------------------------------

def test_the_graph_says_which_layer_feeds_which():
    model = networks()["nested"]  # Dense, [[Dense, LayerNorm] + skip, Dense] + skip, Dense
    got = [(type(n.layer).__name__, n.src, n.skip) for n in model.nodes]
    assert got == [("Dense", INPUT, NO_SKIP), ("Dense", 0, NO_SKIP), ("LayerNorm", 1, NO_SKIP),
                   ("Residual", 2, 0), ("Dense", 3, NO_SKIP), ("Residual", 4, 0), ("Dense", 5, NO_SKIP)]
    table = model.engine.net.layers
    assert table.dtype == train.LAYER
    assert table["skip"].tolist() == [NO_SKIP, NO_SKIP, NO_SKIP, 0, NO_SKIP, 0, NO_SKIP]
    assert table["z_width"].tolist() == [6, 0, 0, 0, 0, 0, 0]  # silu keeps its pre-activation
    assert table["setting"].tolist() == [0, 0, 1e-5, 0, 0, 0, 0]  # LayerNorm's eps, an argument
    assert table["penalised"].tolist() == [1, 1, 0, 0, 1, 0, 1]  # L2 covers Dense weights only


def test_the_layer_table_is_read_by_field_name():
    # the same table with its fields in another order: the drivers (compiled and as Python)
    # read each field by its name, so the outputs are the same
    model = networks()["mixed"]
    X = np.random.default_rng(5).standard_normal((9, 5))
    want = model.engine.predict(X, 64)
    net = model.engine.net
    shuffled = np.dtype([(name, net.layers.dtype.fields[name][0]) for name in reversed(net.layers.dtype.names)])
    table = np.zeros(len(net.layers), shuffled)
    for name in shuffled.names:
        table[name] = net.layers[name]
    ws = model.engine.inference_workspace(9)
    train.forward_pass(net._replace(layers=table), ws, X, False, 0)
    np.testing.assert_array_equal(model.engine.output(ws, 9), want)
    python = model.engine.net._replace(layers=table.astype(
        np.dtype([(n, object if n in ("forward", "backward") else t) for n, (t, _) in shuffled.fields.items()])))
    assert train.layer_views(python, ws, 5, 9).skip == 1  # the join's skip: the block's input, layer 1


# -- calls checked when they compile ---------------------------------------------------------

def test_a_call_with_an_argument_too_few_fails_when_the_driver_compiles():
    from numba.core.errors import TypingError

    @numba.njit
    def driver(address, x, W, b, out):
        _compose.call("layer_forward", address, (x, W, b, 0.0, out))  # the forward kernel takes z too

    m, v = numba.types.Array(numba.float32, 2, "C"), numba.types.Array(numba.float32, 1, "C")
    with pytest.raises(TypingError, match="layer_forward.*5 arguments.*takes 6"):
        driver.compile((numba.int64, m, m, v, m))


def test_a_call_with_another_dtype_or_an_unknown_slot_fails_when_it_compiles():
    from numba.core.errors import TypingError

    @numba.njit
    def mixed(address, x, W, b, out, z):
        _compose.call("layer_forward", address, (x, W, b, 0.0, out, z))

    f4, f8 = (numba.types.Array(t, 2, "C") for t in (numba.float32, numba.float64))
    with pytest.raises(TypingError, match="layer_forward"):
        mixed.compile((numba.int64, f4, f4, numba.types.Array(numba.float32, 1, "C"), f4, f8))

    @numba.njit
    def unknown(address, x):
        _compose.call("no_such_slot", address, (x,))
    with pytest.raises(TypingError, match="no slot 'no_such_slot'"):
        unknown.compile((numba.int64, f4))


def test_the_engine_refuses_an_address_compiled_for_another_signature():
    @numba.njit(no_cfunc_wrapper=True)
    def returns_a_number(x, W, b, setting, out, z):  # a forward kernel must return nothing
        return 1.0
    with pytest.raises(TypeError, match="cannot fill the 'layer_forward' slot"):
        _compose.slot_address("layer_forward", returns_a_number, np.float32)
    float64_kernel = _compose.slot_address("layer_forward", LayerNorm(3).kernels()[0], np.float64)
    with pytest.raises(TypeError, match="compiled as .*float64.* but the 'layer_forward' slot is .*float32"):
        _compose.check_slot("layer_forward", float64_kernel, np.float32)
    assert _compose.check_slot("layer_forward", float64_kernel, np.float64) == float64_kernel


def test_a_new_combination_of_known_kinds_compiles_nothing():
    first = Sequential(Dense(4, 8, activation="relu"), LayerNorm(8), Residual(Dense(8, 8, activation="relu"),
                       Dense(8, 8)), Dense(8, 2))
    X, y = np.ones((8, 4), np.float32), np.zeros(8, np.int64)
    first.train_step(X, y, optimizer=fastnn.SGD(lr=0.1))
    other = Sequential(Dense(4, 6, activation="relu"), Residual(Dense(6, 6, activation="relu"), LayerNorm(6),
                       Residual(Dense(6, 6))), LayerNorm(6), Dense(6, 2), seed=3)
    other.engine.step_fn("softmax_cross_entropy", fastnn.SGD(lr=0.1), quiet=True)
    assert other.engine.last_build["compiled"] == 0


# -- the API: fit, files, checkpoints, threads, errors ----------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_save_and_load_keep_every_kind(tmp_path, dtype):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((300, 5)).astype(dtype)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    model = Sequential(Dense(5, 16, activation="relu"), LayerNorm(16), Dropout(0.1),
                       Residual(Dense(16, 16, activation="relu"), Dropout(0.2), Dense(16, 16)), Dense(16, 3),
                       seed=1, dtype=dtype)
    history = model.fit(X, y, epochs=15, batch_size=32, optimizer=fastnn.Adam(lr=1e-2))
    assert history["loss"][-1] < 0.5 * history["loss"][0] and model.evaluate(X, y)["accuracy"] > 0.9
    model.save(tmp_path / "m.npz")
    back = fastnn.load(tmp_path / "m.npz")
    assert back.architecture() == model.architecture() and back.dtype == model.dtype
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    assert [type(layer).__name__ for layer in back.layers] == ["Dense", "LayerNorm", "Dropout", "Residual", "Dense"]
    np.testing.assert_array_equal(back.layers[1].weight, model.layers[1].weight)


def test_a_model_of_dense_layers_is_still_written_as_version_3(tmp_path):
    import json
    import zipfile
    for layers, version in (((Dense(3, 2),), 3), ((LayerNorm(3), Dense(3, 2)), 4)):
        Sequential(*layers).save(tmp_path / "m.npz")
        with zipfile.ZipFile(tmp_path / "m.npz") as z:
            text = np.load(z.open("architecture.npy")).item()
        assert json.loads(text)["version"] == version


def test_damaged_architectures_are_refused_by_name(tmp_path):
    import json
    good = Sequential(Dense(3, 4), Residual(Dense(4, 4)), Dense(4, 2))
    good.save(tmp_path / "good.npz")
    arch = good.architecture()
    nested = {"kind": "residual", "layers": [{"in_features": 4, "out_features": 4, "activation": None}]}
    for _ in range(40):
        nested = {"kind": "residual", "layers": [nested]}
    cases = {
        "unknown layer kind 'conv'": {"kind": "conv", "features": 4},
        "deeper than": nested,
        "adds its input to its output": {"kind": "residual", "layers": [{"in_features": 4, "out_features": 5,
                                                                          "activation": None}]},
        "features": {"kind": "layernorm", "features": -1, "eps": 1e-5},
        "eps": {"kind": "layernorm", "features": 4, "eps": "tiny"},
        "unexpected keyword": {"kind": "layernorm", "features": 4, "eps": 1e-5, "extra": 1},
    }
    for message, spec in cases.items():
        damaged = dict(arch, layers=[arch["layers"][0], spec, arch["layers"][2]])
        with np.load(tmp_path / "good.npz") as z:
            members = {k: z[k] for k in z.files}
        members["architecture"] = np.array(json.dumps({"format": "fastnn.Sequential", "version": 4, **damaged,
                                                       "seed": 0, "loss": None}))
        np.savez(tmp_path / "bad.npz", **members)
        with pytest.raises(ValueError, match=f"bad.npz.*{message}"):
            fastnn.load(tmp_path / "bad.npz")


def test_resume_is_bit_identical_with_every_kind(tmp_path):
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((120, 5)).astype(np.float32), rng.integers(0, 3, 120)

    def network():
        return Sequential(Dense(5, 8, activation="relu"), LayerNorm(8),
                          Residual(Dense(8, 8, activation="tanh"), Dropout(0.3), Dense(8, 8)), Dense(8, 3), seed=4)

    def settings():  # (a fresh optimizer for each run)
        return dict(optimizer=fastnn.Adam(lr=1e-2), epochs=6, batch_size=16)

    whole = network()
    whole.fit(X, y, **settings())

    class Crash(Exception):
        pass

    def crash(epoch, history):
        if epoch == 2:
            raise Crash
    with pytest.raises(Crash):
        network().fit(X, y, checkpoint_dir=tmp_path, callbacks=[crash], **settings())
    resumed = network()
    resumed.fit(X, y, checkpoint_dir=tmp_path, resume=True, **settings())
    assert resumed.history["loss"] == whole.history["loss"]
    for a, b in zip(resumed.parameters(), whole.parameters()):
        np.testing.assert_array_equal(a, b)


def test_predict_from_many_threads_matches_one_thread():
    import sys
    model = networks(np.float32)["mixed"]
    rng = np.random.default_rng(9)
    jitter(model, rng)
    inputs = [rng.standard_normal((n, 5)).astype(np.float32) for n in (1, 7, 64, 300)]
    want = [model.predict_proba(X) for X in inputs]
    errors = []

    def work(k):
        for _ in range(30):
            i = (k + _) % len(inputs)
            if not np.array_equal(model.predict_proba(inputs[i]), want[i]):
                errors.append(i)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []


def test_bad_layers_are_clear_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        Residual()
    with pytest.raises(ValueError, match="at least one layer"):
        Residual(Dropout(0.1), Dense(3, 3))
    with pytest.raises(ValueError, match="as wide"):
        Residual(Dense(3, 4))
    with pytest.raises(ValueError, match="in_features=5"):
        Residual(Dense(3, 4), Dense(5, 3))
    with pytest.raises(TypeError, match="fastnn layer"):
        Residual(Dense(3, 3), "relu")
    with pytest.raises(ValueError, match="features"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(4, eps=-1.0)
    with pytest.raises(ValueError, match="in_features=3"):
        Sequential(Dense(2, 4), Residual(Dense(3, 3)))
    shared = LayerNorm(3)
    Sequential(Dense(2, 3), Residual(shared))
    with pytest.raises(ValueError, match="already belongs"):
        Sequential(Dense(2, 3), shared)
    with pytest.raises(AttributeError, match="once the layer is in a model"):
        LayerNorm(3).weight = np.ones(3)


def test_parameters_are_named_views_and_summary_shows_blocks():
    model = networks()["mixed"]
    norm, block = model.layers[1], model.layers[2]
    assert np.shares_memory(norm.weight, model.parameters()[2]) and norm.weight.shape == (8,)
    assert (norm.weight == 1).all() and (norm.bias == 0).all()
    norm.weight = np.full(8, 2.0)
    assert (model.parameters()[2] == 2).all()
    assert [layer.W.shape for layer in model.dense_layers] == [(5, 8), (8, 8), (8, 8), (8, 3)]
    assert block.layers[1] is model.nodes[3].layer
    lines = []
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert "LayerNorm(8, eps=1e-05)" in text and "    1: LayerNorm(8, eps=0.001)" in text
    assert f"total parameters: {model.count_params():,}" in text
    assert sum(p.size for p in model.parameters()) == model.count_params()


def test_every_kind_is_registered_and_exported():
    assert {"dense", "layernorm", "residual"} <= set(kinds.KINDS)
    for cls in kinds.KINDS.values():
        assert getattr(fastnn, cls.__name__) is cls and cls.__name__ in fastnn.__all__


def test_a_subclass_of_a_kind_is_that_kind_and_trains():
    class Zeroed(Dense):  # no name of its own: a Dense with another start
        def init_params(self, rng):
            self.W[...] = 0
            self.b[...] = 0
    model = Sequential(Zeroed(3, 4), Dense(4, 2))
    assert (model.layers[0].W == 0).all() and kinds.KINDS["dense"] is Dense
    model.train_step(np.ones((4, 3), np.float32), np.zeros(4, np.int64), optimizer=fastnn.SGD(lr=0.1))
    assert (model.layers[0].b != 0).any()


def test_one_layer_object_in_two_places_is_refused():
    dense = Dense(4, 4, activation="tanh")
    with pytest.raises(ValueError, match="appears twice"):
        Sequential(dense, Residual(dense), Dense(4, 2))
    block = Residual(Dense(4, 4))
    with pytest.raises(ValueError, match="appears twice"):
        Sequential(block, block)
    drop = Dropout(0.1)  # holds no numbers: may serve twice
    Sequential(Dense(4, 4), drop, Dense(4, 4), drop, Dense(4, 2))


def test_layernorm_float32_gradients_hold_for_rows_of_large_mean():
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((64, 16)) * 0.05 + 1e4).astype(np.float32)
    weight = rng.standard_normal(16).astype(np.float32)
    dout = rng.standard_normal((64, 16)).astype(np.float32)
    wide = R.layernorm_backward(dout.astype(np.float64), x.astype(np.float64), weight.astype(np.float64), 1e-5)
    for name, got, want in zip(("dweight", "dbias", "dx"), layernorm.layernorm_backward(dout, x, weight), wide):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max(), err_msg=name)


def test_the_engine_refuses_a_join_of_another_width():
    from fastnn.engine.core import Engine
    block = Residual(Dense(4, 4))
    nodes = kinds.graph([Dense(3, 4), block, Dense(4, 2)])
    params = np.zeros(sum(n.layer.param_count() for n in nodes), np.float32)
    Engine(nodes, params, params.copy(), 0)  # as built
    bad = list(nodes)
    bad[2] = bad[2]._replace(skip=INPUT)  # the network's input is 3 wide, the join 4
    with pytest.raises(ValueError, match="not an earlier layer of its width"):
        Engine(bad, params, params.copy(), 0)
    bad[2] = nodes[2]._replace(skip=2)  # itself
    with pytest.raises(ValueError, match="not an earlier layer"):
        Engine(bad, params, params.copy(), 0)


def test_blocks_nest_only_as_deep_as_a_model_file_holds(tmp_path):
    inner = Dense(3, 3)
    for _ in range(32):
        inner = Residual(inner)
    Sequential(inner).save(tmp_path / "deep.npz")
    assert fastnn.load(tmp_path / "deep.npz").count_params() == 12
    with pytest.raises(ValueError, match="at most 32 deep"):
        Residual(inner)


def test_a_nan_parameter_in_a_block_is_named_by_its_layer(tmp_path):
    model = Sequential(Residual(Dense(3, 3), LayerNorm(3)), LayerNorm(3), Dense(3, 2))
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        members = {k: z[k] for k in z.files}
    members["param_2"] = np.full(3, np.nan, np.float32)  # the inner LayerNorm's weight
    np.savez(tmp_path / "m.npz", **members)
    with pytest.raises(ValueError, match=r"param_2 \(the weight of LayerNorm\(3, eps=1e-05\) in layer 0\)"):
        fastnn.load(tmp_path / "m.npz")


def test_layernorms_of_many_eps_compile_nothing_more():
    # eps is an argument of the kernels, not a constant compiled in: a file of many eps costs
    # no compilation (a hostile one held 10,000 distinct eps)
    X, y = np.ones((4, 3), np.float32), np.zeros(4, np.int64)
    Sequential(LayerNorm(3, eps=1e-5), Dense(3, 2)).train_step(X, y, optimizer=fastnn.SGD(lr=0.1))
    other = Sequential(*(LayerNorm(3, eps=1e-5 * (1 + k)) for k in range(20)), Dense(3, 2))
    other.engine.step_fn("softmax_cross_entropy", fastnn.SGD(lr=0.1), quiet=True)
    assert other.engine.last_build["compiled"] == 0
    assert sorted(set(other.engine.net.layers["setting"][:20])) == [1e-5 * (1 + k) for k in range(20)]


def test_an_eps_the_dtype_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="eps 1e-46 is below the smallest normal float32"):
        Sequential(LayerNorm(3, eps=1e-46), Dense(3, 2))
    Sequential(LayerNorm(3, eps=1e-46), Dense(3, 2), dtype=np.float64)  # float64 holds it
    with pytest.raises(ValueError, match="smallest normal float64"):
        Sequential(LayerNorm(3, eps=1e-320), Dense(3, 2), dtype=np.float64)


def test_layernorm_gradients_hold_for_float32_rows_near_the_largest_float():
    model = Sequential(LayerNorm(5), Dense(5, 3), seed=0)
    rng = np.random.default_rng(11)
    jitter(model, rng)
    X, y = (rng.standard_normal((8, 5)) * 1e38).astype(np.float32), rng.integers(0, 3, 8)
    loss, grads = model.loss_and_grad(X, y, training=False)
    _, want = reference_graph_loss_and_grad(model.nodes, [p.astype(np.float64) for p in model.parameters()],
                                            X.astype(np.float64), y, "softmax_cross_entropy")
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_the_drivers_as_python_step_exactly_as_compiled():
    # fastnn profile runs the drivers' source as Python (``layer_views``, the table read by name
    # in Python) around the compiled kernels: 18 such steps equal 18 compiled ones, joins and
    # dropout included, and every kind's kernels are timed
    from fastnn.tools.profile import profile_step

    def problem():
        return Sequential(Dense(5, 8, activation="relu"), LayerNorm(8), Dropout(0.2),
                          Residual(Dense(8, 8, activation="gelu"), Dense(8, 8)), Dense(8, 3), seed=2)
    rng = np.random.default_rng(12)
    X, y = rng.standard_normal((32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    model = problem()
    result = profile_step(model, X, y, "softmax_cross_entropy", fastnn.Adam(), steps=7, warmup=2)
    timed = {r["kernel"] for r in result["kernels"]}
    assert {"layernorm_forward", "layernorm_backward", "residual_forward", "residual_backward", "join",
            "dropout_forward", "dropout_backward"} <= timed
    plain, opt = problem(), fastnn.Adam()
    for _ in range(18):
        plain.train_step(X, y, optimizer=opt)
    for p, q in zip(model.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p, q)
