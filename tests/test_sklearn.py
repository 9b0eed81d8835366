"""fastnn.sklearn estimators pass scikit-learn's estimator checks and work in its tools."""
import warnings

import numpy as np
import pytest

from .conftest import require

require("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

FAST = dict(hidden_layer_sizes=(32,), max_iter=200, learning_rate_init=0.01, random_state=0)


# As scikit-learn runs its checks for its own MLPs (sklearn/utils/_test_common/instance_generator.py):
# every check on max_iter=100, and the sample-weight check also with the settings it uses there;
# plus every check with L-BFGS and with quick settings. No expected failure.
CHECKED = [MLPClassifier(max_iter=100), MLPRegressor(max_iter=100), MLPClassifier(solver="lbfgs"),
           MLPClassifier(**FAST), MLPRegressor(**FAST)]


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", [MLPClassifier(solver="lbfgs"), MLPRegressor(solver="sgd", tol=1e-2,
                                                                                   random_state=42),
                                       MLPClassifier(), MLPRegressor()], ids=repr)
def test_a_sample_weight_is_a_repeated_row(estimator):
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data
    check_sample_weight_equivalence_on_dense_data(type(estimator).__name__, estimator)


def blobs(seed=0, n=300):
    rng = np.random.default_rng(seed)
    centers = np.array([[2, 2], [-2, 2], [0, -2]])
    labels = rng.integers(0, 3, n)
    return centers[labels] + rng.standard_normal((n, 2)) * 0.6, np.array(["cat", "dog", "eel"])[labels]


def test_classifier_learns_arbitrary_labels_and_gives_probabilities():
    X, y = blobs()
    clf = MLPClassifier(**FAST).fit(X, y)
    assert clf.classes_.tolist() == ["cat", "dog", "eel"]
    assert clf.score(X, y) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (300, 3) and np.allclose(proba.sum(axis=1), 1)
    assert (clf.classes_[proba.argmax(axis=1)] == clf.predict(X)).all()


def test_partial_fit_continues_with_the_optimizer_state():
    X, y = blobs()
    clf = MLPClassifier(**FAST)
    with pytest.raises(ValueError, match="needs classes="):
        clf.partial_fit(X, y)
    for _ in range(20):
        clf.partial_fit(X, y, classes=["cat", "dog", "eel"])
    assert clf.n_iter_ == 20 and clf.optimizer_.step_count == 20 * 2  # 300 rows, batch 200
    assert clf.score(X, y) > 0.9


def test_early_stopping_and_n_iter_no_change():
    X, y = blobs(n=600)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=500, early_stopping=True, n_iter_no_change=3,
                        random_state=0).fit(X, y)
    assert clf.n_iter_ < 500 and len(clf.validation_scores_) == clf.n_iter_


def test_regressor_in_a_pipeline_and_grid_search():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (400, 1))
    y = np.sin(X[:, 0]) * 10 + 5
    search = GridSearchCV(make_pipeline(StandardScaler(), MLPRegressor(max_iter=200, random_state=0)),
                          {"mlpregressor__hidden_layer_sizes": [(4,), (32,)],
                           "mlpregressor__learning_rate_init": [0.01]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["mlpregressor__hidden_layer_sizes"] == (32,)
    assert search.best_score_ > 0.9
    assert search.predict(X).shape == (400,)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle", "clone"])
def test_copied_estimators_predict_alike_and_train_apart(copier):
    import copy
    import pickle

    from sklearn.base import clone

    rng = np.random.default_rng(0)
    X = rng.random((80, 5))
    y = (X[:, 0] > 0.5).astype(int)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    before = est.predict_proba(X)
    if copier == "clone":  # an unfitted estimator with the same settings: fitting it gives the same model
        twin = clone(est).fit(X, y)
        np.testing.assert_array_equal(twin.predict_proba(X), before)
    else:
        twin = copy.deepcopy(est) if copier == "deepcopy" else pickle.loads(pickle.dumps(est))
        np.testing.assert_array_equal(twin.predict_proba(X), before)
    for _ in range(3):
        twin.partial_fit(X, y)
    assert not np.array_equal(twin.predict_proba(X), before)
    np.testing.assert_array_equal(est.predict_proba(X), before)


def test_binary_problems_train_one_logistic_output():
    X, y = blobs()
    y = np.where(y == "cat", "cat", "other")
    clf = MLPClassifier(**FAST).fit(X, y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 1 and clf.coefs_[-1].shape == (32, 1)
    assert clf.model_.loss == "binary_cross_entropy"
    proba = clf.predict_proba(X)
    assert proba.shape == (300, 2) and np.allclose(proba.sum(axis=1), 1)
    assert (clf.classes_[proba.argmax(axis=1)] == clf.predict(X)).all() and clf.score(X, y) > 0.9
    multi = MLPClassifier(**FAST).fit(*blobs())
    assert multi.out_activation_ == "softmax" and multi.n_outputs_ == 3


def test_fitted_attributes_mean_what_they_mean_in_scikit_learn():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=5, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(5\) reached"):
        clf.fit(X, y)
    assert [W.shape for W in clf.coefs_] == [(2, 16), (16, 8), (8, 3)]
    assert [b.shape for b in clf.intercepts_] == [(16,), (8,), (3,)]
    np.testing.assert_array_equal(clf.coefs_[0], clf.model_.parameters()[0])
    assert clf.n_iter_ == 5 and clf.t_ == 5 * 300 and clf.n_layers_ == 4 and len(clf.loss_curve_) == 5
    assert clf.best_loss_ == min(clf.loss_curve_)
    # the log-loss plus scikit-learn's L2 term, batch by batch, as the network trained on it
    assert clf.loss_curve_ == clf.model_.history["loss"]
    penalty = 0.5 * 1e-4 * sum(float((W.astype(np.float64) ** 2).sum()) for W in clf.coefs_) / 300
    assert clf.loss_curve_[-1] > penalty > 0
    clf.set_params(max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf.fit(X, y)  # converges: no warning
    assert clf.n_iter_ < 500


def test_solver_sgd_with_momentum_and_learning_rate_schedules():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", momentum=0.8, nesterovs_momentum=False,
                        learning_rate_init=0.05, max_iter=30, random_state=0, tol=0)
    clf.fit(X, y)
    opt = clf.optimizer_
    assert type(opt).__name__ == "SGD" and opt.momentum == 0.8 and not opt.nesterov and clf.score(X, y) > 0.9
    inv = MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate="invscaling", power_t=0.5,
                        learning_rate_init=0.5, max_iter=3, random_state=0).fit(X, y)
    assert inv.optimizer_.lr == pytest.approx(0.5 / (3 * 300 + 1) ** 0.5) and inv.optimizer_.nesterov
    adaptive = MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate="adaptive", tol=10.0,
                             n_iter_no_change=1, learning_rate_init=0.1, max_iter=50, random_state=0).fit(X, y)
    # a tol no epoch can meet: the lr is divided by 5 after every 2 epochs without improvement
    # (the first epoch improves on inf) while it is above 1e-6, then training stops
    assert adaptive.optimizer_.lr == pytest.approx(0.1 / 5 ** 8) and adaptive.n_iter_ == 1 + 2 * 9
    with pytest.raises(ValueError, match="solver must be 'lbfgs', 'sgd' or 'adam'"):
        MLPClassifier(solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="learning_rate must be one of"):
        MLPClassifier(learning_rate="cyclic").fit(X, y)


def test_warm_start_continues_and_sample_weight_weighs_rows():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, warm_start=True, random_state=0, tol=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    first = clf.coefs_[0].copy()
    clf.set_params(learning_rate_init=0.002)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    # the network carries on; the optimizer is new, with the new settings (as scikit-learn's)
    assert clf.n_iter_ == 6 and not np.array_equal(first, clf.coefs_[0])
    assert clf.optimizer_.step_count == 3 * 2 and clf.optimizer_.lr == 0.002
    # full batches without shuffling: integer weights are repeated rows
    w = np.random.default_rng(1).integers(1, 4, len(y))
    opts = dict(hidden_layer_sizes=(8,), max_iter=4, batch_size=10_000, shuffle=False, random_state=0, tol=0)
    with pytest.warns(ConvergenceWarning):
        a = MLPRegressor(**opts).fit(X, (y == "cat").astype(float), sample_weight=w)
    with pytest.warns(ConvergenceWarning):
        b = MLPRegressor(**opts).fit(np.repeat(X, w, axis=0), np.repeat((y == "cat").astype(float), w))
    for p, q in zip(a.coefs_, b.coefs_):
        np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12)


# -- the same numbers as scikit-learn's own MLPs ------------------------------------------------

def same_problem(task, rng):
    X = rng.standard_normal((90, 5)) * [1, 10, 0.1, 3, 1] + [0, 50, 0, -5, 2]  # unscaled on purpose
    if task == "binary":
        return X, (X[:, 0] + X[:, 3] > -5).astype(int)
    if task == "multiclass":
        return X, np.digitize(X[:, 0] + 0.1 * X[:, 1], [4, 5.5])
    return X, X @ [0.5, 0.1, 2.0, -0.3, 1.0] + rng.standard_normal(90)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("settings", [dict(solver="sgd", momentum=0.9, learning_rate_init=0.01, alpha=0.1),
                                      dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.05,
                                           nesterovs_momentum=False),
                                      dict(solver="sgd", learning_rate="adaptive", tol=10.0, n_iter_no_change=1,
                                           learning_rate_init=0.02),
                                      dict(solver="adam", alpha=1.0, activation="tanh"),
                                      dict(solver="adam", activation="logistic", batch_size=20),
                                      dict(solver="lbfgs", alpha=0.01, max_iter=6)], ids=repr)
def test_the_same_settings_train_the_same_network_as_scikit_learn(task, settings, rng):
    """scikit-learn's initialisation, L2 rule, loss and schedules: float64, no shuffling, the
    same random_state, and the two libraries' networks agree to rounding. (L-BFGS for a few
    iterations: in a flat region, later ones amplify the two libraries' different rounding.)"""
    from sklearn import neural_network as sk
    X, y = same_problem(task, rng)
    args = {**dict(hidden_layer_sizes=(7, 4), random_state=3, max_iter=12, shuffle=False, tol=0, batch_size=32),
            **settings}
    close = dict(rtol=1e-6, atol=1e-9)
    theirs, ours = (sk.MLPRegressor, MLPRegressor) if task == "regression" else (sk.MLPClassifier, MLPClassifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a, b = theirs(**args).fit(X, y), ours(**args).fit(X, y)
    for W, V in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(V, W, **close)
    assert b.n_iter_ == a.n_iter_ and b.loss_ == pytest.approx(a.loss_, rel=close["rtol"])
    if settings["solver"] != "lbfgs":
        np.testing.assert_allclose(b.loss_curve_, a.loss_curve_, rtol=close["rtol"])
    np.testing.assert_allclose(b.predict(X), a.predict(X), **close)


def test_a_fit_from_a_worker_thread_runs_blas_on_one_thread():
    import threading

    from fastnn.threads import get_num_threads
    seen = {}

    class Watched(MLPClassifier):
        def _fit_stochastic(self, *args, **kwargs):
            seen[threading.current_thread() is threading.main_thread()] = get_num_threads()["blas"]
            return super()._fit_stochastic(*args, **kwargs)

    X, y = blobs()
    before = get_num_threads()["blas"]
    Watched(**{**FAST, "max_iter": 2}).fit(X, y)
    worker = threading.Thread(target=lambda: Watched(**{**FAST, "max_iter": 2}).fit(X, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        worker.start()
        worker.join()
    assert seen[True] == before and set(seen[False]) == {1}
    assert get_num_threads()["blas"] == before  # given back
