"""Mutation testing of fastnn's numeric core with cosmic-ray: how much of the code do the tests check?

    python tools/mutation.py --workdir /tmp/fastnn-mutation [--sample 60] [--seed 0]

Needs the test extras and ``pip install cosmic-ray coverage pytest-timeout``. Works on a clone of the committed
code in ``WORKDIR/src`` (the working tree is never mutated), in four steps:

1. Map lines to tests: run the unit-level test files once under coverage, with
   ``NUMBA_DISABLE_JIT=1`` and ``FASTNN_CACHE=0`` (kernels run as Python, so coverage sees
   them and a mutant costs no compile), one coverage context per test; record which tests
   pass and how long each takes.
2. ``cosmic-ray init`` over MUTATED (operators in SKIPPED_OPERATORS left out), then keep a
   seeded sample of ``--sample`` mutants per file (all of them with ``--sample 0``).
3. ``cosmic-ray exec``: for each mutant, ``tools/mutation.py test`` finds the lines the mutant
   changed (``git diff``) and runs the passing tests that cover them, fastest first, stopping
   at the first failure. A line that runs only at import (a constant, a default argument, a
   decorator) is covered by no test's context: its mutant runs the test files of its module
   (``FALLBACK``).
4. Report killed / survived per file, leaving out the mutants listed in
   ``tests/mutation_equivalents.txt`` (each with its reason): equivalent ones, and compiled-only
   ones (code that exists only when Numba compiles, such as a typed implementation or an
   intrinsic's code generation, which no test can reach with NUMBA_DISABLE_JIT; the compiled
   test suite checks it). Every other survivor is listed.

A full run (``--sample 0``, about 3,000 mutants) takes hours on two cores; the sampled run
estimates each file's score. The README records the last run's numbers and date.

    python tools/mutation.py recheck --workdir /tmp/fastnn-mutation

runs the survivors of a finished session again against the tests of the current commit, after
tests were added for them (survivors in a file changed since the session's commit stay as they were).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

MUTATED = ["fastnn/kernels", "fastnn/reference.py", "fastnn/optim.py", "fastnn/losses.py", "fastnn/layers.py",
           "fastnn/model.py"]
# Files whose code runs only when compiled (intrinsics, code generation, address tables): under
# NUMBA_DISABLE_JIT no test can reach them, so mutating them measures nothing.
NOT_MUTATED = ["fastnn/kernels/_jit.py", "fastnn/kernels/_compose.py", "fastnn/kernels/_blas.py",
               "fastnn/kernels/__init__.py"]
TEST_FILES = ["tests/test_approximations.py", "tests/test_defaults_and_bounds.py", "tests/test_fuzz.py",
              "tests/test_gradients.py", "tests/test_habits.py", "tests/test_kernels.py", "tests/test_model.py",
              "tests/test_robustness.py", "tests/test_schedules.py", "tests/test_targets_and_metrics.py",
              "tests/test_training.py"]
# A binary operator is replaced by its nearest kin only (+ by -, * by /, ...), a comparison by its
# boundary and its negation (< by <= and >=): cosmic-ray's full cross product (ten
# replacements per operator, + by <<, ...) triples the count and adds little a test could miss.
KEEP_BINARY = {"Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "FloorDiv_Div", "Mod_FloorDiv", "Pow_Mul",
               "BitOr_BitAnd", "BitAnd_BitOr", "BitXor_BitOr", "LShift_RShift", "RShift_LShift"}
KEEP_COMPARE = {"Lt_LtE", "Lt_GtE", "LtE_Lt", "LtE_Gt", "Gt_GtE", "Gt_LtE", "GtE_Gt", "GtE_Lt", "Eq_NotEq",
                "NotEq_Eq", "Is_IsNot", "IsNot_Is", "In_NotIn", "NotIn_In"}
# The test files of each mutated module, for lines that run only at import.
FALLBACK = {
    "fastnn/kernels/activations.py": ["tests/test_kernels.py", "tests/test_approximations.py",
                                      "tests/test_targets_and_metrics.py"],
    "fastnn/kernels/dense.py": ["tests/test_kernels.py"],
    "fastnn/kernels/dropout.py": ["tests/test_kernels.py", "tests/test_defaults_and_bounds.py"],
    "fastnn/kernels/losses.py": ["tests/test_kernels.py", "tests/test_targets_and_metrics.py"],
    "fastnn/kernels/optimizers.py": ["tests/test_kernels.py", "tests/test_defaults_and_bounds.py"],
    "fastnn/kernels/train.py": ["tests/test_training.py", "tests/test_model.py"],
    "fastnn/kernels/_checks.py": ["tests/test_kernels.py", "tests/test_targets_and_metrics.py"],
    "fastnn/reference.py": ["tests/test_kernels.py", "tests/test_gradients.py", "tests/test_defaults_and_bounds.py"],
    "fastnn/optim.py": ["tests/test_training.py", "tests/test_defaults_and_bounds.py"],
}
DEFAULT_FALLBACK = ["tests/test_model.py", "tests/test_training.py", "tests/test_habits.py"]
ENV = {"NUMBA_DISABLE_JIT": "1", "FASTNN_CACHE": "0", "FUZZ_EXAMPLES": "20", "OMP_NUM_THREADS": "1"}
TOOLS = pathlib.Path(__file__).resolve().parent
REPO = TOOLS.parent
EQUIVALENTS = "tests/mutation_equivalents.txt"
PER_MUTANT_SECONDS = 120
COSMIC_RAY = str(pathlib.Path(sys.executable).parent / "cosmic-ray")


def skipped_operator(name: str) -> bool:
    kind, _, pair = name.split("/")[-1].partition("_")
    if kind == "ReplaceBinaryOperator":
        return pair not in KEEP_BINARY
    if kind == "ReplaceComparisonOperator":
        return pair not in KEEP_COMPARE
    return False


# -- step 1: which tests cover which lines ---------------------------------------------------

COVERAGE_PLUGIN = '''
import coverage


def pytest_runtest_setup(item):
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(item.nodeid)
'''


def coverage_map(src: pathlib.Path, work: pathlib.Path) -> dict:
    (work / "cov_context.py").write_text(COVERAGE_PLUGIN)
    (work / "coveragerc").write_text(f"[run]\nsource = fastnn\ndata_file = {work / '.coverage'}\n")
    env = {**os.environ, **ENV, "PYTHONPATH": str(work)}
    junit = work / "junit.xml"
    # its own session: a test that timed out may leave a child process, killed with the group
    proc = subprocess.Popen([sys.executable, "-m", "coverage", "run", f"--rcfile={work / 'coveragerc'}", "-m", "pytest",
                             "-q", "-p", "no:cacheprovider", "-p", "cov_context", "-o", "addopts=", "--timeout", "60",
                             f"--junitxml={junit}", *TEST_FILES], cwd=src, env=env, start_new_session=True)
    proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    passing = {}
    for case in ET.parse(junit).iter("testcase"):
        if any(child.tag in ("failure", "error", "skipped") for child in case):
            continue
        module = case.get("classname").replace(".", "/") + ".py"
        passing[f"{module}::{case.get('name')}"] = float(case.get("time", 0))
    import coverage
    data = coverage.CoverageData(basename=str(work / ".coverage"))
    data.read()
    lines = collections.defaultdict(lambda: collections.defaultdict(set))
    for path in data.measured_files():
        rel = os.path.relpath(path, src)
        for line, contexts in data.contexts_by_lineno(path).items():
            tests = {c for c in contexts if c in passing}
            if tests:
                lines[rel][line] |= tests
    return {"durations": passing,
            "lines": {f: {str(n): sorted(t) for n, t in ls.items()} for f, ls in lines.items()}}


# -- step 3: one mutant ------------------------------------------------------------------------

def changed_lines(src: pathlib.Path):
    diff = subprocess.run(["git", "diff", "-U0", "--no-color"], cwd=src, capture_output=True, text=True).stdout
    path, lines = None, set()
    for line in diff.splitlines():
        if line.startswith("+++ b/"):
            path = line[6:]
        m = re.match(r"@@ -(\d+)(?:,(\d+))? ", line)
        if m:
            start, count = int(m.group(1)), int(m.group(2) or 1)
            lines.update(range(start, start + max(count, 1)))
    return path, lines


def test_mutant(map_file: pathlib.Path) -> int:
    src = pathlib.Path.cwd()
    info = json.loads(map_file.read_text())
    path, lines = changed_lines(src)
    covering = set()
    for line in lines:
        covering.update(info["lines"].get(path, {}).get(str(line), ()))
    if not covering:  # a line run at import only: the module's test files
        files = FALLBACK.get(path, DEFAULT_FALLBACK)
        covering = {t for t in info["durations"] if t.split("::")[0] in files}
        print(f"no test's context covers {path}:{sorted(lines)}; running {files}")
    tests = sorted(covering, key=lambda t: info["durations"][t])
    env = {**os.environ, **ENV}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                             "--timeout", "60", *tests], cwd=src, env=env, start_new_session=True)
    code = proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return code


# -- steps 2 and 4 -----------------------------------------------------------------------------

def equivalents(src: pathlib.Path) -> dict:
    """``(path, operator, source line) -> (kind, reason)`` from the equivalents file, whose lines
    read ``path | operator | the mutated line, stripped -- equivalent: why`` (or ``compiled-only:``).
    Keyed on the line's text, not its number, so entries survive edits elsewhere in the file."""
    known = {}
    for line in (src / EQUIVALENTS).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, reason = line.partition(" -- ")
            kind, _, why = reason.partition(":")
            path, operator, text = (part.strip() for part in key.split(" | ", 2))
            known[(path, operator, text)] = (kind.strip(), why.strip())
    return known


def mutant_key(src, mutation):
    path = str(mutation.module_path)
    text = (src / path).read_text().splitlines()[mutation.start_pos[0] - 1].strip()
    return path, mutation.operator_name, text


def report(src: pathlib.Path, session: pathlib.Path, out) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    known = equivalents(src)
    counts = collections.defaultdict(collections.Counter)
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            for mutation in item.mutations:
                path = str(mutation.module_path)
                key = mutant_key(src, mutation)
                if result.test_outcome == TestOutcome.KILLED:
                    counts[path]["killed"] += 1
                elif key in known:
                    counts[path][known[key][0]] += 1
                else:
                    counts[path]["survived"] += 1
                    survivors.append(" | ".join(key) + f"   (line {mutation.start_pos[0]}, occurrence "
                                                       f"{mutation.occurrence})")
    print("| file | mutants run | equivalent | compiled-only | killed | survived | score |\n"
          "| --- | --- | --- | --- | --- | --- | --- |", file=out)
    total = collections.Counter()
    for path in sorted(counts):
        c = counts[path]
        total.update(c)
        live = c["killed"] + c["survived"]
        print(f"| {path} | {sum(c.values())} | {c['equivalent']} | {c['compiled-only']} | {c['killed']} | "
              f"{c['survived']} | {100 * c['killed'] / live if live else 100:.0f}% |", file=out)
    live = total["killed"] + total["survived"]
    print(f"| all | {sum(total.values())} | {total['equivalent']} | {total['compiled-only']} | {total['killed']} | "
          f"{total['survived']} | {100 * total['killed'] / max(live, 1):.0f}% |", file=out)
    print("\nscore: killed / (killed + survived); survivors (path | operator | line):", file=out)
    for s in survivors:
        print("  " + s, file=out)
    return {p: dict(c) for p, c in counts.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "test", "report", "recheck"])
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/fastnn-mutation"))
    parser.add_argument("--sample", type=int, default=40, help="mutants per file (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--map", type=pathlib.Path, help="(test) the line-to-test map")
    args = parser.parse_args(argv)
    if args.command == "test":
        return test_mutant(args.map)
    work = args.workdir.resolve()
    src, session = work / "src", work / "session.sqlite"
    if args.command == "report":
        report(src, session, sys.stdout)
        return 0
    if args.command == "recheck":
        recheck(work, src, session)
        with open(work / "report.md", "a") as out:
            print(f"\nsurvivors rechecked against {_head(REPO)[:10]}, {time.strftime('%Y-%m-%d')}:\n", file=out)
            report(src, session, out)
        print((work / "report.md").read_text())
        return 0
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["rm", "-rf", str(src), str(session)], check=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(src)], check=True)
    (work / "session-commit").write_text(_head(src))  # the code the mutants belong to (recheck)
    started = time.time()
    map_file = work / "coverage-map.json"
    map_file.write_text(json.dumps(coverage_map(src, work)))
    modules = [m for m in MUTATED]
    config = work / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(modules)}\n"
        f"excluded-modules = {json.dumps(NOT_MUTATED)}\n"
        f"timeout = {PER_MUTANT_SECONDS}.0\n"
        f"test-command = \"{sys.executable} {src / 'tools' / 'mutation.py'} test --map {map_file}\"\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n")
    subprocess.run([COSMIC_RAY, "init", str(config), str(session)], cwd=src, check=True)
    keep_sample(session, args.sample, args.seed)
    subprocess.run([COSMIC_RAY, "exec", str(config), str(session)], cwd=src, check=True)
    with open(work / "report.md", "w") as out:
        print(f"fastnn mutation run, {time.strftime('%Y-%m-%d')}, sample {args.sample or 'all'} per file "
              f"(seed {args.seed}), {(time.time() - started) / 60:.0f} min\n", file=out)
        report(src, session, out)
    print((work / "report.md").read_text())
    return 0


def _head(repo) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def recheck(work: pathlib.Path, src: pathlib.Path, session: pathlib.Path):
    """Run every survivor again with the current commit's tests (and a fresh line-to-test map)."""
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    run_commit, head = (work / "session-commit").read_text().strip(), _head(REPO)
    changed = set(subprocess.run(["git", "diff", "--name-only", run_commit, head, "--", *MUTATED], cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout.split())
    if changed:  # their mutants no longer fit the code: those survivors stay as they were
        print(f"changed since the session's commit {run_commit[:10]}, not rechecked: {sorted(changed)}")
    subprocess.run(["git", "fetch", "-q", str(REPO), head], cwd=src, check=True)
    subprocess.run(["git", "checkout", "-q", head], cwd=src, check=True)
    map_file = work / "coverage-map.json"
    map_file.write_text(json.dumps(coverage_map(src, work)))
    command = f"{sys.executable} {src / 'tools' / 'mutation.py'} test --map {map_file}"
    known = equivalents(src)
    with use_db(str(session), WorkDB.Mode.open) as db:
        survivors = [(item, result) for item, result in db.completed_work_items
                     if result.test_outcome == TestOutcome.SURVIVED]
        print(f"rechecking {len(survivors)} survivors")
        cwd = os.getcwd()
        os.chdir(src)
        try:
            for item, _ in survivors:
                if str(item.mutations[0].module_path) in changed or mutant_key(src, item.mutations[0]) in known:
                    continue
                db.set_result(item.job_id, mutate_and_test(item.mutations, command, PER_MUTANT_SECONDS))
        finally:
            os.chdir(cwd)


def keep_sample(session: pathlib.Path, per_file: int, seed: int):
    """Mark as skipped every mutant of a left-out operator, and all but a seeded sample per file."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        by_file = collections.defaultdict(list)
        skip = []
        for item in db.pending_work_items:
            mutation = item.mutations[0]
            if skipped_operator(mutation.operator_name):
                skip.append(item.job_id)
            else:
                by_file[str(mutation.module_path)].append(item.job_id)
        rng = random.Random(seed)
        for path, jobs in sorted(by_file.items()):
            if per_file and len(jobs) > per_file:
                kept = set(rng.sample(sorted(jobs), per_file))
                skip += [j for j in jobs if j not in kept]
        for job in skip:
            db.set_result(job, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in this run"))


if __name__ == "__main__":
    sys.exit(main())
