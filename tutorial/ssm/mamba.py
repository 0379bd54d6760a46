"""The Mamba block: a gated MLP whose inner part is a causal conv and a selective SSM.

Mamba (Gu & Dao, 2023), Sec. 3.4 and Fig. 3. For a sequence x (B, L, d_model):

    1) x, z = in_proj(x)                    two branches of width D = expand · d_model
    2) x = SiLU(causal depthwise conv1d(x)) kernel d_conv, sees only the current and past tokens
    3) Δ, B, C = x_proj(x)                  input-dependent: Δ of rank R, B and C of size N
       Δ = dt_proj(Δ)                       back to D channels (its bias goes in as delta_bias)
    4) y = selective_scan(x, Δ, A, B, C, D, z, softplus)   (`tutorial/ssm/selective_scan.py`)
    5) out = out_proj(y)                    y is already gated by SiLU(z) inside the scan

Parameters and initialisation follow the official `Mamba` module
(mamba_ssm/modules/mamba_simple.py), including the parameter names, so its state dicts fit:
- dt_proj: weight uniform in ±dt_scale/sqrt(R); bias = softplus^{-1}(Δ_0) with Δ_0 log-uniform
  in [dt_min, dt_max] (floored at dt_init_floor), so that Δ starts in that range;
- A_log = log(1, 2, ..., N) for every channel (S4D-real: A = -exp(A_log) = -(1, ..., N)), the
  diagonal of HiPPO-LegS (`tutorial/ssm/ssm.py`); D = 1; both kept in float32.
The official language model's wrapper (norm + residual `Block`, re-initialised out_proj) is
not part of the block.

Glossary (official names in brackets): B batch, L sequence length, d_model the block's width
[d_model; C in the detector files], D = expand · d_model the inner width [d_inner], N state
size [d_state], R rank of Δ's projection [dt_rank], K conv kernel size [d_conv].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from .selective_scan import selective_scan


def delta_rank(d_model: int, dt_rank: int | str) -> int:
    """R, the rank of Δ's low-rank projection (Mamba's `dt_rank`): ⌈C / 16⌉ for "auto", else as given."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


@dataclass
class MambaConfig:
    d_model: int = 768
    d_state: int = 16  # N
    d_conv: int = 4  # K, kernel of the causal depthwise conv
    expand: int = 2  # D = expand · d_model
    dt_rank: int | str = "auto"  # R; "auto" = ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"  # dt_proj.weight: "random" uniform or "constant"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False  # in_proj and out_proj
    scan: str = "parallel"  # "sequential" | "parallel" | "chunked", see selective_scan
    chunk: int = 2048  # chunk length for scan="chunked"

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def rank(self) -> int:
        return delta_rank(self.d_model, self.dt_rank)


def dt_bias_init(d: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """Bias of dt_proj such that softplus(bias) = Δ_0, Δ_0 log-uniform in [dt_min, dt_max] -> (D,).

    softplus^{-1}(y) = log(exp(y) - 1) = y + log(1 - exp(-y)), written with expm1 for accuracy.
    """
    dt = torch.exp(torch.rand(d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # (D,)


def at_least_float32(t: Tensor) -> Tensor:
    """float16/bfloat16 -> float32, float64 stays: the official `.float()` on A_log, D and the Δ
    bias, without rounding a float64 model (used in the tests) down to float32."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def s4d_real_A_log(d: int, n: int) -> Tensor:
    """log of S4D-real's -A = (1, 2, ..., N) for each of D channels -> (D, N) float32."""
    return torch.log(repeat(torch.arange(1, n + 1, dtype=torch.float32), "n -> d n", d=d))  # (D, N)


class MambaBlock(nn.Module):
    """The Mamba block (official `Mamba`): forward(x (B, L, d_model)) -> (B, L, d_model).

    Causal: output t depends on inputs 0..t only. With `return_intermediates=True` also returns
    {"delta" (B, D, L) after softplus, "B" (B, N, L), "C" (B, N, L)}: the input-dependent
    step and projections that make the SSM selective.
    """

    def __init__(self, cfg: MambaConfig | None = None):
        super().__init__()
        cfg = cfg or MambaConfig()
        self.cfg = cfg
        d, n, r = cfg.d_inner, cfg.d_state, cfg.rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * d, bias=cfg.bias)
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv, groups=d, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        self.A_log = nn.Parameter(s4d_real_A_log(d, n))  # (D, N)
        self.D = nn.Parameter(torch.ones(d))  # (D,)
        self.out_proj = nn.Linear(d, cfg.d_model, bias=cfg.bias)

        std = r ** -0.5 * cfg.dt_scale  # keep the variance of Δ at initialisation
        if cfg.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif cfg.dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"MambaConfig.dt_init: expected 'random' or 'constant', got {cfg.dt_init!r}")
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt_bias_init(d, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))

    def forward(self, x: Tensor, return_intermediates: bool = False):
        cfg, length = self.cfg, x.shape[1]
        n, r = cfg.d_state, cfg.rank
        # 1) two branches
        xz = rearrange(self.in_proj(x), "b l e -> b e l")  # (B, 2D, L)
        x, z = xz.chunk(2, dim=1)  # (B, D, L) each
        # 2) causal depthwise conv: pad K-1 on both sides, keep the first L outputs
        x = F.silu(self.conv1d(x)[..., :length])  # (B, D, L)
        # 3) input-dependent Δ, B, C
        x_dbl = self.x_proj(rearrange(x, "b d l -> b l d"))  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [r, n, n], dim=-1)  # (B, L, R), (B, L, N), (B, L, N)
        delta = rearrange(dt @ self.dt_proj.weight.T, "b l d -> b d l")  # (B, D, L), bias added in the scan
        B = rearrange(B, "b l n -> b n l")  # (B, N, L)
        C = rearrange(C, "b l n -> b n l")  # (B, N, L)
        # 4) the selective scan, gated by SiLU(z)
        A = -torch.exp(at_least_float32(self.A_log))  # (D, N)
        y = selective_scan(x, delta, A, B, C, at_least_float32(self.D), z=z,
                           delta_bias=at_least_float32(self.dt_proj.bias),
                           delta_softplus=True, scan=cfg.scan, chunk=cfg.chunk)  # (B, D, L)
        # 5) back to d_model
        out = self.out_proj(rearrange(y, "b d l -> b l d"))  # (B, L, d_model)
        if not return_intermediates:
            return out
        steps = F.softplus(delta + self.dt_proj.bias[:, None])  # (B, D, L)
        return out, {"delta": steps, "B": B, "C": C}


# --- presets ----------------------------------------------------------------------------------


def mamba_block_130m() -> MambaConfig:
    """One block of Mamba-130M (24 such blocks, d_model 768): D = 1536, N = 16, R = 48, K = 4.
    3,770,880 parameters, as the official `Mamba(768)` (see tests/test_mamba.py)."""
    return MambaConfig(d_model=768)


def mamba_block_tiny() -> MambaConfig:
    """The same block at CPU scale: d_model 32, D = 64, N = 8, R = 2."""
    return MambaConfig(d_model=32, d_state=8)
