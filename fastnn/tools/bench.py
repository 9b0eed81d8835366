"""``fastnn bench``: the training step of fastnn beside NumPy, PyTorch and JAX, measured fairly.

How it measures (``../shared/PERF_NOTES.md`` explains why):
- each contender runs in its own process whose thread limits are set in its environment
  before anything is imported, and whose CPU affinity is limited to ``threads`` cores;
- after a warm-up (the first step, with any compilation, is reported separately) the parent
  asks the contenders in turn, round after round, for a block of about 0.25 s of steps, so
  drift on a noisy machine hits all of them alike; medians of the per-step times are quoted;
- between blocks the parent pauses 0.1 s, so the previous contender's BLAS threads stop
  spinning before the next one starts;
- before timing, the losses of the first three steps from the same initial parameters must
  agree between contenders: a contender that trains something else is not compared;
- the machine's matrix-multiply peak is a NumPy float32 2048^3 product in a worker with the
  same thread count.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

PEAK_N = 2048
# After its block a contender's OpenBLAS threads keep spinning for a while, stealing the cores
# from the next one. Measured at 784-256-128-10, batch 512, with 50 ms blocks and no pause:
# fastnn 7.5 ms and PyTorch 7.7 ms per step, against 3.8 and 4.7 ms with a pause. So blocks
# are long enough that a spin tail touches a minority of steps (the median ignores it), and
# the parent pauses between blocks.
BLOCK_SECONDS = 0.25
SETTLE_SECONDS = 0.1


def thread_env(threads: int) -> dict:
    """Environment that limits every thread pool we know of to ``threads``."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                        f" intra_op_parallelism_threads={threads}").strip()
    return env


class Worker:
    """A contender in its own process, driven by JSON lines over its stdin/stdout."""

    def __init__(self, contender: str, case: str, threads: int, module: str = "fastnn.tools.bench_worker"):
        self.name = contender
        self.proc = subprocess.Popen([sys.executable, "-m", module, contender, case, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=thread_env(threads))
        self.hello = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"benchmark worker {self.name!r} exited with code {code} (see its error above)")
        return json.loads(line)

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def measure_peak(threads: int, repeats: int = 5) -> float:
    """GFLOP/s of a NumPy float32 2048^3 matrix product with ``threads`` threads (median)."""
    w = Worker("peak", "-", threads)
    try:
        return w.ask(cmd="peak", repeats=repeats)["gflops"]
    finally:
        w.close()


def run_case(case, contenders, threads: int, rounds: int, check_rtol: float = 2e-3) -> dict:
    """Time one case for every contender, interleaved; returns a result dict."""
    workers = []
    try:
        for name in contenders:
            workers.append(Worker(name, case.name, threads))
        reference = workers[0].hello["losses"]
        for w in workers[1:]:
            if not np.allclose(w.hello["losses"], reference, rtol=check_rtol, atol=1e-6):
                raise AssertionError(f"{case.name}: {w.name} losses {w.hello['losses']} differ from "
                                     f"{workers[0].name} {reference}: not the same computation")
        blocks = {w.name: max(1, min(2000, int(BLOCK_SECONDS / max(w.hello["estimate_s"], 1e-7)))) for w in workers}
        times = {w.name: [] for w in workers}
        for r in range(rounds):
            order = workers[r % len(workers):] + workers[:r % len(workers)]  # rotate who goes first
            for w in order:
                time.sleep(SETTLE_SECONDS)
                times[w.name] += w.ask(cmd="run", steps=blocks[w.name])["times"]
    finally:
        for w in workers:
            w.close()
    result = {"name": case.name, "label": case.label, "batch": case.batch, "samples": case.samples,
              "flops": case.flops, "contenders": {}}
    for w in workers:
        median = float(np.median(times[w.name]))
        result["contenders"][w.name] = {
            "median_s": median, "samples_per_s": case.rows / median, "gflops": case.flops / median / 1e9,
            "first_step_s": w.hello["first_step_s"], "steps_timed": len(times[w.name]),
            "losses": w.hello["losses"]}
    peers = [v["median_s"] for k, v in result["contenders"].items() if k != "fastnn"]
    for v in result["contenders"].values():
        v["ratio_to_fastest_peer"] = v["median_s"] / min(peers) if peers else None
    return result


def machine_info(threads: int) -> dict:
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "date": time.strftime("%Y-%m-%d")}


def _fmt_time(s):
    return f"{s * 1e6:,.1f} us" if s < 1e-3 else f"{s * 1e3:,.2f} ms"


FOOTER = "median of interleaved ~0.25 s blocks after warm-up; first step (compile) excluded."


def _header(machine, peak):
    return [f"fastnn bench: {machine['cpu']}, {machine['threads']} thread(s) for every contender, {machine['date']}",
            f"matmul peak (NumPy float32 {PEAK_N}^3, same threads): {peak:.1f} GFLOP/s",
            "", f"{'case (per step, or per epoch)':<48} {'contender':<8} {'median':>12} {'samples/s':>11} "
                f"{'GFLOP/s':>8} {'% peak':>7} {'vs fastest peer':>16}"]


def _case_lines(case, peak):
    lines = []
    for k, (name, v) in enumerate(case["contenders"].items()):
        ratio = "" if v["ratio_to_fastest_peer"] is None else f"{v['ratio_to_fastest_peer']:.2f}x"
        lines.append(f"{case['label'] if k == 0 else '':<48} {name:<8} {_fmt_time(v['median_s']):>12} "
                     f"{v['samples_per_s']:>11,.0f} {v['gflops']:>8.1f} {100 * v['gflops'] / peak:>6.1f}% {ratio:>16}")
    return lines


def format_table(report: dict) -> str:
    lines = _header(report["machine"], report["peak_gflops"])
    for case in report["cases"]:
        lines += _case_lines(case, report["peak_gflops"])
    return "\n".join(lines + ["", FOOTER])


def main(args) -> int:
    from .peers import CASES, available

    threads = args.threads or os.cpu_count()
    names = [c.strip() for c in args.cases.split(",")] if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    wanted = [c.strip() for c in args.contenders.split(",")] if args.contenders else ["fastnn", "numpy", "torch", "jax"]
    contenders = [c for c in wanted if available(c)]
    skipped = [c for c in wanted if c not in contenders]
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    from tqdm.auto import tqdm

    report = {"machine": machine_info(threads), "peak_gflops": measure_peak(threads), "cases": []}
    print("\n".join(_header(report["machine"], report["peak_gflops"])), flush=True)
    # each case's rows as soon as it is timed (a full run takes a minute or more), with a bar across cases
    with tqdm(total=len(names), unit="case", leave=False, file=sys.stderr) as bar:
        for name in names:
            bar.set_description(f"timing {name}")
            case = run_case(CASES[name], contenders, threads, args.rounds)
            report["cases"].append(case)
            bar.write("\n".join(_case_lines(case, report["peak_gflops"])), file=sys.stdout)
            sys.stdout.flush()
            bar.update()
    print("\n" + FOOTER)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0
