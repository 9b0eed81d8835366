"""Property-based fuzzing: kernel wrappers and model entry points on random shapes, dtypes,
strides and values (NaN, +-inf, 1e30). Either the output agrees with the reference (finite
values within tolerance, non-finite values exactly where the reference has them) or a
documented ValueError/TypeError is raised; never a crash. CI also runs this file with
NUMBA_BOUNDSCHECK=1, where any out-of-bounds access would raise IndexError."""
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastnn
import fastnn.kernels as K
import fastnn.reference as R
from fastnn.kernels.optimizers import RULES
from fastnn.testing import ACTIVATIONS, assert_close, product_scale

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
dims = st.integers(1, 7)
dtypes = st.sampled_from([np.float32, np.float64])
SPECIAL = [np.nan, np.inf, -np.inf, float(np.float32(1e30)), float(np.float32(-1e30)), 0.0, -0.0]  # exact in float32


# Ordinary numbers are 0 or at least 2^-10 in size: then no intermediate is subnormal, where the
# kernels (which flush subnormals to zero, as training does) and NumPy part ways by design.
ORDINARY = st.one_of(st.just(0.0), st.tuples(st.floats(2.0**-10, 4, width=32), st.booleans()).map(
    lambda v: -v[0] if v[1] else v[0]))


def values(dtype, shape):
    """Mostly ordinary numbers, sometimes the special ones."""
    return hnp.arrays(dtype, shape, elements=st.one_of(ORDINARY, st.sampled_from(SPECIAL)).map(float))


def finite_abs(a):
    """|a| in float64, non-finite entries as 0 (what they reach is compared exactly)."""
    m = np.abs(a.astype(np.float64))
    return np.where(np.isfinite(m), m, 0.0)


def ref(fn, *args):
    with np.errstate(all="ignore"):
        return fn(*args)


@FUZZ
@given(data=st.data(), n=dims, i=dims, o=dims, dtype=dtypes, act=st.sampled_from(ACTIVATIONS))
def test_dense_forward_and_backward_match_the_reference(data, n, i, o, dtype, act):
    # both forms: BLAS at every shape, the fused loops where a layer is thin enough for them
    small = data.draw(st.sampled_from([None, False, True] if 1 in (i, o) else [None, False]))
    x = data.draw(values(dtype, (n, i)))
    W = data.draw(values(dtype, (i, o)))
    b = data.draw(values(dtype, (o,)))
    # A product whose terms overflow is not comparable: a fused multiply-add keeps 1e30*1e30 - inf
    # exact (-inf) where NumPy rounds the product to inf first (NaN). Non-finite inputs stay in.
    big = np.finfo(dtype).max
    assume(np.all(product_scale(x, W) < big))
    z = np.empty((n, o), dtype)
    with np.errstate(all="ignore"):
        out = K.dense_forward(x, W, b, act, z=z, small=small)
        zr = x @ W + b
    # a sum is off by a few ulps of the sum of its terms' magnitudes, whatever the order: each
    # element is held to its own terms (one 1e30 elsewhere loosens nothing here)
    assert_close(out, ref(R.activation_forward, zr, act), name="out", scale=product_scale(x, W) + finite_abs(b))
    dout = data.draw(values(dtype, (n, o)))
    got = K.dense_backward(dout, x, W, out, z, act, small=small)
    expected = ref(R.dense_backward, dout, x, W, out, z, act)
    # dz = dout * act'(y) carries an error of a few ulps of |dout|, not of |dz|: tanh' = 1 - y^2
    # cancels near y = +-1 (the kernel's fused 1 - y*y is the more exact one there); |act'| <= 1.2
    dz = finite_abs(dout) * 1.2
    scales = (product_scale(x.T, dz), dz.sum(axis=0), product_scale(dz, W.T))
    assume(all(np.all(scale < big) for scale in scales))
    for g, e, name, scale in zip(got, expected, ("dW", "db", "dx"), scales):
        assert_close(g, e, name=name, scale=scale)


@FUZZ
@given(data=st.data(), n=dims, o=dims, dtype=dtypes, act=st.sampled_from(ACTIVATIONS))
def test_activations_match_the_reference(data, n, o, dtype, act):
    z = data.draw(values(dtype, (n, o)))
    y = K.activation_forward(z, act)
    assert_close(y, ref(R.activation_forward, z, act))
    dy = data.draw(values(dtype, (n, o)))
    assert_close(K.activation_backward(dy, y, z, act), ref(R.activation_backward, dy, y, z, act))


@FUZZ
@given(data=st.data(), n=dims, c=dims, dtype=dtypes)
def test_losses_match_the_reference(data, n, c, dtype):
    logits = data.draw(values(dtype, (n, c)))
    labels = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    loss, d = K.softmax_cross_entropy(logits, labels)
    rloss, rd = ref(R.softmax_cross_entropy, logits, labels)
    assert_close(np.array(loss), np.array(rloss), dtype=np.float64 if dtype == np.float64 else np.float32)
    assert_close(d, rd)
    target = data.draw(values(dtype, (n, c)))
    loss, d = K.mse(logits, target)
    rloss, rd = ref(R.mse, logits, target)
    assert_close(np.array(loss), np.array(rloss), dtype=dtype)
    assert_close(d, rd)
    # binary cross-entropy: labels and probabilities; an infinite logit has no agreed loss (t * inf
    # is NaN for t = 0 in any formula), so those become NaN, which must propagate like the reference's
    probs = data.draw(hnp.arrays(dtype, (n, c), elements=st.sampled_from([0.0, 1.0, 0.25, 0.5, 1.0 - 2.0**-10])))
    finite_or_nan = np.where(np.isinf(logits), np.nan, logits)
    loss, d = K.binary_cross_entropy(finite_or_nan, probs)
    rloss, rd = ref(R.binary_cross_entropy, finite_or_nan, probs)
    assert_close(np.array(loss), np.array(rloss), dtype=dtype)
    assert_close(d, rd)


@FUZZ
@given(data=st.data(), size=st.integers(1, 40), dtype=dtypes, momentum=st.sampled_from([0.0, 0.9]),
       decoupled=st.booleans())
def test_optimizer_updates_match_the_reference(data, size, dtype, momentum, decoupled):
    """An update is applied whole, matching the reference, when every new value is finite;
    otherwise it is refused (UpdateRefused) and every array is left exactly as it was."""
    p, g = data.draw(values(dtype, (size,))), data.draw(values(dtype, (size,)))
    v = data.draw(values(dtype, (size,)))
    g_before = g.copy()
    rp, rv = ref(R.sgd_update, p, g, v, 0.1, momentum, 0.01)
    written = (rp, rv) if momentum else (rp,)
    check_all_or_nothing(lambda: K.sgd_update(p, g, v, 0.1, momentum=momentum, weight_decay=0.01),
                         (p, v), (rp, rv), written)
    m2, v2 = data.draw(values(dtype, (size,))), np.abs(data.draw(values(dtype, (size,))))
    p2 = data.draw(values(dtype, (size,)))
    expected = ref(R.adam_update, p2, g, m2, v2, 3, 1e-3, 0.9, 0.999, 1e-8, 0.01, decoupled)
    check_all_or_nothing(lambda: K.adam_update(p2, g, m2, v2, 3, 1e-3, weight_decay=0.01, decoupled=decoupled),
                         (p2, m2, v2), expected, expected)
    np.testing.assert_array_equal(g, g_before)  # the wrappers never write the caller's gradient


@FUZZ
@given(data=st.data(), size=st.integers(1, 40), dtype=dtypes,
       example=st.sampled_from([(name, k) for name, rule in RULES.items() for k in range(len(rule.examples))]))
def test_every_optimizer_is_applied_whole_or_refused(data, size, dtype, example):
    """Every optimizer's every example setting, through the generic wrapper: all or nothing."""
    name, k = example
    rule, settings = RULES[name], RULES[name].examples[k]
    full = {**{h.name: h.default for h in rule.hyper}, **settings}
    p, g = data.draw(values(dtype, (size,))), data.draw(values(dtype, (size,)))
    state = {row: np.abs(data.draw(values(dtype, (size,)))) for row in rule.rows_for(full)}
    if "grad_avg" in state:  # a mean square above the square of the mean, as RMSprop keeps them
        with np.errstate(all="ignore"):
            state["square_avg"] = (state["grad_avg"].astype(np.float64) ** 2 + state["square_avg"] + 1).astype(dtype)
    hyper = {key: v for key, v in settings.items() if key != "lr"}
    expected_p, expected_state = ref(functools.partial(R.optimizer_update, **hyper), name, p, g, state, 3,
                                     settings["lr"])
    rows = sorted(state)
    check_all_or_nothing(lambda: K.optimizer_update(name, p, g, state, 3, settings["lr"], **hyper),
                         (p, *(state[r] for r in rows)), (expected_p, *(expected_state[r] for r in rows)),
                         (expected_p, *(expected_state[r] for r in rows)))


def check_all_or_nothing(update, arrays, expected, written):
    before = [a.copy() for a in arrays]
    if all(np.all(np.isfinite(e)) for e in written):
        with np.errstate(all="ignore"):
            update()
        for a, e in zip(arrays, expected):
            assert_close(a, e)
    else:
        with pytest.raises(K.optimizers.UpdateRefused, match="nothing was changed"), np.errstate(all="ignore"):
            update()
        for a, b in zip(arrays, before):
            np.testing.assert_array_equal(a, b)


@FUZZ
@given(n=dims, i=dims, o=dims, dtype=dtypes, data=st.data())
def test_wrong_shapes_strides_and_dtypes_are_refused_before_any_kernel_runs(n, i, o, dtype, data):
    x = np.ones((n, i), dtype)
    W, b = np.ones((i, o), dtype), np.ones(o, dtype)
    bad = data.draw(st.sampled_from(["W rows", "b size", "x strided", "W dtype", "out shape", "x int"]))
    args = dict(x=x, W=W, b=b, out=None)
    if bad == "W rows":
        args["W"] = np.ones((i + 1, o), dtype)
    elif bad == "b size":
        args["b"] = np.ones(o + 1, dtype)
    elif bad == "x strided":
        args["x"] = np.ones((n, 2 * i), dtype)[:, ::2]
        assume(not args["x"].flags.c_contiguous)  # a 1x1 view is contiguous, and accepted
    elif bad == "W dtype":
        args["W"] = W.astype(np.float32 if dtype == np.float64 else np.float64)
    elif bad == "out shape":
        args["out"] = np.empty((n, o + 1), dtype)
    else:
        args["x"] = x.astype(np.int32)
    with pytest.raises((ValueError, TypeError)):
        K.dense_forward(args["x"], args["W"], args["b"], "relu", out=args["out"])


@FUZZ
@given(data=st.data(), n=st.integers(0, 6), features=st.integers(1, 6), classes=st.integers(1, 4),
       dtype=st.sampled_from([np.float32, np.float64, np.int32, ">f8"]))
def test_model_entry_points_raise_or_train(data, n, features, classes, dtype):
    model = fastnn.Sequential(fastnn.Dense(4, 5, activation="tanh"), fastnn.Dense(5, 3), seed=0)
    X = data.draw(hnp.arrays(dtype, (n, features), elements=st.one_of(
        st.integers(-3, 3), st.sampled_from([np.nan, np.inf, float(np.float32(1e30))]) if np.dtype(dtype).kind == "f" else st.just(0))))
    y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(-1, 3)))
    before = [p.copy() for p in model.parameters()]
    valid = (n > 0 and features == 4 and (np.dtype(dtype).kind != "f" or np.isfinite(X).all())
             and y.min(initial=0) >= 0 and y.max(initial=0) < 3)
    try:
        loss = model.train_step(X, y, optimizer=fastnn.SGD(lr=0.01))
    except (ValueError, TypeError):
        assert not valid
        for p, q in zip(model.parameters(), before):
            np.testing.assert_array_equal(p, q)  # a refused call changes nothing
        return
    except fastnn.DivergenceError:  # e.g. 1e30-sized inputs: refused, parameters kept
        assert all(np.isfinite(p).all() for p in model.parameters())
        return
    assert valid and np.isfinite(loss)
    assert np.isfinite(model.predict(X)).all()


POPULATION_FUZZ = settings(max_examples=max(5, FUZZ.max_examples // 6), deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])


@POPULATION_FUZZ
@given(data=st.data(), n=st.integers(1, 40), members=st.integers(1, 4), batch=st.integers(1, 9),
       hidden=st.integers(1, 6), act=st.sampled_from(["tanh", "relu", "sigmoid"]), dtype=dtypes,
       threads=st.integers(1, 3))
def test_populations_train_each_member_as_its_network(data, n, members, batch, hidden, act, dtype, threads):
    # uneven rows (bootstrap samples with repeats, a single row), row weights per member, odd
    # batch sizes: every member ends as Sequential.fit of its network (and, under
    # NUMBA_BOUNDSCHECK=1, the compiled loop never reads past an array)
    rng = np.random.default_rng(n * 131 + members)
    X = rng.standard_normal((n, 3)).astype(dtype)
    y = rng.integers(0, 2, n)
    rows = [data.draw(hnp.arrays(np.int64, (data.draw(st.integers(1, 2 * n)),), elements=st.integers(0, n - 1)))
            for _ in range(members)]
    w = (rng.random((members, n)) + 0.1).astype(dtype)

    def net(seed):
        return fastnn.Sequential(fastnn.Dense(3, hidden, activation=act), fastnn.Dense(hidden, 2), seed=seed,
                                 dtype=dtype)
    pop = fastnn.Population(net(0), size=members)
    pop.fit(X, y, optimizer=fastnn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=batch, rows=rows,
            sample_weight=w, threads=threads)
    for m in range(members):
        alone = net(m)
        alone.fit(X[rows[m]], y[rows[m]], optimizer=fastnn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=batch,
                  sample_weight=w[m, rows[m]])
        for p, q in zip(pop[m].parameters(), alone.parameters()):
            assert_close(p, q)
