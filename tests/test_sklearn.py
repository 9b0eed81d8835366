"""fastnn.sklearn estimators pass scikit-learn's estimator checks and work in its tools."""
import numpy as np
import pytest

from .conftest import require

require("sklearn")

from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

FAST = dict(hidden_layer_sizes=(32,), max_iter=200, learning_rate_init=0.01, random_state=0)


@parametrize_with_checks([MLPClassifier(**FAST), MLPRegressor(**FAST)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


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
