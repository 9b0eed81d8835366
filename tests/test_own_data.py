"""The command line on a user's own data: train, evaluate and predict from .csv and .npz files,
through the installed ``fastnn`` command, with its exact messages."""
import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import tabular

FASTNN = pathlib.Path(sys.executable).parent / "fastnn"
SPECIES = np.array(["setosa", "versicolor", "virginica"])


def command(*argv, cwd):
    return subprocess.run([str(FASTNN), *argv], capture_output=True, text=True, cwd=cwd, timeout=600)


def flowers(tmp_path, n=300, header=True):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 4)) * [1, 2, 0.5, 3] + [5, -1, 0, 10]
    y = SPECIES[(X[:, 0] > 5).astype(int) + (X[:, 1] > -1).astype(int)]
    path = tmp_path / "flowers.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "species"])
        for row, label in zip(X, y):
            w.writerow([f"{v:.4f}" for v in row] + [label])
    return path, X, y


def houses(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 3))
    t = X @ [1.5, -2.0, 0.5] + 300.0 + 0.05 * rng.standard_normal(400)  # far from 0: the target is scaled
    path = tmp_path / "houses.npz"
    np.savez(path, X=X[:300], y=t[:300], X_test=X[300:], y_test=t[300:])
    return path, X, t


def test_a_csv_with_text_labels_trains_evaluates_and_predicts(tmp_path):
    data, X, y = flowers(tmp_path)
    model_path = tmp_path / "m.npz"
    proc = command("train", "--data", str(data), "--epochs", "30", "--out", str(model_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "task: classify, as the labels are text; override with --task regress"
    assert lines[1] == "no test set in flowers.csv: holding out a seeded 20% (60 of 300 rows, --seed 0) to test on"
    accuracy = float(next(line for line in lines if line.startswith("test accuracy")).split()[2].rstrip("%"))
    assert accuracy > 85
    model = fastnn.load(model_path)
    assert model.preparation.classes.tolist() == SPECIES.tolist() and model.loss == "softmax_cross_entropy"
    # the held-out rows are what fit did not see: evaluate on the whole file is mostly training rows
    proc = command("evaluate", str(model_path), "--data", str(data), cwd=tmp_path)
    assert proc.returncode == 1 and "share of these rows seen in training: 80.0%" in proc.stdout
    assert proc.stderr.strip() == ("error: 80.0% of the evaluation rows are rows m.npz was trained on, so its score "
                                   "here would overstate how it does on new data; evaluate on held-out rows, or "
                                   "pass --allow-overlap")
    proc = command("evaluate", str(model_path), "--data", str(data), "--allow-overlap", cwd=tmp_path)
    assert proc.returncode == 0 and "m.npz on flowers.csv (300 rows): accuracy" in proc.stdout
    # predict: the label first, then one probability per class, from raw rows (the model scales them)
    out = tmp_path / "p.csv"
    assert command("predict", str(model_path), str(data), "--out", str(out), cwd=tmp_path).returncode == 0
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["label", "p_setosa", "p_versicolor", "p_virginica"] and len(rows) == 301
    proba = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    expected = model.preparation.classes[model.predict(X).argmax(axis=1)]  # (the model prepares raw rows)
    assert [r[0] for r in rows[1:]] == expected.tolist()
    assert np.mean(expected == y) > 0.85
    assert command("predict", str(model_path), str(data), "--out", str(out), cwd=tmp_path).returncode == 2  # exists
    npy = tmp_path / "p.npy"
    assert command("predict", str(model_path), str(data), "--out", str(npy), cwd=tmp_path).returncode == 0
    assert np.load(npy).tolist() == expected.tolist()


def test_an_npz_with_float_targets_is_a_regression_with_its_own_test_set(tmp_path):
    data, X, t = houses(tmp_path)
    model_path = tmp_path / "r.npz"
    proc = command("train", "--data", str(data), "--epochs", "40", "--out", str(model_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == ("task: regress, as the labels are numbers that are not all whole; "
                                           "override with --task classify")
    assert "holding out" not in proc.stdout  # X_test and y_test are the test set
    r2 = float(next(line for line in proc.stdout.splitlines() if line.startswith("test RMSE")).split()[4])
    assert r2 > 0.95
    proc = command("evaluate", str(model_path), "--data", str(data), cwd=tmp_path)
    assert proc.returncode == 0 and "share of these rows seen in training: 0.0%" in proc.stdout  # X_test only
    proc = command("predict", str(model_path), str(data), cwd=tmp_path)
    rows = list(csv.reader(proc.stdout.splitlines()))
    assert rows[0] == ["prediction"] and len(rows) == 301
    pred = np.array([float(r[0]) for r in rows[1:]])
    assert np.sqrt(np.mean((pred - t[:300]) ** 2)) < 0.25 * t.std()  # in the target's units, not scaled


def test_task_inference_and_its_override(tmp_path):
    assert tabular.infer_task(np.array([1, 2, 3, 1]))[0] == "classify"
    assert tabular.infer_task(np.array([1.0, 2.0, 3.0]))[0] == "classify"
    assert tabular.infer_task(np.arange(51.0)) == ("regress", "the labels are whole numbers with 51 distinct "
                                                              "values (more than 50)")
    assert tabular.infer_task(np.array([1.5, 2.0]))[0] == "regress"
    assert tabular.infer_task(np.array(["a", "b"]))[0] == "classify"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 2))
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(np.int64) * 10)  # two whole numbers
    proc = command("train", "--data", "d.npz", "--task", "regress", "--epochs", "2", "--out", "m.npz", "--force",
                   cwd=tmp_path)
    assert proc.stdout.splitlines()[0] == ("task: regress (--task; without it: classify, as the labels are 2 "
                                           "distinct whole numbers)")
    assert fastnn.load(tmp_path / "m.npz").loss == "mse"


def test_csv_details_header_target_column_and_bad_cells(tmp_path):
    data, X, y = flowers(tmp_path, n=40, header=False)  # no header: numbers in row 1
    table = tabular.read_table(data)
    assert table.columns is None and table.X.shape == (40, 4) and table.y.tolist() == y.tolist()
    (tmp_path / "named").mkdir()
    named, X, _ = flowers(tmp_path / "named", n=40)
    table = tabular.read_table(named)  # a header row: names, and the last column is the label
    assert table.columns == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    np.testing.assert_allclose(table.X, X, atol=1e-4)
    for target in ("sepal_width", "1", "-4"):  # by name, by number, from the end: species becomes a feature
        with pytest.raises(tabular.DataError, match=r"row 2, column 5 \(species\) holds '\w+', which is not a number"):
            tabular.read_table(named, target)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1.0,2.0,x\n3.0,,y\n")
    with pytest.raises(tabular.DataError, match=r"bad.csv: row 3, column 2 \(b\) is empty; feature columns must be "
                                                r"numbers"):
        tabular.read_table(bad)
    bad.write_text("a,b,label\n1.0,2.0,x\n3.0,red,y\n")
    with pytest.raises(tabular.DataError, match=r"row 3, column 2 \(b\) holds 'red', which is not a number"):
        tabular.read_table(bad)
    with pytest.raises(tabular.DataError, match=r"has no column 'price'; its columns are \['a', 'b', 'label'\]"):
        tabular.read_table(bad, "price")
    proc = command("train", "--data", str(bad), "--target", "price", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "has no column 'price'" in proc.stderr


def test_checkpoints_from_the_command_line_resume_to_the_same_model(tmp_path):
    data, *_ = flowers(tmp_path, n=120)
    whole = command("train", "--data", str(data), "--epochs", "20", "--out", "whole.npz", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    part = command("train", "--data", str(data), "--epochs", "5", "--out", "part.npz", "--checkpoint-dir", "ck",
                   "--force", cwd=tmp_path)  # (5 epochs may not learn yet: --force saves it anyway)
    assert part.returncode == 0 and (tmp_path / "ck" / "checkpoint.npz").exists()
    resumed = command("train", "--data", str(data), "--epochs", "20", "--out", "resumed.npz", "--checkpoint-dir", "ck",
                      "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for p, q in zip(fastnn.load(tmp_path / "whole.npz").parameters(), fastnn.load(tmp_path / "resumed.npz").parameters()):
        np.testing.assert_array_equal(p, q)


def test_a_full_mnist_model_is_not_scored_on_the_bundled_digits(tmp_path):
    # the bundled digits are MNIST training images: a model trained on them must not be scored there
    from fastnn.datasets import load_mnist_5k
    (X, y), _ = load_mnist_5k()
    model = fastnn.Sequential(fastnn.Dense(784, 10), seed=0)
    model.fit(X, y)  # stands in for a full-MNIST model: it has seen these rows
    model.save(tmp_path / "full.npz")
    trained_on_test = fastnn.Sequential(fastnn.Dense(784, 10), seed=0)
    trained_on_test.fit(*load_mnist_5k()[1])
    trained_on_test.save(tmp_path / "cheat.npz")
    proc = command("evaluate", "cheat.npz", cwd=tmp_path)  # the default: the bundled test split
    assert proc.returncode == 1 and "share of these rows seen in training: 100.0%" in proc.stdout
    assert "pass --allow-overlap" in proc.stderr
    proc = command("evaluate", "full.npz", cwd=tmp_path)
    assert proc.returncode == 0 and "share of these rows seen in training: 0.0%" in proc.stdout
    assert model.evaluate(X[:500], y[:500])["seen_in_training"] == 1.0  # the Python evaluate reports it too
