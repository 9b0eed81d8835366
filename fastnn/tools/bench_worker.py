"""One contender of ``fastnn bench`` in its own process: ``python -m fastnn.tools.bench_worker NAME CASE THREADS``.

Speaks JSON lines: one greeting after the warm-up, then one answer per command on stdin.
"""
from __future__ import annotations

import json
import os
import sys
import time


def protocol_stream():
    # Keep our own copy of stdout for the protocol; anything a library prints goes to stderr.
    fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(fd, "w", buffering=1)


def pin(threads: int):
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) > threads:
        os.sched_setaffinity(0, cores[:threads])


def main(argv):
    name, case_name, threads = argv[0], argv[1], int(argv[2])
    out = protocol_stream()
    pin(threads)
    if name == "peak":
        out.write(json.dumps({"ready": True}) + "\n")
    else:
        from . import peers
        from .. import set_num_threads

        # Thread counts come from the environment the parent set before any import. Calling
        # torch.set_num_threads(n) again beside Numba's OpenMP made PyTorch's 1-64-1 step 16x
        # slower (3.8 ms vs 0.24 ms), so only fastnn is set here; the others are checked.
        if name == "fastnn":
            set_num_threads(threads)
        elif name == "torch":
            import torch

            if torch.get_num_threads() != threads:
                raise RuntimeError(f"torch uses {torch.get_num_threads()} threads, expected {threads}")
        case = peers.CASES[case_name]
        params, X, y = peers.make_problem(case)
        t = time.perf_counter()
        stepper = peers.contender(name, case)(case, params, X, y)
        losses = [stepper.step()]
        first = time.perf_counter() - t
        losses += [stepper.step() for _ in range(2)]
        t = time.perf_counter()
        for _ in range(5):
            stepper.step()
        estimate = (time.perf_counter() - t) / 5
        out.write(json.dumps({"losses": losses, "first_step_s": first, "estimate_s": estimate}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "stop":
            break
        if msg["cmd"] == "peak":
            from .bench import PEAK_N
            from .profile import measure_peak

            out.write(json.dumps({"gflops": measure_peak(msg["repeats"], PEAK_N)}) + "\n")
        elif msg["cmd"] == "run":
            times = []
            for _ in range(msg["steps"]):
                t = time.perf_counter()
                stepper.step()
                times.append(time.perf_counter() - t)
            out.write(json.dumps({"times": times}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
