"""The parallel and chunked scans against an explicit loop, in float64: forward and gradients at
awkward lengths, gradcheck of the reverse-scan backward, causality."""
from __future__ import annotations

import pytest
import torch

from tutorial.checks import check_parallel_scan, check_scan_combine, linear_recurrence_loop
from tutorial.ssm.parallel_scan import (chunked_scan, parallel_scan, parallel_scan_fn, scan_combine,
                                    sequential_scan)

F64 = torch.float64
LENGTHS_CHUNKS = [(1, 1), (7, 3), (128, 48), (1000, 300), (4097, 1000)]  # chunks that do not divide L


def loop_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The oracle, written here: h_t = a_t h_{t-1} + b_t, one step at a time (autograd-able)."""
    h, out = torch.zeros_like(b[..., 0]), []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, -1)


def problem(length: int, seed: int = 0, shape=(2, 3)):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, length, generator=g, dtype=F64) * 0.5 + 0.5  # decays in [0.5, 1), as exp(ΔA)
    b = torch.randn(*shape, length, generator=g, dtype=F64)
    return a, b


def test_exercise_checkers_and_combine_associativity():
    check_scan_combine(scan_combine)
    check_parallel_scan(parallel_scan)
    g = torch.Generator().manual_seed(1)
    x, y, z = [tuple(torch.randn(2, 5, generator=g, dtype=F64)) for _ in range(3)]
    left = scan_combine(*scan_combine(*x, *y), *z)
    right = scan_combine(*x, *scan_combine(*y, *z))
    assert all((p - q).abs().max() < 1e-12 for p, q in zip(left, right))


def test_checkers_catch_wrong_answers():
    with pytest.raises(AssertionError):  # the operands in the wrong order
        check_scan_combine(lambda a1, b1, a2, b2: (a1 * a2, a1 * b2 + b1))
    with pytest.raises(AssertionError):  # a cumulative sum, ignoring the decays
        check_parallel_scan(lambda a, b: b.cumsum(-1))


@pytest.mark.parametrize("length,chunk", LENGTHS_CHUNKS)
def test_forward_equals_loop(length, chunk):
    a, b = problem(length)
    expected = loop_scan(a, b)
    for h in (sequential_scan(a, b), parallel_scan(a, b), parallel_scan_fn(a, b), chunked_scan(a, b, chunk)):
        assert h.shape == b.shape
        assert (h - expected).abs().max() < 1e-12


@pytest.mark.parametrize("length,chunk", LENGTHS_CHUNKS)
def test_gradients_equal_loop(length, chunk):
    a, b = problem(length, seed=1)
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(2), dtype=F64)  # loss = Σ w·h
    grads = {}
    for name, scan in [("loop", loop_scan), ("parallel", parallel_scan_fn), ("autograd", parallel_scan),
                       ("chunked", lambda a, b: chunked_scan(a, b, chunk))]:
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        da, db = torch.autograd.grad((scan(a_, b_) * w).sum(), (a_, b_), allow_unused=True)
        grads[name] = (torch.zeros_like(a) if da is None else da, db)  # at L = 1, h = b does not use a
    for name in ("parallel", "autograd", "chunked"):
        for got, expected in zip(grads[name], grads["loop"]):
            assert (got - expected).abs().max() < 1e-10, name


@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_gradcheck_reverse_scan_backward(length):
    a, b = problem(length, seed=3, shape=(2,))
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(parallel_scan_fn, (a, b))
    assert torch.autograd.gradcheck(lambda a, b: chunked_scan(a, b, chunk=3), (a, b))


def test_gradgradcheck_reverse_scan_backward():
    a, b = problem(9, seed=4, shape=(2,))
    assert torch.autograd.gradgradcheck(parallel_scan_fn, (a.requires_grad_(), b.requires_grad_()))


@pytest.mark.parametrize("scan", [sequential_scan, parallel_scan, parallel_scan_fn,
                                  lambda a, b: chunked_scan(a, b, chunk=4)],
                         ids=["sequential", "parallel", "parallel_fn", "chunked"])
def test_causality(scan):
    """Changing b_t (or a_t) leaves h_s for s < t unchanged."""
    a, b = problem(23, seed=5)
    t = 11
    a2, b2 = a.clone(), b.clone()
    a2[..., t] += 0.3
    b2[..., t] += 1.0
    h, h2 = scan(a, b), scan(a2, b2)
    assert torch.equal(h[..., :t], h2[..., :t])
    assert (h[..., t:] - h2[..., t:]).abs().min() > 0


def test_sequential_scan_matches_scalar_loop_and_mixed_signs():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(3, 17, generator=g, dtype=F64)  # any real a, not just decays
    b = torch.randn(3, 17, generator=g, dtype=F64)
    expected = linear_recurrence_loop(a, b)
    assert (parallel_scan(a, b) - expected).abs().max() < 1e-10
    assert (chunked_scan(a, b, chunk=5) - expected).abs().max() < 1e-10


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="chunk"):
        chunked_scan(torch.ones(3), torch.ones(3), chunk=0)
    with pytest.raises(ValueError, match="same shape"):
        parallel_scan_fn(torch.ones(2, 3), torch.ones(3))
