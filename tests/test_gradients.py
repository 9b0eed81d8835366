"""The reference's gradients against central finite differences (float64), and the model's."""
import numpy as np
import pytest

import fastnn
import fastnn.reference as R
from fastnn.testing import ACTIVATIONS, finite_difference, reference_loss_and_grad, targets


def smooth_inputs(rng, shape):
    # keep |z| away from 0 so relu/leaky_relu kinks do not sit inside the difference step
    z = rng.standard_normal(shape)
    return np.where(np.abs(z) < 0.05, 0.3, z)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_backward_matches_finite_differences(act, rng):
    z = smooth_inputs(rng, (4, 5))
    dy = rng.standard_normal(z.shape)
    analytic = R.activation_backward(dy, R.activation_forward(z, act), z, act)
    numeric = finite_difference(lambda zz: np.sum(dy * R.activation_forward(zz, act)), z)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_backward_matches_finite_differences(act, rng):
    x, W, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)) * 0.5, rng.standard_normal(2)
    dout = rng.standard_normal((3, 2))
    z = x @ W + b
    if np.min(np.abs(z)) < 0.05:  # finite differences across a kink are meaningless
        raise AssertionError("a pre-activation sits on the relu kink for this draw: pick another seed")
    out = R.activation_forward(z, act)
    dW, db, dx = R.dense_backward(dout, x, W, out, z, act)
    f = lambda x_, W_, b_: np.sum(dout * R.dense_forward(x_, W_, b_, act))
    np.testing.assert_allclose(dW, finite_difference(lambda w: f(x, w, b), W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, finite_difference(lambda bb: f(x, W, bb), b), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, finite_difference(lambda xx: f(xx, W, b), x), rtol=1e-6, atol=1e-8)


def test_softmax_cross_entropy_gradient_matches_finite_differences(rng):
    logits = rng.standard_normal((5, 4)) * 3
    labels = rng.integers(0, 4, 5)
    _, d = R.softmax_cross_entropy(logits, labels)
    numeric = finite_difference(lambda l: R.softmax_cross_entropy(l, labels)[0], logits)
    np.testing.assert_allclose(d, numeric, rtol=1e-6, atol=1e-9)


def test_mse_gradient_matches_finite_differences(rng):
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _, d = R.mse(pred, target)
    numeric = finite_difference(lambda p: R.mse(p, target)[0], pred)
    np.testing.assert_allclose(d, numeric, rtol=1e-6, atol=1e-9)


def test_binary_cross_entropy_gradient_matches_finite_differences(rng):
    logits, target = rng.standard_normal((4, 3)) * 3, rng.random((4, 3))
    target[0] = (target[0] > 0.5)  # 0/1 labels and probabilities
    _, d = R.binary_cross_entropy(logits, target)
    numeric = finite_difference(lambda l: R.binary_cross_entropy(l, target)[0], logits)
    np.testing.assert_allclose(d, numeric, rtol=1e-6, atol=1e-9)


def test_poisson_gradient_matches_finite_differences(rng):
    logits, target = rng.standard_normal((4, 3)), rng.poisson(2.0, (4, 3)).astype(float)
    _, d = R.poisson(logits, target)
    numeric = finite_difference(lambda l: R.poisson(l, target)[0], logits)
    np.testing.assert_allclose(d, numeric, rtol=1e-6, atol=1e-9)


def test_l2_penalty_gradient_matches_finite_differences(rng):
    W = rng.standard_normal((4, 3))
    _, d = R.l2_penalty(W, 0.7)
    numeric = finite_difference(lambda w: R.l2_penalty(w, 0.7)[0], W)
    np.testing.assert_allclose(d, numeric, rtol=1e-6, atol=1e-9)


def test_model_gradient_with_an_l2_penalty_matches_finite_differences_and_the_reference(rng):
    model = fastnn.Sequential(fastnn.Dense(3, 5, activation="tanh"), fastnn.Dense(5, 2), seed=1, dtype=np.float64)
    X, y, w = rng.standard_normal((6, 3)), rng.integers(0, 2, 6), rng.random(6)
    value, grads = model.loss_and_grad(X, y, sample_weight=w, l2=0.4)
    params = model.parameters()
    for p, g in zip(params, grads):
        original = p.copy()

        def f(v, p=p):
            p[...] = v
            return model.loss_and_grad(X, y, sample_weight=w, l2=0.4)[0]

        numeric = finite_difference(f, original)
        p[...] = original
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7)
    plain, plain_grads = model.loss_and_grad(X, y, sample_weight=w)
    c = 0.4 / w.sum()  # scikit-learn's rule: the weights only, over the sum of the row weights
    assert value == pytest.approx(plain + sum(R.l2_penalty(W, c)[0] for W in params[::2]), rel=1e-12)
    for k, (g, h) in enumerate(zip(grads, plain_grads)):
        np.testing.assert_allclose(g, h + (R.l2_penalty(params[k], c)[1] if k % 2 == 0 else 0), rtol=1e-12)


def test_big_shapes_checked_along_a_random_direction(rng):
    x, W, b = rng.standard_normal((64, 300)), rng.standard_normal((300, 40)) * 0.05, rng.standard_normal(40)
    labels = rng.integers(0, 40, 64)
    loss = lambda w: R.softmax_cross_entropy(R.dense_forward(x, w, b, "tanh"), labels)[0]
    out = R.dense_forward(x, W, b, "tanh")
    _, dlogits = R.softmax_cross_entropy(out, labels)
    dW, _, _ = R.dense_backward(dlogits, x, W, out, x @ W + b, "tanh")
    d = rng.standard_normal(W.shape)
    assert np.sum(dW * d) == pytest.approx(finite_difference(loss, W, direction=d), rel=1e-6)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "binary_cross_entropy", "poisson"])
def test_model_loss_and_grad_matches_finite_differences(act, loss, rng):
    model = fastnn.Sequential(fastnn.Dense(3, 5, activation=act), fastnn.Dense(5, 4, activation=act),
                              fastnn.Dense(4, 2), seed=1, dtype=np.float64)
    X = rng.standard_normal((6, 3))
    y = targets(rng, loss, 6, 2, np.float64)
    value, grads = model.loss_and_grad(X, y, loss=loss)
    params = model.parameters()
    for p, g in zip(params, grads):
        original = p.copy()

        def f(v, p=p):
            p[...] = v
            return model.loss_and_grad(X, y, loss=loss)[0]

        numeric = finite_difference(f, original)
        p[...] = original
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7)
    # and the kernels agree with the reference network
    ref_value, ref_grads = reference_loss_and_grad(params, [l.activation for l in model.layers], X, y, loss)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert len(ref_grads) == len(grads)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13)
