"""Sparse DETR (Roh et al., ICLR 2022): the encoder updates only the tokens the decoder will look at.

In Deformable DETR (`tutorial/models/deformable_detr.py`) every one of the N multi-scale tokens is
an encoder query, yet the decoder's deformable cross-attention ends up sampling a small part of
them. Sparse DETR keeps Deformable DETR (two-stage, box refinement) and adds three things:

1. A scoring network (Sec. 3.3, official `MaskPredictor`) predicts a saliency score s_t for
   every backbone token t, from the token after the two-stage `enc_output` (Linear + LayerNorm)
   and a global average of the image. Only the top ρ fraction of each image's non-padded tokens
   (ρ·n_b, officially floor(ρ·n_b) + 1) are encoder queries (`select_sparse_tokens`); they still
   attend to all N tokens as keys/values, and the others pass through the encoder unchanged:
       x_t^{(i+1)} = EncLayer_i(x_t^{(i)}, all of x^{(i)})  if t kept,  x_t^{(i)} otherwise.  (Sec. 3.2)
2. The score's target is the decoder cross-attention map (DAM, Sec. 3.3): the attention
   weights of every decoder layer, head and sampling point, spread onto the tokens by the bilinear
   weights of the sampled location and summed (`decoder_attention_map`); its top ρ tokens are
   labelled 1, the rest 0 (`dam_target`), and the scores are trained with the binary
   cross-entropy, weight 1 (`dam_loss`, official `loss_mask_prediction`). The target carries no
   gradient: the decoder is not asked to change where it looks.
3. Encoder auxiliary heads (Sec. 3.4, Fig. 3 (b)): a class head and a box head on the kept
   tokens after every encoder layer but the last, each box relative to its token's two-stage
   proposal, trained with the Hungarian loss like a decoder layer ("aux_outputs_enc", terms
   suffixed "_enc_{i}").

Everything else follows the official `configs/r50_sparse_detr_rho_0.1.sh`: box refinement,
two-stage, ρ = 0.1, and Efficient DETR's query initialisation (`--eff_query_init
--eff_specific_head`, the paper's top-k decoder queries, Sec. 3.4): the top-Q proposals are
ranked by their best class (not class 0), the proposal head is trained with the real classes,
the content queries are the selected encoder tokens themselves (not detached) and `pos_trans`
maps the proposal's sine encoding to C (not 2C) channels, the query positions. The official
main.py defaults fill the rest (Deformable DETR's).
Head order as officially: [decoder 0..5, the two-stage proposal head, encoder aux 0..4].
Official code: kakaobrain/sparse-detr, `models/deformable_transformer.py` (`MaskPredictor`, the
sparse `DeformableTransformerEncoder`), `models/deformable_detr.py` (`loss_mask_prediction`),
`util/dam.py` (`attn_map_to_flat_grid`).

Glossary (code -> paper): rho ρ the keeping ratio, scores (B, N) the scoring network's logits s,
kept (B, k) the indices of the kept tokens Ω_s^ρ (by decreasing score), num_kept (B,) how many of
them each image writes back (k = max_b num_kept), dam (B, N) the DAM, dam_target (B, N) its
binarised top ρ. B batch, N = Σ_l H_l·W_l tokens, L levels, C width, Q queries, K classes,
M heads, P points.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..matching.focal import FocalSetCriterion, focal_matcher
from .backbone import tiny_backbone
from .deformable_detr import DeformableDETR, DeformableDETRConfig
from .deformable_transformer import (DeformableEncoder, DeformableTransformerConfig, encoder_proposals,
                                     encoder_reference_points, proposal_position_encoding)
from .multiscale import flatten_levels, level_positions
from .query_selection import select_top_k
from .transformer import tiny_transformer


@dataclass
class SparseDETRConfig(DeformableDETRConfig):
    with_box_refine: bool = True  # required: Sparse DETR is built on the refine + two-stage variant
    two_stage: bool = True
    rho: float = 0.1  # ρ, the fraction of each image's tokens the encoder updates, in (0, 1]
    enc_aux_loss: bool = True  # detection heads + Hungarian loss on the kept tokens of encoder layers 0..L_enc-2
    dam_loss_weight: float = 1.0  # official `mask_prediction_coef`
    # The DAM's bilinear weights with pixel centres at (i + 0.5)/W, as the sampler reads them; False: the
    # official `attn_map_to_flat_grid`, which omits the -0.5 (its map is shifted by half a pixel).
    dam_pixel_centres: bool = True


# --- 1. the scoring network and the top-ρ selection --------------------------------------------


class ScoringNetwork(nn.Module):
    """s_t = MLP([z_t^local, mean_t' z_t'^global]) with z = GELU(Linear(LN(x))) split in two halves
    (Sec. 3.3; official `MaskPredictor`: LN, Linear(C, C), GELU, then C -> C/2 -> C/4 -> 1 with GELU).
    The mean runs over all N tokens, padding included, as officially. (B, N, C) -> (B, N) logits."""

    def __init__(self, d_model: int):
        super().__init__()
        self.layer1 = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU())
        self.layer2 = nn.Sequential(nn.Linear(d_model, d_model // 2), nn.GELU(), nn.Linear(d_model // 2, d_model // 4),
                                    nn.GELU(), nn.Linear(d_model // 4, 1))
        for p in self.parameters():  # the official transformer's xavier init of every matrix
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor) -> Tensor:
        z = self.layer1(x)  # (B, N, C)
        local, glob = z.chunk(2, dim=-1)  # (B, N, C/2) each
        glob = glob.mean(1, keepdim=True).expand_as(local)  # (B, N, C/2): one image summary per token
        return self.layer2(torch.cat([local, glob], -1)).squeeze(-1)  # (B, N)


def num_sparse_tokens(padding_mask: Tensor, rho: float) -> Tensor:
    """How many tokens each image keeps: floor(ρ·n_b) + 1 of its n_b non-padded tokens (official
    `(valid_token_nums * rho).int() + 1`), at most n_b (officially ρ = 1 would keep one padded
    token too). padding_mask (B, N) True on padding -> (B,) int64."""
    valid = (~padding_mask).sum(1)  # (B,)
    return ((valid * rho).int() + 1).minimum(valid).long()  # (B,)


def select_sparse_tokens(scores: Tensor, padding_mask: Tensor, rho: float) -> tuple[Tensor, Tensor]:
    """The top-ρ tokens of each image by score, padding excluded (Sec. 3.2, Ω_s^ρ).

    scores (B, N), padding_mask (B, N) -> (kept (B, k) token indices by decreasing score, k = the
    batch's largest count; num_kept (B,)): image b keeps kept[b, :num_kept[b]]; its remaining
    k - num_kept[b] slots are computed but never written back (as officially)."""
    num_kept = num_sparse_tokens(padding_mask, rho)  # (B,)
    scores = scores.detach().masked_fill(padding_mask, float("-inf"))  # (B, N): padding ranks last
    return scores.topk(int(num_kept.max()), dim=1).indices, num_kept  # (B, k), (B,)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, D), index (B, k) -> (B, k, D)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, k, D)


# --- the sparse encoder -------------------------------------------------------------------------


class SparseEncoder(DeformableEncoder):
    """Deformable DETR's encoder layers with only the kept tokens as queries (Sec. 3.2; official
    `DeformableTransformerEncoder` with `topk_inds`). Each layer's values are the whole current
    memory; after the layer the kept tokens are written back into it (scatter)."""

    def forward(self, src, pos, spatial_shapes, ratios, padding_mask, kept: Tensor, num_kept: Tensor,
                return_sampling: bool = False):
        """src, pos (B, N, C), kept (B, k), num_kept (B,) -> (memory (B, N, C), reference points of
        the kept tokens (B, k, L, 2), [kept tokens' states (B, k, C)] after each layer,
        [(locations (B, k, M, L, P, 2), weights (B, k, M, L, P))] per layer if `return_sampling`)."""
        b, k = kept.shape
        ref = encoder_reference_points(spatial_shapes, ratios)  # (B, N, L, 2)
        ref = gather_tokens(ref.flatten(2), kept).view(b, k, *ref.shape[2:])  # (B, k, L, 2)
        pos, tgt = gather_tokens(pos, kept), gather_tokens(src, kept)  # (B, k, C) each
        writes = (torch.arange(k, device=kept.device) < num_kept[:, None])[..., None]  # (B, k, 1)
        index = kept[..., None].expand_as(tgt)  # (B, k, C)
        states, sampling = [], []
        for layer in self.layers:
            tgt, loc, w = layer(tgt, pos, ref, spatial_shapes, padding_mask, value=src)  # (B, k, C)
            src = src.scatter(1, index, torch.where(writes, tgt, src.gather(1, index)))  # (B, N, C)
            states.append(tgt)
            if return_sampling:
                sampling.append((loc, w))
        return src, ref, states, sampling


# --- 2. the decoder cross-attention map and its loss ---------------------------------------------


def decoder_attention_map(sampling: list[tuple[Tensor, Tensor]], spatial_shapes: list[tuple[int, int]],
                          pixel_centres: bool = True) -> Tensor:
    """The DAM: how much attention the decoder put on each token (Sec. 3.3, official `attn_map_to_flat_grid`).

    sampling: per decoder layer (locations (B, Q, M, L, P, 2) normalised (x, y), weights
    (B, Q, M, L, P)) -> (B, N): every sample's weight A spread on its four neighbouring pixels by
    their bilinear weights, summed over layers, queries, heads and points. With `pixel_centres`
    the corners are those `F.grid_sample` reads (pixel j's centre at (j + 0.5)/W), so a token's DAM
    is exactly its share of the decoder's sampled values; weights on pixels outside the map are dropped."""
    b = sampling[0][0].shape[0]
    dam, start = sampling[0][1].new_zeros(b, sum(h * w for h, w in spatial_shapes)), 0  # (B, N)
    shift = 0.5 if pixel_centres else 0.0
    for lvl, (h, w) in enumerate(spatial_shapes):
        for loc, weight in sampling:
            x = loc[:, :, :, lvl, :, 0] * w - shift  # (B, Q, M, P) in pixel units
            y = loc[:, :, :, lvl, :, 1] * h - shift
            a = weight[:, :, :, lvl]  # (B, Q, M, P)
            x0, y0 = x.floor(), y.floor()
            for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # the four corners
                xi, yi = x0 + dx, y0 + dy  # (B, Q, M, P)
                share = (1 - (x - xi).abs()) * (1 - (y - yi).abs())  # (B, Q, M, P) bilinear weight
                inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
                index = start + (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()  # (B, Q, M, P)
                dam.scatter_add_(1, index.flatten(1), (a * share * inside).flatten(1))  # (B, N)
        start += h * w
    return dam


def dam_target(dam: Tensor, padding_mask: Tensor, num_kept: Tensor) -> Tensor:
    """The binarised DAM (Sec. 3.3): 1 on the num_kept[b] tokens of image b with the largest DAM,
    padding excluded, 0 elsewhere. dam (B, N), padding_mask (B, N), num_kept (B,) -> (B, N)."""
    dam = dam.masked_fill(padding_mask, float("-inf"))  # (B, N)
    top = dam.topk(int(num_kept.max()), dim=1).indices  # (B, k)
    hit = (torch.arange(top.shape[1], device=top.device) < num_kept[:, None]).to(dam.dtype)  # (B, k)
    return torch.zeros_like(dam).scatter_(1, top, hit)  # (B, N)


def dam_loss(outputs: dict, pixel_centres: bool = True) -> Tensor:
    """BCE(σ(s_t), DAM target_t), the mean over all B·N tokens (official `loss_mask_prediction`:
    `F.multilabel_soft_margin_loss`, the same number). The target is built without gradient."""
    with torch.no_grad():
        sampling = [(loc.detach(), w.detach()) for loc, w in outputs["decoder_sampling"]]
        dam = decoder_attention_map(sampling, outputs["spatial_shapes"], pixel_centres)  # (B, N)
        target = dam_target(dam, outputs["padding_mask"], outputs["num_kept"])  # (B, N)
    return F.binary_cross_entropy_with_logits(outputs["token_scores"], target)


class SparseDETRCriterion(FocalSetCriterion):
    """Deformable DETR's focal set criterion (decoder layers, the class-specific two-stage proposals
    "_enc"), plus the encoder auxiliary layers ("_enc_{i}", full labels, weighted like the others)
    and the scoring network's DAM loss ("loss_dam", official "loss_mask_prediction")."""

    def __init__(self, cfg: SparseDETRConfig):
        super().__init__(focal_matcher(cfg.matcher, cfg.focal_alpha), cfg.loss, cfg.focal_alpha,
                         class_agnostic_enc=False)
        self.dam_loss_weight, self.pixel_centres = cfg.dam_loss_weight, cfg.dam_pixel_centres

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        for i, aux in enumerate(outputs.get("aux_outputs_enc", [])):
            self.add_set_loss(losses, aux, targets, f"_enc_{i}")
        losses["loss_dam"] = dam_loss(outputs, self.pixel_centres)
        losses["loss"] = losses["loss"] + self.dam_loss_weight * losses["loss_dam"]
        return losses


# --- the model ----------------------------------------------------------------------------------


class SparseDETR(DeformableDETR):
    """`forward(images, mask)` returns Deformable DETR's dict ("pred_logits", "pred_boxes",
    "aux_outputs", "enc_outputs") plus "aux_outputs_enc" (the encoder aux heads, one dict per layer
    but the last, over the k kept slots), "token_scores" (B, N) the scoring network's logits,
    "kept_indices" (B, k), "num_kept" (B,), "kept_mask" (B, N) True where the encoder updated the
    token, "padding_mask" (B, N), "spatial_shapes" and "decoder_sampling" (what the DAM loss needs).
    With `return_intermediates=True` also Deformable DETR's "reference_points", "layer_boxes",
    "encoder_reference_points" (of the kept tokens, (B, k, L, 2)), "encoder_sampling" (kept
    tokens only) and "level_masks". `token_locations(out["kept_indices"], out["spatial_shapes"])`
    (`tutorial/models/query_selection.py`) says where the kept tokens sit on the feature maps."""

    def __init__(self, cfg: SparseDETRConfig):
        if not (cfg.two_stage and cfg.with_box_refine):
            raise ConfigError("SparseDETRConfig: two_stage and with_box_refine must be True (the official configs; "
                              f"got two_stage={cfg.two_stage}, with_box_refine={cfg.with_box_refine})")
        if not 0 < cfg.rho <= 1:
            raise ConfigError(f"SparseDETRConfig.rho: expected a fraction in (0, 1], got {cfg.rho}")
        super().__init__(cfg)
        tc = cfg.transformer
        c = tc.d_model
        self.encoder = SparseEncoder(tc)
        self.scoring_network = ScoringNetwork(c)  # official `transformer.enc_mask_predictor`
        self.pos_trans = nn.Linear(2 * c, c)  # Efficient DETR: positions only, C channels
        self.pos_trans_norm = nn.LayerNorm(c)
        nn.init.xavier_uniform_(self.pos_trans.weight)
        if cfg.enc_aux_loss:  # heads for encoder layers 0..L_enc-2, appended after the proposal head
            for _ in range(tc.num_encoder_layers - 1):
                self.class_embed.append(copy.deepcopy(self.class_embed[-1]))
                self.bbox_embed.append(copy.deepcopy(self.bbox_embed[-1]))

    def score_tokens(self, src: Tensor, pos: Tensor, padding: Tensor, shapes) -> tuple[Tensor, Tensor]:
        """Backbone tokens src + pos (B, N, C) -> (scores (B, N), proposals (B, N, 4) in logit space).
        The scoring network reads the tokens after the two-stage enc_output + LayerNorm (officially
        shared with the final proposals); the proposals are the encoder aux heads' anchors."""
        tokens, proposals = encoder_proposals(src + pos, padding, shapes)  # (B, N, C) zeroed where invalid, (B, N, 4)
        return self.scoring_network(self.enc_output_norm(self.enc_output(tokens))), proposals  # (B, N)

    def encoder_aux_outputs(self, states: list[Tensor], proposals: Tensor, kept: Tensor) -> list[dict]:
        """Kept tokens' states after encoder layers 0..L_enc-2 [(B, k, C)] -> their detections, each
        box relative to the token's proposal (official `enc_inter_outputs_*`)."""
        anchors = gather_tokens(proposals, kept)  # (B, k, 4)
        first = self.cfg.transformer.num_decoder_layers + 1  # after the decoder heads and the proposal head
        return [{"pred_logits": self.class_embed[first + i](s),  # (B, k, K)
                 "pred_boxes": (self.bbox_embed[first + i](s) + anchors).sigmoid()}  # (B, k, 4)
                for i, s in enumerate(states[:-1])]

    def queries(self, memory: Tensor, padding: Tensor, shapes, out: dict):
        """Efficient DETR's two-stage queries: the top-Q proposals by best class score; content =
        their encoder tokens, position = pos_trans(sine(box)); reference = the (detached) box."""
        tokens, proposals = encoder_proposals(memory, padding, shapes)  # (B, N, C), (B, N, 4)
        tokens = self.enc_output_norm(self.enc_output(tokens))  # (B, N, C)
        head = self.cfg.transformer.num_decoder_layers
        enc_logits = self.class_embed[head](tokens)  # (B, N, K)
        enc_boxes = self.bbox_embed[head](tokens) + proposals  # (B, N, 4) logit space
        out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes.sigmoid()}
        topk, _, boxes, tgt = select_top_k(enc_logits, enc_boxes, memory, self.cfg.num_queries)  # (B, Q), (B, Q, 4), (B, Q, C)
        boxes = boxes.detach()
        sine = proposal_position_encoding(boxes, memory.shape[-1] // 2)  # (B, Q, 2C)
        query_pos = self.pos_trans_norm(self.pos_trans(sine))  # (B, Q, C)
        out["proposal_indices"] = topk
        return tgt, query_pos, boxes.sigmoid()

    def forward(self, images: Tensor, mask: Tensor, return_intermediates: bool = False,
                rho: float | None = None) -> dict:
        """`rho` overrides cfg.rho for this call (e.g. to draw the kept tokens of one model at several ρ)."""
        levels = self.input_proj(self.backbone(images, mask), mask)  # L x ((B, C, H_l, W_l), (B, H_l, W_l))
        src, padding, shapes, ratios = flatten_levels(levels)  # (B, N, C), (B, N), [(H_l, W_l)], (B, L, 2)
        pos = level_positions(levels, self.position_encoding, self.level_embed)  # (B, N, C)
        scores, proposals = self.score_tokens(src, pos, padding, shapes)  # (B, N), (B, N, 4)
        kept, num_kept = select_sparse_tokens(scores, padding, self.cfg.rho if rho is None else rho)  # (B, k), (B,)
        memory, enc_ref, states, enc_sampling = self.encoder(src, pos, shapes, ratios, padding, kept, num_kept,
                                                             return_intermediates)  # (B, N, C)
        out: dict = {}
        tgt, query_pos, reference = self.queries(memory, padding, shapes, out)
        hs, refs, dec_sampling = self.decoder(tgt, reference, memory, shapes, ratios, padding, query_pos,
                                              return_sampling=True)  # (L_dec, B, Q, C): the DAM needs the sampling
        logits, boxes = self.layer_predictions(hs, refs)
        kept_mask = torch.zeros_like(padding).scatter_(
            1, kept, torch.arange(kept.shape[1], device=kept.device) < num_kept[:, None])  # (B, N)
        out.update(pred_logits=logits[-1], pred_boxes=boxes[-1], token_scores=scores, kept_indices=kept,
                   num_kept=num_kept, kept_mask=kept_mask, padding_mask=padding, spatial_shapes=shapes,
                   decoder_sampling=dec_sampling)
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if self.cfg.enc_aux_loss:
            out["aux_outputs_enc"] = self.encoder_aux_outputs(states, proposals, kept)
        if return_intermediates:
            out.update(reference_points=refs, encoder_reference_points=enc_ref, encoder_sampling=enc_sampling,
                       level_masks=[m for _, m in levels], layer_boxes=torch.stack(boxes))
        return out

    def build_criterion(self) -> SparseDETRCriterion:
        return SparseDETRCriterion(self.cfg)


# --- presets ----------------------------------------------------------------------------------


def sparse_detr_r50() -> SparseDETRConfig:
    """The official `configs/r50_sparse_detr_rho_0.1.sh` (R50, box refine, two-stage, Efficient DETR
    queries, ρ = 0.1, encoder aux loss; main.py defaults otherwise): 41,937,205 parameters
    (the README's 40.9M counts the trainable ones without the encoder aux heads)."""
    return SparseDETRConfig()


def sparse_detr_tiny() -> SparseDETRConfig:
    """deformable_detr_tiny's sizes (tiny ResNet layer2, layer3 + two extra levels, C=128, 3+3
    layers, 25 queries) with Sparse DETR's sparse encoder, ρ = 0.1."""
    return SparseDETRConfig(
        num_classes=6,
        num_queries=25,
        backbone=tiny_backbone("layer2", "layer3"),
        transformer=tiny_transformer(DeformableTransformerConfig),
    )
