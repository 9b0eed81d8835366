"""Targets, weights and metrics at their edges: what the loss kernels refuse, how rows of weight 0
count, how ties are scored, and which targets the per-step path takes without a copy.
(Written against the mutants that survived ``tools/mutation.py``: each test fails if one of
those changes were made.)"""
import numpy as np
import pytest

import fastnn
import fastnn.kernels as K
from fastnn.kernels import _checks
from fastnn.kernels import losses as loss_kernels
from fastnn.kernels._compose import raw_rows_of, run
from fastnn.losses import prepare_targets


def metric(logits, labels, weights=None):
    weights = np.ones(len(labels), logits.dtype) if weights is None else weights
    return run(loss_kernels._count_correct, loss_kernels.signatures(logits.dtype)[1], logits,
               raw_rows_of(np.asarray(labels, np.int64)), weights)


def test_labels_in_range_at_both_ends():
    assert _checks.labels_in_range(np.array([0, 2], np.int64), 3)
    assert not _checks.labels_in_range(np.array([0, 3], np.int64), 3)  # == classes
    assert not _checks.labels_in_range(np.array([-1, 2], np.int64), 3)
    assert _checks.labels_in_range(np.zeros(0, np.int64), 3)  # nothing to check


@pytest.mark.parametrize("bad", [-1, 3])
def test_the_per_step_path_refuses_a_label_just_out_of_range(bad):
    # train_step leaves labels to the kernel (no check in Python): it must refuse exactly c and -1
    model = fastnn.Sequential(fastnn.Dense(2, 3), seed=0, dtype=np.float64)
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"y labels must lie in \[0, 3\)"):
        model.train_step(np.ones((2, 2)), np.array([0, bad], np.int64), optimizer=fastnn.SGD(lr=0.1))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p, b)
    model.train_step(np.ones((2, 2)), np.array([0, 2], np.int64), optimizer=fastnn.SGD(lr=0.1))  # c - 1 is fine


def test_accuracy_counts_the_first_largest_logit_on_ties_and_weighs_rows():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    assert metric(logits, [0, 1, 0]) == 3.0  # ties go to the first largest, as np.argmax
    assert metric(logits, [1, 2, 0]) == 1.0
    assert metric(logits, [2, 0, 1]) == 0.0
    assert metric(logits, [0, 1, 0], np.array([0.5, 2.0, 0.0])) == 2.5


def test_a_row_of_weight_zero_adds_nothing_even_when_its_loss_is_infinite():
    logits = np.array([[0.0, 1e308, -1e308], [0.0, 1.0, 2.0]])
    labels = np.array([2, 0])  # row 0's loss is 2e308: inf
    loss, d = K.softmax_cross_entropy(logits, labels, weights=np.array([0.0, 1.0]))
    ref = K.softmax_cross_entropy(logits[1:], labels[1:])
    assert loss == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_array_equal(d[0], 0.0)
    np.testing.assert_allclose(d[1], ref[1][0], rtol=1e-12)
    assert K.softmax_cross_entropy(logits, labels, weights=np.zeros(2))[0] == 0.0  # every weight 0: 0, not NaN


def test_mse_weights_scale_each_row_of_the_gradient():
    pred, target = np.array([[1.0, 3.0], [2.0, 0.0]]), np.zeros((2, 2))
    w = np.array([1.0, 3.0])
    loss, d = K.mse(pred, target, weights=w)
    # loss = (1 * (1 + 9) / 2 + 3 * (4 + 0) / 2) / 4 = 2.75; d_ij = w_i / 4 * 2 (p - t) / 2
    assert loss == pytest.approx(2.75, rel=1e-12)
    np.testing.assert_allclose(d, np.array([[1 * 1.0, 1 * 3.0], [3 * 2.0, 0.0]]) / 4, rtol=1e-12)


@pytest.mark.parametrize("kernel,target", [(K.mse, lambda: np.zeros((3, 2))),
                                           (K.binary_cross_entropy, lambda: np.zeros((3, 2))),
                                           (K.softmax_cross_entropy, lambda: np.array([0, 1, 0]))])
def test_loss_wrappers_refuse_negative_or_nan_weights(kernel, target):
    for bad in (-1.0, np.nan):
        w = np.ones(3)
        w[1] = bad
        with pytest.raises(ValueError, match="weights must be finite and >= 0"):
            kernel(np.ones((3, 2)), target(), weights=w)
    kernel(np.ones((3, 2)), target(), weights=np.array([0.0, 1.0, 2.0]))  # 0 is a weight


# -- the per-step path: targets already in the kernel's form are used as they are -------------

def test_labels_already_int64_are_taken_without_a_copy_and_checked_only_when_asked():
    y = np.array([0, 2, 1], np.int64)
    assert prepare_targets("softmax_cross_entropy", y, 3, 3, np.float32) is y
    bad = np.array([0, 5, 1], np.int64)
    assert prepare_targets("softmax_cross_entropy", bad, 3, 3, np.float32, check=False) is bad  # the kernel checks
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        prepare_targets("softmax_cross_entropy", bad, 3, 3, np.float32)
    converted = prepare_targets("softmax_cross_entropy", y.astype(np.int32), 3, 3, np.float32)
    assert converted.dtype == np.int64 and converted is not y and (converted == y).all()


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_float_targets_in_the_models_dtype_are_taken_without_a_copy(loss):
    y = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], np.float32)
    got = prepare_targets(loss, y, 3, 2, np.float32)
    assert np.shares_memory(got, y) and got.shape == (3, 2)
    one = np.array([1.0, 0.0, 1.0], np.float32)  # one output: (n,) is taken as (n, 1)
    got = prepare_targets(loss, one, 3, 1, np.float32)
    assert np.shares_memory(got, one) and got.shape == (3, 1)
    converted = prepare_targets(loss, y.astype(np.float64), 3, 2, np.float32)
    assert converted.dtype == np.float32 and not np.shares_memory(converted, y)
    with pytest.raises(ValueError, match=r"y must have shape \(3, 2\)"):
        prepare_targets(loss, one, 3, 2, np.float32)  # (n,) only for one output
    with pytest.raises(ValueError, match=r"y must have shape \(3, 1\)"):
        prepare_targets(loss, y, 3, 1, np.float32)


def test_the_fast_path_still_checks_values_when_asked():
    y = np.array([[0.0], [np.nan], [1.0]], np.float32)
    with pytest.raises(ValueError, match="NaN or inf"):
        prepare_targets("mse", y, 3, 1, np.float32)
    assert prepare_targets("mse", y, 3, 1, np.float32, check=False) is not None  # left to the kernel
    with pytest.raises(ValueError, match=r"0/1 labels"):
        prepare_targets("binary_cross_entropy", np.array([[0.5], [2.0], [1.0]], np.float32), 3, 1, np.float32)


def test_the_finite_check_of_a_single_value():
    assert not _checks.all_finite(np.array([np.nan]))  # one element is an array like any other
    assert not _checks.all_finite(np.array([[np.inf]], np.float32))
    assert _checks.all_finite(np.array([1.0])) and _checks.all_finite(np.zeros(0))


def binary_metric(logits, target, weights=None):
    weights = np.ones(len(target), logits.dtype) if weights is None else weights
    return run(loss_kernels._count_binary_correct, loss_kernels.signatures(logits.dtype)[1], logits,
               raw_rows_of(np.asarray(target, logits.dtype)), weights)


def test_binary_accuracy_is_the_weighted_share_of_labels_right():
    logits = np.array([[1.0, -1.0], [2.0, 3.0], [-1.0, -2.0]])
    target = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # rights: 2/2, 1/2, 0/2
    assert binary_metric(logits, target) == 1.5
    assert binary_metric(logits, target, np.array([0.5, 2.0, 7.0])) == 0.5 + 1.0
    assert binary_metric(logits, np.full((3, 2), 0.5)) == 1.0 + 0.5  # a target of 0.5 counts as label 1


def test_the_per_step_path_refuses_binary_targets_outside_0_1():
    model = fastnn.Sequential(fastnn.Dense(2, 1), seed=0, dtype=np.float64)
    for bad in (1.5, -0.5):
        y = np.array([[0.0], [bad]])  # float64 (n, 1): taken as is, checked by the kernel
        with pytest.raises(ValueError, match="0/1 labels"):
            model.train_step(np.ones((2, 2)), y, loss="binary_cross_entropy", optimizer=fastnn.SGD(lr=0.1))
    model.train_step(np.ones((2, 2)), np.array([[0.0], [1.0]]), loss="binary_cross_entropy",
                     optimizer=fastnn.SGD(lr=0.1))


def test_class_weight_for_one_logistic_output():
    X = np.random.default_rng(0).standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(np.float64)
    a = fastnn.Sequential(fastnn.Dense(3, 1), seed=0, dtype=np.float64)
    b = fastnn.Sequential(fastnn.Dense(3, 1), seed=0, dtype=np.float64)
    a.fit(X, y, loss="binary_cross_entropy", class_weight={0: 1.0, 1: 4.0}, batch_size=40)
    b.fit(X, y, loss="binary_cross_entropy", sample_weight=np.where(y == 1, 4.0, 1.0), batch_size=40)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)


def test_the_first_value_that_is_not_a_label_is_named():
    y = np.array([0.0, 1.0, 2.25, 1.0, 7.5])
    with pytest.raises(ValueError, match=r"not whole numbers \(such as 2\.25\)"):
        prepare_targets("softmax_cross_entropy", y, 5, 8, np.float32)


def test_optimizer_step_checks_every_pair_of_arrays():
    opt = fastnn.SGD(lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] and grads\[1\] must be arrays of one shape"):
        opt.step([np.ones(2), np.ones(3)], [np.ones(2), np.ones(4)])


def test_the_activations_are_the_documented_functions():
    # constants written out here, not imported: a changed slope or gelu constant fails
    z = np.array([[-3.0, -1.0, -0.1, 0.0, 0.5, 2.0]])
    np.testing.assert_allclose(K.activation_forward(z, "leaky_relu"), np.where(z < 0, 0.01 * z, z), rtol=1e-15)
    u = np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)
    np.testing.assert_allclose(K.activation_forward(z, "gelu"), 0.5 * z * (1 + np.tanh(u)), rtol=1e-13, atol=1e-16)


def test_an_allowed_alias_does_not_end_the_overlap_check():
    a = np.zeros(10)
    with pytest.raises(ValueError, match="out overlaps b in memory"):
        _checks.no_overlap("out", a, ("a", a), ("b", a[2:5]), allow_same=True)  # a itself is fine, b is not


def test_fit_reports_the_weighted_mean_of_its_steps_losses():
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((50, 4)), rng.integers(0, 3, 50)

    def make():
        return fastnn.Sequential(fastnn.Dense(4, 5, activation="tanh"), fastnn.Dense(5, 3), seed=2,
                                 dtype=np.float64)
    fitted, stepped = make(), make()
    history = fitted.fit(X, y, optimizer=fastnn.SGD(lr=0.1), batch_size=16, shuffle=False)
    opt = fastnn.SGD(lr=0.1)
    losses, right = [], 0
    for i in range(0, 50, 16):  # each batch scored by the parameters its step starts from
        right += np.sum(stepped.predict(X[i:i + 16]).argmax(axis=1) == y[i:i + 16])
        losses.append(stepped.train_step(X[i:i + 16], y[i:i + 16], optimizer=opt))
    sizes = [16, 16, 16, 2]
    assert history["loss"][0] == pytest.approx(np.dot(losses, sizes) / 50, rel=1e-12)
    assert history["accuracy"][0] == pytest.approx(right / 50, rel=1e-12)


def test_score_of_constant_targets_follows_scikit_learn():
    model = fastnn.Sequential(fastnn.Dense(2, 1), seed=0, dtype=np.float64, loss="mse")
    for p in model.parameters():
        p[...] = 0.0
    model.parameters()[1][...] = 3.0  # predicts 3 everywhere
    X = np.ones((4, 2))
    assert model.score(X, np.full(4, 3.0)) == 1.0  # constant target, predicted exactly
    assert model.score(X, np.full(4, 5.0)) == 0.0  # constant target, missed
    y = np.array([1.0, 2.0, 4.0, 5.0])
    assert model.score(X, y) == pytest.approx(1 - np.sum((y - 3) ** 2) / np.sum((y - 3) ** 2))


def test_binary_accuracy_at_a_logit_of_exactly_zero_agrees_with_the_compiled_metric():
    model = fastnn.Sequential(fastnn.Dense(2, 2), seed=0, dtype=np.float64, loss="binary_cross_entropy")
    for p in model.parameters():
        p[...] = 0.0  # every logit is 0: predicts label 0 (a logit must be > 0 for label 1)
    X, Y = np.ones((3, 2)), np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert model.evaluate(X, Y)["accuracy"] == pytest.approx(1 / 3)  # only the all-0 row is right
    assert binary_metric(np.zeros((3, 2)), Y) / 3 == pytest.approx(1 / 3)


def test_a_models_seed_keys_its_dropout_masks_and_survives_saving(tmp_path):
    assert fastnn.Sequential(fastnn.Dense(2, 2), seed=0)._mask_seed == 0
    assert fastnn.Sequential(fastnn.Dense(2, 2), seed=7)._mask_seed == 7
    fastnn.Sequential(fastnn.Dense(2, 2), seed=5).save(tmp_path / "m.npz")
    assert fastnn.load(tmp_path / "m.npz").seed == 5


def test_an_mse_row_of_weight_zero_adds_nothing_even_when_infinite():
    pred, target = np.array([[np.inf, 0.0], [1.0, 2.0]]), np.zeros((2, 2))
    loss, _ = K.mse(pred, target, weights=np.array([0.0, 1.0]))
    assert loss == pytest.approx((1.0 + 4.0) / 2)


@pytest.mark.parametrize("table,message", [({-1: 2.0}, r"class_weight keys must be class indices >= 0, got -1"),
                                           ({"a": 2.0}, r"class_weight keys must be class indices >= 0, got 'a'"),
                                           ({0: np.inf}, r"class_weight\[0\] must be a finite number >= 0, got inf"),
                                           ({0: -1.0}, r"class_weight\[0\] must be a finite number >= 0")])
def test_class_weight_tables_are_checked(table, message):
    X, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=message):
        fastnn.Sequential(fastnn.Dense(2, 2)).fit(X, y, class_weight=table)


def test_each_new_training_array_joins_the_fingerprint():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((300, 3)), rng.standard_normal((300, 3))
    model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    model.fit(A, rng.integers(0, 2, 300))
    assert model.seen_in_training(B) == 0.0
    model.fit(B, rng.integers(0, 2, 300))
    assert model.seen_in_training(B) == 1.0 and model.seen_in_training(A) == 1.0


def test_changing_a_hyper_parameter_between_steps_takes_effect():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)

    def make():
        return fastnn.Sequential(fastnn.Dense(3, 2), seed=0, dtype=np.float64)
    a, b = make(), make()
    opt = fastnn.SGD(lr=0.1)
    a.train_step(X, y, optimizer=opt)
    opt.weight_decay = 0.5  # the compiled update must see it
    a.train_step(X, y, optimizer=opt)
    b.train_step(X, y, optimizer=fastnn.SGD(lr=0.1))
    b.train_step(X, y, optimizer=fastnn.SGD(lr=0.1, weight_decay=0.5))
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)


def test_adam_takes_eps_zero_and_checks_its_state_arrays():
    fastnn.Adam(eps=0.0)  # allowed, as in PyTorch
    p, g = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match=r"m must have shape \(4,\)"):
        K.adam_update(p, g, np.zeros(3), np.zeros(4), 1, 1e-3)
    with pytest.raises(ValueError, match=r"v must have shape \(4,\)"):
        K.adam_update(p, g, np.zeros(4), np.zeros(5), 1, 1e-3)
