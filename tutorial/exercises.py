"""Exercises: re-implement a package function, and a checker tells you whether it is right.

How it works
- The reference bodies live in the package; their docstrings end with "[exercise]".
- `python -m tutorial exercises` writes the top-level `exercises/` package: the same functions,
  signatures and docstrings, with bodies that raise `NotImplementedError`. Edit those.
- `pytest --impl exercises` (or `TUTORIAL_IMPL=exercises pytest`) tests your versions instead of
  the reference; exercises you have not attempted are reported as skipped, and a wrong one fails
  with one line: the checker's max difference and tolerance, and a hint. Plain `pytest`
  (what CI runs) tests the reference against the same independent oracles.
- In a notebook: `check("box_iou", impl="exercises")` prints the max difference.

`EXERCISES` below is the list; each entry names the module, the function, its checker(s)
in `tutorial/checks/` and the hint shown with a wrong answer.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

from . import checks
from .errors import one_line

ROOT = Path(__file__).resolve().parent.parent
STUB_PACKAGE = "exercises"


@dataclass(frozen=True)
class Exercise:
    module: str  # dotted, under tutorial/, e.g. "ops.box_ops"; its stub is exercises/ops/box_ops.py
    function: str
    checks: tuple  # checker functions taking the candidate
    hint: str  # printed with a wrong answer: the usual mistake, or the step that is easy to get wrong


EXERCISES = [
    Exercise("ops.box_ops", "box_cxcywh_to_xyxy", (checks.check_box_cxcywh_to_xyxy,),
             "x0 = cx - w/2 and x1 = cx + w/2 (half the width), the same for y"),
    Exercise("ops.box_ops", "box_xyxy_to_cxcywh", (checks.check_box_xyxy_to_cxcywh,),
             "cx = (x0 + x1)/2 and w = x1 - x0, the same for y"),
    Exercise("ops.box_ops", "box_iou", (checks.check_box_iou,),
             "pairwise by broadcasting [:, None] against [None, :]; the intersection's width and height are "
             "clamped at 0; union = |A| + |B| - |A ∩ B|"),
    Exercise("ops.box_ops", "generalized_box_iou", (checks.check_generalized_box_iou,),
             "C encloses both boxes: min of the x0, y0 and max of the x1, y1; GIoU = IoU - (|C| - union) / |C|"),
    Exercise("matching.matcher", "matching_cost", (checks.check_matching_cost,),
             "softmax over all K+1 classes, then -p̂ at each target's label; L1 between cxcywh boxes "
             "(torch.cdist, p=1); GIoU between the boxes converted to xyxy"),
    Exercise("matching.matcher", "hungarian_match", (checks.check_hungarian_match,),
             "linear_sum_assignment(cost) returns (rows = predictions, columns = targets) already sorted by row; "
             "return both as int64 tensors"),
    Exercise("ops.position_encoding", "sine_position_encoding", (checks.check_sine_position_encoding,),
             "y = cumsum of ~mask along H, x along W; normalise by the last valid value; channel c uses "
             "T^(2·(c//2)/F), sin at even c, cos at odd c; the y half comes first"),
    Exercise("matching.criterion", "hungarian_loss", (checks.check_hungarian_loss, checks.check_hungarian_loss_permutation),
             "unmatched predictions get the class K (no object) with weight no_object_weight, and the "
             "cross-entropy is divided by the sum of the weights; L1 and 1 - GIoU over matched pairs / num_boxes"),
    Exercise("ops.deformable_attention", "bilinear_sample", (checks.check_bilinear_sample,),
             "in pixels the location is (x·W - 0.5, y·H - 0.5); weight the four neighbours by (1-|Δx|)(1-|Δy|) "
             "and let neighbours outside the map add zero"),
    Exercise("ops.deformable_attention", "ms_deform_attn_core", (checks.check_ms_deform_attn_core,),
             "split value into levels of H_l·W_l tokens, each (B·M, d, H_l, W_l); F.grid_sample at 2·loc - 1 "
             "(align_corners=False); weight, sum over L and P, and put the heads side by side: (B, Q, M·d)"),
    Exercise("ops.position_encoding", "anchor_position_encoding", (checks.check_anchor_position_encoding,),
             "each coordinate v gives F channels of 2πv / T^(2·(c//2)/F), sin at even c, cos at odd c; the blocks "
             "go y, x, then w, h"),
    Exercise("models.dn_detr", "dn_attention_mask", (checks.check_dn_attention_mask, checks.check_dn_attention_mask_properties),
             "True means blocked: j is a denoising query of another group, or i is a matching query and j a "
             "denoising one; return dtype torch.bool"),
    Exercise("ssm.ssm", "discretize_zoh", (checks.check_discretize_zoh,),
             "ΔA = delta[..., None, None]·A; Ā = matrix_exp(ΔA); B̄ = solve(ΔA, (Ā - I) @ ΔB)"),
    Exercise("ssm.parallel_scan", "scan_combine", (checks.check_scan_combine,),
             "step 2 acts on step 1's output: a2·(a1 h + b1) + b2"),
    Exercise("ssm.parallel_scan", "parallel_scan", (checks.check_parallel_scan,),
             "compare a small case with the loop h_t = a_t h_(t-1) + b_t; with an odd L the last element has no "
             "partner and is filled in after the recursion"),
    Exercise("models.query_selection", "select_top_k", (checks.check_select_top_k,),
             "rank tokens by scores.max(-1).values with torch.topk (sorted); gather every output's rows with the "
             "same indices"),
    Exercise("matching.varifocal", "varifocal_loss", (checks.check_varifocal_loss,),
             "both cases are a BCE towards q (q = 0 off the positives), weighted by q at positives and by "
             "α·p^γ elsewhere, with p detached in the weight; summed"),
]
BY_NAME = {e.function: e for e in EXERCISES}

STUB_HEADER = '''"""Exercises from `tutorial/{path}.py` (generated by `python -m tutorial exercises`).

Replace each `raise NotImplementedError` with your implementation, then run
    pytest --impl exercises -k {name}
You may use torch, einops, scipy and torchvision; re-deriving a torchvision op by calling it
defeats the purpose. The reference is in tutorial/{path}.py, for when you are stuck.
"""
from __future__ import annotations

import math  # noqa: F401

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401
from einops import rearrange, repeat  # noqa: F401
from scipy.optimize import linear_sum_assignment  # noqa: F401
from torch import Tensor  # noqa: F401
'''


def function_header(module: str, function: str) -> str:
    """The reference function's `def` line(s) and docstring, exactly as in the package."""
    source = inspect.getsource(importlib.import_module(f"tutorial.{module}"))
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    doc = node.body[0]
    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), f"{module}.{function} has no docstring"
    lines = source.splitlines()
    return "\n".join(lines[node.lineno - 1 : doc.end_lineno])


def stub_source(module: str) -> str:
    """The whole stub file for `module`: header, then each exercise's header + NotImplementedError."""
    parts = [STUB_HEADER.format(path=module.replace(".", "/"), name=module.rsplit(".", 1)[-1])]
    for e in EXERCISES:
        if e.module == module:
            parts.append("\n" + function_header(module, e.function) + "\n"
                         f'    raise NotImplementedError("exercise: {e.function} (see tutorial/{module.replace(".", "/")}.py)")\n')
    return "\n".join(parts)


def write_stubs(root: Path = ROOT, force: bool = False) -> list[Path]:
    """Write `exercises/<folder>/<module>.py` (the package's layout) for every module with exercises;
    keeps edited files unless `force`."""
    package = root / STUB_PACKAGE
    written = []
    for module in sorted({e.module for e in EXERCISES}):
        path = package / (module.replace(".", "/") + ".py")
        for folder in [package, *(p for p in reversed(path.parents) if package in p.parents)]:
            folder.mkdir(exist_ok=True)
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text('"""Your implementations of the exercises; see tutorial/exercises.py."""\n')
        if path.exists() and not force:
            continue
        path.write_text(stub_source(module))
        written.append(path)
    return written


def implementation(name: str, impl: str = "reference"):
    """The function to check: the package's ("reference") or yours in `exercises/` ("exercises")."""
    e = BY_NAME[name]
    if impl not in ("reference", "exercises"):
        raise ValueError(f"impl: expected 'reference' or 'exercises', got {impl!r}")
    package = "tutorial" if impl == "reference" else STUB_PACKAGE
    if impl == "exercises" and str(ROOT) not in sys.path:  # exercises/ sits beside tutorial/
        sys.path.insert(0, str(ROOT))
    return getattr(importlib.import_module(f"{package}.{e.module}"), e.function)


def not_implemented_message(exercise: Exercise) -> str:
    """One line for a stub that still raises NotImplementedError."""
    return (f"{exercise.module}.{exercise.function} is not implemented yet: "
            f"edit exercises/{exercise.module.replace('.', '/')}.py")


def failure_message(exercise: Exercise, error: AssertionError) -> str:
    """One line for a wrong answer: the checker's (function, max |diff|, tolerance), then the hint."""
    return f"{one_line(error)} (exercises/{exercise.module.replace('.', '/')}.py). Hint: {exercise.hint}"


def check(name: str, impl: str = "exercises") -> bool:
    """Run the checkers of exercise `name` on an implementation; print the outcome; True if it passes."""
    fn = implementation(name, impl)
    try:
        for checker in BY_NAME[name].checks:
            checker(fn)
    except NotImplementedError:
        print(f"· {name}: not attempted yet (exercises/{BY_NAME[name].module.replace('.', '/')}.py)")
        return False
    except AssertionError as e:
        print(failure_message(BY_NAME[name], e))
        return False
    return True


def check_all(impl: str = "exercises") -> dict[str, bool]:
    return {e.function: check(e.function, impl) for e in EXERCISES}
