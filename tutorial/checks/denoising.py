"""Checkers for DN-DETR's attention mask (tutorial/models/dn_detr.py); oracle: the seed's a_ij, one
pair at a time, and the mask's properties (groups cannot see each other)."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import report


def dn_mask_loop(p: int, m: int, q: int) -> Tensor:
    """The seed's a_ij, literally: 1 if j < P·M and ⌊i/M⌋ ≠ ⌊j/M⌋; 1 if j < P·M and i ≥ P·M; else 0."""
    t = p * m + q
    out = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            if j < p * m and i // m != j // m:
                out[i, j] = True
            elif j < p * m and i >= p * m:
                out[i, j] = True
    return out


def check_dn_attention_mask(fn) -> float:
    worst = 0.0
    for p, m, q in [(5, 3, 4), (1, 2, 3), (3, 1, 2), (2, 4, 0)]:
        got = torch.as_tensor(fn(p, m, q))
        expected = dn_mask_loop(p, m, q)
        if got.dtype != torch.bool:
            raise AssertionError(f"✗ dn_attention_mask({p}, {m}, {q}): dtype {got.dtype}, expected torch.bool")
        worst = max(worst, report(f"dn_attention_mask(P={p}, M={m}, Q={q}) (vs the a_ij formula)",
                                  got.int(), expected.int(), 0))
    return worst


def check_dn_attention_mask_properties(fn) -> float:
    """Properties the mask exists for: no group sees another, matching queries see no denoising
    query, every query sees its own group and all matching queries."""
    p, m, q = 4, 3, 5
    mask = torch.as_tensor(fn(p, m, q))
    group = [i // m if i < p * m else None for i in range(p * m + q)]  # None: a matching query
    problems = []
    for i, gi in enumerate(group):
        for j, gj in enumerate(group):
            blocked = bool(mask[i, j])
            if gj is not None and gi != gj and not blocked:
                who = "matching" if gi is None else f"group {gi}"
                problems.append(f"query {i} ({who}) sees group {gj}'s query {j}")
            if (gj is None or gi == gj) and blocked:
                problems.append(f"query {i} cannot see query {j} ({'matching' if gj is None else 'its own group'})")
    if problems:
        raise AssertionError(f"✗ dn_attention_mask properties: {len(problems)} violations, e.g. {problems[:3]}")
    print(f"✓ dn_attention_mask properties: no leak between groups or into the matching part (P={p}, M={m}, Q={q})")
    return 0.0
