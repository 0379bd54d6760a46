"""Each exercise against its independent oracle; `pytest --impl exercises` tests your versions.

In reference mode (CI) these test the package's own bodies; in exercises mode a stub that still
raises NotImplementedError is reported as skipped. A wrong answer fails with the checker's one line
(function, max |diff|, tolerance) and a hint, without a traceback.
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys

import pytest

from tutorial import exercises
from tutorial.exercises import (EXERCISES, ROOT, failure_message, function_header, implementation,
                                not_implemented_message, stub_source)


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"{e.module}.{e.function}")
def test_exercise(exercise, impl):
    fn = implementation(exercise.function, impl)
    wrong = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the checkers' ✓ lines: a failure shows only its own
            for checker in exercise.checks:
                checker(fn)
    except NotImplementedError:
        pytest.skip(not_implemented_message(exercise))
    except AssertionError as e:
        wrong = failure_message(exercise, e)
    if wrong:  # a wrong answer is not a bug in the test: one line, no traceback (outside `except`: no chaining)
        pytest.fail(wrong, pytrace=False)


BROKEN_BOX_OPS = """
from tutorial.ops.box_ops import box_iou as reference_box_iou


def box_iou(boxes1, boxes2):
    iou, union = reference_box_iou(boxes1, boxes2)
    return iou + 0.1, union  # wrong by 0.1 everywhere


def box_cxcywh_to_xyxy(boxes):
    raise NotImplementedError("exercise: box_cxcywh_to_xyxy (see tutorial/ops/box_ops.py)")
"""

# Imports a broken `exercises` package from sys.argv[1] before pytest puts the repository's on the path.
RUN_WITH_BROKEN_EXERCISES = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import exercises.ops.box_ops
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_failing_exercise_reads_like_a_checker(tmp_path):
    """`pytest --impl exercises` on a wrong and an unattempted exercise: one line each, no traceback."""
    (tmp_path / "exercises" / "ops").mkdir(parents=True)
    (tmp_path / "exercises" / "__init__.py").write_text("")
    (tmp_path / "exercises" / "ops" / "__init__.py").write_text("")
    (tmp_path / "exercises" / "ops" / "box_ops.py").write_text(BROKEN_BOX_OPS)
    env = {k: v for k, v in os.environ.items() if k != "TUTORIAL_IMPL" and not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-c", RUN_WITH_BROKEN_EXERCISES, str(tmp_path), "tests/test_exercises.py",
                          "--impl", "exercises", "-k", "box_ops.box_iou or box_ops.box_cxcywh_to_xyxy",
                          "-p", "no:xdist", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    failure = re.search(r"_+ test_exercise\[ops\.box_ops\.box_iou\] _+\n(.*?)\n=+", out, re.S)
    assert failure, out
    lines = [line for line in failure.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert re.fullmatch(r"✗ box_iou \(IoU\): max \|diff\| = 1\.000e-01 exceeds tolerance 1e-12 "
                        r"\(exercises/ops/box_ops\.py\)\. Hint: .+", lines[0]), lines[0]
    assert "box_ops.box_cxcywh_to_xyxy is not implemented yet: edit exercises/ops/box_ops.py" in out
    assert "Traceback" not in out and not re.search(r"^(E |>)", out, re.M), out  # no source listing either


def test_checkers_catch_wrong_answers():
    """The checkers are worth something only if they fail on a wrong implementation."""
    import torch

    wrong = {
        "box_cxcywh_to_xyxy": lambda b: torch.cat([b[:, :2] - b[:, 2:], b[:, :2] + b[:, 2:]], 1),  # w, not w/2
        "generalized_box_iou": lambda a, b: implementation("box_iou")(a, b)[0],  # plain IoU
        "hungarian_match": lambda c: (torch.arange(c.shape[1]), torch.arange(c.shape[1])),  # greedy diagonal
        "sine_position_encoding": lambda m, d: implementation("sine_position_encoding")(m, d, normalize=False),
    }
    for name, fn in wrong.items():
        with pytest.raises(AssertionError):
            for checker in exercises.BY_NAME[name].checks:
                checker(fn)


def _functions(source: str) -> dict[str, str]:
    """name -> signature + docstring of every top-level function in `source`."""
    tree = ast.parse(source)
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = ast.unparse(node.args) + " -> " + ast.unparse(node.returns) + ast.get_docstring(node)
    return out


@pytest.mark.parametrize("module", sorted({e.module for e in EXERCISES}))
def test_stubs_in_sync_with_package(module):
    """exercises/<folder>/<module>.py has exactly the package's exercise signatures and docstrings
    (regenerate with `python -m tutorial exercises --force` after changing an exercise)."""
    committed = (ROOT / "exercises" / (module.replace(".", "/") + ".py")).read_text()
    assert _functions(committed) == _functions(stub_source(module))
    for e in EXERCISES:
        if e.module == module:
            assert "[exercise]" in function_header(module, e.function)


def test_every_marked_function_is_an_exercise():
    """A docstring marked [exercise] in the package is registered in EXERCISES (and vice versa)."""
    marked = set()
    for path in (ROOT / "tutorial").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT / "tutorial").with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and "[exercise]" in (ast.get_docstring(node) or ""):
                marked.add((module, node.name))
    assert marked == {(e.module, e.function) for e in EXERCISES}


def test_stubs_raise_not_implemented():
    """In exercises mode an untouched stub raises NotImplementedError (reported as skipped)."""
    namespace: dict = {}
    exec(compile(stub_source("ops.box_ops"), "stub", "exec"), namespace)
    with pytest.raises(NotImplementedError):
        namespace["box_iou"](None, None)
