"""The number behind each of the deck's figures, computed from the shipped checkpoints over the val set.

    python bench/figures.py                 # all of it -> bench/results/figures.json
    python bench/figures.py --images 100    # fewer val images for the attention measures

What is measured (see `tutorial/figure_metrics.py` for the definitions):
- detr_tiny: the encoder's instance lift (DETR Fig. 3), the decoder's outline lift (Fig. 6) and the
  query slots' specialisation (Fig. 7);
- detr_tiny, conditional_detr_tiny, dab_detr_tiny: the positional priors of their learned queries
  (DAB-DETR Fig. 2): peaks per first-layer positional map and its spread (each checkpoint's
  training set is reported beside it);
- conditional_detr_tiny, dab_detr_tiny, dn_detr_tiny: where each positional map peaks against its
  reference, per decoder layer and head (`anchor_alignment`, notebook 04's table);
- convergence (Deformable DETR Table 1's story): the first epoch and one-core CPU time at which
  deformable_detr_tiny reaches detr_tiny's final AP, from the two manifests' AP curves;
- pretraining (the deck's "slow convergence", measured): val AP of detr_tiny with and without the
  shipped backbone pretraining at equal one-core CPU time, from `runs/` folders when present
  (else the previous figures.json's numbers are kept, and it says so).
A checkpoint trained on another set than the one named by `--data` is reported and skipped.
Every entry computed from a checkpoint records its `checkpoint_stamp` (file hash and commit).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import checkpoint_stamp, read_previous, write_json  # noqa: E402
from tutorial import figure_metrics as fm  # noqa: E402
from tutorial.training.checkpoint import load_model  # noqa: E402
from tutorial.data.dataset import DetectionDataset  # noqa: E402

CHECKPOINTS = ROOT / "data" / "checkpoints"


def manifest(name: str) -> dict | None:
    path = CHECKPOINTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def detr_figures(data: str, images: int) -> dict:
    m = manifest("detr_tiny")
    if m is None or m.get("data") != data:
        return {"skipped": f"data/checkpoints/detr_tiny was trained on {m and m.get('data')}, not {data}"}
    model = load_model(CHECKPOINTS / "detr_tiny.pt")
    val = DetectionDataset(ROOT / data, "val", num_classes=model.cfg.num_classes)
    return {"checkpoint": checkpoint_stamp(CHECKPOINTS / "detr_tiny.pt"), "val_metrics": m["val_metrics"], "images": images,
            "encoder_instance_lift": fm.encoder_instance_lift(model, val, images),
            "decoder_outline_lift": fm.decoder_outline_lift(model, val, images),
            "slot_specialisation": fm.slot_specialisation(model, val)}


def positional_priors(data: str) -> dict:
    out = {}
    for name in ("detr_tiny", "conditional_detr_tiny", "dab_detr_tiny"):
        m = manifest(name)
        if m is None:
            continue
        model = load_model(CHECKPOINTS / f"{name}.pt")
        val = DetectionDataset(ROOT / data, "val", num_classes=model.cfg.num_classes)
        out[name] = {"checkpoint": checkpoint_stamp(CHECKPOINTS / f"{name}.pt"), "trained_on": m.get("data"),
                     "val_metrics": m["val_metrics"], **fm.positional_priors(model, val)}
    return out


def anchor_alignment(data: str, images: int) -> dict:
    out = {}
    for name in ("conditional_detr_tiny", "dab_detr_tiny", "dn_detr_tiny"):
        m = manifest(name)
        if m is None or m.get("data") != data:
            out[name] = {"skipped": f"data/checkpoints/{name} was trained on {m and m.get('data')}, not {data}"}
            continue
        model = load_model(CHECKPOINTS / f"{name}.pt")
        val = DetectionDataset(ROOT / data, "val", num_classes=model.cfg.num_classes)
        out[name] = {"checkpoint": checkpoint_stamp(CHECKPOINTS / f"{name}.pt"), "images": images,
                     "layers": fm.anchor_alignment(model, val, images)}
    return out


def first_reaching(curve: list[dict], ap: float) -> dict | None:
    """The first AP-curve point at or above `ap`."""
    for r in curve:
        if r["AP"] >= ap:
            return {"epoch": r["epoch"] + 1, "cpu_time_s": r.get("cpu_time"), "AP": r["AP"]}
    return None


def convergence() -> dict:
    detr, deform = manifest("detr_tiny"), manifest("deformable_detr_tiny")
    if not (detr and deform) or detr.get("data") != deform.get("data"):
        return {"skipped": "detr_tiny and deformable_detr_tiny are not both shipped on the same data set"}
    final = detr["ap_curve"][-1]
    return {"data": detr["data"], "detr_final": {"epoch": final["epoch"] + 1, "cpu_time_s": final.get("cpu_time"),
                                                 "AP": final["AP"]},
            "deformable_first_reaching_it": first_reaching(deform["ap_curve"], final["AP"])}


def curve(run: Path) -> list[dict]:
    from tutorial.training.ship import read_metrics

    return [{k: r.get(k) for k in ("epoch", "cpu_time", "AP", "AP50")} for r in read_metrics(run) if "AP" in r]


def pretraining(runs: dict[str, Path]) -> dict:
    """AP against one-core CPU time, with and without pretraining, and AP at their common CPU time."""
    curves = {k: curve(p) for k, p in runs.items() if (p / "metrics.jsonl").exists()}
    if len(curves) < 2:
        kept = read_previous("figures").get("pretraining", {})
        if "curves" in kept:
            print("pretraining: the runs are not here; keeping the previous figures.json's numbers")
            return {**kept, "kept_from_previous_report": True}
        return {"skipped": f"needs both runs: {', '.join(str(p) for p in runs.values())}"}
    common = min(c[-1]["cpu_time"] for c in curves.values())
    at = {k: max((r for r in c if r["cpu_time"] <= common + 1), key=lambda r: r["cpu_time"]) for k, c in curves.items()}
    return {"curves": curves, "common_cpu_time_s": common, "at_common_cpu_time": at}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--images", type=int, default=200, help="val images for the attention measures")
    p.add_argument("--pretrained-run", default="runs/long/detr_tiny")
    p.add_argument("--scratch-run", default="runs/long/detr_tiny_scratch")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"detr_tiny": detr_figures(args.data, args.images), "positional_priors": positional_priors(args.data),
              "anchor_alignment": anchor_alignment(args.data, min(args.images, 50)),
              "convergence": convergence(),
              "pretraining": pretraining({"pretrained": ROOT / args.pretrained_run,
                                          "scratch": ROOT / args.scratch_run})}
    print(json.dumps({k: v for k, v in result.items() if k != "pretraining"}, indent=1)[:3000])
    write_json("figures", result)


if __name__ == "__main__":
    main()
