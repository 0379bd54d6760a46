"""Each exercise against its independent oracle; `pytest --impl exercises` tests your versions.

In reference mode (CI) these test the package's own bodies; in exercises mode a stub that still
raises NotImplementedError is reported as skipped.
"""
from __future__ import annotations

import ast

import pytest

from tutorial import exercises
from tutorial.exercises import EXERCISES, ROOT, function_header, implementation, stub_source


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"{e.module}.{e.function}")
def test_exercise(exercise, impl):
    fn = implementation(exercise.function, impl)
    try:
        for checker in exercise.checks:
            checker(fn)
    except NotImplementedError:
        pytest.skip(f"exercise {exercise.function} not attempted (exercises/{exercise.module}.py)")


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
    """exercises/<module>.py has exactly the package's exercise signatures and docstrings
    (regenerate with `python -m tutorial exercises --force` after changing an exercise)."""
    committed = (ROOT / "exercises" / f"{module}.py").read_text()
    assert _functions(committed) == _functions(stub_source(module))
    for e in EXERCISES:
        if e.module == module:
            assert "[exercise]" in function_header(module, e.function)


def test_every_marked_function_is_an_exercise():
    """A docstring marked [exercise] in the package is registered in EXERCISES (and vice versa)."""
    marked = set()
    for path in (ROOT / "tutorial").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and "[exercise]" in (ast.get_docstring(node) or ""):
                marked.add((path.stem, node.name))
    assert marked == {(e.module, e.function) for e in EXERCISES}


def test_stubs_raise_not_implemented():
    """In exercises mode an untouched stub raises NotImplementedError (reported as skipped)."""
    namespace: dict = {}
    exec(compile(stub_source("box_ops"), "stub", "exec"), namespace)
    with pytest.raises(NotImplementedError):
        namespace["box_iou"](None, None)
