"""``fastnn bench --population``: M small networks trained together, beside their peers.

Contenders, each in its own process (``bench.Worker``), one epoch of every member per timed unit:
    population  ``fastnn.Population.fit``: one compiled loop, threads each owning members
    loop        M ``Sequential.fit`` calls one after another (what fastnn did before populations)
    jax         ``jax.jit(jax.vmap(epoch))``, the epoch a ``lax.scan`` over the batches
    torch       ``torch.func``: ``stack_module_state`` + ``vmap(grad)`` per batch
Every contender starts from the same parameters (fastnn's initialisation, member m from seed m)
and takes each member's rows in the same order; before timing, every contender's first-batch
losses and its parameters after the first epoch must agree with the population's (the same
forward pass, gradients, learning rate, momentum and order). Rounds are interleaved as in ``fastnn bench``.
``--busy N`` runs N single-thread spinning processes beside every contender while it is timed
(at the same nice level): a machine other work shares.

Run as ``python -m fastnn.tools.bench_population CONTENDER CASE THREADS`` it is one worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

LR, MOMENTUM = 0.01, 0.9


@dataclass(frozen=True)
class PopulationCase:
    name: str
    sizes: tuple
    activation: str
    batch: int
    rows: int  # per member and epoch
    members: int
    loss: str = "softmax_cross_entropy"
    shared: bool = False  # one order for every member

    @property
    def label(self):
        order = "shared order" if self.shared else "own orders"
        return (f"{self.members} x {'-'.join(map(str, self.sizes))} {self.activation}, batch {self.batch}, "
                f"{self.rows:,} rows, {order}")

    @property
    def flops(self) -> int:
        """Matrix-product FLOPs of one epoch of every member (as ``peers.Case.flops``)."""
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        return (sum(6 * i * o for i, o in pairs) - 2 * pairs[0][0] * pairs[0][1]) * self.rows * self.members


CASES = {c.name: c for c in (
    PopulationCase("class8", (8, 64, 64, 4), "tanh", 64, 8192, 32),
    PopulationCase("class8-shared", (8, 64, 64, 4), "tanh", 64, 8192, 32, shared=True),
    PopulationCase("sigmoid784", (784, 16, 16, 10), "sigmoid", 32, 8192, 32),
    PopulationCase("sigmoid784-shared", (784, 16, 16, 10), "sigmoid", 32, 8192, 32, shared=True),
    PopulationCase("tab32", (32, 128, 64, 2), "relu", 256, 16384, 32),
    PopulationCase("fit1", (1, 64, 1), "tanh", 64, 4096, 64, loss="mse"),
    PopulationCase("class8-m8", (8, 64, 64, 4), "tanh", 64, 8192, 8),
    PopulationCase("class8-m128", (8, 64, 64, 4), "tanh", 64, 8192, 128),
)}
DEFAULT = ("class8", "class8-shared", "sigmoid784", "sigmoid784-shared", "tab32", "fit1")
CONTENDERS = ("population", "loop", "jax", "torch")


def problem(case):
    """(model, per-member parameter lists, X, y, orders (M, rows)): every contender's start."""
    import fastnn

    sizes = case.sizes
    layers = [fastnn.Dense(i, o, activation=case.activation) for i, o in zip(sizes[:-2], sizes[1:-1])]
    model = fastnn.Sequential(*layers, fastnn.Dense(sizes[-2], sizes[-1]), seed=0)
    pop = fastnn.Population(model, size=case.members)
    params = [[p.copy() for p in pop[m].parameters()] for m in range(case.members)]
    rng = np.random.default_rng(1)
    X = rng.random((case.rows, sizes[0]), dtype=np.float32)
    y = (rng.standard_normal((case.rows, sizes[-1])).astype(np.float32) if case.loss == "mse"
         else rng.integers(0, sizes[-1], case.rows))
    if case.shared:
        orders = np.tile(rng.permutation(case.rows), (case.members, 1))
    else:
        orders = np.stack([rng.permutation(case.rows) for _ in range(case.members)])
    return model, params, X, y, orders


class PopulationRun:
    def __init__(self, case, model, params, X, y, orders):
        import fastnn

        self.pop = fastnn.Population(model, size=case.members,
                                     params=np.stack([np.concatenate([p.ravel() for p in m]) for m in params]))
        self.args = dict(loss=case.loss, epochs=1, batch_size=case.batch, rows=list(orders), shuffle=False,
                         shared_order=case.shared)
        self.fastnn = fastnn

    def run(self):
        # (each call goes on from the last: the same work; the first call's results are checked)
        self.pop.fit(self.X, self.y, optimizer=self.fastnn.SGD(lr=LR, momentum=MOMENTUM), **self.args)
        return self.pop.batch_losses[:, 0], self.pop.params


class LoopRun:
    def __init__(self, case, model, params, X, y, orders):
        import fastnn

        self.models = []
        for member in params:
            m = fastnn.Sequential(*[fastnn.Dense(i, o, activation=case.activation)
                                    for i, o in zip(case.sizes[:-2], case.sizes[1:-1])],
                                  fastnn.Dense(case.sizes[-2], case.sizes[-1]))
            for p, q in zip(m.parameters(), member):
                p[...] = q
            self.models.append(m)
        self.start = [[p.copy() for p in member] for member in params]
        # each member's rows gathered in its order once, outside the timing: the loop then runs
        # fit without shuffling (its gather is not timed: a bound in the loop's favour)
        self.data = [(X[o], y[o]) for o in orders]
        self.case, self.fastnn = case, fastnn
        # (the first losses from the starting parameters, outside the timing)
        self.first = np.array([model.loss_and_grad(Xm[:case.batch], ym[:case.batch], loss=case.loss)[0]
                               for model, (Xm, ym) in zip(self.models, self.data)])

    def run(self):
        for m, (model, (Xm, ym)) in enumerate(zip(self.models, self.data)):
            for p, q in zip(model.parameters(), self.start[m]):
                p[...] = q
            model.fit(Xm, ym, loss=self.case.loss, optimizer=self.fastnn.SGD(lr=LR, momentum=MOMENTUM), epochs=1,
                      batch_size=self.case.batch, shuffle=False)
        return self.first, np.stack([np.concatenate([p.ravel() for p in m.parameters()]) for m in self.models])


def contender(name, case, model, params, X, y, orders):
    """A callable that trains one epoch of every member and returns their first-batch losses
    and their parameters after it, (M, P) flat in fastnn's order."""
    if name == "population":
        runner = PopulationRun(case, model, params, X, y, orders)
        runner.X, runner.y = X, y
        return runner.run
    if name == "loop":
        return LoopRun(case, model, params, X, y, orders).run
    from . import population_peers
    factory = {"jax": population_peers.jax_population, "torch": population_peers.torch_population}[name]
    run = factory(case.sizes, case.activation, case.loss, params, X, y, orders, case.batch, LR, MOMENTUM)

    def flat():
        first, final = run()
        return first, np.stack([np.concatenate([np.ravel(p) for p in member]) for member in final])
    return flat


def available(name):
    if name in ("population", "loop"):
        return True
    from .population_peers import available as peers
    return peers().get(name, False)


def worker(argv):
    """One contender's process (see ``bench_worker``: JSON lines, after a warm-up)."""
    from .bench_worker import pin, protocol_stream

    name, case_name, threads = argv[0], argv[1], int(argv[2])
    out = protocol_stream()
    pin(threads)
    if name in ("population", "loop"):
        from .. import set_num_threads
        set_num_threads(threads)
    elif name == "torch":
        import torch
        if torch.get_num_threads() != threads:
            raise RuntimeError(f"torch uses {torch.get_num_threads()} threads, expected {threads}")
    case = CASES[case_name]
    model, params, X, y, orders = problem(case)
    t = time.perf_counter()
    run = contender(name, case, model, params, X, y, orders)
    losses, final = run()
    first = time.perf_counter() - t
    # each member's parameters after the first epoch, summarised for the parent's check: their
    # norm and their distance along a fixed random direction (any difference moves one or both)
    direction = np.random.default_rng(7).standard_normal(final.shape[1])
    final = np.asarray(final, np.float64)
    summary = {"norms": np.linalg.norm(final, axis=1).tolist(), "projections": (final @ direction).tolist()}
    t = time.perf_counter()
    run()
    out.write(json.dumps({"losses": [float(v) for v in losses], "after_epoch": summary, "first_step_s": first,
                          "estimate_s": time.perf_counter() - t}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "stop":
            break
        times = []
        for _ in range(msg["steps"]):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        out.write(json.dumps({"times": times}) + "\n")


def agree(case, name, summary, reference_name, reference):
    """Check that two contenders' members ended the first epoch alike (float32 drift allowed:
    their sums are rounded in other orders)."""
    for key in ("norms", "projections"):
        a, b = np.array(summary[key]), np.array(reference[key])
        scale = np.array(reference["norms"])
        if not np.all(np.abs(a - b) <= 1e-3 * scale + 1e-5):
            worst = int(np.argmax(np.abs(a - b) / scale))
            raise AssertionError(f"{case.name}: after one epoch, {name}'s member {worst} differs from "
                                 f"{reference_name}'s ({key} {a[worst]:.6g} against {b[worst]:.6g}): not the same "
                                 f"training")


def spin(n):
    """n single-thread processes spinning at the caller's nice level (a busy machine)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run_case(case, contenders, threads, rounds, busy=0):
    from .bench import SETTLE_SECONDS, Worker

    workers = []
    try:
        for name in contenders:
            workers.append(Worker(name, case.name, threads, module="fastnn.tools.bench_population"))
        reference = workers[0].hello
        for w in workers[1:]:
            if not np.allclose(w.hello["losses"], reference["losses"], rtol=2e-3, atol=1e-6):
                raise AssertionError(f"{case.name}: {w.name}'s first losses {w.hello['losses'][:4]}... differ from "
                                     f"{workers[0].name}'s {reference['losses'][:4]}...: not the same computation")
            agree(case, w.name, w.hello["after_epoch"], workers[0].name, reference["after_epoch"])
        times = {w.name: [] for w in workers}
        for r in range(rounds):
            order = workers[r % len(workers):] + workers[:r % len(workers)]
            for w in order:
                time.sleep(SETTLE_SECONDS)
                spinners = spin(busy)
                try:
                    if spinners:
                        time.sleep(0.2)  # (the spinners are running before the clock starts)
                    steps = max(1, min(20, int(0.5 / max(w.hello["estimate_s"], 1e-6))))
                    times[w.name] += w.ask(cmd="run", steps=steps)["times"]
                finally:
                    for p in spinners:
                        p.kill()
                        p.wait()
    finally:
        for w in workers:
            w.close()
    result = {"name": case.name, "label": case.label, "flops": case.flops, "members": case.members,
              "busy": busy, "contenders": {}}
    for w in workers:
        median = float(np.median(times[w.name]))
        result["contenders"][w.name] = {"median_s": median, "per_member_s": median / case.members,
                                        "gflops": case.flops / median / 1e9, "epochs_timed": len(times[w.name]),
                                        "first_s": w.hello["first_step_s"]}
    jax = result["contenders"].get("jax")
    for v in result["contenders"].values():
        v["ratio_to_jax"] = v["median_s"] / jax["median_s"] if jax else None
    return result


def _lines(case, peak):
    lines = []
    for k, (name, v) in enumerate(case["contenders"].items()):
        ratio = "" if v["ratio_to_jax"] is None else f"{v['ratio_to_jax']:.2f}x"
        lines.append(f"{case['label'] if k == 0 else '':<62} {name:<10} {v['median_s'] * 1e3:>9.1f} ms "
                     f"{v['per_member_s'] * 1e3:>8.2f} ms {v['gflops']:>7.1f} {100 * v['gflops'] / peak:>6.1f}% "
                     f"{ratio:>7}")
    return lines


def main(args):
    from .bench import machine_info, measure_peak

    threads = args.threads or os.cpu_count()
    names = [c.strip() for c in args.cases.split(",")] if args.cases else list(DEFAULT)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown population case(s) {unknown}; choose from {list(CASES)}")
    wanted = [c.strip() for c in args.contenders.split(",")] if args.contenders else list(CONTENDERS)
    bad = [c for c in wanted if c not in CONTENDERS]
    if bad:
        raise ValueError(f"unknown contender(s) {bad}; choose from {list(CONTENDERS)}")
    contenders = [c for c in wanted if available(c)]
    if len(contenders) < len(wanted):
        print(f"not installed, skipped: {', '.join(c for c in wanted if c not in contenders)}")
    machine = machine_info(threads)
    peak = measure_peak(threads)
    report = {"machine": machine, "peak_gflops": peak, "busy": args.busy, "cases": []}
    print(f"fastnn bench --population: {machine['cpu']}, {threads} thread(s) for every contender, {machine['date']}"
          + (f", beside {args.busy} spinning processes" if args.busy else ""))
    print(f"matmul peak (NumPy float32 2048^3, same threads): {peak:.1f} GFLOP/s; SGD momentum {MOMENTUM}, float32, "
          f"one epoch of every member per unit\n")
    print(f"{'case':<62} {'contender':<10} {'epoch':>12} {'per member':>11} {'GFLOP/s':>7} {'% peak':>7} "
          f"{'vs JAX':>7}")
    for name in names:
        case = run_case(CASES[name], contenders, threads, args.rounds, args.busy)
        report["cases"].append(case)
        print("\n".join(_lines(case, peak)), flush=True)
    print("\nmedian of interleaved rounds after a warm-up; before timing, every contender's first-batch losses and its "
          "members after one epoch were checked against the population's.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    worker(sys.argv[1:])
