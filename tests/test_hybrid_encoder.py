"""RT-DETR's hybrid encoder: the 2-D sin-cos encoding (the official layout on square maps, correct
rows and columns on others), AIFI on S5 only and blind to padding, the swappable token-mixer
slot, the fusion block's RepVGG branches, and the output shapes on odd sizes."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tutorial.models.hybrid_encoder import AIFI, HybridEncoder, HybridEncoderConfig, RepVggBlock, sincos_position_encoding_2d

torch.set_num_threads(1)


def official_layout_loop(w: int, h: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The official build_2d_sincos_position_embedding, row by row: its grid is meshgrid(arange(w),
    arange(h), indexing='ij') flattened, so row i holds (w-index ⌊i/h⌋, h-index i mod h), and the
    channels are [sin(w·ω), cos(w·ω), sin(h·ω), cos(h·ω)]."""
    q = dim // 4
    out = torch.zeros(w * h, dim, dtype=torch.float64)
    for i in range(w * h):
        gw, gh = i // h, i % h
        for k in range(q):
            omega = 1.0 / temperature ** (k / q)
            out[i, k], out[i, q + k] = math.sin(gw * omega), math.cos(gw * omega)
            out[i, 2 * q + k], out[i, 3 * q + k] = math.sin(gh * omega), math.cos(gh * omega)
    return out


def test_sincos_encoding_equals_the_official_one_on_square_maps():
    pe = sincos_position_encoding_2d(5, 5, 16)
    assert torch.allclose(pe.double(), official_layout_loop(5, 5, 16), atol=1e-6)


def test_sincos_encoding_rows_and_columns_on_non_square_maps():
    """Token y·w + x: the first half depends on the row y only, the second on the column x only."""
    h, w, dim = 3, 5, 8
    pe = sincos_position_encoding_2d(h, w, dim).view(h, w, dim)
    assert torch.allclose(pe[:, :1, : dim // 2].expand(h, w, -1), pe[..., : dim // 2])  # same along a row
    assert torch.allclose(pe[:1, :, dim // 2:].expand(h, w, -1), pe[..., dim // 2:])  # same down a column
    assert torch.allclose(pe[2, 0, 0], torch.tensor(math.sin(2.0)))  # sin(y · ω_0), ω_0 = 1
    assert torch.allclose(pe[0, 4, dim // 2], torch.tensor(math.sin(4.0)))  # sin(x · ω_0)


def encoder(**overrides) -> HybridEncoder:
    torch.manual_seed(0)
    base = {"hidden_dim": 32, "num_heads": 4, "dim_feedforward": 64, "expansion": 0.5}
    cfg = HybridEncoderConfig(**{**base, **overrides})
    return HybridEncoder(cfg, [16, 24, 40]).eval()


def features(sizes=((19, 13), (10, 7), (5, 4))):
    return [torch.randn(2, c, h, w) for c, (h, w) in zip((16, 24, 40), sizes)]


def test_shapes_on_odd_sizes_and_aifi_on_s5_only():
    enc = encoder()
    feats = features()
    with torch.no_grad():
        outs, info = enc(feats, need_weights=True)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 19, 13), (2, 32, 10, 7), (2, 32, 5, 4)]
    assert torch.equal(info["mixed"][0], info["projected"][0]) and torch.equal(info["mixed"][1], info["projected"][1])
    assert not torch.allclose(info["mixed"][2], info["projected"][2])
    assert info["aifi"][0]["attention"][0].shape == (2, 4, 20, 20)  # (B, M, N_5, N_5)


def test_aifi_ignores_padded_tokens():
    torch.manual_seed(0)
    aifi = AIFI(HybridEncoderConfig(hidden_dim=32, num_heads=4, dim_feedforward=64)).eval()
    x = torch.randn(1, 32, 4, 6)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 4:] = True
    y = x.clone()
    y[..., 4:] = torch.randn(1, 32, 4, 2)  # different content on the padding
    with torch.no_grad():
        a, _ = aifi(x, mask)
        b, _ = aifi(y, mask)
    assert torch.allclose(a[..., :4], b[..., :4], atol=1e-5)


class ScaleMixer(nn.Module):
    """A stand-in for another token mixer (e.g. a Mamba SS2D block): same interface as AIFI."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, mask=None, need_weights=False):
        self.calls.append(tuple(x.shape))
        return 2 * x, None


def test_token_mixer_slot_replaces_aifi():
    mixer = ScaleMixer()
    enc = encoder()
    swapped = HybridEncoder(enc.cfg, [16, 24, 40], token_mixer=mixer).eval()
    plain = encoder(num_encoder_layers=0)
    swapped.load_state_dict(plain.state_dict())  # same convolutions, no AIFI weights
    feats = features()
    with torch.no_grad():
        outs, info = swapped(feats)
        proj = [p(f) for p, f in zip(plain.input_proj, feats)]
    assert mixer.calls == [(2, 32, 5, 4)]  # called once, on S5, with (B, C, H, W)
    assert torch.allclose(info["mixed"][2], 2 * proj[2], atol=1e-6)
    assert not any(isinstance(m, AIFI) for m in swapped.modules())
    assert len(plain.encoder) == 0


def test_repvgg_branches_fold_into_one_3x3_convolution():
    """BN(conv3x3(x)) + BN(conv1x1(x)) equals one 3x3 convolution whose kernel is the first
    branch's scaled kernel plus the second's at the centre (RepVGG's re-parameterisation)."""
    torch.manual_seed(0)
    block = RepVggBlock(6, 5, act="relu")
    for conv in (block.conv1, block.conv2):  # non-trivial batch-norm statistics
        conv.norm.running_mean.uniform_(-1, 1)
        conv.norm.running_var.uniform_(0.5, 2)
        conv.norm.weight.data.uniform_(0.5, 1.5)
        conv.norm.bias.data.uniform_(-1, 1)
    block.eval()
    kernel, bias = 0, 0
    for conv in (block.conv1, block.conv2):
        std = (conv.norm.running_var + conv.norm.eps).sqrt()
        k = conv.conv.weight * (conv.norm.weight / std)[:, None, None, None]
        kernel = kernel + (F.pad(k, [1, 1, 1, 1]) if k.shape[-1] == 1 else k)
        bias = bias + conv.norm.bias - conv.norm.running_mean * conv.norm.weight / std
    x = torch.randn(2, 6, 7, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), F.relu(F.conv2d(x, kernel, bias, padding=1)), atol=1e-5)
