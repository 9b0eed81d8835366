"""The benchmark suite and the profiling tools: they check before they time, and they measure
the real step."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastnn
import fastnn.kernels as K
from fastnn import cli
from fastnn.profile import profile_step
from fastnn.kernels.optimizers import RULES
from fastnn.testing import ACTIVATIONS, KernelCase, kernel_case_specs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeBenchmark:
    """Stands in for pytest-benchmark's fixture: records whether anything was timed."""

    def __init__(self):
        self.extra_info, self.timed, self.group = {}, 0, None

    def __call__(self, fn, *args):
        self.timed += 1
        return fn(*args)


def test_every_kernel_has_a_benchmark_case():
    specs = kernel_case_specs()
    assert {spec[0] for spec in specs} == set(K.KERNELS)
    # every activation and every optimizer, from their registries
    assert {act for kernel, _, act in specs if kernel == "activation_forward"} == set(ACTIVATIONS)
    assert {name for kernel, _, name in specs if kernel == "optimizer_update"} == set(RULES)


@pytest.mark.parametrize("kernel, output", [("dense_forward", 4),  # out (after x, W, b, setting)
                                            ("dense_backward", 6),  # dW
                                            ("adam_update", 0)])  # p
def test_a_broken_kernel_fails_its_benchmark_before_timing(kernel, output, monkeypatch):
    bench = load_bench("bench_kernels")
    module = importlib.import_module(f"fastnn.kernels.{'optimizers' if 'update' in kernel else 'dense'}")
    original = module.run  # how the public wrapper calls its compiled kernel

    def broken(dispatcher, signature, *args):
        result = original(dispatcher, signature, *args)
        args[output][..., :1] += 1e-3  # a small error in one column of one output
        return result

    monkeypatch.setattr(module, "run", broken)
    spec = next(s for s in bench.SPECS if s[0] == kernel)
    fake = FakeBenchmark()
    with pytest.raises(AssertionError, match="max abs error"):
        bench.test_kernel(fake, lambda *a, **k: None, spec, "numba")
    assert fake.timed == 0
    monkeypatch.undo()
    bench.test_kernel(fake, lambda *a, **k: None, spec, "numba")  # and the real kernel passes
    assert fake.timed == 1


def test_kernel_case_runs_the_public_kernel_with_preallocated_outputs():
    case = KernelCase("dense_forward", dict(N=4, I=5, O=3))
    out = case.run_numba()
    assert out is case.outputs[0]
    np.testing.assert_allclose(out, case.run_numpy(), rtol=1e-5)


def small_problem(seed=0):
    model = fastnn.Sequential(fastnn.Dense(20, 16, activation="relu"), fastnn.Dense(16, 8, activation="gelu"),
                              fastnn.Dense(8, 3), seed=seed)
    rng = np.random.default_rng(1)
    return model, rng.random((32, 20), dtype=np.float32), rng.integers(0, 3, 32)


def test_profile_times_every_kernel_of_the_real_step_and_changes_nothing():
    model, X, y = small_problem()
    result = profile_step(model, X, y, "softmax_cross_entropy", fastnn.Adam(), steps=7, warmup=2)
    calls = {(r["kernel"], r["shape"]): r["calls"] for r in result["kernels"]}
    assert calls == {("dense_forward", "20x16"): 7, ("dense_forward", "16x8"): 7, ("dense_forward", "8x3"): 7,
                     ("dense_backward", "20x16"): 7, ("dense_backward", "16x8"): 7, ("dense_backward", "8x3"): 7,
                     ("softmax_cross_entropy", "32x3"): 7, ("finite_guard", "499"): 7,
                     ("optimizer_update", "499"): 7}  # 20*16+16 + 16*8+8 + 8*3+3
    kernel_time = sum(r["seconds"] for r in result["kernels"])
    assert 0 < kernel_time < result["profiled_s"]
    flops = {r["shape"]: r["flops"] for r in result["kernels"] if r["kernel"] == "dense_backward"}
    assert flops["20x16"] == 7 * 2 * 32 * 20 * 16  # the first layer computes no dx
    assert flops["16x8"] == 7 * 4 * 32 * 16 * 8
    # timers wrap the step without changing it: 2 + 7 plain, then 2 + 7 timed steps equal 18 plain ones
    plain, _, _ = small_problem()
    opt = fastnn.Adam()
    for _ in range(18):
        plain.train_step(X, y, optimizer=opt)
    for p, q in zip(model.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p, q)


def test_profile_command_prints_a_kernel_table(capsys):
    assert cli.main(["profile", "--sizes", "30,8,4", "--batch-size", "16", "--steps", "5", "--activation",
                     "tanh", "--optimizer", "adam"]) == 0
    out = capsys.readouterr().out
    for word in ("dense_forward", "dense_backward", "softmax_cross_entropy", "optimizer_update", "outside kernels",
                 "samples/s", "GFLOP/s", "% peak"):
        assert word in out


def test_bench_command_writes_a_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "--cases", "tanh-b64", "--contenders", "fastnn,numpy", "--rounds", "2",
                     "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1-64-1 tanh, batch 64" in out and "1 thread(s) for every contender" in out
    report = json.loads(path.read_text())
    assert report["machine"]["threads"] == 1 and report["peak_gflops"] > 0
    (case,) = report["cases"]
    assert set(case["contenders"]) == {"fastnn", "numpy"}
    fast, ref = case["contenders"]["fastnn"], case["contenders"]["numpy"]
    np.testing.assert_allclose(fast["losses"], ref["losses"], rtol=2e-3)
    assert fast["median_s"] > 0 and fast["steps_timed"] >= 2
    assert fast["ratio_to_fastest_peer"] == pytest.approx(fast["median_s"] / ref["median_s"])
    assert fast["samples_per_s"] == pytest.approx(64 / fast["median_s"])


def test_bench_rejects_unknown_cases(capsys):
    assert cli.main(["bench", "--cases", "nope"]) == 2
    assert "unknown case(s) ['nope']" in capsys.readouterr().err


def test_kernel_benchmarks_pass_buffers_as_training_does():
    from fastnn.testing import KernelCase

    forward = KernelCase("dense_forward", dict(N=4, I=3, O=2))
    assert forward.outputs[0] is forward.outputs[1]  # z is out: the forward without a z write
    gelu = KernelCase("dense_forward", dict(N=4, I=3, O=2), act="gelu")
    assert gelu.outputs[0] is not gelu.outputs[1]  # gelu keeps z, as in training
    backward = KernelCase("dense_backward", dict(N=4, I=3, O=2))
    assert backward.outputs[3] is backward.inputs[0]  # dz is dout: in place, no copy
    backward.check()


def test_bench_prints_each_case_as_it_finishes(tmp_path):
    # a full run takes a minute or more: its first rows must not wait for the last case
    fastnn_command = pathlib.Path(sys.executable).parent / "fastnn"
    proc = subprocess.Popen([str(fastnn_command), "bench", "--cases", "tanh-b64,sigmoid-b32", "--contenders",
                             "fastnn,numpy", "--rounds", "2", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        for line in proc.stdout:
            if line.startswith("1-64-1 tanh, batch 64"):
                break
        running = proc.poll() is None  # the second case is still being timed
        rest = proc.stdout.read()
        stderr = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert running and proc.returncode == 0
    assert "784-16-16-10 sigmoid, batch 32" in rest and "timing sigmoid-b32" in stderr  # the bar names the case


@pytest.mark.parametrize("name", list(RULES))
def test_every_optimizers_benchmark_case_checks_every_buffer(name, dtype):
    case = KernelCase("optimizer_update", dict(P=50), dtype=dtype, act=name)
    case.check()
    assert name in case.group
    p, state = case.run_numba()
    assert set(state) == set(RULES[name].rows_for({**{h.name: h.default for h in RULES[name].hyper}, **case.hyper,
                                                    "lr": case.inputs[5]}))


def test_population_bench_checks_its_contenders_and_writes_a_table(tmp_path, capsys):
    path = tmp_path / "population.json"
    assert cli.main(["bench", "--population", "--cases", "fit1", "--contenders", "population,loop", "--rounds", "1",
                     "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "64 x 1-64-1 tanh, batch 64, 4,096 rows, own orders" in out
    (case,) = json.loads(path.read_text())["cases"]
    pop, loop = case["contenders"]["population"], case["contenders"]["loop"]
    assert pop["median_s"] > 0 and pop["per_member_s"] == pytest.approx(pop["median_s"] / 64)
    assert pop["ratio_to_jax"] is None  # (no JAX among the contenders)


def test_population_bench_contenders_train_the_same_members():
    # every contender's first-batch losses are the population's (what run_case checks before
    # timing), and the population and the loop end with the same parameters
    from fastnn.tools import bench_population as bp

    case = bp.PopulationCase("tiny", (3, 8, 2), "tanh", 16, 64, 4)
    model, params, X, y, orders = bp.problem(case)
    runner = bp.PopulationRun(case, model, params, X, y, orders)
    runner.X, runner.y = X, y
    loop = bp.LoopRun(case, model, params, X, y, orders)
    (first, final), (loop_first, loop_final) = runner.run(), loop.run()
    np.testing.assert_allclose(first, loop_first, rtol=1e-6)
    np.testing.assert_allclose(final, loop_final, rtol=1e-5, atol=1e-6)
    changed = final.copy()
    changed[1, 3] += 0.01  # (a member that trained otherwise is caught)
    summary = lambda p: {"norms": np.linalg.norm(p, axis=1).tolist(), "projections": p.sum(axis=1).tolist()}  # noqa
    bp.agree(case, "loop", summary(loop_final.astype(np.float64)), "population", summary(final.astype(np.float64)))
    with pytest.raises(AssertionError, match="member 1"):
        bp.agree(case, "loop", summary(changed.astype(np.float64)), "population", summary(final.astype(np.float64)))


@pytest.mark.parametrize("peer", ["jax", "torch"])
def test_population_peers_train_what_fastnn_trains(peer):
    # JAX and PyTorch are benchmark peers, not extras of fastnn: checked where installed
    pytest.importorskip(peer)
    from fastnn.tools import bench_population as bp
    from fastnn.tools import population_peers

    case = bp.PopulationCase("tiny", (3, 8, 2), "tanh", 16, 64, 4)
    model, params, X, y, orders = bp.problem(case)
    factory = {"jax": population_peers.jax_population, "torch": population_peers.torch_population}[peer]
    first, final = factory(case.sizes, case.activation, case.loss, params, X, y, orders, case.batch, bp.LR,
                           bp.MOMENTUM)()
    runner = bp.PopulationRun(case, model, params, X, y, orders)
    runner.X, runner.y = X, y
    ours, params_after = runner.run()
    np.testing.assert_allclose(first, ours, rtol=1e-5)
    for m, member in enumerate(final):
        np.testing.assert_allclose(params_after[m], np.concatenate([p.ravel() for p in member]), rtol=1e-4, atol=1e-6)
