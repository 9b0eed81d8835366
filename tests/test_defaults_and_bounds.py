"""Documented defaults, the exact boundaries of argument checks, and the dropout masks' golden values.

Defaults are checked twice: as attributes (they must be PyTorch's) and by behaviour (a call that
leaves them out must compute exactly what a call that spells them out computes), so a changed
default fails even where nothing reads the attribute. Each argument check is tried on both
sides of its boundary.
"""
import numpy as np
import pytest

import fastnn
import fastnn.kernels as K
import fastnn.reference as R
from fastnn.kernels import dropout as D
from fastnn.testing import assert_close

# under NUMBA_DISABLE_JIT the hash's uint64 products wrap in Python, by design
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in scalar multiply:RuntimeWarning")

BELOW_ONE = float(np.nextafter(1.0, 0.0))  # the largest float below 1


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def gradients(rng, shapes, dtype):
    """Gradients with some elements near 1e-9, where Adam's eps (1e-8) decides the step."""
    out = []
    for shape in shapes:
        g = randn(rng, shape, dtype)
        g.reshape(-1)[::3] *= 1e-9
        out.append(g)
    return out


SHAPES = [(3, 4), (5,)]


# -- optimizer classes: PyTorch's defaults ------------------------------------------------

def run_steps(opt, rng, dtype, steps=3):
    """Parameters after ``steps`` steps of ``opt`` from a seeded start, and the gradients used."""
    params = [randn(rng, s, dtype) for s in SHAPES]  # nonzero, so weight decay shows
    history = []
    for _ in range(steps):
        grads = gradients(rng, SHAPES, dtype)
        history.append([g.copy() for g in grads])
        opt.step(params, grads)
    return params, history


def start_params(dtype):
    """The parameters ``run_steps`` starts from (its first draws from a generator seeded 5)."""
    rng = np.random.default_rng(5)
    return [randn(rng, s, dtype) for s in SHAPES]


def same_run(make_a, make_b, dtype):
    """The parameters from two optimizers given the same seeded start and gradients."""
    pa, _ = run_steps(make_a(), np.random.default_rng(5), dtype)
    pb, _ = run_steps(make_b(), np.random.default_rng(5), dtype)
    return pa, pb


def test_sgd_defaults_are_pytorchs(dtype):
    opt = fastnn.SGD(0.1)
    assert (opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == (0.1, 0.0, 0.0, False)
    assert opt.state_dict() == {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False,
                                "step_count": 0}
    pa, pb = same_run(lambda: fastnn.SGD(0.1),
                      lambda: fastnn.SGD(0.1, momentum=0.0, weight_decay=0.0, nesterov=False), dtype)
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a, b)
    # with momentum on, the nesterov and weight_decay defaults still must be off
    pa, pb = same_run(lambda: fastnn.SGD(0.1, momentum=0.9),
                      lambda: fastnn.SGD(0.1, momentum=0.9, weight_decay=0.0, nesterov=False), dtype)
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a, b)


def test_sgd_default_step_matches_the_reference(dtype):
    params, history = run_steps(fastnn.SGD(0.1), np.random.default_rng(5), dtype)
    start = start_params(dtype)
    for i, p in enumerate(start):
        v = np.zeros_like(p)
        for grads in history:
            p, v = R.sgd_update(p, grads[i], v, 0.1, momentum=0.0, weight_decay=0.0, nesterov=False)
        assert_close(params[i], p, name=f"params[{i}]")


@pytest.mark.parametrize("cls, weight_decay", [(fastnn.Adam, 0.0), (fastnn.AdamW, 1e-2)])
def test_adam_and_adamw_defaults_are_pytorchs(cls, weight_decay, dtype):
    opt = cls()
    assert opt.lr == 1e-3 and opt.betas == (0.9, 0.999) and opt.eps == 1e-8 and opt.weight_decay == weight_decay
    assert (opt.beta1, opt.beta2) == (0.9, 0.999)
    assert opt.decoupled is (cls is fastnn.AdamW)
    pa, pb = same_run(cls, lambda: cls(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay), dtype)
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls, weight_decay", [(fastnn.Adam, 0.0), (fastnn.AdamW, 1e-2)])
def test_adam_and_adamw_default_steps_match_the_reference(cls, weight_decay, dtype):
    # the defaults spelled out to the reference: PyTorch's formula with PyTorch's constants
    params, history = run_steps(cls(), np.random.default_rng(5), dtype)
    start = start_params(dtype)
    for i, p in enumerate(start):
        m, v = np.zeros_like(p), np.zeros_like(p)
        for t, grads in enumerate(history, 1):
            p, m, v = R.adam_update(p, grads[i], m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                                    weight_decay=weight_decay, decoupled=cls is fastnn.AdamW)
        assert_close(params[i], p, name=f"params[{i}]")


def test_adamw_default_weight_decay_shrinks_parameters(dtype):
    # AdamW's 1e-2 decay must act: the same run without it ends elsewhere
    pa, pb = same_run(fastnn.AdamW, lambda: fastnn.AdamW(weight_decay=0.0), dtype)
    assert not np.array_equal(pa[0], pb[0])


# -- kernel wrappers and reference functions: defaults -------------------------------------

def sgd_inputs(rng, dtype):
    p, g = randn(rng, 11, dtype), randn(rng, 11, dtype)
    v = randn(rng, 11, dtype)  # nonzero, so a momentum read or write shows
    return p, g, v


def test_sgd_update_defaults(dtype, rng):
    p, g, v = sgd_inputs(rng, dtype)
    dp, dv = p.copy(), v.copy()
    K.sgd_update(dp, g, dv, 0.1)
    ep, ev = p.copy(), v.copy()
    K.sgd_update(ep, g, ev, 0.1, momentum=0.0, weight_decay=0.0, nesterov=False)
    np.testing.assert_array_equal(dp, ep)
    np.testing.assert_array_equal(dv, v)  # momentum 0: v is neither read nor written
    np.testing.assert_array_equal(ev, v)
    rp, rv = R.sgd_update(p, g, v, 0.1, momentum=0.0, weight_decay=0.0, nesterov=False)
    assert_close(dp, rp, name="p")
    np.testing.assert_array_equal(rv, v)
    # the reference's own defaults
    rp2, rv2 = R.sgd_update(p, g, v, 0.1)
    np.testing.assert_array_equal(rp2, rp)
    np.testing.assert_array_equal(rv2, rv)


def test_sgd_update_defaults_with_momentum(dtype, rng):
    # momentum given, weight_decay and nesterov defaulted: must be 0 and False
    p, g, v = sgd_inputs(rng, dtype)
    dp, dv = p.copy(), v.copy()
    K.sgd_update(dp, g, dv, 0.1, momentum=0.9)
    ep, ev = p.copy(), v.copy()
    K.sgd_update(ep, g, ev, 0.1, momentum=0.9, weight_decay=0.0, nesterov=False)
    np.testing.assert_array_equal(dp, ep)
    np.testing.assert_array_equal(dv, ev)
    assert not np.array_equal(dv, v)  # momentum > 0 updates v
    rp, rv = R.sgd_update(p, g, v, 0.1, momentum=0.9, weight_decay=0.0, nesterov=False)
    assert_close(dp, rp, name="p")
    assert_close(dv, rv, name="v")
    rp2, rv2 = R.sgd_update(p, g, v, 0.1, momentum=0.9)
    np.testing.assert_array_equal(rp2, rp)
    np.testing.assert_array_equal(rv2, rv)
    # and nesterov, weight decay do change the step (so the comparisons above can see them)
    assert not np.array_equal(R.sgd_update(p, g, v, 0.1, momentum=0.9, nesterov=True)[0], rp)
    assert not np.array_equal(R.sgd_update(p, g, v, 0.1, momentum=0.9, weight_decay=0.1)[0], rp)


def adam_inputs(rng, dtype):
    p = randn(rng, 13, dtype)
    g = gradients(rng, [13], dtype)[0]
    m, v = randn(rng, 13, dtype, 0.1), np.abs(randn(rng, 13, dtype, 1e-3))
    return p, g, m, v


@pytest.mark.parametrize("step", [1, 4])
def test_adam_update_defaults(step, dtype, rng):
    p, g, m, v = adam_inputs(rng, dtype)
    explicit = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False)
    dp, dm, dv = p.copy(), m.copy(), v.copy()
    K.adam_update(dp, g, dm, dv, step, 1e-2)
    ep, em, ev = p.copy(), m.copy(), v.copy()
    K.adam_update(ep, g, em, ev, step, 1e-2, **explicit)
    for a, b in ((dp, ep), (dm, em), (dv, ev)):
        np.testing.assert_array_equal(a, b)
    rp, rm, rv = R.adam_update(p, g, m, v, step, 1e-2, **explicit)
    assert_close(dp, rp, name="p")
    assert_close(dm, rm, name="m")
    assert_close(dv, rv, name="v")
    for a, b in zip(R.adam_update(p, g, m, v, step, 1e-2), (rp, rm, rv)):  # the reference's own defaults
        np.testing.assert_array_equal(a, b)


def test_adam_update_decoupled_defaults_to_false(dtype, rng):
    # with weight decay given, the default must be Adam's L2 decay, not AdamW's
    p, g, m, v = adam_inputs(rng, dtype)
    dp, ep = p.copy(), p.copy()
    K.adam_update(dp, g, m.copy(), v.copy(), 2, 1e-2, weight_decay=0.5)
    K.adam_update(ep, g, m.copy(), v.copy(), 2, 1e-2, weight_decay=0.5, decoupled=False)
    np.testing.assert_array_equal(dp, ep)
    rp = R.adam_update(p, g, m, v, 2, 1e-2, weight_decay=0.5)[0]
    np.testing.assert_array_equal(rp, R.adam_update(p, g, m, v, 2, 1e-2, weight_decay=0.5, decoupled=False)[0])
    assert not np.array_equal(rp, R.adam_update(p, g, m, v, 2, 1e-2, weight_decay=0.5, decoupled=True)[0])
    assert_close(dp, rp, name="p")


# -- argument checks: both sides of each boundary ------------------------------------------

@pytest.mark.parametrize("p_drop", [0.0, 0, 0.5, BELOW_ONE, np.float32(0.25)])
def test_dropout_layer_accepts_probabilities_below_one(p_drop):
    layer = fastnn.Dropout(p_drop)
    assert layer.p_drop == float(p_drop) and type(layer.p_drop) is float


@pytest.mark.parametrize("p_drop", [1.0, 1, 1.5, -1e-12, -0.5, True, False, "0.5", None, float("nan")])
def test_dropout_layer_refuses_other_values(p_drop):
    with pytest.raises(ValueError, match=r"p_drop must be a probability in \[0, 1\)"):
        fastnn.Dropout(p_drop)


def test_dropout_zero_is_the_identity_in_training(rng):
    # p_drop = 0 is allowed and drops nothing: training sees exactly the network without it
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    with_drop = fastnn.Sequential(fastnn.Dense(4, 5, activation="tanh"), fastnn.Dropout(0.0), fastnn.Dense(5, 3),
                                  seed=1, dtype=np.float64)
    plain = fastnn.Sequential(fastnn.Dense(4, 5, activation="tanh"), fastnn.Dense(5, 3), seed=1, dtype=np.float64)
    for p, q in zip(plain.parameters(), with_drop.parameters()):
        p[...] = q
    loss_a, grads_a = with_drop.loss_and_grad(X, y)
    loss_b, grads_b = plain.loss_and_grad(X, y)
    assert loss_a == loss_b
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.0), (0.0, 0.0), (BELOW_ONE, BELOW_ONE)])
def test_adam_accepts_betas_in_zero_one(betas, rng):
    opt = fastnn.Adam(lr=0.1, betas=betas)
    assert opt.betas == betas
    p, g = randn(rng, 4, np.float64), randn(rng, 4, np.float64)
    start = p.copy()
    opt.step([p], [g])
    zeros = np.zeros(4)
    assert_close(p, R.adam_update(start, g, zeros, zeros, 1, 0.1, beta1=betas[0], beta2=betas[1])[0])


@pytest.mark.parametrize("betas, which", [((1.0, 0.999), 0), ((0.9, 1.0), 1), ((-1e-12, 0.999), 0),
                                          ((0.9, -0.5), 1), ((1.5, 0.999), 0), ((float("nan"), 0.9), 0)])
@pytest.mark.parametrize("cls", [fastnn.Adam, fastnn.AdamW])
def test_adam_refuses_betas_outside_zero_one(cls, betas, which):
    with pytest.raises(ValueError, match=rf"betas\[{which}\] must lie in \[0, 1\)"):
        cls(betas=betas)


def test_sgd_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        fastnn.SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        fastnn.SGD(0.1, momentum=0.0, nesterov=True)
    assert fastnn.SGD(0.1, momentum=1e-12, nesterov=True).nesterov is True


def test_sgd_update_nesterov_needs_momentum(rng):
    p, g, v = sgd_inputs(rng, np.float64)
    before = p.copy()
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        K.sgd_update(p, g, v, 0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        K.sgd_update(p, g, v, 0.1, momentum=0.0, nesterov=True)
    np.testing.assert_array_equal(p, before)  # refused before anything ran
    K.sgd_update(p, g, v, 0.1, momentum=0.5, nesterov=True)
    assert not np.array_equal(p, before)


@pytest.mark.parametrize("name", ["beta1", "beta2"])
def test_adam_update_beta_bounds(name, rng):
    p, g, m, v = adam_inputs(rng, np.float64)
    for bad in (1.0, 1.5, -1e-12):
        with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1\), got {bad!r}"):
            K.adam_update(p.copy(), g, m.copy(), v.copy(), 1, 1e-2, **{name: bad})
    for good in (0.0, BELOW_ONE):
        got = p.copy()
        K.adam_update(got, g, m.copy(), v.copy(), 1, 1e-2, **{name: good})
        assert_close(got, R.adam_update(p, g, m, v, 1, 1e-2, **{name: good})[0])


DROPOUT_WRAPPERS = [K.dropout_forward, K.dropout_backward]


@pytest.mark.parametrize("fn", DROPOUT_WRAPPERS, ids=lambda f: f.__name__)
def test_dropout_wrappers_p_drop_bounds(fn, rng):
    y = randn(rng, (3, 5), np.float64)
    np.testing.assert_array_equal(fn(y.copy(), 0.0, 1, 2, 3), y)  # 0 allowed: nothing dropped, scale 1
    near = fn(y.copy(), BELOW_ONE, 1, 2, 3)  # allowed, and what the reference computes
    np.testing.assert_array_equal(near, R.dropout_forward(y, BELOW_ONE, 1, 2, 3))
    for bad in (1.0, 1.5, -1e-12, float("nan")):
        with pytest.raises(ValueError, match=r"p_drop must be a number in \[0, 1\)"):
            fn(y.copy(), bad, 1, 2, 3)


@pytest.mark.parametrize("arg", ["seed", "step", "layer"])
@pytest.mark.parametrize("fn", DROPOUT_WRAPPERS, ids=lambda f: f.__name__)
def test_dropout_wrappers_counter_bounds(fn, arg, rng):
    # each counter on its own, the others valid: a check that skipped one would be caught
    y = randn(rng, (3, 5), np.float64)
    counters = dict(seed=4, step=5, layer=6)
    for good in (0, 1, np.int64(2), np.uint8(3)):
        args = {**counters, arg: good}
        got = fn(y.copy(), 0.5, args["seed"], args["step"], args["layer"])
        np.testing.assert_array_equal(got, R.dropout_forward(y, 0.5, args["seed"], args["step"], args["layer"]))
    for bad in (-1, np.int64(-1), True, False, np.bool_(True), 1.5, 2.0, "1", None):
        args = {**counters, arg: bad}
        with pytest.raises(ValueError, match=rf"{arg} must be an integer >= 0"):
            fn(y.copy(), 0.5, args["seed"], args["step"], args["layer"])


# -- dropout masks: a golden pattern ---------------------------------------------------------
#
# A mask is a fixed function of (seed, step, layer, element): resumed runs and checkpoints rely on
# drawing exactly the masks an earlier version drew. These values were computed once from the
# hash in fastnn/kernels/dropout.py; if they change, so do saved runs' masks, and that must be a
# deliberate, documented break (the hash constants must not change silently).

GOLDEN_MASK = np.array([[0, 0, 0, 1, 0, 0, 0, 1],
                        [1, 0, 1, 0, 1, 0, 0, 1],
                        [1, 0, 1, 1, 1, 1, 1, 1],
                        [0, 0, 1, 1, 0, 0, 1, 1]], dtype=bool)  # seed 7, step 3, layer 1, p_drop 0.5

# uniform(seed, step, layer, element) * 2**53 (every uniform number is a whole multiple of 2**-53);
# these pin all 53 bits, where a p_drop = 0.5 mask pins one
GOLDEN_UNIFORM = {
    (7, 3, 1, 0): 3369817190873335,
    (7, 3, 1, 1): 2107201112043694,
    (7, 3, 1, 31): 7251463879965918,
    (0, 0, 0, 0): 0,
    (1, 0, 0, 0): 7956156453446585,
    (0, 1, 0, 0): 1417385723885137,
    (0, 0, 1, 0): 23543768122574,
    (0, 0, 0, 1): 3045933958955360,
    (2**40, 2**33, 5, 12345): 2158711577180749,
}


def test_dropout_mask_golden_pattern(dtype):
    y = np.ones((4, 8), dtype)
    got = K.dropout_forward(y, 0.5, 7, 3, 1)
    np.testing.assert_array_equal(got != 0, GOLDEN_MASK)
    np.testing.assert_array_equal(got[GOLDEN_MASK], 2.0)  # kept ones scaled by 1 / (1 - 0.5)
    np.testing.assert_array_equal(R.dropout_forward(np.ones((4, 8), dtype), 0.5, 7, 3, 1), got)
    back = K.dropout_backward(np.full((4, 8), 3.0, dtype), 0.5, 7, 3, 1)
    np.testing.assert_array_equal(back, np.where(GOLDEN_MASK, 6.0, 0.0).astype(dtype))


def test_dropout_uniform_golden_values():
    with np.errstate(over="ignore"):  # uint64 products wrap, by design
        for (seed, step, layer, element), expected in GOLDEN_UNIFORM.items():
            u = D.uniform(seed, step, layer, element)
            assert u * 2.0**53 == expected, (seed, step, layer, element)
            assert 0.0 <= u < 1.0
    r = R._uniform(7, 3, 1, (4, 8)).reshape(-1)
    np.testing.assert_array_equal(r[[0, 1, 31]] * 2.0**53, [3369817190873335, 2107201112043694, 7251463879965918])


def test_dropout_keeps_an_element_whose_number_equals_p_drop():
    # keep means uniform >= p_drop: at p_drop equal to an element's number the element is kept,
    # one float above it dropped (checks the kernel's comparison, not only the hash)
    u = GOLDEN_UNIFORM[(7, 3, 1, 31)] / 2.0**53
    at = K.dropout_forward(np.ones((4, 8)), u, 7, 3, 1)
    above = K.dropout_forward(np.ones((4, 8)), float(np.nextafter(u, 1.0)), 7, 3, 1)
    assert at[3, 7] != 0 and above[3, 7] == 0
    np.testing.assert_array_equal(at, R.dropout_forward(np.ones((4, 8)), u, 7, 3, 1))
    np.testing.assert_array_equal(above, R.dropout_forward(np.ones((4, 8)), float(np.nextafter(u, 1.0)), 7, 3, 1))
    # the backward pass regenerates the mask with the same comparison
    np.testing.assert_array_equal(K.dropout_backward(np.ones((4, 8)), u, 7, 3, 1), at)
    np.testing.assert_array_equal(K.dropout_backward(np.ones((4, 8)), float(np.nextafter(u, 1.0)), 7, 3, 1), above)


def test_dropout_mask_depends_on_each_counter():
    def mask(seed, step, layer, shape=(4, 8)):
        return K.dropout_forward(np.ones(shape), 0.5, seed, step, layer) != 0

    base = mask(7, 3, 1)
    for other in ((8, 3, 1), (7, 4, 1), (7, 3, 2), (7, 3, 0), (0, 3, 1)):
        m = mask(*other)
        assert not np.array_equal(m, base), other
        np.testing.assert_array_equal(m, R.dropout_forward(np.ones((4, 8)), 0.5, *other) != 0)
    # the element counter is the flat index i*O + j: a (8, 4) array draws the same numbers in
    # the same order, and a wider array's first row continues the first row of a narrower one
    np.testing.assert_array_equal(mask(7, 3, 1, (8, 4)).reshape(4, 8), base)
    np.testing.assert_array_equal(mask(7, 3, 1, (1, 32)).reshape(4, 8), base)
    # ...and it changes along the elements, not one draw per row or per column
    assert len({tuple(row) for row in base}) > 1 and len({tuple(col) for col in base.T}) > 1
