"""Before and after a change, in one run: ``fastnn bench`` rows and ``bench_compile.py`` rows of two
checkouts, interleaved round by round (the order alternating), as the compiled-core rule asks.

    python benchmarks/compare.py BEFORE_DIR AFTER_DIR [--rounds 9] [--threads 2] [--what bench,compile]

BEFORE_DIR and AFTER_DIR are checkouts (``git worktree add /tmp/before <commit>``). Each round
runs every case once per checkout in fresh processes; a row prints the medians of the round
medians, the before-runs' own spread (min-max of its rounds) and whether the after median is
within 5% or within that spread; last, the geometric mean of after/before. The compile rows use
BEFORE_DIR's ``bench_compile.py`` scripts for both (one workload), each run on an empty cache.
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in the workers, as on a user's machine.
"""
import argparse
import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

BLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def report(rows, unit, scale):
    ratios = []
    for name, per in rows.items():
        b, a = np.array(per["before"]), np.array(per["after"])
        mb, ma = np.median(b), np.median(a)
        ratios.append(ma / mb)
        within = abs(ma / mb - 1) <= 0.05 or b.min() <= ma <= b.max()
        print(f"  {name:<22} before {mb * scale:10.3f} {unit} (spread {b.min() * scale:.3f}-{b.max() * scale:.3f})  "
              f"after {ma * scale:10.3f} {unit}  after/before {ma / mb:.3f}  "
              f"{'within' if within else ('faster' if ma < mb else 'SLOWER')}")
    print(f"  geometric mean after/before {np.exp(np.mean(np.log(ratios))):.3f}")


def bench_rows(roots, rounds, threads):
    sys.path.insert(0, str(roots["after"]))
    from fastnn.tools import bench
    from fastnn.tools.peers import CASES

    class Worker(bench.Worker):
        def __init__(self, contender, case, threads):
            self.name = contender
            env = {k: v for k, v in bench.thread_env(threads).items() if k not in BLAS_PINS}
            env["PYTHONPATH"] = str(roots[contender])
            old = (pathlib.Path(roots[contender]) / "fastnn" / "_bench_worker.py").exists()
            worker = "fastnn._bench_worker" if old else "fastnn.tools.bench_worker"
            self.proc = subprocess.Popen([sys.executable, "-m", worker, "fastnn", case, str(threads)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                         cwd=tempfile.gettempdir())
            self.hello = self._read()

    bench.Worker = Worker
    rows = {name: {"before": [], "after": []} for name in CASES}
    for r in range(rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for name, case in CASES.items():
            result = bench.run_case(case, order, threads, 1)
            for who in order:
                rows[name][who].append(result["contenders"][who]["median_s"])
        print(f"  bench round {r + 1} of {rounds}", flush=True)
    return rows


def compile_rows(roots, rounds):
    spec = importlib.util.spec_from_file_location("bench_compile_before",
                                                  pathlib.Path(roots["before"]) / "benchmarks" / "bench_compile.py")
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for who in (["before", "after"] if r % 2 == 0 else ["after", "before"]):
                env = {"PYTHONPATH": str(roots[who])}
                cold = bc.fresh(bc.FASTNN, "cold", cache=pathlib.Path(tmp) / f"{who}{r}", env=env)
                sweep = bc.fresh(bc.SWEEP, cache=pathlib.Path(tmp) / f"sweep{who}{r}", env=env)
                for key, value in {**cold, "sweep_s": sweep["sweep_s"]}.items():
                    if key.endswith("_s"):
                        rows.setdefault(key, {"before": [], "after": []})[who].append(value)
            print(f"  compile round {r + 1} of {rounds}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=pathlib.Path)
    parser.add_argument("after", type=pathlib.Path)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--what", default="bench,compile")
    args = parser.parse_args()
    for pin in BLAS_PINS:  # (this command alone: the fresh processes inherit it)
        os.environ.pop(pin, None)
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    what = args.what.split(",")
    if "compile" in what:
        rows = compile_rows(roots, args.rounds)
        print(f"bench_compile rows, {args.rounds} rounds, fresh processes, empty caches:")
        report(rows, "s", 1.0)
    if "bench" in what:
        rows = bench_rows(roots, args.rounds, args.threads)
        print(f"fastnn bench rows, {args.threads} thread(s), {args.rounds} rounds:")
        report(rows, "us", 1e6)


if __name__ == "__main__":
    main()
