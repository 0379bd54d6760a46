"""The efficient DETRs' trade-offs, measured on the shipped tiny checkpoints (notebook 09's table).

    python bench/efficient_detrs.py                   # writes bench/results/efficient_detrs.json
    python bench/efficient_detrs.py --val-images 100  # quicker, noisier AP

- sparse_rho (Sparse DETR Fig. 1 / Table 2's trade-off): sparse_detr_tiny, trained at ρ = 0.1, run at
  each ρ of `--rhos` (the scoring network ranks the tokens; only the top ρ are encoder queries):
  COCO AP / AP50 on val, the encoder's GFLOPs and its latency, and the tokens kept.
- lite_vs_deformable (Lite DETR Table 1's question, and the same for the others): for each tiny
  checkpoint of the multi-scale family (deformable_detr_tiny, dino_tiny, lite_dino_tiny,
  sparse_detr_tiny, efficient_detr_tiny), its val AP / AP50 (from its manifest: the shipped
  checkpoint's own evaluation) beside its encoder's GFLOPs and latency.

Cost conditions: one fixed input, val image 0 resized to 160 x 160 (the shapes set's largest side, as
`bench/latency.py`), batch 1, eval mode, no_grad, `--threads` torch threads (default 1). The encoder
is the model's `encoder` module, called on the exact inputs the model hands it (captured once by a
forward pre-hook of this script; the models know nothing of it). FLOPs:
`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add of matrix products and convolutions),
run with the PyTorch reference of deformable attention (TUTORIAL_KERNELS=reference) so that its
sampling is visible: each `grid_sample` output element counts 8 (bilinear: 4 multiply-adds);
element-wise ops, norms and softmaxes are not counted. Sparse DETR's scoring network (part of its
cost, outside `encoder`) is reported as "scoring_gflops". Time: the encoder alone, all settings
round-robin (`bench.common.time_runs`), `--warmup` runs excluded, median of `--repeats`.
A missing checkpoint is skipped with a message.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import checkpoint_stamp, time_runs, write_json  # noqa: E402
from bench.latency import fixed_input  # noqa: E402
from tutorial.data.dataset import DetectionDataset  # noqa: E402
from tutorial.training.checkpoint import load_model  # noqa: E402
from tutorial.training.evaluate import evaluate  # noqa: E402

CHECKPOINTS = ROOT / "data" / "checkpoints"
RHOS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
FAMILY = ("deformable_detr_tiny", "dino_tiny", "lite_dino_tiny", "sparse_detr_tiny", "efficient_detr_tiny")
GRID_SAMPLE_FLOPS = 8  # per output element: bilinear interpolation, 4 multiply-adds


def grid_sample_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode formula for aten.grid_sampler_2d: 8 FLOPs per output element (N, C, H_o, W_o)."""
    return GRID_SAMPLE_FLOPS * input_shape[0] * input_shape[1] * grid_shape[1] * grid_shape[2]


def encoder_call(model, images, mask, **forward_kwargs):
    """The (args, kwargs) the model passes to `model.encoder` on this input, captured by a pre-hook."""
    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("call", (args, kwargs))

    handle = model.encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(images, mask, **forward_kwargs)
    finally:
        handle.remove()
    return seen["call"]


def counted_gflops(fn) -> tuple[float, dict]:
    """GFLOPs of fn() under FlopCounterMode with the reference sampling, and the per-module totals."""
    previous = os.environ.get("TUTORIAL_KERNELS")
    os.environ["TUTORIAL_KERNELS"] = "reference"
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping={
                torch.ops.aten.grid_sampler_2d: grid_sample_flops}) as counter:
            fn()
    finally:
        os.environ.pop("TUTORIAL_KERNELS") if previous is None else os.environ.__setitem__("TUTORIAL_KERNELS", previous)
    modules = {name: sum(ops.values()) / 1e9 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() / 1e9, modules


def encoder_cost(model, images, mask, **forward_kwargs) -> tuple[dict, callable]:
    """{"encoder_gflops", ...} of one model at this input, and the encoder call to time."""
    model.requires_grad_(False)  # FlopCounterMode's module tracker hooks tensors that need grad
    args, kwargs = encoder_call(model, images, mask, **forward_kwargs)
    run = lambda: model.encoder(*args, **kwargs)  # noqa: E731
    enc, _ = counted_gflops(run)
    _, modules = counted_gflops(lambda: model(images, mask, **forward_kwargs))
    root = type(model).__name__
    out = {"encoder_gflops": round(enc, 4), "model_gflops": round(modules.get("Global", 0.0), 4)}
    if hasattr(model, "scoring_network"):
        out["scoring_gflops"] = round(modules.get(f"{root}.scoring_network", 0.0), 4)
    return out, run


def sparse_rows(path: Path, val, images, mask, rhos) -> tuple[list[dict], dict]:
    model = load_model(path).eval()
    trained = model.cfg.rho
    rows, runs = [], {}
    for rho in rhos:
        model.cfg.rho = rho
        metrics = evaluate(model, val, progress=False)
        with torch.no_grad():
            out = model(images, mask)
        cost, run = encoder_cost(model, images, mask)  # the encoder call holds this ρ's kept tokens
        rows.append({"rho": rho, "AP": round(metrics["AP"], 4), "AP50": round(metrics["AP50"], 4),
                     "kept_tokens": int(out["num_kept"][0]), "tokens": int(out["padding_mask"].shape[1]), **cost})
        runs[f"sparse rho={rho:g}"] = run
        print(f"sparse_detr_tiny rho={rho:g}: AP {metrics['AP']:.3f}, encoder {cost['encoder_gflops']:.3f} GFLOPs")
    model.cfg.rho = trained
    return rows, runs


def family_rows(names) -> tuple[dict, dict]:
    rows, runs = {}, {}
    for name in names:
        path = CHECKPOINTS / f"{name}.pt"
        if not path.exists():
            print(f"skipped {name}: {path} is missing")
            continue
        model = load_model(path).eval()
        manifest = json.loads(path.with_suffix(".json").read_text())
        cost, run = encoder_cost(model, *INPUT)
        rows[name] = {"AP": manifest["val_metrics"]["AP"], "AP50": manifest["val_metrics"]["AP50"],
                      "parameters": manifest["parameters"], **cost, "checkpoint": checkpoint_stamp(path)}
        runs[name] = run
        print(f"{name}: AP {rows[name]['AP']:.3f}, encoder {cost['encoder_gflops']:.3f} GFLOPs")
    return rows, runs


INPUT: tuple = ()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--val-images", type=int, default=None, help="evaluate sparse_detr_tiny on the first n val images")
    p.add_argument("--rhos", type=float, nargs="+", default=list(RHOS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global INPUT
    val = DetectionDataset(ROOT / args.data, "val", num_classes=6)
    images, mask, _ = fixed_input(val)
    INPUT = (images, mask)
    subset = val if args.val_images is None else torch.utils.data.Subset(val, range(args.val_images))
    sparse_path = CHECKPOINTS / "sparse_detr_tiny.pt"
    sparse, runs = ([], {}) if not sparse_path.exists() else sparse_rows(sparse_path, subset, images, mask, args.rhos)
    family, family_runs = family_rows(FAMILY)
    with torch.no_grad():
        times = time_runs({**runs, **family_runs}, args.warmup, args.repeats)
    for row in sparse:
        row["encoder_ms"] = times[f"sparse rho={row['rho']:g}"]["median_ms"]
    for name, row in family.items():
        row["encoder_ms"] = times[name]["median_ms"]
    command = " ".join(["python bench/efficient_detrs.py", *(sys.argv[1:] if argv is None else argv)])
    write_json("efficient_detrs", {
        "command": command, "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
        "input": [int(images.shape[-2]), int(images.shape[-1])], "val_images": len(subset),
        "sparse_checkpoint": checkpoint_stamp(sparse_path) if sparse_path.exists() else None,
        "sparse_rho": sparse, "lite_vs_deformable": family, "times": times})


if __name__ == "__main__":
    main()
