"""Notebook 07's figures and view: the drawn parallel-scan tree is a correct scan (replayed
against the loop), the scan orders drawn are cross_scan's, the receptive-field view's Jacobian
matches autograd's full Jacobian and covers every pixel, and the scaling plot draws what the
bench measured."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from tutorial.ssm.parallel_scan import odd_even_scan_steps, scan_combine, sequential_scan  # noqa: E402
from tutorial.ssm.ss2d import SS2D, SS2DConfig, scan_positions  # noqa: E402
from tutorial.viz.ss2d import plot_scan_directions  # noqa: E402
from tutorial.viz.ssm import plot_scaling, plot_scan_tree  # noqa: E402
from tutorial.viz.views_ssm import ScanDirectionsView  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 13, 16, 33])
def test_scan_tree_replayed_is_the_loop(length):
    """Replaying the drawn levels with scan_combine gives every prefix; within a level no element
    is written twice or read after being written (the level really is one parallel step)."""
    g = torch.Generator().manual_seed(length)
    a, b = torch.rand(3, length, generator=g, dtype=F64), torch.randn(3, length, generator=g, dtype=F64)
    acc_a, acc_b = a.clone(), b.clone()
    steps = odd_even_scan_steps(length)
    for level in steps:
        src = [s for s, _ in level["pairs"]]
        dst = [d for _, d in level["pairs"]]
        assert len(set(dst)) == len(dst) and not set(src) & set(dst)
        assert all(s < d for s, d in level["pairs"])
        acc_a[:, dst], acc_b[:, dst] = scan_combine(acc_a[:, src], acc_b[:, src], acc_a[:, dst], acc_b[:, dst])
    assert (acc_b - sequential_scan(a, b)).abs().max() < 1e-12
    if length > 1 and length & (length - 1) == 0:  # a power of two: 2 log2 L - 1 levels
        assert len(steps) == 2 * int(math.log2(length)) - 1


def test_scan_tree_draws_one_arrow_per_combine():
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    plot_scan_tree(ax, 10, odd_even_scan_steps(10))
    arrows = [c for c in ax.get_children() if isinstance(c, matplotlib.text.Annotation)]
    assert len(arrows) == sum(len(level["pairs"]) for level in odd_even_scan_steps(10))


def test_scan_positions_are_the_four_orders():
    h, w = 3, 4
    pos = scan_positions(h, w)
    row_major = [(i, j) for i in range(h) for j in range(w)]
    col_major = [(i, j) for j in range(w) for i in range(h)]
    for k, order in enumerate([row_major, col_major, row_major[::-1], col_major[::-1]]):
        for t, (i, j) in enumerate(order):
            assert pos[k, i, j] == t


def test_scan_directions_figure_has_four_paths():
    fig = plot_scan_directions(torch.rand(5, 6, 3).numpy(), scan_positions(5, 6))
    assert len(fig.axes) == 8
    assert [ax.get_title() for ax in fig.axes[:4]][0].endswith("row-major")


def test_receptive_field_view_matches_autograd_and_covers_the_map():
    torch.manual_seed(0)
    mixer = SS2D(SS2DConfig(d_model=8, d_state=2)).double()
    x = torch.randn(4, 5, 8, dtype=F64)
    view = ScanDirectionsView(mixer, x, pixel=(0, 0))
    full = torch.autograd.functional.jacobian(lambda inp: mixer(inp[None])[0], x)  # (H, W, C, H, W, C)

    def expected(y, xx):
        return torch.einsum("c,cijd->ijd", view.readout, full[y, xx]).abs().sum(-1)  # (H, W)

    assert torch.allclose(view.jacobian, expected(0, 0), atol=1e-12)
    assert (view.jacobian > 0).all()
    view.controls["y"].value, view.controls["x"].value = 3, 2
    assert torch.allclose(view.jacobian, expected(3, 2), atol=1e-12)
    assert view.figure.axes[0].get_title().endswith("has read 18 of 20")  # row-major: (3, 2) is at position 17


def test_scaling_plot_draws_measured_points_only():
    rows = [{"method": m, "pass": p, "N": n, "time_s": 1e-3 * n / 256, "peak_MiB": n / 64}
            for m in ("attention (fused)", "scan (sequential)", "scan (parallel)")
            for p in ("forward", "forward+backward") for n in (256, 512)]
    rows.append({"method": "attention (fused)", "pass": "forward", "N": 1024, "skipped": "too slow"})
    results = {"methods": ["attention (fused)", "scan (sequential)", "scan (parallel)"], "rows": rows,
               "speedups": [{"pass": "forward", "N": 256, "parallel_speedup": 2.0, "chunked_speedup": None}],
               "shapes": {"batch": 1, "channels": 256, "heads": 8, "head_dim": 32, "d_state": 16}}
    fig = plot_scaling(results)
    ax_t = fig.axes[0]
    data = [line for line in ax_t.get_lines() if line.get_marker() == "."]
    assert len(data) == 6 and all(len(line.get_xdata()) == 2 for line in data)  # the skipped point is not drawn
    assert "1 points skipped" in fig._suptitle.get_text()
