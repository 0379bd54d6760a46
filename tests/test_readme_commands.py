"""The commands in README.md's shell blocks work as written, from the repository root.

The pytest commands are run verbatim in a subprocess (the kernel tests with `--collect-only -q`
appended: running them builds the CPU extension, minutes); the `python -m tutorial` commands,
which train or evaluate for minutes, have their arguments parsed by the real parser;
`make -n lab` shows the recipe, whose `--allow-root` switch is run with `echo` for jupyter.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tutorial.__main__ import build_parser

ROOT = Path(__file__).resolve().parent.parent
CHILD = "TUTORIAL_README_TEST_CHILD"  # set in the commands' environment: they must not run this file again

if os.environ.get(CHILD):
    pytest.skip("inside a README command started by this module", allow_module_level=True)


def shell_commands(markdown: str) -> list[list[str]]:
    """Every command of the ```sh blocks as argv: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


COMMANDS = shell_commands((ROOT / "README.md").read_text())
PYTEST = [c for c in COMMANDS if c[1:3] == ["-m", "pytest"]]
CLI = [c for c in COMMANDS if c[1:3] == ["-m", "tutorial"]]
EXERCISES = [".venv/bin/python", "-m", "pytest", "--impl", "exercises", "-k", "box_ops"]


def run_from_root(argv: list[str]) -> subprocess.CompletedProcess:
    """Run `argv` from the repository root, in an environment of its own (no TUTORIAL_IMPL, no
    outer pytest's variables). `.venv/bin/python` is the README's interpreter; where there is no
    .venv (a conda set-up), the one running these tests."""
    if argv[0] == ".venv/bin/python" and not (ROOT / argv[0]).exists():
        argv = [sys.executable, *argv[1:]]
    env = {k: v for k, v in os.environ.items() if k != "TUTORIAL_IMPL" and not k.startswith("PYTEST_")}
    env[CHILD] = "1"
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def assert_parsed(run: subprocess.CompletedProcess) -> str:
    """pytest accepted the command line (status 4 and `usage:` mean it did not) and collected tests."""
    out = run.stdout + run.stderr
    assert "unrecognized arguments" not in out and "usage:" not in out, out
    assert run.returncode in (0, 1), out  # 0: passed or skipped, 1: some (exercise) failed
    return out


def test_readme_shows_the_commands_tested_here():
    assert EXERCISES in PYTEST
    assert any("tests/test_kernels.py" in c for c in PYTEST)
    assert len(CLI) >= 5


def test_exercise_command():
    """`pytest --impl exercises -k box_ops` (issue 12: it failed with `unrecognized arguments: --impl`).
    Untouched stubs are skipped and an edited wrong one fails: both are fine here."""
    out = assert_parsed(run_from_root(EXERCISES))
    assert re.search(r"collected \d+ items .*/ [1-9]\d* selected", out), out
    assert "test_exercises.py" in out, out


@pytest.mark.parametrize("argv", [c for c in PYTEST if c != EXERCISES], ids=lambda c: "_".join(c[3:]))
def test_pytest_commands_collect(argv):
    out = assert_parsed(run_from_root([*argv, "--collect-only", "-q"]))
    assert re.search(r"[1-9]\d*(/\d+)? tests? collected", out), out


@pytest.mark.parametrize("argv", CLI, ids=lambda c: "_".join(c[3:5]))
def test_cli_commands_parse(argv):
    build_parser().parse_args(argv[3:])  # SystemExit(2) with argparse's usage message if they do not


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_lab_allows_root():
    """The lab recipe adds --allow-root exactly when run as root (jupyter refuses root without it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    recipe = subprocess.run(["make", "--no-print-directory", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                            check=True, env=env)
    labs = [line for line in recipe.stdout.splitlines() if line.startswith(".venv/bin/jupyter lab notebooks/")]
    assert len(labs) == 1, recipe.stdout
    lab = labs[0]
    shown = subprocess.run(["sh", "-c", lab.replace(".venv/bin/jupyter", "echo", 1)], capture_output=True,
                           text=True, check=True).stdout.split()
    assert ("--allow-root" in shown) == (os.getuid() == 0), shown
