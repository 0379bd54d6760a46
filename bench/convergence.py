"""Convergence: val AP against training time and epochs, several models, the same CPU budget.

    # 1. each model's training speed on one idle core (images/s), bench/results/throughput_<model>.json:
    python bench/throughput.py --model deformable_detr_tiny --threads 1
    # 2. train each model for the same budget, one at a time:
    python bench/convergence.py train --models detr_tiny deformable_detr_tiny --budget 7200 --threads 1
    # 3. collect the runs' metrics.jsonl into bench/results/convergence.json and convergence.png:
    python bench/convergence.py report --runs runs/convergence/detr_tiny runs/convergence/deformable_detr_tiny

The budget is CPU time on one idle core, turned into a number of epochs with the measured
throughput (epochs = budget x images/s / training images), the learning rate dropping x0.1 after
2/3 of them. Counting epochs instead of reading a wall clock keeps the comparison fair when the
machine is shared: every model does exactly the work the budget buys, however busy the CPU was.
The plot's time axis is that CPU time: the process CPU time `train` records (`cpu_time` in
metrics.jsonl, one core's with `--threads 1 --workers 0`), or for older runs images seen / measured
images/s; each run's real wall time is in the JSON too. Each model trains with its own recipe (`RECIPES`) through the package's
own `python -m tutorial train`; the runs' checkpoints are the ones `python -m tutorial ship`
turns into data/checkpoints/*.pt. The seed's claim for Deformable DETR is "10x fewer epochs"
than DETR; this measures what happens here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Per-model training flags (besides --model/--out/--epochs/--max-train-time).
RECIPES = {
    # The DETR line (DETR -> Deformable -> Conditional / DAB -> DN -> DINO) trains with one recipe:
    # AdamW, lr 2e-4 for everything (Deformable DETR's lr; DETR's paper lr is 1e-4 with a
    # pretrained backbone at 1e-5, ours start from scratch), weight decay 1e-4, batch 16,
    # clipping 0.1, so that their curves differ only by the model.
    "detr_tiny": ["--lr", "2e-4", "--lr-backbone", "2e-4"],
    "deformable_detr_tiny": ["--lr", "2e-4", "--lr-backbone", "2e-4"],
    "conditional_detr_tiny": ["--lr", "2e-4", "--lr-backbone", "2e-4"],
    # DAB-DETR and DN-DETR also record the instability score, on the whole val set (DN-DETR Fig. 2)
    "dab_detr_tiny": ["--lr", "2e-4", "--lr-backbone", "2e-4", "--instability-images", "500"],
    "dn_detr_tiny": ["--lr", "2e-4", "--lr-backbone", "2e-4", "--instability-images", "500"],
    "dino_tiny": ["--lr", "2e-4", "--lr-backbone", "2e-4"],
    # The NMS baseline trains with the DETR line's optimiser as well.
    "dense_tiny": ["--lr", "2e-4", "--lr-backbone", "2e-4"],
    # RT-DETR's official optimiser (rtdetr_pytorch configs/rtdetr/include/optimizer.yml): AdamW, lr 1e-4,
    # weight decay 1e-4, batch 16 (train's default), gradient clipping 0.1 (the default). Its backbone lr
    # 1e-5 is for an ImageNet-pretrained ResNet-vd; ours trains from scratch, so it gets the rest's lr.
    # The Mamba detector (AIFI -> SS2D, tutorial/models/mamba_detector.py) trains with the same recipe.
    "rtdetr_tiny": ["--lr", "1e-4", "--lr-backbone", "1e-4", "--weight-decay", "1e-4"],
    "rtdetr_mamba_tiny": ["--lr", "1e-4", "--lr-backbone", "1e-4", "--weight-decay", "1e-4"],
}


TRAIN_IMAGES = 5000  # the default shapes train split


def throughput(model: str) -> float:
    """Images/s of `model` from bench/throughput.py's result (measured on one idle core)."""
    from bench.common import RESULTS

    path = RESULTS / f"throughput_{model}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python bench/throughput.py --model {model} --threads 1` "
                         f"on an idle machine first")
    return json.loads(path.read_text())["images_per_s"]


def budget_epochs(model: str, budget: float) -> int:
    return max(1, round(budget * throughput(model) / TRAIN_IMAGES))


def train_command(model: str, out: Path, budget: float, threads: int | None) -> list[str]:
    epochs = budget_epochs(model, budget)
    cmd = [sys.executable, "-m", "tutorial", "train", "--model", model, "--out", str(out), "--epochs", str(epochs),
           "--lr-drop", str(max(1, round(2 * epochs / 3))), "--workers", "1", "--no-progress",
           *RECIPES.get(model, [])]
    return cmd + (["--threads", str(threads)] if threads else [])


def read_curve(run: Path) -> list[dict]:
    from tutorial.training.evaluate import METRICS
    from tutorial.training.ship import read_metrics

    return [{k: r[k] for k in ("epoch", "train_time", "cpu_time", *METRICS, "IS") if k in r}
            for r in read_metrics(run) if "AP" in r]


def report(runs: list[Path], out_name: str = "convergence") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import RESULTS, read_previous, write_json

    curves, previous = {}, read_previous(out_name).get("curves", {})
    for run in runs:
        if not (run / "metrics.jsonl").exists() and run.name in previous:
            print(f"{run}/metrics.jsonl is not here: keeping {run.name}'s curve from bench/results/{out_name}.json")
            curves[run.name] = previous[run.name]
            continue
        curve = read_curve(run)
        for r in curve:  # runs that did not record their CPU time: one idle core's, from the measured speed
            if "cpu_time" not in r:
                r["cpu_time"] = round((r["epoch"] + 1) * TRAIN_IMAGES / throughput(run.name), 1)
        curves[run.name] = curve
    with_is = {name: [r for r in c if "IS" in r] for name, c in curves.items() if any("IS" in r for r in c)}
    fig, axes = plt.subplots(1, 3 if with_is else 2, figsize=(16 if with_is else 11, 4))
    color = {name: f"C{i}" for i, name in enumerate(curves)}  # one colour per run in every panel
    for name, curve in curves.items():
        hours = [r["cpu_time"] / 3600 for r in curve]
        axes[0].plot(hours, [r["AP"] for r in curve], marker=".", label=name, color=color[name])
        axes[1].plot([r["epoch"] + 1 for r in curve], [r["AP"] for r in curve], marker=".", label=name, color=color[name])
    axes[0].set(xlabel="training CPU time (h, one core, from measured images/s)", ylabel="val AP (shapes)",
                title="AP against time")
    axes[1].set(xlabel="epoch", ylabel="val AP (shapes)", title="AP against epochs")
    for name, curve in with_is.items():  # DN-DETR Fig. 2: matched-target changes between epochs
        axes[2].plot([r["epoch"] + 1 for r in curve], [r["IS"] for r in curve], marker=".", label=name, color=color[name])
    if with_is:
        axes[2].set(xlabel="epoch", ylabel="instability score IS", title="IS against epochs (val images)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / f"{out_name}.png", dpi=120)
    summary = {name: {"epochs": c[-1]["epoch"] + 1, "cpu_time_s": c[-1]["cpu_time"],
                      "wall_time_s": c[-1]["train_time"], "final": c[-1],
                      "best_AP": max(r["AP"] for r in c)} for name, c in curves.items() if c}
    write_json(out_name, {"runs": {n: str(r) for n, r in zip(curves, runs)}, "summary": summary, "curves": curves})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--models", nargs="+", required=True)
    t.add_argument("--budget", type=float, required=True, help="seconds of training per model")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--runs-dir", default="runs/convergence")
    r = sub.add_parser("report")
    r.add_argument("--runs", nargs="+", required=True)
    r.add_argument("--name", default="convergence")
    args = p.parse_args()
    if args.cmd == "train":
        for model in args.models:
            cmd = train_command(model, ROOT / args.runs_dir / model, args.budget, args.threads)
            print(" ".join(cmd))
            subprocess.run(cmd, check=True, cwd=ROOT)
    else:
        report([Path(x) for x in args.runs], args.name)


if __name__ == "__main__":
    main()
