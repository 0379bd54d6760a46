"""Speed and accuracy on this CPU, the seed's RT-DETR tables in miniature: end-to-end latency at
batch 1 and COCO AP on the shapes val set for
- the dense NMS baseline (`tutorial/models/dense_detector.py`, data/checkpoints/dense_tiny.pt) at each NMS
  setting, with the NMS step timed alone: the seed's NMS table of YOLOv8 ("NMS execution time"), AP
  and NMS time against the IoU threshold at confidence 0.001, and against the confidence threshold
  at IoU 0.7;
- RT-DETR-tiny (data/checkpoints/rtdetr_tiny.pt) with only its first k = 1 .. L decoder layers run
  (the seed's "Scaled RT-DETRs" Dec^k rows; official `eval_idx`, here `num_decoder_layers`);
- DINO-tiny (data/checkpoints/dino_tiny.pt), the seed's DINO-Deformable-DETR row.

    python bench/latency.py                          # writes bench/results/latency.json and latency.png
    python bench/latency.py --val-images 100 --repeats 20    # quicker, noisier

Latency: one fixed input, val image 0 resized to 160 x 160 (the shapes set's largest side; no
padding), batch 1, `--threads` torch threads (default 1), eval mode, no_grad: the forward pass and
the post-processing (the DETRs: top-k over (query, class) pairs; the dense detector: confidence
threshold, pre-NMS top-k and NMS), `--warmup` runs excluded, then the median and IQR of `--repeats`
runs. All settings of one model are timed round-robin (run i of every setting, then run i + 1, ...,
`bench.common.time_runs`) in one fresh subprocess per model, so that a change of machine load hits
all of a model's settings alike and one model's memory does not weigh on the next.
NMS time: `tutorial.models.dense_detector.time_nms` (the confidence threshold, the pre-NMS top-k and
`batched_nms`, nothing else: the seed's "NMS (ms)") on each val image's own outputs at batch 1, the
median of `--nms-repeats` runs per image, then the mean over the images (ms per image).
AP: COCOeval over the first `--val-images` val images (default: all), each at its own size,
forward passes in padded batches of 16 as `tutorial.evaluate` runs them; the dense detector's
outputs are computed once and post-processed at every setting.
A missing checkpoint is skipped with a message; the JSON records which checkpoints were used and
their training manifests (`<checkpoint>.json`), and these conditions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import add_child_options, answered_as_child, time_runs  # noqa: E402
from tutorial.data.dataset import DetectionDataset, collate  # noqa: E402
from tutorial.models.dense_detector import time_nms  # noqa: E402
from tutorial.training.evaluate import coco_detections, coco_metrics, evaluate  # noqa: E402

CHECKPOINTS = ROOT / "data" / "checkpoints"
MODELS = {"dense": "dense_tiny.pt", "rtdetr": "rtdetr_tiny.pt", "dino": "dino_tiny.pt"}
IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)  # at confidence 0.001 (the seed: 0.5, 0.6, 0.8)
SCORE_THRESHOLDS = (0.001, 0.01, 0.05, 0.1, 0.25)  # at IoU 0.7 (the seed: 0.001, 0.01, 0.05)
SWEEP_SCORE, SWEEP_IOU = 0.001, 0.7  # the fixed threshold of each sweep, as in the seed's table
IMAGE_SIZE = 160


def nms_settings(iou_thresholds=IOU_THRESHOLDS, score_thresholds=SCORE_THRESHOLDS) -> list[tuple[float, float]]:
    """The (iou_threshold, score_threshold) pairs of both sweeps, without repeats."""
    pairs = [(iou, SWEEP_SCORE) for iou in iou_thresholds] + [(SWEEP_IOU, s) for s in score_thresholds]
    return list(dict.fromkeys(pairs))


def setting_name(iou: float, score: float) -> str:
    return f"iou={iou:g} conf={score:g}"


def fixed_input(dataset, size: int = IMAGE_SIZE, index: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Image `index` of `dataset` resized to size x size: (images (1, 3, S, S), mask (1, S, S) all
    False, sizes (1, 2) = (S, S))."""
    image, _ = dataset[index]
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)  # (1, 3, S, S)
    return image, torch.zeros(1, size, size, dtype=torch.bool), torch.tensor([[size, size]])


def latency_functions(kind: str, model: nn.Module, images: Tensor, mask: Tensor, sizes: Tensor,
                      settings: list[tuple[float, float]] | None = None) -> dict:
    """{setting name: fn()} running one end-to-end inference each (forward + post-processing):
    "dense": one per NMS setting, plus "forward only"; "rtdetr": "k layers" for k = 1 .. L_dec;
    "dino" (or any other DETR): "all layers"."""
    if kind == "dense":
        fns = {"forward only": lambda: model(images, mask)}
        for iou, score in settings or nms_settings():
            fns[setting_name(iou, score)] = (
                lambda iou=iou, score=score: model.postprocess(model(images, mask), sizes, iou, score))
        return fns
    if kind == "rtdetr":
        return {f"{k} layers": (lambda k=k: model.postprocess(model(images, mask, num_decoder_layers=k), sizes))
                for k in range(1, model.cfg.decoder.num_decoder_layers + 1)}
    return {"all layers": lambda: model.postprocess(model(images, mask), sizes)}


@torch.no_grad()
def measure_latency(kind: str, model: nn.Module, dataset, warmup: int, repeats: int,
                    settings: list[tuple[float, float]] | None = None) -> dict[str, dict]:
    """End-to-end latency of every setting of one model on the fixed input (`time_runs` stats, ms)."""
    images, mask, sizes = fixed_input(dataset)
    return time_runs(latency_functions(kind, model.eval(), images, mask, sizes, settings), warmup, repeats)


@torch.no_grad()
def dense_outputs(model: nn.Module, dataset, batch_size: int = 16) -> list[tuple[dict, Tensor, list[int]]]:
    """The dense detector's outputs on `dataset`, once: [(outputs {"pred_logits", "pred_boxes",
    "valid"}, sizes (B, 2), image ids)] per padded batch."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    cached = []
    for images, mask, targets in loader:
        out = model.eval()(images, mask)
        cached.append(({k: out[k] for k in ("pred_logits", "pred_boxes", "valid")},
                       torch.stack([t["orig_size"] for t in targets]), [int(t["image_id"]) for t in targets]))
    return cached


def nms_rows(model: nn.Module, cached: list, coco_gt, settings: list[tuple[float, float]],
             nms_repeats: int = 10) -> list[dict]:
    """For each (iou, score) setting: COCO metrics of the post-processed `cached` outputs, the NMS
    time per image (`time_nms` at batch 1, median of `nms_repeats` per image, mean over images, in
    ms) and the mean numbers of candidates entering NMS and of detections kept per image."""
    rows = []
    for iou, score in settings:
        results, image_ids, nms_ms, candidates, kept = [], [], [], [], []
        for outputs, sizes, ids in cached:
            for i, det in enumerate(model.postprocess(outputs, sizes, iou, score)):
                results += coco_detections(ids[i], det)
                image_ids.append(ids[i])
                kept.append(len(det["scores"]))
            for i in range(len(ids)):  # batch 1: one image's outputs, as at deployment
                one = {k: v[i:i + 1] for k, v in outputs.items()}
                nms_ms.append(1e3 * time_nms(model, one, sizes[i:i + 1], iou, score, repeats=nms_repeats))
                candidates.append(len(model.candidates(one, sizes[i:i + 1], score)[0]["scores"]))
        rows.append({"iou_threshold": iou, "score_threshold": score, **coco_metrics(coco_gt, results, image_ids),
                     "nms_ms": round(sum(nms_ms) / len(nms_ms), 4),
                     "nms_ms_median_image": round(sorted(nms_ms)[len(nms_ms) // 2], 4),
                     "candidates_per_image": round(sum(candidates) / len(candidates), 1),
                     "detections_per_image": round(sum(kept) / len(kept), 1)})
    return rows


def depth_rows(model: nn.Module, dataset, batch_size: int = 16) -> list[dict]:
    """COCO metrics of RT-DETR with its first k decoder layers, k = 1 .. L_dec (eval mode reads
    `cfg.num_decoder_layers_eval`, as the official `eval_idx`); the config is restored after."""
    saved, rows = model.cfg.num_decoder_layers_eval, []
    try:
        for k in range(1, model.cfg.decoder.num_decoder_layers + 1):
            model.cfg.num_decoder_layers_eval = k
            rows.append({"decoder_layers": k, **evaluate(model, dataset, batch_size, progress=False)})
    finally:
        model.cfg.num_decoder_layers_eval = saved
    return rows


def manifest(path: Path) -> dict:
    """What the checkpoint's manifest says about its training (command, epochs, val metrics)."""
    from bench.common import checkpoint_stamp

    m, stamp = path.with_suffix(".json"), checkpoint_stamp(path)
    if not m.exists():
        return {**stamp, "manifest": None}
    data = json.loads(m.read_text())
    return {**stamp, "command": data.get("command"), "epochs": data.get("epochs"),
            "val_metrics": data.get("val_metrics")}


def child(kind: str, checkpoint: str, data: str, warmup: int, repeats: int) -> dict:
    """Run in a subprocess: the latency of every setting of one model."""
    from tutorial.training.checkpoint import load_model

    model = load_model(checkpoint)
    dataset = DetectionDataset(data, "val", num_classes=model.cfg.num_classes)
    latency = measure_latency(kind, model, dataset, warmup, repeats)
    return {"kind": kind, "threads": torch.get_num_threads(), "latency": latency}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "data" / "shapes"))
    p.add_argument("--checkpoints", default=str(CHECKPOINTS))
    p.add_argument("--val-images", type=int, default=None, help="evaluate on the first N val images (default: all)")
    p.add_argument("--nms-repeats", type=int, default=10)
    add_child_options(p, ("KIND", "CHECKPOINT"), warmup=10, repeats=50)
    args = p.parse_args()
    if answered_as_child(args, lambda *one: child(*one, args.data, args.warmup, args.repeats)):
        return
    from bench.common import RESULTS, run_child, write_json
    from tutorial.viz.rt_detr import plot_latency_report
    from tutorial.training.checkpoint import load_model

    started = time.perf_counter()
    report: dict = {"command": " ".join(["python", "bench/latency.py", *sys.argv[1:]]),
                    "conditions": {"image_size": [IMAGE_SIZE, IMAGE_SIZE], "latency_input": "val image 0, resized",
                                   "batch": 1, "threads": args.threads, "warmup": args.warmup,
                                   "repeats": args.repeats, "nms_repeats": args.nms_repeats,
                                   "val_images": args.val_images, "ap_batch_size": 16},
                    "checkpoints": {}, "latency": {}}
    for kind, name in MODELS.items():
        path = Path(args.checkpoints) / name
        if not path.exists():
            print(f"{path} does not exist: skipping {kind}")
            continue
        report["checkpoints"][kind] = manifest(path)
        report["latency"][kind] = run_child(__file__, ["--threads", args.threads, "--warmup", args.warmup, "--repeats",
                                                       args.repeats, "--data", args.data, "--one", kind, path],
                                            what=f"the latency of {kind}")["latency"]
        for setting, stats in report["latency"][kind].items():
            print(f"{kind:6s} {setting:22s} {stats['median_ms']:8.2f} ms (IQR {stats['iqr_ms']:.2f})")

        model = load_model(path)
        val = DetectionDataset(args.data, "val", num_classes=model.cfg.num_classes)
        report["conditions"]["val_images_used"] = n = min(args.val_images or len(val), len(val))
        subset = torch.utils.data.Subset(val, range(n))
        if kind == "dense":
            cached = dense_outputs(model, subset)
            rows = nms_rows(model, cached, val.coco, nms_settings(), args.nms_repeats)
            for row in rows:
                row["latency"] = report["latency"]["dense"][setting_name(row["iou_threshold"], row["score_threshold"])]
            report["nms"] = {"by_iou": [r for r in rows if r["score_threshold"] == SWEEP_SCORE
                                        and r["iou_threshold"] in IOU_THRESHOLDS],
                             "by_confidence": [r for r in rows if r["iou_threshold"] == SWEEP_IOU
                                               and r["score_threshold"] in SCORE_THRESHOLDS],
                             "pre_nms_top_k": model.cfg.pre_nms_top_k, "num_detections": model.cfg.num_detections}
            for r in rows:
                print(f"dense  iou {r['iou_threshold']:.2f} conf {r['score_threshold']:<6g} AP {100 * r['AP']:5.1f} "
                      f"NMS {r['nms_ms']:.3f} ms/image, {r['candidates_per_image']:.0f} candidates")
        elif kind == "rtdetr":
            rows = depth_rows(model, subset)
            for row in rows:
                row["latency"] = report["latency"]["rtdetr"][f"{row['decoder_layers']} layers"]
                print(f"rtdetr Dec{row['decoder_layers']} AP {100 * row['AP']:5.1f} "
                      f"{row['latency']['median_ms']:.2f} ms")
            report["rtdetr_depth"] = rows
        else:
            report["dino"] = {**evaluate(model, subset, progress=False),
                              "latency": report["latency"]["dino"]["all layers"]}
            print(f"dino   AP {100 * report['dino']['AP']:5.1f} {report['dino']['latency']['median_ms']:.2f} ms")
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json("latency", report)
    fig = plot_latency_report(report)
    fig.savefig(RESULTS / "latency.png", dpi=120)
    print(f"wrote {RESULTS / 'latency.png'}")


if __name__ == "__main__":
    main()
