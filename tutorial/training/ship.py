"""Shipping a trained checkpoint: `data/checkpoints/<name>.pt` plus `<name>.json`, its manifest.

    python -m tutorial ship --run runs/detr_tiny --name detr_tiny --command "python -m tutorial train ..."

The manifest records the exact train command, the data set (its folder, whose generator config
is in its instances.json), the seed, the training wall time, the AP curve (val metrics, and
the instability score where recorded, against epoch, wall time and CPU time, from the run's
metrics.jsonl) and the val metrics
of the shipped file itself (weights in float16), measured here by re-evaluating it: the test
`tests/test_checkpoints.py` re-evaluates the file and must find the same numbers.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, load_model, save_atomic, shippable
from ..data.dataset import DetectionDataset
from .evaluate import METRICS, evaluate

CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "data" / "checkpoints"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def ship(run: str | Path, name: str, data: str = "data/shapes", command: str = "",
         out_dir: Path = CHECKPOINT_DIR) -> dict:
    """Write `out_dir/<name>.pt` (float16 weights) and `out_dir/<name>.json`; returns the manifest."""
    run = Path(run)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.pt"
    save_atomic(shippable(ckpt), path)
    model = load_model(path)
    val = DetectionDataset(data, "val", num_classes=model.cfg.num_classes)
    metrics = evaluate(model, val, progress=False)
    history = read_metrics(run)
    keys = ("epoch", "train_time", "cpu_time", *METRICS, "IS")
    curve = [{k: r[k] for k in keys if k in r} for r in history if "AP" in r]
    manifest = {
        "name": name,
        "preset": ckpt["preset"],
        "command": command,
        "data": str(data),  # the set it was trained and evaluated on (tests/test_checkpoints.py reads it)
        "seed": ckpt.get("train_config", {}).get("seed"),
        "epochs": ckpt["epoch"] + 1,
        "train_wall_time_s": round(ckpt["train_time"], 1),
        "val_metrics": metrics,
        "parameters": sum(v.numel() for k, v in ckpt["model"].items() if _is_parameter(model, k)),
        "file_bytes": path.stat().st_size,
        "weights_dtype": "float16",
        "git_commit": git_commit(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "ap_curve": curve,
        "train_config": ckpt.get("train_config"),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _is_parameter(model, key: str) -> bool:
    return key in dict(model.named_parameters())
