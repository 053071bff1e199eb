"""The model dimensions the memory planner needs, read from a model built on the meta device.

Building on `torch.device("meta")` allocates nothing (a 3B model costs no memory) and keeps the planner
in step with the model code: widths, heads, Mamba2 inner sizes and the largest parameter tensor come
from the modules themselves, not from a second copy of the shape rules.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class ModelShapes:
    arch: str                 # "mvar" or "var"
    depth: int
    width: int                # C
    num_heads: int            # attention heads H
    hidden: int               # FFN hidden F
    n_chunks: int             # AdaLN rows per block (9 M-VAR, 6 VAR)
    has_mamba: bool           # a Mamba2 branch per block (M-VAR)
    attn_l2_norm: bool
    patch_nums: Tuple[int, ...]
    tokens: int               # L = sum(pn^2)
    first_l: int              # class-token positions (pn0^2)
    z_channels: int           # teacher-input channels
    vocab_size: int           # V
    num_params: int
    largest_module_params: int   # the biggest single module's own parameters (what ZeRO-3 gathers at once)
    persistent_params: int       # params below the ZeRO-3 persistence threshold (kept whole on every rank)
    # Mamba2 (M-VAR only; 0 for VAR)
    d_inner: int = 0
    d_state: int = 0
    d_conv: int = 0
    mamba_heads: int = 0
    mamba_headdim: int = 0
    conv_dim: int = 0
    in_proj_out: int = 0
    ssd_chunk: int = 0
    tokenizer_params: int = 0    # the VQVAE the trainer keeps on every GPU (fp32, frozen, not sharded)

    def to_dict(self) -> dict:
        return asdict(self)


def build_meta_model(run_cfg):
    """The run's MVAR on the meta device (no memory, no init)."""
    import torch

    from mvar_dist.model import MVAR

    tok = run_cfg.tokenizer
    with torch.device("meta"):
        return MVAR(run_cfg.model, tuple(tok.patch_nums), tok.vocab_size, tok.z_channels)


def tokenizer_param_count(run_cfg) -> int:
    """Parameters of the run's VQVAE (built on the meta device); the trainer moves it to every GPU to
    turn token ids into teacher inputs."""
    import torch

    from mvar_dist.vqvae import MultiScaleVQVAE

    tok = run_cfg.tokenizer
    with torch.device("meta"):
        vae = MultiScaleVQVAE(**tok.hparams())
    return sum(int(p.numel()) for p in vae.parameters())


def shapes_of(model, persistence_threshold: Optional[int] = None, tokenizer_params: int = 0) -> ModelShapes:
    """Dimensions of a built model. `persistence_threshold` (elements) defaults to the trainer's
    ZeRO-3 rule, 10 x width (mvar_dist/train/engine.py)."""
    blk = model.blocks[0]
    C = int(model.width)
    threshold = 10 * C if persistence_threshold is None else int(persistence_threshold)
    numels = [int(getattr(p, "ds_numel", p.numel())) for p in model.parameters()]
    largest = max(sum(int(p.numel()) for p in m.parameters(recurse=False)) for m in model.modules())
    mamba = {}
    m = getattr(blk, "mamba", None)
    if m is not None:
        mamba = dict(d_inner=int(m.d_inner), d_state=int(m.d_state), d_conv=int(m.d_conv),
                     mamba_heads=int(m.nheads), mamba_headdim=int(m.headdim), conv_dim=int(m.conv_dim),
                     in_proj_out=int(m.in_proj.out_features), ssd_chunk=int(getattr(m, "chunk_size", 64)))
    return ModelShapes(
        arch=str(model.arch), depth=int(model.depth), width=C, num_heads=int(blk.attn.num_heads),
        hidden=int(blk.ffn.fc1.out_features), n_chunks=int(blk.ada_lin[-1].out_features) // C,
        has_mamba=m is not None,
        attn_l2_norm=bool(getattr(blk.attn, "l2_norm", True)), patch_nums=tuple(model.patch_nums),
        tokens=int(model.L), first_l=int(model.first_l), z_channels=int(model.z_channels),
        vocab_size=int(model.vocab_size), num_params=sum(numels), largest_module_params=int(largest),
        persistent_params=sum(n for n in numels if n < threshold), tokenizer_params=int(tokenizer_params),
        **mamba)
