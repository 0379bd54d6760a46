"""Training throughput: images per second of one optimisation step (forward, loss with Hungarian
matching, backward, AdamW step) for a preset on shapes batches, on this machine.

    python bench/throughput.py --model detr_tiny --batch-size 16 --steps 20
    python bench/throughput.py --model detr_tiny --amp bf16          # bfloat16 autocast (AMX on this CPU)
    python bench/throughput.py --model detr_tiny --device cuda       # on a GPU machine
    python bench/throughput.py --table --threads 1                   # every tiny model x {fp32, bf16}

`--table` runs each (model, variant) in its own process, one after another, and writes
bench/results/throughput_table.json with a markdown table (images/s, and bf16 against fp32).

Writes bench/results/throughput_<model>.json (fp32 on the CPU: the baseline the convergence bench
reads), or throughput_<model>_<amp>_<device>.json for other variants. The first `--warmup` steps
are not timed; the result is the median over the timed steps. The step is `tutorial.train`'s:
forward under autocast when asked, losses in float32.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import run_child, write_json  # noqa: E402
from tutorial import build_model  # noqa: E402
from tutorial.data.dataset import DetectionDataset, collate  # noqa: E402
from tutorial.training.amp import to_float  # noqa: E402


TINY = ["detr_tiny", "deformable_detr_tiny", "conditional_detr_tiny", "dab_detr_tiny", "dn_detr_tiny", "dino_tiny",
        "rtdetr_tiny", "rtdetr_mamba_tiny", "dense_tiny", "anchor_detr_tiny", "sparse_detr_tiny", "lite_dino_tiny",
        "efficient_detr_tiny"]


def table(args) -> None:
    """Every tiny model at fp32 and bf16, each in a fresh process; a markdown table and JSON."""
    rows = []
    for model in TINY:
        row = {"model": model}
        for amp in ("fp32", "bf16"):
            child = ["--model", model, "--amp", amp, "--device", args.device, "--steps", args.steps,
                     "--batch-size", args.batch_size, "--print-json"]
            child += ["--threads", args.threads] if args.threads else []
            row[amp] = run_child(__file__, child, what=f"{model} {amp}")["images_per_s"]
        row["bf16_speedup"] = round(row["bf16"] / row["fp32"], 2)
        print(row, flush=True)
        rows.append(row)
    lines = ["| model | fp32 images/s | bf16 images/s | bf16 / fp32 |", "|---|---:|---:|---:|"]
    lines += [f"| `{r['model']}` | {r['fp32']} | {r['bf16']} | {r['bf16_speedup']} |" for r in rows]
    print("\n".join(lines))
    write_json("throughput_table", {"device": args.device, "threads": args.threads, "batch_size": args.batch_size,
                                    "steps": args.steps, "rows": rows, "markdown": "\n".join(lines)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="detr_tiny")
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", action="store_true", help="every tiny model at fp32 and bf16")
    p.add_argument("--print-json", action="store_true", help="print the result as JSON, write no file")
    args = p.parse_args()
    if args.table:
        return table(args)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model).train().to(device)
    criterion = model.build_criterion()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    data = DetectionDataset(args.data, "train", train=True, num_classes=model.cfg.num_classes)
    times = []
    for step in range(args.warmup + args.steps):
        images, mask, targets = collate([data[(step * args.batch_size + i) % len(data)] for i in range(args.batch_size)])
        images, mask = images.to(device), mask.to(device)
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            outputs = model(images, mask, targets=targets) if getattr(model, "uses_targets", False) else model(images, mask)
        loss = criterion(to_float(outputs), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    result = {"model": args.model, "amp": args.amp, "device": args.device, "threads": torch.get_num_threads(),
              "batch_size": args.batch_size, "steps": args.steps,
              "median_step_s": round(median, 4), "images_per_s": round(args.batch_size / median, 2),
              "step_s": [round(t, 4) for t in times]}
    print(f"{args.model} {args.amp} {args.device}: {result['images_per_s']} images/s "
          f"(median step {median:.3f} s, batch {args.batch_size})")
    if args.print_json:
        return print(json.dumps(result))
    baseline = args.amp == "fp32" and device.type == "cpu"
    write_json(f"throughput_{args.model}" if baseline else f"throughput_{args.model}_{args.amp}_{device.type}", result)


if __name__ == "__main__":
    main()
