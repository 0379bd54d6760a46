"""RT-DETR (Zhao et al., CVPR 2024): "DETRs Beat YOLOs on Real-time Object Detection".

Seed, "Glance at YOLOs": a YOLO detector spends 5-20 ms in its network and another 2-3 ms in
NMS, whose cost and accuracy depend on two thresholds (the seed's NMS table, reproduced with
`tutorial/models/dense_detector.py`). A DETR needs no NMS, but DINO-Deformable-DETR-R50 runs at 5 FPS.
RT-DETR keeps DINO's decoder (`tutorial/models/dino.py`) and makes the rest fast:

1. An efficient hybrid encoder (`tutorial/models/hybrid_encoder.py`): one transformer layer (AIFI) on
   the stride-32 map only, then a convolutional FPN + PAN (CCFM) over strides 8, 16, 32, instead
   of 6 deformable layers over all levels.
2. IoU-aware query selection (Sec. 4.3; "uncertainty-minimal query selection" in the CVPR
   version, which frames it as reducing the disagreement between a token's classification and
   localisation quality; the official code is the same): the top-K encoder tokens by class score
   become the queries (`tutorial/models/query_selection.py`; here their boxes and features, detached).
   Trained with the plain focal loss, a token's class score says "there is an object here", not
   "my box fits it", so the top-K can have confident scores and poor boxes. RT-DETR trains the
   scores with the varifocal loss (`tutorial/matching/varifocal.py`, VarifocalNet, CVPR 2021), whose
   target for the matched class is the IoU of the predicted box with its ground truth:
       L(ŷ, y) = L_box(b̂, b) + L_cls(ĉ, b̂, y, b),   L_cls uses the IoU as the soft label,
   so that selecting by score also selects by localisation quality (the paper plots the selected
   tokens' scores against their IoUs). The same loss trains every decoder layer's scores.
3. A decoder that can be cut at inference (Sec. 4.4, the seed's "Scaled RT-DETRs" table, Dec²
   ... Dec⁶): every layer is supervised, so running only the first k layers gives a usable
   detector, faster, without retraining (`num_decoder_layers_eval`, official `eval_idx = k - 1`).
   Dropping layers 6 -> 5 costs 0.1 AP and saves ~0.4 ms (125 -> 132 FPS, seed table).

What it keeps from DINO, in code: the decoder layers and look-forward-twice refinement
(`DINODecoder`), contrastive denoising (`contrastive_groups`, with box noise scale λ = 1.0 and
a budget of 100 positive queries), mixed/IoU-aware top-K selection, Hungarian matching with the
focal cost (2, 5, 2), top-300 post-processing over (query, class) pairs, no NMS: `RTDETR` is a
`DINOBase` (query assembly, decoding, output dict, post-processing) that fills its two hooks.
What differs from DINO besides the encoder: the positional query is MLP(4, 2C, C, 2) of the raw
box (`query_pos_head`, no sine encoding, no final decoder norm); one class head and one box head
per decoder layer; the decoder has its own input projection (1x1 conv + BN per level) on the
encoder's maps and no level embedding; ResNet-vd backbones (`tutorial/models/presnet.py`); 3 levels,
4 points; losses VFL (α 0.75, γ 2) + L1 + GIoU with weights 1, 5, 2, also on the selected encoder
tokens and on the denoising queries (positives: IoU targets; negatives, padding: no object).

Padding: the official code trains on fixed 640 x 640 inputs and has no padding mask. Batches of
differently sized images are padded here, and the model treats the padding as Deformable DETR
does (anchors and reference points relative to the valid area, padded tokens masked in AIFI and
in the deformable attention); without padding this is exactly the official computation. The
denoising queries' padding slots sit at the box 0.5 as in DINO (RT-DETR's at 0).
Official code: lyuwenyu/RT-DETR, `rtdetr_pytorch/src/zoo/rtdetr/` (`rtdetr_decoder.py`,
`denoising.py`, `rtdetr_criterion.py`, `matcher.py`, `rtdetr_postprocessor.py`), configs
`configs/rtdetr/include/rtdetr_r50vd.yml`, `rtdetr_r18vd_6x_coco.yml`.

Glossary: B batch, N tokens (all levels), L levels, Q queries, K classes, C width,
p = σ(logit) a predicted score, q the IoU-aware target score, α, γ the focal/varifocal exponents.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..matching.criterion import LossWeights, box_losses
from ..matching.focal import focal_matcher
from ..matching.matcher import HungarianMatcher, MatcherWeights
from ..matching.varifocal import vfl_class_loss
from .deformable_transformer import DeformableTransformerConfig
from .dino import DINOBase, DINOCriterion, DINODecoder
from .heads import init_focal_head, zero_box_head
from .hybrid_encoder import HybridEncoder, HybridEncoderConfig
from ..ops.mlp import MLP
from .multiscale import flatten_levels
from .presnet import PResNet, PResNetConfig, presnet_tiny
from .query_selection import QuerySelection
from .transformer import tiny_transformer


@dataclass
class RTDETRLossWeights(LossWeights):
    """RT-DETR's λ's (official `weight_dict`): varifocal 1, L1 5, GIoU 2 (`loss_ce` is not used)."""

    loss_ce: float = 0.0
    loss_vfl: float = 1.0


@dataclass
class RTDETRConfig:
    num_classes: int = 80  # K (official: the 80 COCO categories, remapped)
    num_queries: int = 300
    backbone: PResNetConfig = field(default_factory=PResNetConfig)  # ResNet50-vd, frozen BN, stem frozen
    encoder: HybridEncoderConfig = field(default_factory=HybridEncoderConfig)
    decoder: DeformableTransformerConfig = field(default_factory=lambda: DeformableTransformerConfig(
        num_encoder_layers=0, dim_feedforward=1024, dropout=0.0, num_levels=3, dec_points=4))
    # (num_encoder_layers is unused: the hybrid encoder replaces Deformable DETR's encoder)
    num_decoder_layers_eval: int | None = None  # Dec^k: in eval mode run only the first k layers
    dn_number: int = 100  # budget of positive denoising queries (official num_denoising)
    dn_label_noise: float = 0.25  # official label_noise_ratio 0.5, halved in the code
    dn_box_noise_scale: float = 1.0  # λ: positives |Δcorner| < λ·(w, h)/2, negatives in [λ, 2λ)·(w, h)/2
    aux_loss: bool = True
    focal_alpha: float = 0.25  # α of the focal matching cost
    vfl_alpha: float = 0.75  # α and γ of the varifocal loss (official criterion alpha, gamma)
    vfl_gamma: float = 2.0
    matcher: MatcherWeights = field(default_factory=lambda: MatcherWeights(cost_class=2.0))
    loss: RTDETRLossWeights = field(default_factory=RTDETRLossWeights)
    num_detections: int = 300  # official num_top_queries

    def __post_init__(self):
        if self.encoder.hidden_dim != self.decoder.d_model:
            raise ValueError(f"RTDETRConfig: encoder.hidden_dim ({self.encoder.hidden_dim}) must equal "
                             f"decoder.d_model ({self.decoder.d_model})")
        if len(self.backbone.return_idx) != self.decoder.num_levels:
            raise ValueError(f"RTDETRConfig: backbone.return_idx has {len(self.backbone.return_idx)} levels, "
                             f"decoder.num_levels is {self.decoder.num_levels}")


# --- the criterion: DINO's, with the varifocal loss (`tutorial/matching/varifocal.py`) ------------


class RTDETRCriterion(DINOCriterion):
    """DINO's criterion (matching queries of every layer, contrastive denoising, selected encoder
    tokens) with the varifocal loss in place of the focal class loss: terms "loss_vfl",
    "loss_bbox", "loss_giou" (suffixes as DINO's)."""

    term_names = ("loss_vfl", "loss_bbox", "loss_giou")

    def __init__(self, matcher: HungarianMatcher, weights: RTDETRLossWeights, alpha: float, gamma: float):
        super().__init__(matcher, weights, alpha)
        self.gamma = gamma

    def layer_loss(self, out: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        indices = self.matcher(out["pred_logits"], out["pred_boxes"], targets)
        return {"loss_vfl": vfl_class_loss(out["pred_logits"], out["pred_boxes"], targets, indices, num_boxes,
                                           self.alpha, self.gamma),
                **box_losses(out["pred_boxes"], targets, indices, num_boxes)}

    def denoising_terms(self, pred_logits: Tensor, pred_boxes: Tensor, dn: dict, targets: list[dict]) -> dict:
        """Contrastive denoising with the VFL: positives are matched to their objects (IoU targets),
        negatives and padding slots are unmatched (target 0); / the number of positives."""
        index = dn["target_index"]  # (B, P·M): the positives' objects, -1 elsewhere
        indices = [(torch.nonzero(row >= 0).flatten(), row[row >= 0]) for row in index]
        num = max(int((index >= 0).sum()), 1)
        return {"loss_vfl": vfl_class_loss(pred_logits, pred_boxes, targets, indices, num, self.alpha, self.gamma),
                **box_losses(pred_boxes, targets, indices, num)}


# --- the model ------------------------------------------------------------------------------------


class RTDETRDecoder(DINODecoder):
    """DINO's decoder with RT-DETR's positional query, P_q = MLP(4, 2C, C, 2) of the raw reference
    box (official `query_pos_head`), and no final norm (the post-norm layers' outputs go to the
    heads directly). Predictions still look forward twice; with no final norm the predicted box
    and the next layer's reference have the same value and differ only in where gradients flow."""

    def build_query_pos_head(self, c: int) -> nn.Module:
        head = MLP(4, 2 * c, c, 2)
        for layer in head.layers:
            nn.init.xavier_uniform_(layer.weight)
        return head

    def build_norm(self, c: int) -> nn.Module:
        return nn.Identity()

    def query_pos(self, reference: Tensor, ratios: Tensor) -> Tensor:
        return self.query_pos_head(reference)  # (B, T, 4) -> (B, T, C)


class RTDETR(DINOBase):
    """`forward(images, mask, targets=None, return_intermediates=False, num_decoder_layers=None)`.

    Returns DINO's outputs ("pred_logits" (B, Q, K), "pred_boxes", "aux_outputs", "interm_outputs"
    the selected tokens, "dn_outputs" in training with targets) from the last decoder layer run:
    all layers in training, the first `num_decoder_layers` if given, else the first
    `cfg.num_decoder_layers_eval` in eval mode. With `return_intermediates=True` also DINO's
    intermediates ("selected_indices" (B, Q), "selected_levels" (B, Q), "selected_cells" (B, Q, 2)
    (y, x), "encoder_logits" (B, N, K), "reference_points", "layer_boxes", "decoder_sampling", the
    "dn_*" entries), plus "spatial_shapes", "level_masks", "encoder_maps" [(B, C, H_l, W_l)] (the
    hybrid encoder's outputs), "aifi_attention" [(B, M, N_5, N_5)] (AIFI's attention on S5) and
    "encoder_mixer" (the S5 mixer's info dict: AIFI's {"attention"}, or another mixer's own)."""

    def __init__(self, cfg: RTDETRConfig):
        super().__init__()
        self.cfg = cfg
        dc = cfg.decoder
        c = dc.d_model
        self.backbone = PResNet(cfg.backbone)
        self.encoder = self.build_encoder()  # AIFI + CCFM; a subclass may put another mixer in AIFI's slot
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
                                        for _ in range(dc.num_levels))  # the decoder's own projection
        self.decoder = RTDETRDecoder(dc)
        self.selection = QuerySelection(c, cfg.num_classes)  # anchors and content from the top-Q tokens
        self.label_embed = nn.Embedding(cfg.num_classes + 1, c, padding_idx=cfg.num_classes)  # denoising content
        n = dc.num_decoder_layers
        self.class_embed = nn.ModuleList(init_focal_head(nn.Linear(c, cfg.num_classes)) for _ in range(n))
        self.bbox_embed = nn.ModuleList(zero_box_head(MLP(c, c, 4, 3)) for _ in range(n))  # one head per layer

    def build_encoder(self) -> HybridEncoder:
        """The hybrid encoder with AIFI on S5 (the Mamba detector overrides this, `tutorial/models/mamba_detector.py`)."""
        return HybridEncoder(self.cfg.encoder, self.backbone.num_channels)

    def matching_queries(self, selection, batch_size: int) -> tuple[Tensor, Tensor]:
        """(content (B, Q, C): the selected tokens' features, anchors (B, Q, 4) logit space: their
        boxes), both detached (official `learnt_init_query=False`)."""
        return selection.features.detach(), selection.boxes.detach()

    def predict_logits(self, hs: Tensor) -> Tensor:
        """hs (L, B, T, C) -> (L, B, T, K), layer l with its own class head."""
        return torch.stack([self.class_embed[lid](h) for lid, h in enumerate(hs)])

    def forward(self, images: Tensor, mask: Tensor, targets: list[dict] | None = None,
                return_intermediates: bool = False, num_decoder_layers: int | None = None) -> dict:
        features = self.backbone(images, mask)  # 3 x ((B, C_l, H_l, W_l), (B, H_l, W_l)): strides 8, 16, 32
        masks = [m for _, m in features]
        maps, info = self.encoder([f for f, _ in features], masks, return_intermediates)  # 3 x (B, C, H_l, W_l)
        maps = [proj(x) for proj, x in zip(self.input_proj, maps)]  # 3 x (B, C, H_l, W_l)
        memory, padding, shapes, ratios = flatten_levels(list(zip(maps, masks)))  # (B, N, C), (B, N), ..., (B, L, 2)
        selection = self.selection(memory, padding, shapes, self.cfg.num_queries)  # the top-Q tokens
        if num_decoder_layers is None and not self.training:
            num_decoder_layers = self.cfg.num_decoder_layers_eval
        out = self.decode(selection, memory, shapes, ratios, padding, images.shape[0], targets, return_intermediates,
                          num_decoder_layers)
        if return_intermediates:
            aifi = [i for i in info["aifi"] if i is not None]
            out.update(spatial_shapes=shapes, level_masks=masks, encoder_maps=maps,
                       aifi_attention=aifi[0]["attention"] if aifi and "attention" in aifi[0] else None,
                       encoder_mixer=aifi[0] if aifi else None)
        return out

    def build_criterion(self) -> RTDETRCriterion:
        return RTDETRCriterion(focal_matcher(self.cfg.matcher, self.cfg.focal_alpha), self.cfg.loss,
                               self.cfg.vfl_alpha, self.cfg.vfl_gamma)


# --- presets ----------------------------------------------------------------------------------


def rtdetr_r50() -> RTDETRConfig:
    """The paper's RT-DETR-R50 (official `rtdetr_r50vd_6x_coco.yml`): ResNet50-vd with frozen BN,
    hybrid encoder C=256 (expansion 1.0), 6 decoder layers, 300 queries, 80 classes:
    42,891,372 parameters, as the official implementation (paper: 42M)."""
    return RTDETRConfig()


def rtdetr_r18() -> RTDETRConfig:
    """RT-DETR-R18 (official `rtdetr_r18vd_6x_coco.yml`): ResNet18-vd with trainable BN and nothing
    frozen, fusion blocks at expansion 0.5, 3 decoder layers: 20,184,464 parameters, as the
    official implementation (paper: 20M)."""
    return RTDETRConfig(
        backbone=PResNetConfig(depth=18, freeze_at=-1, freeze_norm=False),
        encoder=HybridEncoderConfig(expansion=0.5),
        decoder=DeformableTransformerConfig(num_encoder_layers=0, num_decoder_layers=3, dim_feedforward=1024,
                                            dropout=0.0, num_levels=3, dec_points=4),
    )


def rtdetr_tiny() -> RTDETRConfig:
    """CPU scale on shapes: a narrow ResNet18-vd (base width 32, one block per stage, trainable
    BN; strides 8, 16, 32 with 64, 128, 256 channels), C=128, 1 AIFI layer (FFN 512), fusion
    blocks with expansion 0.5 and one RepVGG block, 3 decoder layers (FFN 512), 25 queries,
    a denoising budget of 25 positive queries, no dropout."""
    return RTDETRConfig(
        num_classes=6,
        num_queries=25,
        backbone=presnet_tiny(),
        encoder=HybridEncoderConfig(hidden_dim=128, dim_feedforward=512, expansion=0.5, depth_mult=1 / 3),
        decoder=tiny_transformer(DeformableTransformerConfig, num_encoder_layers=0, num_levels=3, dec_points=4),
        dn_number=25,
    )
