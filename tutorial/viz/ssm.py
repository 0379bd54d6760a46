"""Notebook 07, state-space models and Mamba: attention's and the scans' cost against the
sequence length, discretisation error, HiPPO's memory, the SSM kernel, Δ as a gate, and the
odd/even parallel scan as a circuit (seed, "Mamba"). Conventions: `tutorial/viz/common.py`."""
from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .common import PALETTE


SCALING_STYLES = {  # bench/scaling.py's methods
    "attention (explicit)": "tab:red", "attention (fused)": "tab:orange",
    "scan (sequential)": "tab:gray", "scan (parallel)": "tab:blue", "scan (chunked)": "tab:green",
}


def plot_scaling(results: dict, fig: Figure | None = None) -> Figure:
    """bench/scaling.py's result (bench/results/scaling.json): (a) time and (b) peak memory against
    the sequence length N, log-log, forward solid and forward+backward dashed, with O(N) and O(N²)
    guides; (c) the parallel and chunked scans' speed-up over the sequential scan."""
    fig = fig or Figure(figsize=(13, 4), layout="constrained")
    ax_t, ax_m, ax_s = fig.subplots(1, 3)
    rows = [r for r in results["rows"] if "time_s" in r]
    for method in results["methods"]:
        for pass_, style in (("forward", "-"), ("forward+backward", "--")):
            pts = sorted((r["N"], r["time_s"], r["peak_MiB"]) for r in rows if r["method"] == method and r["pass"] == pass_)
            if not pts:
                continue
            n, t, m = zip(*pts)
            colour = SCALING_STYLES.get(method)
            label = method if pass_ == "forward" else None
            ax_t.plot(n, t, style, marker=".", color=colour, label=label)
            ax_m.plot(n, np.maximum(m, 0.1), style, marker=".", color=colour, label=label)
    lengths = np.array(sorted({r["N"] for r in results["rows"]}), dtype=float)
    for ax, key in ((ax_t, "time_s"), (ax_m, "peak_MiB")):
        values = [r[key] for r in rows if r[key] > 0]
        if values:  # guides through the geometric middle of the data
            mid_y, mid_n = float(np.exp(np.mean(np.log(values)))), float(np.exp(np.mean(np.log(lengths))))
            for power, ls in ((1, ":"), (2, "-.")):
                ax.plot(lengths, mid_y * (lengths / mid_n) ** power, ls, color="0.6", linewidth=0.8,
                        label=f"∝ N{'²' if power == 2 else ''}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length N (tokens)")
        ax.grid(alpha=0.3, which="both")
    ax_t.set(ylabel="time per call (s)", title="time (solid: forward, dashed: forward+backward)")
    ax_m.set(ylabel="peak extra memory (MiB)", title="peak memory (VmHWM − RSS before)")
    ax_t.legend(fontsize=7)
    for pass_, style in (("forward", "-"), ("forward+backward", "--")):
        sp = sorted((s["N"], s["parallel_speedup"], s["chunked_speedup"]) for s in results["speedups"] if s["pass"] == pass_)
        if sp:
            n, par, chk = zip(*sp)
            ax_s.plot(n, par, style, marker=".", color=SCALING_STYLES["scan (parallel)"], label=f"parallel, {pass_}")
            if all(c is not None for c in chk):
                ax_s.plot(n, chk, style, marker=".", color=SCALING_STYLES["scan (chunked)"], label=f"chunked, {pass_}")
    ax_s.axhline(1, color="0.5", linewidth=0.8)
    ax_s.set(xscale="log", xlabel="sequence length N (tokens)", ylabel="sequential time / time",
             title="speed-up over the sequential scan")
    ax_s.grid(alpha=0.3, which="both")
    ax_s.legend(fontsize=7)
    skipped = sum("skipped" in r for r in results["rows"])
    s = results["shapes"]
    fig.suptitle(f"one CPU thread; attention: {s['heads']} heads × {s['head_dim']}; selective scan: D = {s['channels']}, "
                 f"state {s['d_state']}; batch {s['batch']}" + (f"; {skipped} points skipped (caps, see JSON)" if skipped else ""),
                 fontsize=9)
    return fig


def add_slope_guides(ax: Axes, x, anchor_y: float, powers=(1, 2), colour: str = "0.6") -> None:
    """Dotted reference lines y ∝ x^p through (x[0], anchor_y), labelled "∝ Δ^p"-style by the caller's legend."""
    x = np.asarray(x, dtype=float)
    for p, ls in zip(powers, (":", "-.", "--")):
        ax.plot(x, anchor_y * (x / x[0]) ** p, ls, color=colour, linewidth=0.8, label=f"slope {p}")


def plot_discretization_error(ax: Axes, deltas, errors: dict, title: str | None = None,
                              ylabel: str = "relative error") -> None:
    """Errors of discretisations against the step Δ, log-log, with slope-1 and slope-2 guides:
    errors maps a label to an array over `deltas`."""
    deltas = np.asarray(deltas, dtype=float)
    for label, err in errors.items():
        ax.plot(deltas, np.maximum(np.asarray(err, dtype=float), 1e-17), marker=".", label=label)
    first = [float(e[0]) for e in errors.values() if float(e[0]) > 1e-12]
    if first:
        add_slope_guides(ax, deltas, max(first) * 3)
    ax.set(xscale="log", yscale="log", xlabel="step Δ", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def plot_hippo_memory(t, f, snapshots: list[dict], fig: Figure | None = None) -> Figure:
    """What a HiPPO state remembers (seed, "Mamba (HiPPO)"). t (L,) times, f (L,) the signal;
    snapshots: [{"time": t_k, "past": (M,) times ≤ t_k, "reconstruction": (M,) f̂ at those times,
    "age": (M,) t_k − past, "error": (M,) |f̂ − f|}]. Left: the signal (grey) and, for each
    snapshot, what the state at t_k reconstructs of the past (coloured); right: the error against
    the age of the input, log scale."""
    fig = fig or Figure(figsize=(12, 3.6), layout="constrained")
    ax_f, ax_e = fig.subplots(1, 2, width_ratios=(1.6, 1))
    ax_f.plot(t, f, color="0.6", linewidth=2.5, label="signal f(t)")
    for k, snap in enumerate(snapshots):
        colour = PALETTE[k % len(PALETTE)]
        ax_f.plot(snap["past"], snap["reconstruction"], color=colour, linewidth=1,
                  label=f"state at t = {snap['time']:.1f} remembers")
        ax_f.axvline(snap["time"], color=colour, linestyle=":", linewidth=0.8)
        ax_e.plot(snap["age"], np.maximum(snap["error"], 1e-6), color=colour, linewidth=0.8,
                  label=f"t = {snap['time']:.1f}")
    ax_f.set(xlabel="time t", ylabel="value", title="the signal and what the state remembers of it")
    ax_f.legend(fontsize=7, loc="lower left")
    ax_e.set(yscale="log", xlabel="age of the input (t_k − s)", ylabel="|f̂(s) − f(s)|",
             title="reconstruction error against age")
    ax_e.grid(alpha=0.3)
    ax_e.legend(fontsize=7)
    return fig


def plot_ssm_kernel(ax: Axes, K, title: str | None = "the SSM convolution kernel K̄") -> None:
    """K̄ = (CB̄, CĀB̄, ..., CĀ^{L-1}B̄) (Mamba Eq. 3a) as a stem plot against the lag k."""
    K = np.asarray(K, dtype=float)
    ax.stem(np.arange(len(K)), K, markerfmt=".", basefmt=" ")
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set(xlabel="lag k (tokens back)", ylabel="K̄_k = C Ā^k B̄", title=title)


def plot_sequences(ax: Axes, curves: dict, title: str | None = None, xlabel: str = "token t",
                   styles: dict | None = None) -> None:
    """Several sequences over t on one axis: curves maps a label to a (L,) array."""
    for label, y in curves.items():
        ax.plot(np.asarray(y, dtype=float), label=label, **(styles or {}).get(label, {}))
    ax.set(xlabel=xlabel, title=title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_selective_gate(x, marked, delta, outputs: dict, fig: Figure | None = None) -> Figure:
    """Δ as a gate (seed, "Mamba (Selective State Spaces)"). x (L,) the input stream, marked (L,)
    bool the tokens to remember, delta (L,) the selective model's step Δ_t, outputs maps a label
    to a (L,) output (e.g. the target, a time-invariant SSM's, the selective SSM's)."""
    fig = fig or Figure(figsize=(12, 5.5), layout="constrained")
    ax_x, ax_d, ax_y = fig.subplots(3, 1, sharex=True, height_ratios=(1, 0.7, 1.3))
    x, marked, delta = (np.asarray(v) for v in (x, marked, delta))
    t = np.arange(len(x))
    ax_x.bar(t, x, color=np.where(marked, "tab:red", "0.75"), width=0.8)
    ax_x.set(ylabel="input x_t", title="input: noise (grey) and marked tokens to remember (red)")
    ax_d.semilogy(t, delta, color="tab:purple", drawstyle="steps-mid")
    ax_d.set(ylabel="Δ_t", title="the selective SSM's step: large = take this token (reset), small = ignore it (keep)")
    for label, y in outputs.items():
        style = {"color": "k", "linewidth": 2.5, "alpha": 0.35} if label.startswith("target") else {"linewidth": 1.2}
        ax_y.plot(t, np.asarray(y, dtype=float), label=label, drawstyle="steps-mid", **style)
    ax_y.set(xlabel="token t", ylabel="output y_t", title="outputs: remember the last marked value")
    ax_y.legend(fontsize=7, loc="upper right")
    for ax in (ax_x, ax_d, ax_y):
        ax.grid(alpha=0.3)
    return fig


def plot_scan_tree(ax: Axes, length: int, steps: list[dict]) -> None:
    """The odd/even parallel scan of a sequence of `length` as a circuit, given its levels `steps`
    (`tutorial.ssm.parallel_scan.odd_even_scan_steps(length)`): one column per element, one row per
    parallel level (top to bottom), an arrow src -> dst for each combine; the up-sweep (pairs of
    neighbours, pairs of pairs, ...) in blue, the down-sweep (filling in the rest) in orange."""
    for row, level in enumerate(steps):
        y = -(row + 1)
        colour = "tab:blue" if level["phase"] == "up" else "tab:orange"
        for src, dst in level["pairs"]:
            ax.annotate("", xy=(dst, y), xytext=(src, y + 1),
                        arrowprops=dict(arrowstyle="->", color=colour, linewidth=1.2, shrinkA=3, shrinkB=3))
            ax.plot([dst, dst], [y + 1, y], color="0.75", linewidth=0.6, zorder=0)
            ax.plot(dst, y, "o", color=colour, markersize=5)
        touched = {d for _, d in level["pairs"]}
        for i in range(length):
            if i not in touched:
                ax.plot([i, i], [y + 1, y], color="0.85", linewidth=0.6, zorder=0)
        ax.text(length - 0.4, y + 0.5, f"{level['phase']}-sweep, depth {level['depth']}: "
                f"{len(level['pairs'])} combine{'s' if len(level['pairs']) != 1 else ''}", fontsize=7, va="center")
    ax.plot(range(length), [0] * length, "s", color="0.3", markersize=5)
    ax.plot(range(length), [-len(steps)] * length, "s", color="tab:green", markersize=5)
    ax.set_xticks(range(length), [str(i) for i in range(length)])
    ax.set_yticks([0, -len(steps)], ["steps (a_t, b_t)", "prefixes h_t"])
    ax.set_xlim(-0.6, length + 6)
    ax.set(xlabel="position t", title=f"odd/even parallel scan of L = {length}: {len(steps)} parallel levels "
           f"(the loop needs {length - 1} dependent steps)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
