"""DN-DETR (Li et al., CVPR 2022): DAB-DETR trained with query denoising.

Why (seed, "DN-DETR", Fig. 2): early in training the Hungarian matching is unstable, a query is
matched to one object in one epoch and to another in the next (the instability score IS,
`tutorial/training/instability.py`), so what each query should learn keeps changing. DN-DETR adds, in
training only, a task whose targets never change: noised copies of the ground-truth boxes are fed
to the decoder as extra queries, and each must reconstruct the object it was made from, without
any matching.

What is new, on top of DAB-DETR (`tutorial/models/dab_detr.py`, unchanged):
- box noise (λ = box_noise_scale = 0.4): the centre moves by |Δx| < λ·w/2, |Δy| < λ·h/2 and the
  size by |Δw| < λ·w, |Δh| < λ·h (uniform), clipped to [0, 1]; the noised box is the query's anchor;
- label noise: each label is replaced, with probability label_noise = 0.2, by a uniformly drawn
  class (possibly the same one);
- a label embedding nn.Embedding(K+1, C-1) plus an indicator channel gives every query its content:
  a denoising query gets the embedding of its noised label and indicator 1; a matching query
  (DAB-DETR's learned anchors) gets the embedding of the extra class K, "unknown", and indicator 0;
- P = dn_number = 5 groups of noised copies of all objects; within a group, image b's objects fill
  the first n_b of M slots, M = the largest number of objects of an image in the batch (padding
  slots have zero content and anchor σ(0) = 0.5, as officially);
- queries are ordered [group 0 | ... | group P-1 | Q matching queries] and the decoder's
  self-attention mask is the seed's a_ij (`dn_attention_mask`): the matching queries must not see
  the ground truth the denoising queries carry, and each group must be solved on its own;
- reconstruction losses, in every decoder layer: focal class loss (target: the object's true class),
  L1 and GIoU (target: the object's true box), each summed over the denoising queries with an
  object and divided by their number (official `compute_dn_loss`), weighted like the matching losses;
- nothing of this at inference: in eval mode (or without targets) the model is DAB-DETR whose
  queries' content is the "unknown" label's embedding.
Official code: IDEA-Research/DN-DETR, `models/DN_DAB_DETR/dn_components.py` and `DABDETR.py`
(which require CUDA; everything here runs on a CPU).

Glossary (code -> seed): P = num_groups (dn_number), M = group_size, Q matching queries,
T = P·M + Q decoder queries; a_ij = mask[i, j] (True = blocked). K classes, C width, B batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..matching.criterion import box_losses, matched_pairs
from ..matching.focal import FocalSetCriterion, focal_matcher
from .dab_detr import DABDETR, DABDETRConfig, dab_detr_tiny
from .heads import inverse_sigmoid


@dataclass
class DNDETRConfig(DABDETRConfig):
    dn_number: int = 5  # P, groups of denoising queries (official `scalar`)
    label_noise: float = 0.2  # probability of replacing a label (official `label_noise_scale`)
    box_noise_scale: float = 0.4  # λ (official `box_noise_scale`)


# --- noise --------------------------------------------------------------------------------------


def signed_uniform(shape, low: float = 0.0, high: float = 1.0, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Random numbers of magnitude uniform in [low, high) and a random sign: from u ~ U(-1, 1),
    sign(u)·(low + |u|·(high - low)). With low=0, high=1 this is u itself (DN-DETR's noise); DINO's
    negative queries use low=1, high=2 (`tutorial/models/dino.py`)."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device) * 2 - 1
    return torch.where(u >= 0, 1.0, -1.0).to(u) * (low + u.abs() * (high - low))


def noise_boxes(boxes: Tensor, scale: float, generator: torch.Generator | None = None, low: float = 0.0,
                high: float = 1.0) -> Tensor:
    """boxes (..., 4) cxcywh in [0, 1] -> noised boxes (..., 4): cx += u·λ·w/2, cy += u·λ·h/2,
    w += u·λ·w, h += u·λ·h, each u = `signed_uniform(low, high)` independently (U(-1, 1) by
    default), then clipped to [0, 1]."""
    wh = boxes[..., 2:]  # (..., 2)
    bound = torch.cat([wh / 2, wh], dim=-1) * scale  # (..., 4): the largest shift of each coordinate
    u = signed_uniform(boxes.shape, low, high, generator, boxes.dtype, boxes.device)  # (..., 4)
    return (boxes + u * bound).clamp(0.0, 1.0)  # clipping only moves a coordinate back towards its box


def noise_labels(labels: Tensor, prob: float, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """labels (...,) -> labels with each entry replaced, with probability `prob`, by a class drawn
    uniformly from 0..K-1 (so it changes with probability prob·(K-1)/K)."""
    flip = torch.rand(labels.shape, generator=generator, device=labels.device) < prob  # (...,)
    drawn = torch.randint(0, num_classes, labels.shape, generator=generator, device=labels.device)  # (...,)
    return torch.where(flip, drawn, labels)


# --- the denoising queries and their attention mask ---------------------------------------------


def dn_attention_mask(num_groups: int, group_size: int, num_matching: int) -> Tensor:
    """The seed's denoising attention mask a_ij (DN-DETR).  [exercise]

    Queries are ordered [group 0 | group 1 | ... | group P-1 | matching queries]: P = num_groups
    groups of M = group_size denoising queries, then num_matching matching queries, so
    T = P·M + num_matching. Returns a bool (T, T) mask, True where query i may NOT attend to j:

        a_ij = 1  if j < P·M and ⌊i/M⌋ ≠ ⌊j/M⌋   (j is a denoising query of another group),
        a_ij = 1  if j < P·M and i ≥ P·M          (a matching query looking at a denoising one),
        a_ij = 0  otherwise.

    Every query may attend to every matching query and to its own group.
    """
    pm = num_groups * group_size
    i = torch.arange(pm + num_matching)[:, None]  # (T, 1)
    j = torch.arange(pm + num_matching)[None, :]  # (1, T)
    m = max(group_size, 1)  # with no denoising queries (pm = 0) nothing is blocked anyway
    return (j < pm) & ((i // m != j // m) | (i >= pm))  # (T, T)


@dataclass
class DenoisingGroups:
    """P groups of noised ground truth for a batch, flattened to P·M queries per image
    (group g holds slots g·M .. g·M + M - 1; image b's objects fill the first n_b of them).
    With contrastive denoising (DINO, `tutorial/models/dino.py`) a group is M = 2·max n_b slots: the
    positive copies, then the negative ones (`negative` True)."""

    labels: Tensor  # (B, P·M) noised class of each denoising query (K on padding slots)
    boxes: Tensor  # (B, P·M, 4) noised boxes cxcywh in [0, 1] (the anchors; 0.5 on padding)
    target_index: Tensor  # (B, P·M) which object of targets[b] it was noised from, -1 on padding
    target_boxes: Tensor  # (B, P·M, 4) that object's true box (0 on padding)
    num_groups: int  # P
    group_size: int  # M
    negative: Tensor  # (B, P·M) True on the negative copies (contrastive denoising only)

    @property
    def valid(self) -> Tensor:
        return self.target_index >= 0  # (B, P·M)

    @property
    def positive_index(self) -> Tensor:
        """(B, P·M): target_index on the positive copies, -1 on negatives and padding: the queries
        that must reconstruct an object (the others must say "no object")."""
        return self.target_index.masked_fill(self.negative, -1)


def make_denoising_groups(targets: list[dict], num_groups: int, label_noise: float, box_noise_scale: float,
                          num_classes: int, generator: torch.Generator | None = None, contrastive: bool = False,
                          box_noise=noise_boxes) -> DenoisingGroups:
    """Noise every image's ground truth `num_groups` times (fresh noise per copy) and lay the copies
    out in groups padded to n = max_b n_b (official `prepare_for_dn`), M = n slots per group.

    With `contrastive` (DINO's contrastive denoising, official `prepare_for_cdn`) every group holds
    two copies of each object, M = 2n slots: positives (noise magnitude u in [0, 1) of λ·bound)
    then negatives (u in [1, 2): farther from their object than any positive). `box_noise(boxes,
    λ, generator, low, high)` noises the boxes (DN-DETR: `noise_boxes`; DINO: corner noise)."""
    b, p = len(targets), num_groups
    n_max = max((len(t["labels"]) for t in targets), default=0)
    s = 2 if contrastive else 1  # copies per group: (positive,) or (positive, negative)
    device = targets[0]["boxes"].device if targets else torch.device("cpu")
    labels = torch.full((b, p, s, n_max), num_classes, dtype=torch.int64, device=device)  # (B, P, S, n)
    boxes = torch.full((b, p, s, n_max, 4), 0.5, device=device)  # (B, P, S, n, 4)
    index = torch.full((b, p, s, n_max), -1, dtype=torch.int64, device=device)  # (B, P, S, n)
    true_boxes = torch.zeros(b, p, s, n_max, 4, device=device)  # (B, P, S, n, 4)
    negative = torch.zeros(b, p, s, n_max, dtype=torch.bool, device=device)  # (B, P, S, n)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        for copy in range(s):  # copy 0: positives, magnitude in [0, 1); copy 1: negatives, in [1, 2)
            index[i, :, copy, :n] = torch.arange(n, device=device)
            labels[i, :, copy, :n] = noise_labels(t["labels"].expand(p, n), label_noise, num_classes,
                                                  generator)  # (P, n)
            boxes[i, :, copy, :n] = box_noise(t["boxes"].float().expand(p, n, 4), box_noise_scale, generator,
                                              low=float(copy), high=float(copy + 1))  # (P, n, 4)
            true_boxes[i, :, copy, :n] = t["boxes"].float()
            negative[i, :, copy, :n] = copy == 1
    return DenoisingGroups(labels.flatten(1), boxes.flatten(1, 3), index.flatten(1), true_boxes.flatten(1, 3), p,
                           s * n_max, negative.flatten(1))


def prepend_denoising_queries(groups: DenoisingGroups, dn_content: Tensor, tgt: Tensor,
                              anchors: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Put the denoising queries before the Q matching ones (DN-DETR; DINO and RT-DETR alike).
    dn_content (B, P·M, C) the noised labels' content, tgt (B, Q, C), anchors (B, Q, 4) logit space
    -> (content (B, T, C), anchors (B, T, 4), the attention mask a_ij (T, T), P·M), T = P·M + Q.
    The denoising anchors are σ⁻¹ of the noised boxes; padding slots get zero content and anchor 0
    (the box σ(0) = 0.5), as officially."""
    valid = groups.valid[..., None]  # (B, P·M, 1)
    dn_tgt, dn_anchors = dn_content * valid, inverse_sigmoid(groups.boxes) * valid  # (B, P·M, C), (B, P·M, 4)
    attn_mask = dn_attention_mask(groups.num_groups, groups.group_size, tgt.shape[1]).to(tgt.device)  # (T, T)
    return torch.cat([dn_tgt, tgt], 1), torch.cat([dn_anchors, anchors], 1), attn_mask, dn_tgt.shape[1]


# --- the loss -------------------------------------------------------------------------------------


def denoising_loss(pred_logits: Tensor, pred_boxes: Tensor, target_index: Tensor, targets: list[dict],
                   alpha: float) -> dict[str, Tensor]:
    """Reconstruction loss of one decoder layer's denoising queries: each is compared with the
    object it was noised from (no matching). pred_logits (B, P·M, K), pred_boxes (B, P·M, 4),
    target_index (B, P·M) (-1 on padding) -> unweighted {"loss_ce": Σ focal loss over the (query,
    class) pairs, "loss_bbox": Σ L1, "loss_giou": Σ (1 - GIoU)}, each divided by the number of
    denoising queries with an object (official `tgt_loss_labels`, `tgt_loss_boxes`)."""
    indices = [(torch.nonzero(row >= 0).flatten(), row[row >= 0]) for row in target_index]  # per image
    num = max(int((target_index >= 0).sum()), 1)
    batch_idx, pred_idx = matched_pairs(indices)
    logits = pred_logits[batch_idx, pred_idx]  # (n, K): padding slots are left out, not negatives
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])  # (n,): the true classes
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(len(labels)), labels] = 1.0
    loss_ce = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=2.0, reduction="sum") / num
    return {"loss_ce": loss_ce, **box_losses(pred_boxes, targets, indices, num)}


class DNCriterion(FocalSetCriterion):
    """DAB-DETR's focal set criterion on the matching queries, plus the denoising losses of every
    decoder layer ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn" for the last, "..._dn_0", ... for the
    earlier ones), weighted like the matching terms. Without "dn_outputs" (eval mode, or a batch
    with no objects) the denoising terms are zeros, so every step logs the same keys (as officially)."""

    term_names = ("loss_ce", "loss_bbox", "loss_giou")  # the keys of one layer's terms

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        num_layers = 1 + len(outputs.get("aux_outputs", []))
        dn = outputs.get("dn_outputs")
        zero = outputs["pred_logits"].new_zeros(())
        for lid in range(num_layers):
            suffix = "_dn" if lid == num_layers - 1 else f"_dn_{lid}"
            if dn is None:
                terms = {name: zero for name in self.term_names}
            else:
                layer = lid - num_layers + len(dn["pred_logits"])  # the last num_layers layers
                terms = self.denoising_terms(dn["pred_logits"][layer], dn["pred_boxes"][layer], dn, targets)
            self.add_terms(losses, terms, suffix)
        return losses

    def denoising_terms(self, pred_logits: Tensor, pred_boxes: Tensor, dn: dict, targets: list[dict]) -> dict:
        """One decoder layer's unweighted denoising terms (DINO overrides this with its contrastive loss)."""
        return denoising_loss(pred_logits, pred_boxes, dn["target_index"], targets, self.alpha)


# --- the model ------------------------------------------------------------------------------------


class DNDETR(DABDETR):
    """DAB-DETR with denoising queries in training. `forward(images, mask, targets=None)`: in
    training mode with targets, returns DAB-DETR's outputs for the Q matching queries plus
    "dn_outputs" {"pred_logits" (L_dec, B, P·M, K), "pred_boxes" (L_dec, B, P·M, 4),
    "target_index" (B, P·M)}; with `return_intermediates=True` also "dn_anchors" (B, P·M, 4) (the
    noised boxes, in [0, 1]), "dn_target_boxes" (B, P·M, 4) and "dn_target_index" (B, P·M) (the
    objects they were noised from, for arrows from anchors to targets), "dn_labels" (B, P·M),
    "dn_attention_mask" (T, T) and "dn_groups" (P, M). In eval mode: exactly DAB-DETR's outputs.
    (Intermediates in training mode also put batch norm, if any, in training mode.)"""

    uses_targets = True  # the training loop passes `targets=` to forward

    def build_queries(self) -> None:
        super().build_queries()
        # one row per class, + the "unknown" class K of the matching queries; C-1 channels + indicator
        self.label_embed = nn.Embedding(self.cfg.num_classes + 1, self.cfg.transformer.d_model - 1)

    def content(self, labels: Tensor, indicator: float) -> Tensor:
        """labels (...,) -> content queries (..., C) = Cat(embedding of the label, indicator)."""
        emb = self.label_embed(labels)  # (..., C-1)
        return torch.cat([emb, torch.full_like(emb[..., :1], indicator)], dim=-1)  # (..., C)

    def queries(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(content (B, Q, C): the "unknown" label's embedding with indicator 0; anchors (B, Q, 4))."""
        _, anchors = super().queries(batch_size)
        unknown = torch.full((batch_size, self.cfg.num_queries), self.cfg.num_classes, device=anchors.device)
        return self.content(unknown, 0.0), anchors

    def forward(self, images: Tensor, mask: Tensor, targets: list[dict] | None = None,
                return_intermediates: bool = False) -> dict:
        enc = self.encode(images, mask, return_intermediates)
        tgt, anchors = self.queries(images.shape[0])  # (B, Q, C), (B, Q, 4)
        groups = None
        if self.training and targets is not None and self.cfg.dn_number > 0:
            groups = make_denoising_groups(targets, self.cfg.dn_number, self.cfg.label_noise,
                                           self.cfg.box_noise_scale, self.cfg.num_classes)
        if groups is None or groups.group_size == 0:  # inference, or no object in the batch
            dec = self.run_decoder(tgt, anchors, enc, None, return_intermediates)
            return self.outputs(self.predict(dec), dec, enc, return_intermediates=return_intermediates)
        tgt, anchors, attn_mask, n = prepend_denoising_queries(groups, self.content(groups.labels, 1.0), tgt,
                                                               anchors)  # T = P·M + Q queries, n = P·M
        dec = self.run_decoder(tgt, anchors, enc, attn_mask, return_intermediates)
        logits, boxes = self.predict(dec)  # (L_dec, B, T, K), (L_dec, B, T, 4)
        out = self.outputs((logits, boxes), dec, enc, keep=slice(n, None), return_intermediates=return_intermediates)
        out["dn_outputs"] = {"pred_logits": logits[:, :, :n], "pred_boxes": boxes[:, :, :n],
                             "target_index": groups.target_index}
        if return_intermediates:
            out.update(dn_anchors=groups.boxes, dn_target_boxes=groups.target_boxes,
                       dn_target_index=groups.target_index, dn_labels=groups.labels, dn_attention_mask=attn_mask,
                       dn_groups=(groups.num_groups, groups.group_size))
        return out

    def build_criterion(self) -> DNCriterion:
        return DNCriterion(focal_matcher(self.cfg.matcher, self.cfg.focal_alpha), self.cfg.loss, self.cfg.focal_alpha)


# --- presets ----------------------------------------------------------------------------------


def dn_detr_r50() -> DNDETRConfig:
    """The paper's DN-DETR-R50 (DAB-DETR-R50 + denoising, official defaults: 5 groups, label noise
    0.2, box noise 0.4): 43,694,977 parameters, DAB-DETR's + the label embedding (92 x 255), as the
    official implementation (paper: 44M)."""
    return DNDETRConfig()


def dn_detr_tiny() -> DNDETRConfig:
    """dab_detr_tiny with denoising (5 groups, label noise 0.2, box noise 0.4)."""
    tiny = dab_detr_tiny()
    return DNDETRConfig(num_classes=tiny.num_classes, num_queries=tiny.num_queries, backbone=tiny.backbone,
                        transformer=tiny.transformer)
