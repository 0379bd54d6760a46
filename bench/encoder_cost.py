"""Encoder cost: time and FLOPs of RT-DETR's hybrid encoder against Deformable DETR's full
deformable encoder, on the same backbone feature maps, at the paper's shapes and the tiny ones.

    python bench/encoder_cost.py                 # writes bench/results/encoder_cost.json
    python bench/encoder_cost.py --threads 2 --repeats 20

The input (the same for every encoder of a config): the backbone's three maps at strides 8, 16,
32, batch 1, random values.
- paper: a 640 x 640 image (RT-DETR's size) and ResNet50-vd's channels 512, 1024, 2048 (RT-DETR-R50's
  `HybridEncoder(in_channels=[512, 1024, 2048])`), i.e. maps 80x80, 40x40, 20x20 (8,400 tokens).
- tiny: a 160 x 160 image (the shapes set's largest side) and rtdetr_tiny's narrow ResNet18-vd's
  channels 64, 128, 256: maps 20x20, 10x10, 5x5 (525 tokens).
The encoders, each from the backbone maps to the decoder's memory, input projection included:
- "hybrid": RT-DETR's (`tutorial/models/hybrid_encoder.py`): 1x1 conv + BN per level, AIFI (one transformer
  layer on S5), CCFM (FPN + PAN). Paper: rtdetr_r50's, C=256; tiny: rtdetr_tiny's, C=128.
- "deformable_3l": Deformable DETR's (`tutorial/models/deformable_transformer.py`): 1x1 conv + GroupNorm per
  level, sine positions + level embeddings, then deformable encoder layers over all tokens of the
  same 3 levels. Paper: deformable_detr_r50's 6 layers, C=256, 8 heads, 4 points, FFN 1024; tiny:
  deformable_detr_tiny's 3 layers, C=128, FFN 512.
- "deformable_4l": the same with Deformable DETR's extra 4th level (a 3x3 stride-2 conv on the
  stride-32 map: 10x10 at 640, 3x3 at 160), as the paper and DINO run it.
FLOPs: `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add of the matrix
products and convolutions; element-wise ops, norms and softmaxes are not counted). The hybrid
encoder is counted with `need_weights=True` so that AIFI's attention runs as explicit matmuls (the
fused CPU kernel of `F.scaled_dot_product_attention` is invisible to the counter; the arithmetic
is the same). FlopCounterMode does not count `grid_sample` either: the deformable sampling is added
analytically, 10·N·C·L·P FLOPs per layer (per token, channel, level and point: 4 multiply-adds
of bilinear interpolation and 1 of the attention-weighted sum), reported separately as
"sampling_flops_analytic".
Time: the whole encoder and its parts (input projection; AIFI or the deformable layers), `--warmup`
runs excluded, median and IQR of `--repeats` runs, `--threads` torch threads, eval mode, no_grad,
each (config, encoder) in a fresh subprocess; peak memory as in bench/msdeform_attn.py (the rise
of the process's peak resident set over the timed runs).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import add_child_options, answered_as_child, time_runs  # noqa: E402
from tutorial.models.multiscale import MultiScaleProjection, flatten_levels, level_positions  # noqa: E402
from tutorial.models.deformable_transformer import DeformableEncoder, DeformableTransformerConfig  # noqa: E402
from tutorial.models.hybrid_encoder import HybridEncoder  # noqa: E402
from tutorial.models import model_config  # noqa: E402
from tutorial.ops.position_encoding import SinePositionEncoding  # noqa: E402
from tutorial.models.presnet import PResNet  # noqa: E402

CONFIGS = {
    "paper": dict(image=640, rtdetr="rtdetr_r50", deformable="deformable_detr_r50"),
    "tiny": dict(image=160, rtdetr="rtdetr_tiny", deformable="deformable_detr_tiny"),
}
ENCODERS = ("hybrid", "deformable_3l", "deformable_4l")


class DeformableEncoderPath(nn.Module):
    """Deformable DETR's path from backbone maps to memory, as in `DeformableDETR.forward`:
    `MultiScaleProjection` (+ extra levels), sine positions + level embeddings, `DeformableEncoder`.
    forward(features [(B, C_l, H_l, W_l)] * 3) -> memory (B, N, C), N = Σ_l H_l·W_l over L levels."""

    def __init__(self, tc: DeformableTransformerConfig, in_channels: list[int]):
        super().__init__()
        self.input_proj = MultiScaleProjection(in_channels, tc.d_model, tc.num_levels)
        self.position_encoding = SinePositionEncoding(tc.d_model // 2, offset=-0.5)
        self.level_embed = nn.Parameter(torch.randn(tc.num_levels, tc.d_model))
        self.encoder = DeformableEncoder(tc)

    def tokens(self, levels: list[tuple[Tensor, Tensor]]):
        """L maps -> tokens (B, N, C), positions (B, N, C), padding (B, N), shapes, valid ratios (B, L, 2)."""
        src, padding, shapes, ratios = flatten_levels(levels)  # (B, N, C), (B, N), [(H_l, W_l)], (B, L, 2)
        return src, level_positions(levels, self.position_encoding, self.level_embed), padding, shapes, ratios

    def forward(self, features: list[Tensor]) -> Tensor:
        masks = [torch.zeros(f.shape[0], *f.shape[-2:], dtype=torch.bool) for f in features]  # no padding
        levels = self.input_proj(list(zip(features, masks)), masks[0])  # L x ((B, C, H_l, W_l), (B, H_l, W_l))
        src, pos, padding, shapes, ratios = self.tokens(levels)  # (B, N, C) ...
        memory, _, _ = self.encoder(src, pos, shapes, ratios, padding)  # (B, N, C)
        return memory


def backbone_features(config: str, seed: int = 0) -> tuple[list[Tensor], list[int]]:
    """The config's backbone maps (random values): 3 x (1, C_l, S/s_l, S/s_l), and their strides."""
    c = CONFIGS[config]
    backbone = PResNet(model_config(c["rtdetr"]).backbone)  # only for its channels and strides
    g = torch.Generator().manual_seed(seed)
    size = c["image"]
    feats = [torch.randn(1, ch, -(-size // s), -(-size // s), generator=g)
             for ch, s in zip(backbone.num_channels, backbone.strides)]  # ceil, as the stride-2 convs round
    return feats, list(backbone.strides)


def build_encoder(config: str, encoder: str, in_channels: list[int]) -> nn.Module:
    """The encoder `encoder` of `config` (see the module docstring), in eval mode."""
    c = CONFIGS[config]
    if encoder == "hybrid":
        return HybridEncoder(model_config(c["rtdetr"]).encoder, in_channels).eval()
    if encoder not in ENCODERS:
        raise ValueError(f"encoder: expected one of {ENCODERS}, got {encoder!r}")
    tc = model_config(c["deformable"]).transformer
    tc = dataclasses.replace(tc, num_levels=int(encoder[-2]), dropout=0.0)
    return DeformableEncoderPath(tc, in_channels).eval()


def run(module: nn.Module, feats: list[Tensor], need_weights: bool = False):
    """One forward of an encoder built by `build_encoder`."""
    if isinstance(module, HybridEncoder):
        return module(feats, None, need_weights)
    return module(feats)


def tokens_and_levels(module: nn.Module, feats: list[Tensor]) -> tuple[int, int]:
    """(N, L): the tokens the deformable encoder attends over (all levels) and its number of levels."""
    masks = [torch.zeros(1, *f.shape[-2:], dtype=torch.bool) for f in feats]  # no padding
    levels = module.input_proj(list(zip(feats, masks)), masks[0])
    return sum(x.shape[-2] * x.shape[-1] for x, _ in levels), len(levels)


@torch.no_grad()
def count_flops(module: nn.Module, feats: list[Tensor]) -> dict:
    """FLOPs of one forward, total and by part (see the module docstring): {"total", "input_proj",
    then "aifi" and "ccfm" (hybrid) or "attention", "ffn" and "sampling_flops_analytic"
    (deformable), "counted" (FlopCounterMode's total)}."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run(module, feats, need_weights=True)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(module).__name__

    def part(name: str) -> int:  # a submodule's FLOPs; a ModuleList is never called: sum its items
        if f"{root}.{name}" in per_module:
            return per_module[f"{root}.{name}"]
        depth = name.count(".") + 2  # the list's items: root.name.<i>
        return sum(v for k, v in per_module.items() if k.startswith(f"{root}.{name}.") and k.count(".") == depth)

    counted = counter.get_total_flops()
    parts = {"counted": counted, "input_proj": part("input_proj")}
    if isinstance(module, HybridEncoder):
        parts["aifi"] = part("encoder")
        parts["ccfm"] = counted - parts["input_proj"] - parts["aifi"]
        parts["total"] = counted
        return parts
    layers = range(len(module.encoder.layers))
    parts["attention"] = sum(part(f"encoder.layers.{i}.self_attn") for i in layers)
    parts["ffn"] = sum(part(f"encoder.layers.{i}.ffn") for i in layers)
    n, lv = tokens_and_levels(module, feats)
    attn = module.encoder.layers[0].self_attn
    parts["sampling_flops_analytic"] = 10 * n * attn.d_model * lv * attn.n_points * len(layers)
    parts["total"] = counted + parts["sampling_flops_analytic"]
    return parts


def vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: resident now, VmHWM: peak resident); 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@torch.no_grad()
def measure(config: str, encoder: str, warmup: int, repeats: int) -> dict:
    """Run in a subprocess: FLOPs, time and peak memory of one encoder on its config's features."""
    torch.manual_seed(0)
    feats, strides = backbone_features(config)
    module = build_encoder(config, encoder, [f.shape[1] for f in feats])
    flops = count_flops(module, feats)
    fns = {"total": lambda: run(module, feats)}
    if isinstance(module, HybridEncoder):
        projected = [p(f) for p, f in zip(module.input_proj, feats)]  # 3 x (1, C, H_l, W_l)
        fns["input_proj"] = lambda: [p(f) for p, f in zip(module.input_proj, feats)]
        fns["aifi"] = lambda: module.encoder[0](projected[2])  # the S5 map alone
    else:
        masks = [torch.zeros(1, *f.shape[-2:], dtype=torch.bool) for f in feats]
        levels = module.input_proj(list(zip(feats, masks)), masks[0])
        src, pos, padding, shapes, ratios = module.tokens(levels)  # (1, N, C) ...
        fns["input_proj"] = lambda: module.input_proj(list(zip(feats, masks)), masks[0])
        fns["encoder_layers"] = lambda: module.encoder(src, pos, shapes, ratios, padding)
    base = vm("VmRSS")
    times = time_runs(fns, warmup, repeats)
    tokens = sum(f.shape[-2] * f.shape[-1] for f in feats)
    return {"config": config, "encoder": encoder, "image": CONFIGS[config]["image"],
            "feature_shapes": [list(f.shape[1:]) for f in feats], "strides": strides, "tokens_3_levels": tokens,
            "params": sum(p.numel() for p in module.parameters()),
            "gflops": {k: round(v / 1e9, 4) for k, v in flops.items()}, "time": times,
            "peak_extra_MiB": round(max(vm("VmHWM") - base, 0) / 2**20, 1), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    add_child_options(p, ("CONFIG", "ENCODER"), warmup=3, repeats=15)
    args = p.parse_args()
    if answered_as_child(args, lambda *one: measure(*one, args.warmup, args.repeats)):
        return
    from bench.common import run_child, write_json

    rows = []
    for config in args.configs:
        for encoder in ENCODERS:
            row = run_child(__file__, ["--warmup", args.warmup, "--repeats", args.repeats, "--threads", args.threads,
                                       "--one", config, encoder], what=f"{config} {encoder}")
            print(f"{config:5s} {encoder:13s} {row['gflops']['total']:8.3f} GFLOPs  "
                  f"{row['time']['total']['median_ms']:9.2f} ms (IQR {row['time']['total']['iqr_ms']:.2f})")
            rows.append(row)
    write_json("encoder_cost", {"command": " ".join(["python", "bench/encoder_cost.py", *sys.argv[1:]]),
                                "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
                                "batch": 1, "configs": CONFIGS, "rows": rows})


if __name__ == "__main__":
    main()
