"""Checkers for the exercises: each runs a candidate function against an independent oracle,
prints the largest difference and raises `AssertionError` with a readable message if wrong.

The oracles are not the package's own functions: `torchvision.ops` for boxes, brute force over
all permutations for matching, explicit per-element loops for the encodings and the loss.
pytest (`tests/test_exercises.py`) and the notebooks call the same checkers.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import ops


def report(name: str, got: Tensor, expected: Tensor, atol: float) -> float:
    """Compare, print one line, raise if the difference exceeds `atol`. Returns max |diff|."""
    got, expected = torch.as_tensor(got), torch.as_tensor(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"✗ {name}: returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    diff = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    if not diff <= atol:  # also catches NaN
        raise AssertionError(f"✗ {name}: max |diff| = {diff:.3e} exceeds tolerance {atol:.0e}")
    print(f"✓ {name}: max |diff| = {diff:.3e} (tolerance {atol:.0e})")
    return diff


def random_boxes_cxcywh(n: int, generator: torch.Generator) -> Tensor:
    """(n, 4) cxcywh boxes in [0, 1] (float64), some overlapping, some not."""
    cxcy = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.5 + 0.02
    return torch.cat([cxcy, wh], dim=1)


# --- boxes: oracle torchvision.ops -------------------------------------------------------------


def check_box_cxcywh_to_xyxy(fn) -> float:
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes_cxcywh(50, g)
    return report("box_cxcywh_to_xyxy", fn(boxes), ops.box_convert(boxes, "cxcywh", "xyxy"), 1e-12)


def check_box_xyxy_to_cxcywh(fn) -> float:
    g = torch.Generator().manual_seed(1)
    boxes = ops.box_convert(random_boxes_cxcywh(50, g), "cxcywh", "xyxy")
    return report("box_xyxy_to_cxcywh", fn(boxes), ops.box_convert(boxes, "xyxy", "cxcywh"), 1e-12)


def check_box_iou(fn) -> float:
    g = torch.Generator().manual_seed(2)
    a = ops.box_convert(random_boxes_cxcywh(7, g), "cxcywh", "xyxy")
    b = ops.box_convert(random_boxes_cxcywh(5, g), "cxcywh", "xyxy")
    iou, union = fn(a, b)
    iou_expected = ops.box_iou(a, b)  # (7, 5)
    # |A ∪ B| = |A| + |B| - |A ∩ B| and |A ∩ B| = IoU·|A ∪ B|, so |A ∪ B| = (|A| + |B|) / (1 + IoU)
    union_expected = (ops.box_area(a)[:, None] + ops.box_area(b)[None, :]) / (1 + iou_expected)
    return max(report("box_iou (IoU)", iou, iou_expected, 1e-12),
               report("box_iou (union)", union, union_expected, 1e-12))


def check_generalized_box_iou(fn) -> float:
    g = torch.Generator().manual_seed(3)
    a = ops.box_convert(random_boxes_cxcywh(7, g), "cxcywh", "xyxy")
    b = ops.box_convert(random_boxes_cxcywh(5, g), "cxcywh", "xyxy")
    far = torch.tensor([[5.0, 5.0, 6.0, 6.0]], dtype=torch.float64)  # disjoint from everything: GIoU < 0
    a = torch.cat([a, far])
    return report("generalized_box_iou", fn(a, b), ops.generalized_box_iou(a, b), 1e-12)


# --- matching: oracle brute force --------------------------------------------------------------


def _match_problem(seed: int, q: int = 6, n: int = 4, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(q, k + 1, generator=g, dtype=torch.float64)
    boxes = random_boxes_cxcywh(q, g)
    labels = torch.randint(0, k, (n,), generator=g)
    tgt = random_boxes_cxcywh(n, g)
    return logits, boxes, labels, tgt


def matching_cost_loop(logits, boxes, labels, tgt, w_class=1.0, w_bbox=5.0, w_giou=2.0) -> Tensor:
    """The seed's L_match, one (prediction, target) pair at a time."""
    q, n = len(logits), len(labels)
    cost = torch.zeros(q, n, dtype=torch.float64)
    for i in range(q):
        p = [math.exp(v) for v in logits[i].tolist()]
        p = [v / sum(p) for v in p]
        for j in range(n):
            l1 = sum(abs(x - y) for x, y in zip(boxes[i].tolist(), tgt[j].tolist()))
            giou = ops.generalized_box_iou(ops.box_convert(boxes[i:i + 1], "cxcywh", "xyxy"),
                                           ops.box_convert(tgt[j:j + 1], "cxcywh", "xyxy")).item()
            cost[i, j] = -w_class * p[labels[j]] + w_bbox * l1 - w_giou * giou
    return cost


def check_matching_cost(fn) -> float:
    logits, boxes, labels, tgt = _match_problem(4)
    got = fn(logits, boxes, labels, tgt, 1.0, 5.0, 2.0)
    return report("matching_cost", got, matching_cost_loop(logits, boxes, labels, tgt), 1e-10)


def brute_force_assignment(cost: Tensor) -> float:
    """Minimum total cost over every injective map targets -> predictions (Q!/(Q-n)! of them)."""
    q, n = cost.shape
    return min(sum(cost[p, j].item() for j, p in enumerate(perm)) for perm in itertools.permutations(range(q), n))


def check_hungarian_match(fn) -> float:
    worst = 0.0
    for seed, (q, n) in enumerate([(6, 4), (5, 5), (7, 2), (3, 1)]):
        g = torch.Generator().manual_seed(10 + seed)
        cost = torch.randn(q, n, generator=g, dtype=torch.float64)
        pred_idx, tgt_idx = fn(cost)
        pred_idx, tgt_idx = torch.as_tensor(pred_idx), torch.as_tensor(tgt_idx)
        if sorted(tgt_idx.tolist()) != list(range(n)) or len(set(pred_idx.tolist())) != n:
            raise AssertionError(f"✗ hungarian_match: not a one-to-one assignment of {n} targets "
                                 f"to {q} predictions: pred_idx={pred_idx.tolist()}, tgt_idx={tgt_idx.tolist()}")
        total = cost[pred_idx, tgt_idx].sum().item()
        worst = max(worst, abs(total - brute_force_assignment(cost)))
    return report("hungarian_match (total cost vs brute force)", torch.tensor(worst), torch.tensor(0.0), 1e-9)


# --- sine positional encoding: oracle the formula, pixel by pixel ------------------------------


def sine_encoding_loop(mask: Tensor, d: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2-D sine encoding, one pixel and one channel at a time."""
    b, h, w = mask.shape
    out = torch.zeros(b, 2 * d, h, w, dtype=torch.float64)
    for n in range(b):
        valid = ~mask[n]
        hv = int(valid[:, 0].sum())  # valid rows (padding is at the bottom / right)
        wv = int(valid[0, :].sum())
        for i in range(h):
            for j in range(w):
                y = min(i + 1, hv) / (hv + 1e-6) * 2 * math.pi  # cumulative count, normalised
                x = min(j + 1, wv) / (wv + 1e-6) * 2 * math.pi
                for c in range(d):
                    f = temperature ** (2 * (c // 2) / d)
                    trig = math.sin if c % 2 == 0 else math.cos
                    out[n, c, i, j] = trig(y / f)
                    out[n, d + c, i, j] = trig(x / f)
    return out


def check_sine_position_encoding(fn) -> float:
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:, :] = True  # image 1 is 3 x 4, padded to 5 x 7
    mask[1, :, 4:] = True
    got = fn(mask, 8)
    expected = sine_encoding_loop(mask, 8)
    valid = (~mask)[:, None].expand_as(expected)  # padding positions are free to differ
    return report("sine_position_encoding", got.double()[valid], expected[valid], 1e-5)


# --- the Hungarian loss: oracle explicit loops over images and predictions ---------------------


def hungarian_loss_loop(logits, boxes, targets, indices, num_boxes, no_object_weight) -> dict[str, float]:
    b, q, k1 = logits.shape
    ce_sum = weight_sum = l1 = giou = 0.0
    for n in range(b):
        match = dict(zip(indices[n][0].tolist(), indices[n][1].tolist()))
        for i in range(q):
            cls = int(targets[n]["labels"][match[i]]) if i in match else k1 - 1
            wt = 1.0 if cls != k1 - 1 else no_object_weight
            logp = logits[n, i].tolist()
            lse = math.log(sum(math.exp(v) for v in logp))
            ce_sum += wt * (lse - logp[cls])
            weight_sum += wt
            if i in match:
                t = targets[n]["boxes"][match[i]]
                l1 += (boxes[n, i] - t).abs().sum().item()
                giou += 1 - ops.generalized_box_iou(ops.box_convert(boxes[n, i][None], "cxcywh", "xyxy"),
                                                    ops.box_convert(t[None], "cxcywh", "xyxy")).item()
    return {"loss_ce": ce_sum / weight_sum, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}


def check_hungarian_loss(fn) -> float:
    g = torch.Generator().manual_seed(20)
    b, q, k = 3, 6, 4
    logits = torch.randn(b, q, k + 1, generator=g, dtype=torch.float64)
    boxes = random_boxes_cxcywh(b * q, g).view(b, q, 4)
    counts = [3, 0, 5]  # one image without objects
    targets = [{"labels": torch.randint(0, k, (c,), generator=g), "boxes": random_boxes_cxcywh(c, g)} for c in counts]
    indices = [(torch.randperm(q, generator=g)[:c].sort().values, torch.randperm(c, generator=g)) for c in counts]
    num_boxes = float(sum(counts))
    got = fn(logits, boxes, targets, indices, num_boxes, 0.1)
    expected = hungarian_loss_loop(logits, boxes, targets, indices, num_boxes, 0.1)
    # 1e-6: torchvision's generalized_box_iou_loss adds eps=1e-7 to its denominators
    return max(report(f"hungarian_loss ({key})", got[key], torch.tensor(value, dtype=torch.float64), 1e-6)
               for key, value in expected.items())


def check_hungarian_loss_permutation(fn) -> float:
    """Property: permuting the predictions (and their matches with them) leaves the loss unchanged."""
    g = torch.Generator().manual_seed(21)
    q = 6
    logits = torch.randn(1, q, 4, generator=g, dtype=torch.float64)
    boxes = random_boxes_cxcywh(q, g)[None]
    targets = [{"labels": torch.tensor([0, 2]), "boxes": random_boxes_cxcywh(2, g)}]
    indices = [(torch.tensor([1, 4]), torch.tensor([1, 0]))]
    perm = torch.randperm(q, generator=g)  # new position i holds old prediction perm[i]
    inverse = torch.argsort(perm)
    indices_p = [(inverse[indices[0][0]], indices[0][1])]
    a = fn(logits, boxes, targets, indices, 2.0, 0.1)
    b = fn(logits[:, perm], boxes[:, perm], targets, indices_p, 2.0, 0.1)
    return max(report(f"hungarian_loss permutation invariance ({k})", b[k], a[k], 1e-12) for k in a)


# --- deformable attention: oracles F.grid_sample and a loop over heads, levels and points ------


def check_bilinear_sample(fn) -> float:
    g = torch.Generator().manual_seed(30)
    value = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    loc = torch.rand(2, 4, 6, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3  # some outside [0, 1]
    expected = F.grid_sample(value, 2 * loc - 1, mode="bilinear", padding_mode="zeros", align_corners=False)
    return report("bilinear_sample (vs F.grid_sample)", fn(value, loc), expected, 1e-10)


def bilinear_pixel_loop(img: Tensor, x: float, y: float) -> Tensor:
    """One bilinear sample of img (d, H, W) at normalised (x, y), zero outside, corner by corner."""
    d, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=img.dtype)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            if 0 <= xi < w and 0 <= yi < h:
                out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * img[:, yi, xi]
    return out


def ms_deform_attn_loop(value, shapes, loc, weights) -> Tensor:
    """The inner sum of Deformable DETR's Eq. 3, one head, level and point at a time."""
    b, _, m, d = value.shape
    q = loc.shape[1]
    out = torch.zeros(b, q, m * d, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for n in range(b):
        for i in range(q):
            for head in range(m):
                acc = torch.zeros(d, dtype=value.dtype)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[n, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for k in range(loc.shape[4]):
                        x, y = loc[n, i, head, lvl, k].tolist()
                        acc += weights[n, i, head, lvl, k] * bilinear_pixel_loop(img, x, y)
                out[n, i, head * d:(head + 1) * d] = acc
    return out


def check_ms_deform_attn_core(fn) -> float:
    g = torch.Generator().manual_seed(31)
    shapes = [(4, 6), (2, 3), (1, 2)]
    b, q, m, d, p = 2, 3, 2, 3, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=torch.float64)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    expected = ms_deform_attn_loop(value, shapes, loc, weights)
    return report("ms_deform_attn_core (vs a loop over heads, levels, points)", fn(value, shapes, loc, weights),
                  expected, 1e-10)


# --- state-space models: oracles the matrix-exponential block trick and explicit loops --------


def zoh_block_exp(A: Tensor, B: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """ZOH without any inverse: exp(Δ [[A, B], [0, 0]]) = [[Ā, B̄], [0, I]] (Van Loan, 1978)."""
    n, p = B.shape
    M = torch.zeros(n + p, n + p, dtype=A.dtype)
    M[:n, :n], M[:n, n:] = A, B
    E = torch.linalg.matrix_exp(delta * M)  # (N+P, N+P)
    return E[:n, :n], E[:n, n:]


def check_discretize_zoh(fn) -> float:
    g = torch.Generator().manual_seed(40)
    n, p = 4, 2
    A = torch.randn(n, n, generator=g, dtype=torch.float64) - 2 * torch.eye(n, dtype=torch.float64)
    B = torch.randn(n, p, generator=g, dtype=torch.float64)
    worst = 0.0
    for delta in (0.01, 0.3, 1.7):
        A_bar, B_bar = fn(A, B, delta)
        A_exp, B_exp = zoh_block_exp(A, B, delta)
        worst = max(worst, report(f"discretize_zoh Ā (Δ={delta})", A_bar, A_exp, 1e-10),
                    report(f"discretize_zoh B̄ (Δ={delta})", B_bar, B_exp, 1e-10))
    deltas = torch.tensor([0.05, 0.5, 2.0], dtype=torch.float64)  # a batch of steps
    A_bar, B_bar = fn(A, B, deltas)
    A_exp, B_exp = map(torch.stack, zip(*(zoh_block_exp(A, B, float(d)) for d in deltas)))
    return max(worst, report("discretize_zoh Ā (a batch of 3 steps)", A_bar, A_exp, 1e-10),
               report("discretize_zoh B̄ (a batch of 3 steps)", B_bar, B_exp, 1e-10))


def check_scan_combine(fn) -> float:
    g = torch.Generator().manual_seed(41)
    a1, b1, a2, b2 = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    step1 = lambda h: a1 * h + b1  # noqa: E731  the two recurrence steps, applied explicitly
    step2 = lambda h: a2 * h + b2  # noqa: E731
    zero, one = torch.zeros(3, 5, dtype=torch.float64), torch.ones(3, 5, dtype=torch.float64)
    b_expected = step2(step1(zero))  # the composed affine map at h = 0 is its offset b ...
    a_expected = step2(step1(one)) - b_expected  # ... and its slope is a
    a, b = fn(a1, b1, a2, b2)
    return max(report("scan_combine a (step 1 then step 2)", a, a_expected, 1e-12),
               report("scan_combine b (step 1 then step 2)", b, b_expected, 1e-12))


def linear_recurrence_loop(a: Tensor, b: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t, h_{-1} = 0, one sequence and one step at a time."""
    flat_a, flat_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    h = torch.zeros_like(flat_b)
    for i in range(flat_b.shape[0]):
        state = 0.0
        for t in range(flat_b.shape[1]):
            state = flat_a[i, t].item() * state + flat_b[i, t].item()
            h[i, t] = state
    return h.reshape(b.shape)


def check_parallel_scan(fn) -> float:
    g = torch.Generator().manual_seed(42)
    worst = 0.0
    for length in (1, 2, 3, 7, 16, 33, 100):  # odd lengths and non-powers of two
        a = torch.rand(2, 3, length, generator=g, dtype=torch.float64) * 1.2 - 0.1  # some a < 0, some > 1
        b = torch.randn(2, 3, length, generator=g, dtype=torch.float64)
        worst = max(worst, report(f"parallel_scan (L={length}, vs a loop)", fn(a, b), linear_recurrence_loop(a, b),
                                  1e-10))
    return worst


# --- anchor positional encoding: oracle the sin/cos formula, element by element -----------------


def anchor_encoding_loop(anchors: Tensor, f: int, temperature: float = 10000.0) -> Tensor:
    """PE(x, y[, w, h]) of each anchor, one coordinate and one channel at a time, blocks y, x, w, h."""
    k = anchors.shape[-1]
    flat = anchors.reshape(-1, k).tolist()
    out = torch.zeros(len(flat), k * f, dtype=torch.float64)
    order = [1, 0, 2, 3][:k]  # y, x, w, h: the official gen_sineembed_for_position order
    for n, anchor in enumerate(flat):
        for block, coord in enumerate(order):
            v = anchor[coord] * 2 * math.pi
            for c in range(f):
                trig = math.sin if c % 2 == 0 else math.cos
                out[n, block * f + c] = trig(v / temperature ** (2 * (c // 2) / f))
    return out.reshape(*anchors.shape[:-1], k * f)


def check_anchor_position_encoding(fn) -> float:
    g = torch.Generator().manual_seed(40)
    boxes = torch.rand(2, 3, 4, generator=g, dtype=torch.float64)  # (B, Q, 4) anchor boxes
    points = torch.rand(5, 2, generator=g, dtype=torch.float64)  # (Q, 2) reference points
    return max(report("anchor_position_encoding (boxes)", fn(boxes, 8), anchor_encoding_loop(boxes, 8), 1e-10),
               report("anchor_position_encoding (points)", fn(points, 6, 20.0),
                      anchor_encoding_loop(points, 6, 20.0), 1e-10))


# --- the denoising attention mask: oracle the seed's a_ij, one pair at a time ------------------


def dn_mask_loop(p: int, m: int, q: int) -> Tensor:
    """The seed's a_ij, literally: 1 if j < P·M and ⌊i/M⌋ ≠ ⌊j/M⌋; 1 if j < P·M and i ≥ P·M; else 0."""
    t = p * m + q
    out = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            if j < p * m and i // m != j // m:
                out[i, j] = True
            elif j < p * m and i >= p * m:
                out[i, j] = True
    return out


def check_dn_attention_mask(fn) -> float:
    worst = 0.0
    for p, m, q in [(5, 3, 4), (1, 2, 3), (3, 1, 2), (2, 4, 0)]:
        got = torch.as_tensor(fn(p, m, q))
        expected = dn_mask_loop(p, m, q)
        if got.dtype != torch.bool:
            raise AssertionError(f"✗ dn_attention_mask({p}, {m}, {q}): dtype {got.dtype}, expected torch.bool")
        worst = max(worst, report(f"dn_attention_mask(P={p}, M={m}, Q={q}) (vs the a_ij formula)",
                                  got.int(), expected.int(), 0))
    return worst


def check_dn_attention_mask_properties(fn) -> float:
    """Properties the mask exists for: no group sees another, matching queries see no denoising
    query, every query sees its own group and all matching queries."""
    p, m, q = 4, 3, 5
    mask = torch.as_tensor(fn(p, m, q))
    group = [i // m if i < p * m else None for i in range(p * m + q)]  # None: a matching query
    problems = []
    for i, gi in enumerate(group):
        for j, gj in enumerate(group):
            blocked = bool(mask[i, j])
            if gj is not None and gi != gj and not blocked:
                who = "matching" if gi is None else f"group {gi}"
                problems.append(f"query {i} ({who}) sees group {gj}'s query {j}")
            if (gj is None or gi == gj) and blocked:
                problems.append(f"query {i} cannot see query {j} ({'matching' if gj is None else 'its own group'})")
    if problems:
        raise AssertionError(f"✗ dn_attention_mask properties: {len(problems)} violations, e.g. {problems[:3]}")
    print(f"✓ dn_attention_mask properties: no leak between groups or into the matching part (P={p}, M={m}, Q={q})")
    return 0.0


# --- query selection: oracle an explicit loop over images and tokens ---------------------------


def top_k_loop(scores: Tensor, boxes: Tensor, memory: Tensor, k: int):
    """Per image: each token's best class score, the k best tokens by sorting a Python list, then
    their rows copied one by one."""
    b, n, _ = scores.shape
    indices = torch.zeros(b, k, dtype=torch.int64)
    got = [torch.zeros(b, k, x.shape[-1], dtype=x.dtype) for x in (scores, boxes, memory)]
    for i in range(b):
        best = [max(scores[i, t].tolist()) for t in range(n)]
        order = sorted(range(n), key=lambda t: best[t], reverse=True)[:k]
        for j, t in enumerate(order):
            indices[i, j] = t
            for out, x in zip(got, (scores, boxes, memory)):
                out[i, j] = x[i, t]
    return indices, *got


def check_select_top_k(fn) -> float:
    g = torch.Generator().manual_seed(50)
    b, n, k_cls, c, k = 3, 11, 4, 5, 6
    scores = torch.randn(b, n, k_cls, generator=g, dtype=torch.float64)  # distinct: no ties
    boxes = torch.randn(b, n, 4, generator=g, dtype=torch.float64)
    memory = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    got = fn(scores, boxes, memory, k)
    expected = top_k_loop(scores, boxes, memory, k)
    names = ("indices", "scores", "boxes", "memory")
    if len(got) != 4:
        raise AssertionError(f"✗ select_top_k: returned {len(got)} tensors, expected 4 ({', '.join(names)})")
    return max(report(f"select_top_k {name} (vs a loop over images and tokens)", x, y, 0)
               for name, x, y in zip(names, got, expected))


# --- the varifocal loss: oracle the formula, element by element --------------------------------


def varifocal_loop(logits: Tensor, quality: Tensor, positive: Tensor, alpha: float, gamma: float) -> float:
    """Σ VFL(p, q): -q (q log p + (1 - q) log(1 - p)) at positives, -α p^γ log(1 - p) elsewhere."""
    total = 0.0
    for z, q, pos in zip(logits.flatten().tolist(), quality.flatten().tolist(), positive.flatten().tolist()):
        p = 1 / (1 + math.exp(-z))
        if pos:
            total += -q * (q * math.log(p) + (1 - q) * math.log(1 - p))
        else:
            total += -alpha * p**gamma * math.log(1 - p)
    return total


def check_varifocal_loss(fn) -> float:
    g = torch.Generator().manual_seed(51)
    logits = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 2
    positive = torch.zeros(2, 5, 3, dtype=torch.bool)
    positive[0, 1, 2] = positive[0, 3, 0] = positive[1, 0, 1] = positive[1, 4, 2] = True
    quality = torch.rand(2, 5, 3, generator=g, dtype=torch.float64) * positive  # IoUs at the positives
    quality[1, 4, 2] = 0.0  # a matched box that misses its object: costs nothing
    worst = 0.0
    for alpha, gamma in ((0.75, 2.0), (0.25, 1.5)):
        got = fn(logits, quality, positive, alpha, gamma)
        expected = torch.tensor(varifocal_loop(logits, quality, positive, alpha, gamma), dtype=torch.float64)
        worst = max(worst, report(f"varifocal_loss (α={alpha}, γ={gamma}, vs the formula per element)",
                                  got, expected, 1e-10))
    z = logits.clone().requires_grad_(True)  # the weights are constants: d/dz at a negative is α p^γ · p
    fn(z, quality, positive, 0.75, 2.0).backward()
    p = logits.sigmoid()
    expected_grad = torch.where(positive, quality * (p - quality), 0.75 * p**2 * p)
    return max(worst, report("varifocal_loss gradient (weights detached)", z.grad, expected_grad, 1e-10))
