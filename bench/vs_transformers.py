"""Our models against Hugging Face transformers' on this CPU, side by side at equal weights: how much
slower or faster the readable code is, and where its time goes.

    python bench/vs_transformers.py                      # writes bench/results/vs_transformers.json and .png
    python bench/vs_transformers.py --only attention     # one work item (inference, attention, training, flops)
    python bench/vs_transformers.py --quick --out /tmp/v.json    # tiny shapes, one repeat: a smoke run
    python bench/vs_transformers.py --channels-last      # also ours in channels-last memory format

Needs transformers (and timm, HF's DETR backbone), both pinned in the `dev` extra:
`pip install -e .[dev]`. The full run takes about half an hour on one core (deformable DETR's
items are the longest); `--only` splits it.

Conditions: `--threads` torch threads (default 1), batch 1 for inference, random weights. Every
work item times its variants round-robin (`bench.common.time_runs`: run i of every variant, then
run i + 1, ...; A B A B), `--warmup` rounds excluded, then the median and IQR of `--repeats` rounds;
each work item runs in a fresh subprocess (not with --quick or --in-process). Ratios are ours / HF's
median time: below 1 we are faster.

1. inference (`torch.inference_mode`): `detr_r50` vs `DetrForObjectDetection` at 800 x 1216,
   `deformable_detr_r50` vs `DeformableDetrForObjectDetection` at 640 x 960, `rtdetr_r50` vs
   `RTDetrForObjectDetection` at 640 x 640. HF's model is built from the paper config (nothing is
   downloaded, `tests/test_convert_*.py`), its weights converted into ours (`tutorial.convert`), and
   before timing the bench checks the parameter counts are equal and the outputs agree (max |Δ| of
   logits and boxes; RT-DETR's compared query by query, sorted by the encoder token each came from,
   as in `tests/test_convert_rt_detr.py`); it stops with an error otherwise.
2. attention: the multi-scale deformable attention core, forward and forward + backward, at
   Deformable DETR's encoder shapes on a 640 x 960 image (batch 2, levels 80x120 .. 10x15 at strides
   8-64, every token a query, M = 8 heads, d = 32, P = 4 points): ours
   (`tutorial.ops.deformable_attention.ms_deform_attn_core`; the compiled CPU twin
   `tutorial.ops.kernels.ms_deform_attn(backend="cpu")`, fp32 only, built on first use) vs
   transformers' `MultiScaleDeformableAttention` (its pure-PyTorch forward).
3. training: one step (train mode, forward, loss with Hungarian matching, backward; no optimiser
   step) on 2 images of 320 x 480 with 4 boxes each: DETR-R50 and Deformable DETR R50, ours with
   `model.build_criterion()` against HF's own loss (`labels=`), both with auxiliary losses on every
   decoder layer (HF's DETR with `auxiliary_loss=True`, which normalises each layer's input: one
   LayerNorm more per layer, the same work otherwise).
4. variants: fp32 and bf16 (`torch.autocast("cpu", dtype=torch.bfloat16)`, the losses in fp32) for
   both, and with `--channels-last` ours in channels-last memory format too. Ratios: ours / HF at
   the same precision, and ours in bf16 / HF in fp32.
5. flops: achieved FLOP/s per part of our inference models (backbone; encoder = input projection,
   positions and encoder; decoder = query selection, decoder and heads). FLOPs are
   `torch.utils.flop_counter.FlopCounterMode`'s per-module counts (matrix products and
   convolutions; `grid_sample` and elementwise ops are not counted), the time per part that of
   re-running the part's outermost modules on their inputs, cached from one forward pass. The
   ceiling: the measured FLOP/s of a large single-thread `torch.mm` in fp32 and bf16, and the
   theoretical fp32 AVX-512 FMA peak (2 FMA units x 16 lanes x 2 FLOPs per cycle at the clock in
   /proc/cpuinfo) and AMX-BF16 peak (1,024 FLOPs per cycle), where the CPU has them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import RESULTS, add_child_options, answered_as_child, machine, run_child, time_runs  # noqa: E402
from tutorial.training.amp import cpu_flags, to_float  # noqa: E402

WORK = ("inference", "attention", "training", "flops")
MODELS = ("detr", "deformable", "rtdetr")
PRESETS = {"detr": "detr_r50", "deformable": "deformable_detr_r50", "rtdetr": "rtdetr_r50"}
INFERENCE_SIZE = {"detr": (800, 1216), "deformable": (640, 960), "rtdetr": (640, 640)}
TRAIN_MODELS, TRAIN_SIZE, TRAIN_BATCH, TRAIN_BOXES = ("detr", "deformable"), (320, 480), 2, 4
ATTENTION = dict(batch=2, heads=8, channels=32, points=4, image=(640, 960), strides=(8, 16, 32, 64))
QUICK_SIZE = (128, 160)
GOALS = {"inference": 0.5, "attention": 0.4, "training": 0.7}  # ours / HF at most, the targets
TOLERANCE = 1e-2  # max |ours - HF| of logits and boxes at equal weights (tests: 1e-4 .. 1e-3 on small inputs)
PARTS = {  # part: our top-level modules it runs (their outermost called submodules are timed)
    "detr": {"backbone": ["backbone"], "encoder": ["position_encoding", "input_proj", "transformer.encoder_layers"],
             "decoder": ["transformer.decoder_layers", "transformer.decoder_norm", "class_embed", "bbox_embed"]},
    "deformable": {"backbone": ["backbone"], "encoder": ["input_proj", "position_encoding", "encoder"],
                   "decoder": ["query_embed", "reference_points", "decoder", "class_embed", "bbox_embed"]},
    "rtdetr": {"backbone": ["backbone"], "encoder": ["encoder", "input_proj"],
               "decoder": ["selection", "decoder", "class_embed", "bbox_embed"]},
}
# where HF's parameter count may differ from ours for a documented reason (README "Real weights",
# tests/test_convert_*.py); none of the R50 presets timed here does (RT-DETR-R18's frozen BN would)
KNOWN_COUNT_GAPS: dict[str, str] = {}


def bf16(enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters once


# --- the models, at equal weights -------------------------------------------------------------


def hf_model(name: str, aux: bool = False) -> nn.Module:
    """HF's model of `name` from the paper config, random weights, nothing downloaded
    (`tests/test_convert_detr.py`, `_deformable_detr.py`, `_rt_detr.py`)."""
    import transformers

    torch.manual_seed(0)
    if name == "detr":  # auxiliary_loss=True normalises each decoder layer's input (tutorial/convert/detr.py)
        return transformers.DetrForObjectDetection(transformers.DetrConfig(
            num_labels=91, use_pretrained_backbone=False, auxiliary_loss=aux))
    if name == "deformable":
        return transformers.DeformableDetrForObjectDetection(transformers.DeformableDetrConfig(
            num_labels=91, use_pretrained_backbone=False, auxiliary_loss=True))
    backbone = transformers.RTDetrResNetConfig(out_indices=[2, 3, 4])  # ResNet50-vd
    model = transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(
        backbone_config=backbone, use_pretrained_backbone=False, num_labels=80, num_queries=300,
        freeze_backbone_batch_norms=True, eval_size=None, anchor_image_size=None))
    return condition(model)


def condition(model: nn.Module) -> nn.Module:
    """Unit-gain convolutions and BatchNorm scales 1 ± 0.1 (as `tests/test_convert_rt_detr.py`):
    HF's init lets the ResNet's activations reach ~1e8, and then ties in the top-300 query
    selection, not the computation, decide whether the two outputs agree."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(1.0 / (m.weight.std() * (m.weight[0].numel() ** 0.5)))
            elif "BatchNorm" in type(m).__name__:
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
    return model


def model_pair(name: str, aux: bool = False) -> tuple[nn.Module, nn.Module, dict]:
    """(ours, HF's, counts): HF's weights converted into our preset; fails unless the parameter
    counts are equal or differ for a reason in KNOWN_COUNT_GAPS."""
    from tutorial.convert import convert_state_dict

    hf = hf_model(name, aux)
    ours, _ = convert_state_dict(PRESETS[name], hf.state_dict(), "transformers")
    counts = {"ours": n_params(ours), "transformers": n_params(hf), "equal": n_params(ours) == n_params(hf)}
    if not counts["equal"]:
        if name not in KNOWN_COUNT_GAPS:
            raise AssertionError(f"{PRESETS[name]}: {counts['ours']:,} parameters, transformers' model "
                                 f"{counts['transformers']:,}; add the reason to KNOWN_COUNT_GAPS or fix the config")
        counts["reason"] = KNOWN_COUNT_GAPS[name]
    counts["weights"] = "HF's random init, converted into ours with tutorial.convert"
    return ours, hf, counts


def image_batch(size: tuple[int, int], batch: int = 1, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(images (B, 3, H, W), our mask (B, H, W) all False, HF's pixel_mask (B, H, W) all 1)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=g)  # (B, 3, H, W)
    mask = torch.zeros(batch, *size, dtype=torch.bool)  # (B, H, W)
    return images, mask, torch.ones(batch, *size, dtype=torch.long)


def hf_call(name: str, hf: nn.Module, images: Tensor, pixel_mask: Tensor, labels=None):
    if name == "rtdetr":  # HF's RT-DETR ignores pixel_mask
        return hf(pixel_values=images, labels=labels)
    return hf(pixel_values=images, pixel_mask=pixel_mask, labels=labels)


def output_differences(name: str, ours: nn.Module, hf: nn.Module, images: Tensor, mask: Tensor,
                       pixel_mask: Tensor) -> dict[str, float]:
    """Max |ours - HF| of the final logits and boxes at equal weights, in fp32."""
    with torch.inference_mode():
        if name != "rtdetr":
            a, b = ours(images, mask), hf_call(name, hf, images, pixel_mask)
            return {"logits": (a["pred_logits"] - b.logits).abs().max().item(),
                    "boxes": (a["pred_boxes"] - b.pred_boxes).abs().max().item()}
        a = ours(images, mask, return_intermediates=True)
        b = hf(pixel_values=images)
    q = b.logits.shape[1]
    theirs = b.enc_outputs_class.max(-1).values.topk(q, dim=1).indices  # (B, Q): each query's token
    if not torch.equal(a["selected_indices"].sort(1).values, theirs.sort(1).values):
        return {"selected tokens differ": float("inf")}

    def by_token(x, tokens):  # (B, Q, D) in the order of the tokens the queries came from
        return torch.gather(x, 1, tokens.argsort(1)[..., None].expand(-1, -1, x.shape[-1]))

    ours_tokens = a["selected_indices"]
    return {"logits": (by_token(a["pred_logits"], ours_tokens) - by_token(b.logits, theirs)).abs().max().item(),
            "boxes": (by_token(a["pred_boxes"], ours_tokens) - by_token(b.pred_boxes, theirs)).abs().max().item()}


# --- timing helpers ---------------------------------------------------------------------------


def runnable(fns: dict) -> tuple[dict, dict[str, str]]:
    """The functions that run once without an error, and a one-line reason for each that does not."""
    ok, errors = {}, {}
    for name, fn in fns.items():
        try:
            fn()
            ok[name] = fn
        except Exception as e:  # noqa: BLE001 - recorded, the other variants go on
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            print(f"  {name}: skipped, {errors[name]}", flush=True)
    return ok, errors


def ratios(times: dict, pairs: dict[str, tuple[str, str]]) -> dict[str, float]:
    """{ratio name: median(ours) / median(theirs)} for the pairs whose both sides ran."""
    return {k: round(times[a]["median_ms"] / times[b]["median_ms"], 4) for k, (a, b) in pairs.items()
            if a in times and b in times}


def variant_pairs(names, channels_last: bool) -> dict[str, tuple[str, str]]:
    pairs = {"fp32": ("ours fp32", "hf fp32"), "bf16": ("ours bf16", "hf bf16"),
             "ours bf16 / hf fp32": ("ours bf16", "hf fp32")}
    if channels_last:
        pairs.update({"fp32 channels-last": ("ours fp32 cl", "hf fp32"), "bf16 channels-last": ("ours bf16 cl", "hf bf16"),
                      "ours bf16 channels-last / hf fp32": ("ours bf16 cl", "hf fp32")})
    return {k: v for k, v in pairs.items() if v[0] in names and v[1] in names}


def channels_last_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


# --- 1. inference -----------------------------------------------------------------------------


def measure_inference(name: str, quick: bool, channels_last: bool, warmup: int, repeats: int) -> dict:
    size = QUICK_SIZE if quick else INFERENCE_SIZE[name]
    ours, hf, counts = model_pair(name)
    ours, hf = ours.eval(), hf.eval()
    images, mask, pixel_mask = image_batch(size)
    diffs = output_differences(name, ours, hf, images, mask, pixel_mask)
    print(f"inference {name}: parameters {counts['ours']:,} / {counts['transformers']:,}, max |Δ| {diffs}", flush=True)
    if not max(diffs.values()) < TOLERANCE:  # NaN fails too
        raise AssertionError(f"{PRESETS[name]}: outputs differ from transformers' at equal weights by {diffs} "
                             f"(tolerance {TOLERANCE}): the two would not time the same computation")

    def run(model, x, amp, theirs=False):
        def fn():
            with torch.inference_mode(), bf16(amp):
                return hf_call(name, model, x, pixel_mask) if theirs else model(x, mask)
        return fn

    fns = {"ours fp32": run(ours, images, False), "hf fp32": run(hf, images, False, True),
           "ours bf16": run(ours, images, True), "hf bf16": run(hf, images, True, True)}
    if channels_last:
        cl, cl_images = channels_last_copy(ours), images.contiguous(memory_format=torch.channels_last)
        fns.update({"ours fp32 cl": run(cl, cl_images, False), "ours bf16 cl": run(cl, cl_images, True)})
    fns, errors = runnable(fns)
    times = time_runs(fns, warmup, repeats)
    return {"model": name, "ours": PRESETS[name], "transformers": type(hf).__name__, "image_size": list(size),
            "batch": 1, "parameters": counts, "max_abs_difference": diffs, "tolerance": TOLERANCE,
            "times": times, "errors": errors, "ratios": ratios(times, variant_pairs(times, channels_last))}


# --- 2. deformable attention ------------------------------------------------------------------


def attention_inputs(quick: bool, dtype=torch.float32, seed: int = 0) -> tuple:
    """(value (B, N, M, d), shapes [(H_l, W_l)], locations (B, Q, M, L, P, 2), weights (B, Q, M, L, P)),
    every token a query (Q = N), leaves that require grad."""
    c = ATTENTION
    h, w = QUICK_SIZE if quick else c["image"]
    shapes = [(-(-h // s), -(-w // s)) for s in c["strides"]]  # ceil: the backbone's padding
    n, b, m, d, lv, p = sum(a * z for a, z in shapes), c["batch"], c["heads"], c["channels"], len(shapes), c["points"]
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(b, n, m, d, generator=g).to(dtype).requires_grad_()
    loc = torch.rand(b, n, m, lv, p, 2, generator=g).to(dtype).requires_grad_()
    weights = torch.rand(b, n, m, lv * p, generator=g).softmax(-1).view(b, n, m, lv, p).to(dtype).requires_grad_()
    return value, shapes, loc, weights


def hf_attention():
    """transformers' pure-PyTorch deformable-attention core, as (value, shapes, locations, weights) -> out."""
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    module = MultiScaleDeformableAttention()

    def core(value, shapes, loc, weights):
        shape_t = torch.tensor(shapes, dtype=torch.long)  # (L, 2)
        starts = torch.cat([shape_t.new_zeros(1), shape_t.prod(1).cumsum(0)[:-1]])  # (L,)
        return module(value, shape_t, shapes, starts, loc, weights, im2col_step=64)
    return core


def measure_attention(quick: bool, skip_cpu_op: bool, warmup: int, repeats: int) -> dict:
    from tutorial.ops.deformable_attention import ms_deform_attn_core
    from tutorial.ops import kernels

    theirs = hf_attention()
    impls = {"ours": ms_deform_attn_core, "hf": theirs}
    errors = {}
    if skip_cpu_op:
        errors["ours cpu-op"] = "skipped (--skip-cpu-op)"
    else:
        try:
            t0 = time.perf_counter()
            kernels.build_cpu_extension()
            print(f"  CPU extension ready in {time.perf_counter() - t0:.1f} s", flush=True)
            impls["ours cpu-op"] = lambda *a: kernels.ms_deform_attn(*a, backend="cpu")
        except Exception as e:  # noqa: BLE001 - recorded, the references go on
            errors["ours cpu-op"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e) else ''}"[:300]
            print(f"  CPU extension: {errors['ours cpu-op']}", flush=True)
    inputs = {"fp32": attention_inputs(quick), "bf16": attention_inputs(quick, torch.bfloat16)}
    grad = {k: torch.randn(v[0].shape[0], v[0].shape[1], ATTENTION["heads"] * ATTENTION["channels"],
                           generator=torch.Generator().manual_seed(1)).to(v[0].dtype) for k, v in inputs.items()}

    def forward(core, dtype):
        value, shapes, loc, w = inputs[dtype]

        def fn():
            with torch.no_grad():
                return core(value, shapes, loc, w)
        return fn

    def forward_backward(core, dtype):
        value, shapes, loc, w = inputs[dtype]

        def fn():
            for t in (value, loc, w):
                t.grad = None
            core(value, shapes, loc, w).backward(grad[dtype])
        return fn

    # the same computation: outputs and gradients against HF's, in fp32
    diffs = {}
    value, shapes, loc, w = inputs["fp32"]
    ref = theirs(value, shapes, loc, w)
    ref_grads = torch.autograd.grad(ref, (value, loc, w), grad["fp32"])
    for impl, core in impls.items():
        if impl != "hf":
            out = core(value, shapes, loc, w)
            grads = torch.autograd.grad(out, (value, loc, w), grad["fp32"])
            diffs[impl] = {"output": (out - ref).abs().max().item(),
                           **{f"grad_{k}": (a - b).abs().max().item()
                              for k, a, b in zip(("value", "locations", "weights"), grads, ref_grads)}}
    print(f"attention: max |Δ| against HF {diffs}", flush=True)
    result = {"shapes": [list(s) for s in shapes], "queries": value.shape[1], **{k: v for k, v in ATTENTION.items()
                                                                                  if k not in ("image", "strides")},
              "image_size": list(QUICK_SIZE if quick else ATTENTION["image"]), "max_abs_difference": diffs,
              "errors": errors}
    for pass_name, make in (("forward", forward), ("forward+backward", forward_backward)):
        fns = {}
        for dtype in ("fp32", "bf16"):
            for impl, core in impls.items():
                if impl == "ours cpu-op" and dtype == "bf16":
                    continue  # the kernels take fp32 / fp64
                fns[f"{impl} {dtype}"] = make(core, dtype)
        fns, errs = runnable(fns)
        result["errors"].update({f"{k} {pass_name}": v for k, v in errs.items()})
        times = time_runs(fns, warmup, repeats)
        pairs = {"fp32": ("ours fp32", "hf fp32"), "bf16": ("ours bf16", "hf bf16"),
                 "ours bf16 / hf fp32": ("ours bf16", "hf fp32"), "cpu-op fp32": ("ours cpu-op fp32", "hf fp32")}
        result[pass_name] = {"times": times, "ratios": ratios(times, pairs)}
    return result


# --- 3. training step -------------------------------------------------------------------------


def training_targets(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """TRAIN_BOXES random boxes per image: (ours [{"labels", "boxes"}], HF's [{"class_labels", "boxes"}])."""
    g = torch.Generator().manual_seed(seed)
    ours, theirs = [], []
    for _ in range(TRAIN_BATCH):
        labels = torch.randint(1, 80, (TRAIN_BOXES,), generator=g)
        centres = 0.2 + 0.6 * torch.rand(TRAIN_BOXES, 2, generator=g)
        sizes = 0.05 + 0.3 * torch.rand(TRAIN_BOXES, 2, generator=g)
        boxes = torch.cat([centres, sizes], -1)  # (n, 4) cxcywh in [0, 1]
        ours.append({"labels": labels, "boxes": boxes})
        theirs.append({"class_labels": labels.clone(), "boxes": boxes.clone()})
    return ours, theirs


def measure_training(name: str, quick: bool, channels_last: bool, warmup: int, repeats: int) -> dict:
    size = QUICK_SIZE if quick else TRAIN_SIZE
    ours, hf, counts = model_pair(name, aux=True)
    ours, hf = ours.train(), hf.train()
    criterion = ours.build_criterion()
    images, mask, pixel_mask = image_batch(size, TRAIN_BATCH)
    targets, labels = training_targets()

    def ours_step(model, x, amp):
        def fn():
            model.zero_grad(set_to_none=True)
            with bf16(amp):
                out = model(x, mask)
            loss = criterion(to_float(out), targets)["loss"]
            loss.backward()
            return loss
        return fn

    def hf_step(amp):
        def fn():
            hf.zero_grad(set_to_none=True)
            with bf16(amp):
                loss = hf_call(name, hf, images, pixel_mask, labels=labels).loss
            loss.float().backward()
            return loss
        return fn

    fns = {"ours fp32": ours_step(ours, images, False), "hf fp32": hf_step(False),
           "ours bf16": ours_step(ours, images, True), "hf bf16": hf_step(True)}
    if channels_last:
        cl, cl_images = channels_last_copy(ours), images.contiguous(memory_format=torch.channels_last)
        fns.update({"ours fp32 cl": ours_step(cl, cl_images, False), "ours bf16 cl": ours_step(cl, cl_images, True)})
    fns, errors = runnable(fns)
    times = time_runs(fns, warmup, repeats)
    print(f"training {name}: parameters {counts['ours']:,} / {counts['transformers']:,}", flush=True)
    return {"model": name, "ours": PRESETS[name], "transformers": type(hf).__name__, "image_size": list(size),
            "batch": TRAIN_BATCH, "boxes_per_image": TRAIN_BOXES, "parameters": counts, "times": times,
            "errors": errors, "ratios": ratios(times, variant_pairs(times, channels_last)),
            "hf_auxiliary_loss": True}


# --- 5. achieved FLOP/s -----------------------------------------------------------------------


def part_calls(model: nn.Module, parts: dict[str, list[str]], run) -> dict[str, list]:
    """{part: [(module, args, kwargs)]}: the calls of each part's outermost modules during `run()`,
    in order, with their inputs (a ModuleList, never called itself, gives its items' calls)."""
    owner, hooks, calls, active = {}, [], {p: [] for p in parts}, []
    for part, names in parts.items():
        for name in names:
            for m in model.get_submodule(name).modules():
                owner[m] = part

    def pre(m, args, kwargs):
        if not active:
            calls[owner[m]].append((m, args, kwargs))
        active.append(m)

    def post(m, args, kwargs, out):
        active.pop()

    for m in owner:
        hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return calls


def part_flops(model: nn.Module, calls: dict[str, list], run) -> dict[str, int]:
    """FLOPs of one forward by part: FlopCounterMode's per-module counts of each part's modules;
    "other" what no part's modules hold (glue in the model's forward), "total"."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    names = {m: n for n, m in model.named_modules()}
    root = type(model).__name__
    out = {part: sum(per_module.get(f"{root}.{names[m]}", 0) for m in dict.fromkeys(m for m, _, _ in cs))
           for part, cs in calls.items()}
    out["total"] = counter.get_total_flops()
    out["other"] = out["total"] - sum(out[p] for p in calls)
    return out


def matmul_peak(n: int, repeats: int) -> dict[str, float]:
    """The best FLOP/s of an n x n x n `torch.mm` on this process's threads, fp32 and bf16."""
    out = {}
    for dtype, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)  # warm-up
        best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
        out[key] = round(2 * n ** 3 / best / 1e9, 1)
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def theoretical_peaks() -> dict:
    """fp32 AVX-512 FMA and AMX-BF16 peaks per core from the clock in /proc/cpuinfo, where found."""
    try:
        mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text()).group(1))
    except (OSError, AttributeError):
        return {"note": "no clock frequency in /proc/cpuinfo"}
    flags, ghz = cpu_flags(), mhz / 1e3
    out = {"clock_GHz": round(ghz, 3), "threads": torch.get_num_threads(),
           "note": "at the clock /proc/cpuinfo reports (in a VM often the base clock: turbo can exceed it)"}
    if "avx512f" in flags:  # 2 FMA units x 16 fp32 lanes x 2 FLOPs per cycle, per core
        out["fp32_avx512_fma_GFLOPs"] = round(64 * ghz * torch.get_num_threads(), 1)
    if "amx_bf16" in flags:  # a TMUL: 1,024 bf16 FLOPs per cycle, per core
        out["bf16_amx_GFLOPs"] = round(1024 * ghz * torch.get_num_threads(), 1)
    return out


def measure_flops(name: str, quick: bool, warmup: int, repeats: int) -> dict:
    from tutorial import build_model

    size = QUICK_SIZE if quick else INFERENCE_SIZE[name]
    torch.manual_seed(0)
    # no parameter requires grad: FlopCounterMode's module tracker hooks the autograd graph of any
    # tensor that does, and fails on one made from a parameter under no_grad
    model = build_model(PRESETS[name]).eval().requires_grad_(False)
    images, mask, _ = image_batch(size)
    result = {"model": name, "ours": PRESETS[name], "image_size": list(size), "parts": list(PARTS[name])}
    for amp in (False, True):
        key = "bf16" if amp else "fp32"

        def full():
            with torch.no_grad(), bf16(amp):
                return model(images, mask)

        calls = part_calls(model, PARTS[name], full)
        flops = part_flops(model, calls, full) if not amp else result["flops"]
        result.setdefault("flops", flops)

        def part(cs):
            def fn():
                with torch.no_grad(), bf16(amp):
                    for m, args, kwargs in cs:
                        m(*args, **kwargs)
            return fn

        fns = {"full": full, **{p: part(cs) for p, cs in calls.items()}}
        times = time_runs(fns, warmup, repeats)
        achieved = {p: round(flops[p] / (times[p]["median_ms"] / 1e3) / 1e9, 2) for p in calls}
        achieved["full"] = round(flops["total"] / (times["full"]["median_ms"] / 1e3) / 1e9, 2)
        result[key] = {"times": times, "GFLOPs_per_s": achieved,
                       "parts_sum_ms": round(sum(times[p]["median_ms"] for p in calls), 3)}
        print(f"flops {name} {key}: GFLOP/s {achieved}", flush=True)
    result["GFLOPs"] = {k: round(v / 1e9, 3) for k, v in result["flops"].items()}
    return result


# --- the report -------------------------------------------------------------------------------


def measure(item: str, name: str, args) -> dict:
    """One work item for one model (or "-" for attention), in this process."""
    torch.set_num_threads(args.threads)
    if item == "inference":
        return measure_inference(name, args.quick, args.channels_last, args.warmup, args.repeats)
    if item == "attention":
        return measure_attention(args.quick, args.skip_cpu_op, args.warmup, args.repeats)
    if item == "training":
        return measure_training(name, args.quick, args.channels_last, args.warmup, args.repeats)
    if item == "flops":
        return measure_flops(name, args.quick, args.warmup, args.repeats)
    raise ValueError(f"--one: unknown work item {item!r}, expected one of {WORK}")


def jobs(only: list[str], quick: bool) -> list[tuple[str, str]]:
    """The (work item, model) pairs to run; --quick counts FLOP/s on DETR only."""
    out = []
    for item in only:
        names = {"inference": MODELS, "attention": ("-",), "training": TRAIN_MODELS,
                 "flops": ("detr",) if quick else MODELS}[item]
        out += [(item, n) for n in names]
    return out


def plot(report: dict, path: Path) -> None:
    """Bars: ours / HF per work item and variant; dashed lines at the goals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []  # (label, {variant: ratio}, goal)
    for name, r in report.get("inference", {}).items():
        rows.append((f"inference\n{name}", r["ratios"], GOALS["inference"]))
    for pass_name in ("forward", "forward+backward"):
        if pass_name in report.get("attention", {}):
            rows.append((f"ms-deform attn\n{pass_name}", report["attention"][pass_name]["ratios"],
                         GOALS["attention"] if pass_name == "forward+backward" else None))
    for name, r in report.get("training", {}).items():
        rows.append((f"train step\n{name}", r["ratios"], GOALS["training"]))
    if not rows:
        return
    variants = list(dict.fromkeys(v for _, rs, _ in rows for v in rs))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i, (_, rs, _) in enumerate(rows) if v in rs]
        ys = [rs[v] for _, rs, _ in rows if v in rs]
        ax.bar(xs, ys, width, label=v)
    for i, (_, _, goal) in enumerate(rows):
        if goal is not None:
            ax.hlines(goal, i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=1)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("time, ours / transformers (lower is faster)")
    ax.set_title(f"ours vs transformers, {report['conditions']['threads']} thread(s), dashed: goal", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=WORK, default=list(WORK), help="work items to run (default: all)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE[0]}x{QUICK_SIZE[1]} inputs, 1 repeat, "
                   "no warm-up, FLOP/s of DETR only, all in this process: a smoke run")
    p.add_argument("--channels-last", action="store_true", help="also time ours in channels-last memory format")
    p.add_argument("--skip-cpu-op", action="store_true", help="do not build or time the compiled CPU attention op")
    p.add_argument("--in-process", action="store_true", help="run every work item in this process")
    p.add_argument("--peak-size", type=int, default=4096, help="n of the n x n x n torch.mm peak measurement")
    p.add_argument("--out", default=str(RESULTS / "vs_transformers.json"), help="the JSON (the plot beside it, .png)")
    add_child_options(p, ("ITEM", "MODEL"), warmup=2, repeats=7)
    args = p.parse_args()
    if args.quick:
        args.warmup, args.repeats, args.peak_size, args.in_process = 0, 1, min(args.peak_size, 512), True
    if answered_as_child(args, lambda item, name: measure(item, name, args)):
        return
    import transformers

    started = time.perf_counter()
    report: dict = {"machine": machine(), "command": " ".join(["python", "bench/vs_transformers.py", *sys.argv[1:]]),
                    "conditions": {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
                                   "quick": args.quick, "channels_last": args.channels_last,
                                   "fresh_process_per_item": not args.in_process, "transformers": transformers.__version__,
                                   "inference_batch": 1, "weights": "random (HF's init), equal in both",
                                   "goals": GOALS, "timing": "round-robin, median over repeats (bench.common.time_runs)"}}
    child_opts = ["--threads", args.threads, "--warmup", args.warmup, "--repeats", args.repeats]
    child_opts += [f for f, on in (("--quick", args.quick), ("--channels-last", args.channels_last),
                                   ("--skip-cpu-op", args.skip_cpu_op)) if on]
    for item, name in jobs(args.only, args.quick):
        t0 = time.perf_counter()
        if args.in_process:
            result = measure(item, name, args)
        else:
            result = run_child(__file__, [*child_opts, "--one", item, name], what=f"{item} {name}")
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        if item == "attention":
            report["attention"] = result
        else:
            report.setdefault(item, {})[name] = result
        shown = ({pp: result[pp]["ratios"] for pp in ("forward", "forward+backward")} if item == "attention"
                 else {name: result.get("ratios")})
        for k, r in shown.items():
            if r:
                print(f"{item} {k}: ours / transformers {r}", flush=True)
    if "flops" in args.only:
        torch.set_num_threads(args.threads)
        report["peak"] = {"measured_mm_GFLOPs": matmul_peak(args.peak_size, max(3, args.repeats)),
                          "mm_size": args.peak_size, "theoretical": theoretical_peaks()}
        for r in report["flops"].values():
            for dtype in ("fp32", "bf16"):
                r[dtype]["fraction_of_measured_peak"] = {
                    k: round(v / report["peak"]["measured_mm_GFLOPs"][dtype], 3) for k, v in r[dtype]["GFLOPs_per_s"].items()}
        print(f"peak: {report['peak']}")
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    plot(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
