"""Columns by name, and a model that keeps its preparation: a command-line model used from
Python takes raw rows as the command line does; tables' columns are matched by name (the
command line) or checked by name (a DataFrame); a file with non-finite weights is refused."""
import csv
import zipfile

import numpy as np
import pytest

import fastnn

from .conftest import require
from .test_own_data import SPECIES, command, flowers, houses


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flowers")
    data, X, y = flowers(tmp)
    proc = command("train", "--data", str(data), "--epochs", "20", "--out", str(tmp / "m.npz"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    header = read_csv(data)[0]
    return tmp, X, y, header


def reordered(tmp, X, y, header, order, name, with_header=True, extra=None):
    rows = [[f"{v:.4f}" for v in x] + [label] for x, label in zip(X, y)]
    if extra is not None:
        header = [extra] + header
        rows = [[str(i)] + r for i, r in enumerate(rows)]
        order = [0] + [k + 1 for k in order]
    return write_csv(tmp / name, [header[k] for k in order] if with_header else None,
                     [[r[k] for k in order] for r in rows])


def test_swapped_columns_are_matched_by_name_in_evaluate_and_predict(trained):
    tmp, X, y, header = trained
    swapped = reordered(tmp, X, y, header, [1, 0, 4, 3, 2], "swapped.csv")  # label in the middle too
    same = command("evaluate", "m.npz", "--data", "flowers.csv", "--allow-overlap", cwd=tmp)
    other = command("evaluate", "m.npz", "--data", str(swapped), "--allow-overlap", cwd=tmp)
    assert same.returncode == other.returncode == 0, other.stderr
    assert same.stdout.splitlines()[-1].split("accuracy")[1] == other.stdout.splitlines()[-1].split("accuracy")[1]
    assert "matched by name" in other.stderr
    a = command("predict", "m.npz", "flowers.csv", cwd=tmp)
    b = command("predict", "m.npz", str(swapped), cwd=tmp)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_a_missing_column_is_named_and_extra_columns_are_dropped_with_a_note(trained):
    tmp, X, y, header = trained
    missing = reordered(tmp, X, y, header, [0, 1, 3, 4], "missing.csv")
    proc = command("predict", "m.npz", str(missing), cwd=tmp)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "lacks the column ['petal_length'] the model was trained on" in proc.stderr
    with_id = reordered(tmp, X, y, header, [3, 2, 1, 0, 4], "with_id.csv", extra="id")
    proc = command("predict", "m.npz", str(with_id), cwd=tmp)
    assert proc.returncode == 0 and "columns not used by the model, dropped: id, species" in proc.stderr
    assert proc.stdout == command("predict", "m.npz", "flowers.csv", cwd=tmp).stdout


def test_a_file_without_a_header_is_taken_in_training_order_and_says_so(trained):
    tmp, X, y, header = trained
    bare = reordered(tmp, X, y, header, [0, 1, 2, 3, 4], "bare.csv", with_header=False)
    proc = command("evaluate", "m.npz", "--data", str(bare), "--allow-overlap", cwd=tmp)
    assert proc.returncode == 0 and "no header row" in proc.stderr and "sepal_length, sepal_width" in proc.stderr


def test_a_command_line_model_in_python_takes_raw_rows_as_the_command_line(trained):
    tmp, X, y, header = trained
    model = fastnn.load(tmp / "m.npz")
    assert list(model.feature_names_in_) == header[:4] and str(model.preparation.target) == "species"
    rows = read_csv(tmp / "flowers.csv")[1:]
    raw = np.array([[float(v) for v in r[:4]] for r in rows])
    printed = np.array([[float(v) for v in r[1:]] for r in read_csv(tmp / "p.csv")[1:]]) if (
        command("predict", "m.npz", "flowers.csv", "--out", "p.csv", "--force", cwd=tmp).returncode == 0) else None
    np.testing.assert_allclose(model.predict_proba(raw), printed, rtol=1e-5, atol=1e-6)  # (6 digits printed)
    labels = [r[4] for r in rows]
    scores = model.evaluate(raw, labels)
    out = command("evaluate", "m.npz", "--data", "flowers.csv", "--allow-overlap", cwd=tmp).stdout
    assert f"accuracy {scores['accuracy']:.2%}" in out
    assert model.score(raw, labels) == scores["accuracy"]
    assert scores["seen_in_training"] == pytest.approx(0.8, abs=0.02)  # the fingerprint sees raw rows prepared
    with pytest.raises(ValueError, match="label 'daisy' is not one the model was trained on"):
        model.evaluate(raw[:2], ["setosa", "daisy"])
    for train in (lambda: model.fit(raw, labels), lambda: model.train_step(raw, labels),
                  lambda: model.loss_and_grad(raw, labels)):
        with pytest.raises(ValueError, match="keeps the preparation the command line trained it with"):
            train()


def test_a_command_line_regression_in_python_predicts_raw_units(tmp_path):
    data, X, t = houses(tmp_path)
    proc = command("train", "--data", str(data), "--epochs", "40", "--out", "h.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model = fastnn.load(tmp_path / "h.npz")
    assert command("predict", "h.npz", str(data), "--out", "p.csv", cwd=tmp_path).returncode == 0
    printed = np.array([float(r[0]) for r in read_csv(tmp_path / "p.csv")[1:]])
    pred = model.predict(X[:300])[:, 0]
    np.testing.assert_allclose(pred, printed, rtol=1e-5)
    assert abs(pred.mean() - 300) < 5  # raw units, not the standardised ones
    assert model.score(X[300:], t[300:]) > 0.9
    scores = model.evaluate(X[300:], t[300:])
    np.testing.assert_allclose(scores["loss"], np.mean((model.predict(X[300:])[:, 0] - t[300:]) ** 2), rtol=1e-4)


def test_a_dataframe_fit_keeps_its_column_names_and_checks_later_tables():
    pd = require("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((120, 3)), columns=["age", "income", "debt"])
    y = (frame["income"] > frame["debt"]).astype(int)
    model = fastnn.Sequential(fastnn.Dense(3, 8, activation="relu"), fastnn.Dense(8, 2), seed=0)
    model.fit(frame, y, epochs=3)
    assert list(model.feature_names_in_) == ["age", "income", "debt"]
    expected = model.predict(frame.to_numpy())  # arrays are taken in training order
    np.testing.assert_array_equal(model.predict(frame), expected)
    with pytest.raises(ValueError, match=r"in another order: trained on \['age', 'income', 'debt'\], got "
                                         r"\['income', 'age', 'debt'\]"):
        model.predict(frame[["income", "age", "debt"]])
    with pytest.raises(ValueError, match=r"missing \['debt'\]; not seen in training \['loans'\]"):
        model.evaluate(frame.rename(columns={"debt": "loans"}), y)
    with pytest.raises(ValueError, match="in another order"):
        model.fit(frame[["debt", "income", "age"]], y)
    with pytest.raises(ValueError, match="in another order"):
        model.fit(frame, y, validation_data=(frame[["debt", "income", "age"]], y))
    model.fit(frame, y, epochs=1)  # the same names train on


def test_column_names_survive_saving(tmp_path):
    pd = require("pandas")
    frame = pd.DataFrame(np.eye(4)[:, :3], columns=["a", "b", "c"])
    model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    model.fit(frame, [0, 1, 0, 1], epochs=1)
    model.save(tmp_path / "m.npz")
    loaded = fastnn.load(tmp_path / "m.npz")
    assert list(loaded.feature_names_in_) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="in another order"):
        loaded.predict(frame[["c", "b", "a"]])


def test_the_estimators_refuse_columns_in_another_order_as_scikit_learn_does():
    pd = require("pandas")
    require("sklearn")
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastnn.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((60, 3)), columns=["x", "y", "z"])
    labels = (frame["x"] > 0).astype(int)
    for est in (MLPClassifier((8,), max_iter=5, random_state=0), SkMLP((8,), max_iter=5, random_state=0)):
        with pytest.warns(Warning):
            est.fit(frame, labels)
        assert list(est.feature_names_in_) == ["x", "y", "z"]
        with pytest.raises(ValueError, match="feature names should match those that were passed during fit"):
            est.predict(frame[["z", "y", "x"]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_model_file_with_non_finite_weights_is_refused_everywhere(tmp_path, bad):
    model = fastnn.Sequential(fastnn.Dense(4, 3), fastnn.Dense(3, 2), seed=0)
    model.parameters()[3][1] = bad  # the last layer's bias
    model.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"param_3 \(layer 1's biases\) holds NaN or inf"):
        fastnn.load(tmp_path / "m.npz")
    np.savez(tmp_path / "rows.npz", X=np.ones((3, 4)), y=np.zeros(3, int))
    for argv in (("evaluate", "m.npz", "--data", "rows.npz"), ("predict", "m.npz", "rows.npz"),
                 ("export", "m.npz", "m.onnx")):
        proc = command(*argv, cwd=tmp_path)
        assert proc.returncode != 0 and "holds NaN or inf" in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stdout.strip() == "" and not (tmp_path / "m.onnx").exists()


def test_a_damaged_preparation_is_refused(tmp_path):
    model = fastnn.Sequential(fastnn.Dense(4, 3), seed=0, loss="softmax_cross_entropy")
    from fastnn.tabular import Preparation
    good = dict(input_mean=np.zeros(4), input_scale=np.ones(4), classes=np.array(["a", "b", "c"]))
    for change, message in ((dict(input_scale=np.array([1.0, 0.0, 1.0, 1.0])), "input_scale holds"),
                            (dict(input_mean=np.array([0.0, np.nan, 0, 0])), "input_mean holds NaN"),
                            (dict(input_mean=np.zeros(5)), "input_mean must be 4 floats"),
                            (dict(classes=np.array(["b", "a", "c"])), "distinct and sorted"),
                            (dict(classes=np.array(["a", "b"])), "needs 3 class labels")):
        model.preparation = Preparation(**{**good, **change})
        model.save(tmp_path / "m.npz")
        with pytest.raises(ValueError, match=f"its preparation is damaged .*{message}"):
            fastnn.load(tmp_path / "m.npz")
    model.preparation = Preparation(**good)
    model.save(tmp_path / "m.npz")
    assert fastnn.load(tmp_path / "m.npz").preparation.classes.tolist() == ["a", "b", "c"]
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        assert "feature_names.npy" not in z.namelist()


# -- found by a hostile trial and a review ------------------------------------------------------

def test_a_prepared_regression_keeps_the_digits_its_targets_need(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 3))
    t = 1.7e9 + X @ [30.0, -20.0, 10.0] + rng.standard_normal(400)  # large values, a spread of about 40
    write_csv(tmp_path / "big.csv", ["a", "b", "c", "price"], [[f"{v:.6f}" for v in x] + [f"{p:.3f}"]
                                                                for x, p in zip(X, t)])
    proc = command("train", "--data", "big.csv", "--epochs", "60", "--out", "b.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rmse = float(next(l for l in proc.stdout.splitlines() if l.startswith("test RMSE")).split()[2].rstrip(","))
    assert rmse < 8  # float32 raw outputs are 128 apart at 1.7e9
    model = fastnn.load(tmp_path / "b.npz")
    pred = model.predict(X)[:, 0]
    assert pred.dtype == np.float64 and len(np.unique(np.round(pred % 128, 3))) > 50
    assert np.sqrt(model.evaluate(X, t)["loss"]) < 8 and model.score(X, t) > 0.9


def test_evaluate_without_the_label_column_is_an_error_not_another_column(trained):
    tmp, X, y, header = trained
    rows = [[f"{v:.4f}" for v in x] + [str(i % 3)] for i, x in enumerate(X)]
    write_csv(tmp / "fold.csv", header[:4] + ["fold"], rows)
    proc = command("evaluate", "m.npz", "--data", "fold.csv", "--allow-overlap", cwd=tmp)
    assert proc.returncode != 0 and "has no column 'species', the label column the model was trained with" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_file_without_a_header_drops_the_label_where_training_had_it(tmp_path):
    data, X, y = flowers(tmp_path, header=False)
    rows = read_csv(data)
    middle = write_csv(tmp_path / "mid.csv", None, [r[:1] + [r[4]] + r[1:4] for r in rows])  # label 2nd
    assert command("train", "--data", str(middle), "--target", "1", "--out", "m.npz", "--epochs", "5",
                   cwd=tmp_path).returncode == 0
    a = command("predict", "m.npz", str(middle), cwd=tmp_path)
    b = command("predict", "m.npz", str(middle), "--target", "1", cwd=tmp_path)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_headers_of_numbers_a_byte_order_mark_and_trailing_commas(tmp_path):
    data, X, y = flowers(tmp_path)
    rows = read_csv(data)[1:]
    numbered = write_csv(tmp_path / "numbered.csv", ["1", "2", "3", "4", "5"], rows)  # names that are numbers
    proc = command("train", "--data", str(numbered), "--out", "n.npz", "--epochs", "5", cwd=tmp_path)
    assert proc.returncode == 0 and "(60 of 300 rows" in proc.stdout, proc.stdout
    assert fastnn.load(tmp_path / "n.npz").preparation.classes.tolist() == SPECIES.tolist()
    features = write_csv(tmp_path / "numbered-x.csv", ["1", "2", "3", "4"], [r[:4] for r in rows[:5]])
    proc = command("predict", "n.npz", str(features), cwd=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1 + 5
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())  # as Excel's "CSV UTF-8" writes
    proc = command("train", "--data", str(bom), "--out", "b.npz", "--epochs", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list(fastnn.load(tmp_path / "b.npz").feature_names_in_)[0] == "sepal_length"
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("".join(line + ",\n" for line in data.read_text().splitlines()))
    proc = command("predict", "b.npz", str(trailing), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == command("predict", "b.npz", str(bom), cwd=tmp_path).stdout


def test_label_and_feature_names_that_clash_and_missing_labels_are_refused_at_training(tmp_path):
    data, X, y = flowers(tmp_path)
    rows = read_csv(data)
    write_csv(tmp_path / "clash.csv", ["a", "b", "c", "d", "a"], rows[1:])
    proc = command("train", "--data", "clash.csv", cwd=tmp_path)
    assert proc.returncode != 0 and "is also a feature column's" in proc.stderr
    numbers = [r[:4] + [str(i % 2)] for i, r in enumerate(rows[1:])]
    numbers[7][4] = "nan"
    write_csv(tmp_path / "nan.csv", ["a", "b", "c", "d", "y"], numbers)
    proc = command("train", "--data", "nan.csv", cwd=tmp_path)
    assert proc.returncode != 0 and "row 9 has the label 'nan'" in proc.stderr


def test_duplicate_or_misordered_dataframe_columns_are_refused_at_fit():
    pd = require("pandas")
    frame = pd.DataFrame(np.eye(4)[:, :3], columns=["a", "a", "b"])
    model = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    with pytest.raises(ValueError, match=r"names the column\(s\) \['a'\] more than once"):
        model.fit(frame, [0, 1, 0, 1])
    good = pd.DataFrame(np.eye(4)[:, :3], columns=["a", "b", "c"])
    with pytest.raises(ValueError, match="validation_data's X has the model's columns in another order"):
        model.fit(good, [0, 1, 0, 1], validation_data=(good[["c", "b", "a"]], [0, 1, 0, 1]))
    assert model.feature_names_in_ is None and model.optimizer is None  # a refused fit keeps nothing


def test_distributed_fit_refuses_a_prepared_model(trained):
    require("mpi4py")
    from fastnn import distributed
    tmp, X, y, header = trained
    model = fastnn.load(tmp / "m.npz")
    with pytest.raises(ValueError, match="distributed.fit works on the network's own inputs"):
        distributed.fit(model, X, y)
