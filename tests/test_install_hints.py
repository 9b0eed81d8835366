"""Every install line points at this project: "fastnn" on the package index is someone else's."""
import pathlib
import re
import subprocess
import sys

import pytest

from fastnn._install import DISTRIBUTION, install_hint

ROOT = pathlib.Path(__file__).resolve().parent.parent
# pip install <requirement>...: the requirement words after "pip install" and its options
PIP = re.compile(r"pip install((?:\s+-{1,2}[\w-]+)*)((?:\s+[\"'`]?[\w.\[\],<>=-]+[\"'`]?)+)")


def requirements(text):
    for match in PIP.finditer(text):
        for word in match.group(2).split():
            yield word.strip("\"'`")


def ours(requirement):
    name = re.split(r"[\[<>=]", requirement)[0]
    return name.replace("_", "-").lower() in (DISTRIBUTION, ".") or requirement.startswith(".[")


def test_the_distribution_is_named_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^name = "{DISTRIBUTION}"', text, re.M)


@pytest.mark.parametrize("path", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "fastnn").rglob("*.py"))])
def test_every_install_hint_names_this_project(path):
    text = (ROOT / path).read_text()
    for requirement in requirements(text):
        name = re.split(r"[\[<>=]", requirement)[0].lower()
        # a line naming fastnn itself must name this distribution (or the checkout)
        assert not name.startswith("fastnn") or ours(requirement), f"{path}: 'pip install {requirement}'"
        if "[" in requirement:  # extras only exist on this project
            assert ours(requirement), f"{path}: 'pip install {requirement}'"


def test_the_scan_sees_a_bad_hint():
    assert "fastnn[plot]" in list(requirements("run pip install \"fastnn[plot]\" first"))
    assert not ours("fastnn[plot]") and ours("fastnn-cpu[plot]") and ours(".[plot]")


def test_the_library_hints_name_the_distribution_and_the_checkout():
    hint = install_hint("mpi")
    assert f'pip install "{DISTRIBUTION}[mpi]"' in hint and 'pip install ".[mpi]"' in hint


def test_a_missing_extra_is_reported_with_this_projects_install_line(tmp_path):
    # without mpi4py (hidden from the import system), distributed training says how to install it
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from fastnn import distributed\n"
            "try:\n    distributed.world()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout
    assert f'pip install "{DISTRIBUTION}[mpi]"' in out
