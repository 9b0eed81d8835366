"""The command line: train, evaluate, approx, linear, show-weights."""
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import cli, story
from fastnn import plots
from fastnn.plots import MissingPlotExtra

from .conftest import require
from .test_datasets import write_mnist


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_on_the_bundled_digits_saves_and_never_overwrites(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "train", "--epochs", "2", "--hidden", "32")
    assert code == 0 and "bundled digits" in out and "saved fastnn-model.npz" in out
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 80
    code, out, _ = run(capsys, "train", "--epochs", "1", "--hidden", "32")
    assert "saved fastnn-model-2.npz" in out  # a second run picks a new name
    before = (tmp_path / "fastnn-model.npz").read_bytes()
    code, _, err = run(capsys, "train", "--epochs", "1", "--out", "fastnn-model.npz")
    assert code == 2 and "exists; pass --force" in err
    assert (tmp_path / "fastnn-model.npz").read_bytes() == before
    code, _, _ = run(capsys, "train", "--epochs", "1", "--hidden", "16", "--out", "fastnn-model.npz", "--force")
    assert code == 0 and fastnn.load(tmp_path / "fastnn-model.npz").layers[0].out_features == 16


def test_train_and_evaluate_on_idx_files(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    write_mnist(data, n_train=64, n_test=32)
    model = tmp_path / "m.npz"
    code, out, _ = run(capsys, "train", "--data", str(data), "--epochs", "1", "--hidden", "8", "--out", str(model),
                          "--force")  # 64 random images: chance accuracy is expected here
    assert code == 0 and "64 train / 32 test" in out and model.exists()
    code, out, _ = run(capsys, "evaluate", str(model), "--data", str(data))
    assert code == 0 and "confusion matrix" in out
    rows = [line.split() for line in out.splitlines()[-10:]]
    confusion = np.array([[int(v) for v in row[1:]] for row in rows])
    assert confusion.shape == (10, 10) and confusion.sum() == 32
    predicted = fastnn.load(model).predict(fastnn.datasets.load_mnist(data)[1][0]).argmax(axis=1)
    assert confusion.trace() == int(np.sum(predicted == fastnn.datasets.load_mnist(data)[1][1]))


def test_bad_data_and_bad_models_are_clear_errors(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "is not a folder of MNIST IDX files" in err
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    code, _, err = run(capsys, "evaluate", str(tmp_path / "bad.npz"))
    assert code == 2 and "is not a fastnn model file: it is not an .npz archive" in err
    fastnn.Sequential(fastnn.Dense(3, 2)).save(tmp_path / "small.npz")
    code, _, err = run(capsys, "evaluate", str(tmp_path / "small.npz"))
    assert code == 2 and "a digit classifier maps 784 to 10" in err
    with pytest.raises(SystemExit):
        cli.main(["train", "--hidden", "12,x"])


def test_universal_approximation_continuous_targets_and_the_step():
    for name in ("sin", "abs"):
        fn, interval = story.BUILTIN_TARGETS[name]
        _, _, fits = story.approximate(fn, interval, widths=(1, 64), epochs=1500)
        assert fits[1]["mse"] <= fits[0]["mse"] / 10, name
    fn, interval = story.BUILTIN_TARGETS["step"]
    _, _, fits = story.approximate(fn, interval, widths=(1, 8, 64), epochs=1500)
    for fit in fits:
        assert 0.4 <= fit["max_error_near_jump"] <= 0.6  # a continuous fit cannot jump
    assert fits[-1]["mse"] < fits[0]["mse"]


def test_approx_command_prints_a_table_and_explains_the_step(capsys):
    code, out, _ = run(capsys, "approx", "step", "--epochs", "200")
    assert code == 0 and "max error near 0" in out and "continuous function" in out
    widths = [int(line.split()[0]) for line in out.splitlines() if len(line.split()) == 4 and line.split()[0].isdigit()]
    assert widths == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("text, x, expected", [("x**2 + sin(3*x)", 0.5, 0.25 + np.sin(1.5)),
                                               ("-abs(x) / 2 + pi", -1.0, np.pi - 0.5),
                                               ("exp(-x*x)", 1.0, np.exp(-1))])
def test_expressions_are_evaluated(text, x, expected):
    assert story.parse_expression(text)(np.array([x]))[0] == pytest.approx(expected)


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "x.__class__", "open('f')", "lambda: 1",
                                  "[x for x in ()]", "y + 1", "sin(x, 2)", "x if x else 1", "2 +"])
def test_expressions_reject_everything_else(text):
    with pytest.raises(ValueError):
        story.parse_expression(text)


def test_an_expression_that_is_not_finite_is_refused():
    with pytest.raises(ValueError, match="not finite everywhere"):
        story.approximate(story.parse_expression("log(x)"), (-1, 1), widths=(1,), epochs=1)


def test_identity_network_collapses_to_one_linear_map():
    model = story.digits_network("identity", hidden=(32, 16), dtype=np.float64)
    rng = np.random.default_rng(0)
    X = rng.random((20, 784))
    model.fit(X, rng.integers(0, 10, 20), optimizer=fastnn.Adam(), epochs=3, batch_size=5)
    W, b = story.collapse(model)
    assert W.shape == (784, 10)
    np.testing.assert_allclose(X @ W + b, model.predict(X), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="not linear"):
        story.collapse(story.digits_network("relu", hidden=(4,)))


def test_xor_needs_a_non_linearity():
    assert story.xor_accuracy("relu") == 1.0
    assert story.xor_accuracy("identity") <= 0.75


def test_linear_command_reports_three_accuracies(capsys):
    code, out, _ = run(capsys, "linear", "--epochs", "1")
    assert code == 0
    assert "relu network" in out and "identity network" in out and "one linear layer" in out
    assert "is one linear map" in out and "XOR" in out


def test_pictures(tmp_path, capsys):
    require("matplotlib")
    model = tmp_path / "m.npz"
    story.digits_network("relu", hidden=(16,)).save(model)
    for argv, picture in ((["show-weights", str(model), "--plot"], "w.png"),
                          (["approx", "abs", "--epochs", "50", "--plot"], "fit.png"),
                          (["train", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path / "t.npz"), "--plot"],
                           "curves.png")):
        code, out, _ = run(capsys, *argv, str(tmp_path / picture))
        assert code == 0 and f"wrote {tmp_path / picture}" in out
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_numbers_still_print(tmp_path, capsys, monkeypatch):
    def missing(*args):
        raise MissingPlotExtra(plots.INSTALL_HINT)

    monkeypatch.setattr("fastnn.plots.require_matplotlib", missing)
    code, out, err = run(capsys, "approx", "abs", "--epochs", "50", "--plot", str(tmp_path / "fit.png"))
    assert code == 1 and "MSE fell" in out and 'pip install "fastnn-cpu[plot]"' in err
    assert not (tmp_path / "fit.png").exists()


FASTNN = pathlib.Path(sys.executable).parent / "fastnn"  # the installed entry point


def command(*argv, cwd):
    return subprocess.run([str(FASTNN), *argv], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_a_run_that_fails_to_learn_says_so_and_saves_nothing_unless_forced(tmp_path):
    out = tmp_path / "m.npz"
    proc = command("train", "--lr", "1e6", "--epochs", "1", "--hidden", "8", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 1 and not out.exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training failed to learn: the training loss grew from ")
    assert "the learning rate 1e+06 is likely too high" in last and last.endswith(
        "nothing saved (--force saves the model anyway)")
    proc = command("train", "--lr", "1e6", "--epochs", "1", "--hidden", "8", "--out", str(out), "--force",
                   cwd=tmp_path)
    assert proc.returncode == 0 and out.exists() and "warning: training failed to learn" in proc.stderr
    assert "(saved anyway: --force)" in proc.stderr


def test_divergence_in_train_is_one_error_line_and_saves_nothing(tmp_path):
    out = tmp_path / "m.npz"
    proc = command("train", "--optimizer", "sgd", "--lr", "1e30", "--epochs", "1", "--hidden", "8", "--out", str(out),
                   cwd=tmp_path)
    assert proc.returncode == 1 and not out.exists() and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: the loss, its gradients or the parameters' update became NaN or inf in epoch 1 at step \d+ of 63; the model "
                        r"keeps the parameters of the last finite step\. Lower the learning rate or check the data\. "
                        r"Nothing was saved\.", last)


@pytest.mark.parametrize("argv,message", [
    (["approx", "--expr", "sinh(x)+foo(x)"],
     "error: `foo` is not an allowed function in 'sinh(x)+foo(x)'; allowed: abs, arctan, cos, cosh, exp, floor, log, "
     "sign, sin, sinh, sqrt, tan, tanh"),
    (["profile", "--sizes", "784,abc"],
     "fastnn profile: error: argument --sizes: --sizes must be comma-separated integers such as 784,256,128,10, "
     "got '784,abc'"),
    (["evaluate", "nowhere.npz"], "error: no model file nowhere.npz"),
])
def test_messages_name_what_was_wrong(tmp_path, argv, message):
    proc = command(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == message


def test_show_weights_says_which_neurons_it_draws(tmp_path):
    require("matplotlib")
    fastnn.Sequential(fastnn.Dense(784, 100, activation="relu"), fastnn.Dense(100, 10)).save(tmp_path / "d.npz")
    proc = command("show-weights", "d.npz", "--plot", "w.png", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "w.png").exists()
    assert "drawing neurons 0-63 (64 of 100); --neurons chooses others, such as 64-127 or 3,5,7" in proc.stdout
    proc = command("show-weights", "d.npz", "--plot", "w.png", "--neurons", "90-99,5", cwd=tmp_path)
    assert proc.returncode == 0 and "drawing neurons 90-99,5 (11 of 100)" in proc.stdout
    proc = command("show-weights", "d.npz", "--plot", "w.png", "--neurons", "99-120", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --neurons 99-120: the first layer has neurons 0 to 99"


@pytest.mark.parametrize("target", sorted(story.BUILTIN_TARGETS))
def test_approx_never_fits_worse_with_more_neurons(target):
    fn, interval = story.BUILTIN_TARGETS[target]
    _, _, fits = story.approximate(fn, interval, widths=(1, 2, 4, 8, 16), epochs=400)
    mses = [f["mse"] for f in fits]
    assert all(b <= a for a, b in zip(mses, mses[1:])), mses
    assert mses[-1] < mses[0]


def test_a_narrower_fit_carries_into_a_wider_network_exactly():
    narrow = fastnn.Sequential(fastnn.Dense(1, 3, activation="tanh"), fastnn.Dense(3, 1), seed=1, dtype=np.float64)
    wide = fastnn.Sequential(fastnn.Dense(1, 8, activation="tanh"), fastnn.Dense(8, 1), seed=2, dtype=np.float64)
    story._embed(wide, narrow.parameters())
    x = np.linspace(-2, 2, 50).reshape(-1, 1)
    np.testing.assert_allclose(wide.predict(x), narrow.predict(x), rtol=1e-14)  # (BLAS may add the zeros apart)


def test_file_errors_through_the_command(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    proc = command("evaluate", "notes.txt", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: notes.txt is not a fastnn model file: it is not an .npz archive (a model is one, written by "
        "Sequential.save), or the archive is cut short")
    proc = command("train", "--epochs", "1", "--hidden", "8", "--out", "nodir/m.npz", "--force", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (  # said before any training
        "error: cannot write nodir/m.npz: the folder " + str(tmp_path / "nodir") + " does not exist; create it first")
