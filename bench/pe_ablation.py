"""The seed's positional-encoding ablation (DETR Table 3) on shapes, with detr_tiny.

    python bench/pe_ablation.py train --epochs 6 --train-images 2500 --threads 1   # runs/pe_ablation/row*
    python bench/pe_ablation.py report --epochs 6                                    # bench/results/pe_ablation.json

Each row of `tutorial.models.detr.PE_ABLATION` trains with the first phase of the shipped detr_tiny's
recipe (pretrained resnet_tiny backbone, `--lr 2e-4 --lr-backbone 1e-4`, batch 16, seed 42, bf16
autocast, the learning rate still undropped: `--lr-drop 60`, epochs of the first `--train-images`
train images) for the same number of epochs; only where (and whether) positions enter differs.
The last row is detr_tiny's default, so `--default-run` may take it from another run of the same
command instead of training it again. The paper trained 300 epochs on COCO; these are short CPU
runs, so read the table for its ordering, not its absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tutorial.models.detr import PE_ABLATION  # noqa: E402

SEED_TABLE = {  # DETR Table 3 (COCO val, R50, 300 epochs): AP, AP50
    ("none", "none", "learned at input"): (32.8, 55.2),
    ("sine at input", "sine at input", "learned at input"): (39.2, 60.0),
    ("learned at attn.", "learned at attn.", "learned at attn."): (39.6, 60.7),
    ("none", "sine at attn.", "learned at attn."): (39.3, 60.3),
    ("sine at attn.", "sine at attn.", "learned at attn."): (40.6, 61.6),
}


def run_dir(runs: Path, i: int) -> Path:
    return runs / f"row{i}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["train", "report"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, nargs="*", default=None, help="train only these row numbers (0-4)")
    p.add_argument("--train-images", type=int, default=None, help="epochs of the first N train images")
    p.add_argument("--amp", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--runs-dir", default="runs/pe_ablation")
    p.add_argument("--default-run", default=None,
                   help="report: take the default (last) row from this detr_tiny run at the same epoch")
    args = p.parse_args()
    runs = ROOT / args.runs_dir
    if args.cmd == "train":
        for i, (row, overrides) in enumerate(PE_ABLATION.items()):
            if args.rows is not None and i not in args.rows:
                continue
            cmd = [sys.executable, "-m", "tutorial", "train", "--model", "detr_tiny", "--out", str(run_dir(runs, i)),
                   "--epochs", str(args.epochs), "--lr-drop", "60", "--lr", "2e-4", "--lr-backbone", "1e-4",
                   "--batch-size", "16", "--workers", "0", "--amp", args.amp, "--eval-every", "2", "--no-progress",
                   "--model-overrides", json.dumps(overrides)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--train-images", str(args.train_images)] if args.train_images else []
            cmd += ["--resume"] if (run_dir(runs, i) / "checkpoint.pt").exists() else []
            print(" | ".join(row), ":", " ".join(cmd))
            subprocess.run(cmd, check=True, cwd=ROOT)
        return
    from bench.common import write_json

    rows = []
    default = len(PE_ABLATION) - 1
    for i, row in enumerate(PE_ABLATION):
        source = Path(args.default_run) if (i == default and args.default_run) else run_dir(runs, i)
        metrics = [json.loads(x) for x in (source / "metrics.jsonl").read_text().splitlines()]
        last = [m for m in metrics if "AP" in m and m["epoch"] < args.epochs][-1]
        seed_ap, seed_ap50 = SEED_TABLE[row]
        rows.append({"encoder": row[0], "decoder": row[1], "output": row[2], "epochs": last["epoch"] + 1,
                     "train_time_s": last["train_time"], "AP": last["AP"], "AP50": last["AP50"],
                     "seed_AP": seed_ap, "seed_AP50": seed_ap50, "overrides": PE_ABLATION[row],
                     "run": str(source)})
        print(rows[-1])
    write_json("pe_ablation", {"model": "detr_tiny", "command": " ".join(["python bench/pe_ablation.py"] + sys.argv[1:]),
                               "rows": rows})


if __name__ == "__main__":
    main()
