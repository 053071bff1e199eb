"""The M-VAR / VAR model family: one class; the config's `ArchSpec` picks the block type and the mask.

Sequence: token 0 = class_emb(label) + pos_start, tokens 1..L-1 = word_embed(teacher input); all get
lvl_embed(scale) + pos_1LC. Logits at scale si's positions predict scale si's ids. Parameter names
are the official ones, so `state_dict()` keys equal the official keys minus the non-learned buffers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mvar_dist.config import ModelConfig
from mvar_dist.ops.attention import scale_bounds, scale_ids

from .blocks import AdaLNBeforeHead, AdaLNBlock

# Name fragments the official recipe exempts from weight decay (besides 1-D tensors and biases).
_NO_WD_FRAGMENTS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC",
                    "pos_start", "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias",
                    "scale_mul")


class MVAR(nn.Module):
    def __init__(self, model_cfg: ModelConfig, patch_nums: Sequence[int], vocab_size: int, z_channels: int):
        super().__init__()
        cfg = dataclasses.replace(model_cfg).resolve()
        cfg.validate()
        self.cfg = cfg
        self.arch, self.spec = cfg.arch, cfg.spec
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.num_classes, self.vocab_size, self.z_channels = cfg.num_classes, int(vocab_size), int(z_channels)
        self.depth, self.width = cfg.depth, cfg.width
        self.L = scale_bounds(self.patch_nums)[-1]
        self.first_l = self.patch_nums[0] ** 2  # scale 0 is made of class-embedding tokens (1 officially)
        self.act_checkpoint = cfg.act_checkpoint
        C = self.width

        self.word_embed = nn.Linear(self.z_channels, C)
        self.class_emb = nn.Embedding(self.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        self.register_buffer("lvl_1L", scale_ids(self.patch_nums).view(1, self.L).clone(), persistent=False)
        rate = max(cfg.drop_path_rate, 0.0)
        dpr = [rate * i / (cfg.depth - 1) if cfg.depth > 1 else 0.0 for i in range(cfg.depth)]  # linspace(0, rate)
        self.blocks = nn.ModuleList(
            AdaLNBlock(self.spec, C, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, cfg.attn_l2_norm,
                       self.patch_nums, dpr[i], cfg.d_state, cfg.d_conv, cfg.expand, cfg.mamba_headdim)
            for i in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, self.vocab_size)
        self._embedding_init()

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, run_cfg, init: bool = True) -> "MVAR":
        """Build from a RunConfig (model + tokenizer sections); with `init`, the official init with
        run_cfg.optim.aln/alng under a private RNG seeded by run_cfg.seed (same weights on every rank)."""
        tok = run_cfg.tokenizer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run_cfg.seed)
            model = cls(run_cfg.model, tok.patch_nums, tok.vocab_size, tok.z_channels)
            if init:
                model.init_weights(run_cfg.optim.aln, run_cfg.optim.alng, run_cfg.model.init_gamma3)
        return model

    @classmethod
    def from_official(cls, sd_or_path, **overrides) -> "MVAR":
        """Load an official M-VAR `d{depth}.pth` / VAR `var_d{depth}.pth` state dict (or a path to one,
        .pth or .safetensors); hyper-parameters are inferred from the keys, `overrides` set the rest."""
        from .official import load_official

        return load_official(cls, sd_or_path, **overrides)

    def official_state_dict(self) -> Dict[str, torch.Tensor]:
        """The state dict under official names, with the official non-learned buffers regenerated."""
        from .official import export_official

        return export_official(self)

    @torch.no_grad()
    def _embedding_init(self) -> None:
        std = math.sqrt(1 / self.width / 3)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            with _gathered([t]):
                nn.init.trunc_normal_(t, mean=0, std=std)

    @torch.no_grad()
    def init_weights(self, aln: float = 0.5, alng: float = 1e-3, init_gamma3: str = "official",
                     init_head: float = 0.02, conv_std: float = 0.02) -> None:
        """The official init (docs/model.md, "Initialisation"). init_gamma3="official" reproduces the
        9-chunk quirk (the FFN gate gamma3 gets `aln`); "fixed" scales all gamma rows by `alng`."""
        if init_gamma3 not in ("official", "fixed"):
            raise ValueError(f"init_gamma3 must be 'official' or 'fixed', got {init_gamma3!r}")
        std = math.sqrt(1 / self.width / 3)
        for m in self.modules():
            if not isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d)):
                continue
            with _gathered(m.parameters(recurse=False)):
                nn.init.trunc_normal_(m.weight, std=conv_std if isinstance(m, nn.Conv1d) else std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        with _gathered(self.head.parameters()):
            self.head.weight.mul_(init_head)
        with _gathered(self.head_nm.ada_lin[-1].parameters()):
            self.head_nm.ada_lin[-1].weight.mul_(aln)
        C = self.width
        n_gamma = self.spec.branches if init_gamma3 == "fixed" else 2  # official: VAR's 2 gamma rows
        for blk in self.blocks:
            with _gathered([blk.attn.proj.weight, blk.ffn.fc2.weight, blk.ada_lin[-1].weight]):
                blk.attn.proj.weight.div_(math.sqrt(2 * self.depth))
                blk.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
                w = blk.ada_lin[-1].weight
                w[n_gamma * C:].mul_(aln)
                w[: n_gamma * C].mul_(alng)

    # ------------------------------------------------------------------------------ forward
    def embed(self, cond_BD: torch.Tensor, teacher_input_BLC: torch.Tensor) -> torch.Tensor:
        """Input sequence (B, first_l + teacher length, C), in the parameters' dtype without autocast."""
        B, L = cond_BD.shape[0], teacher_input_BLC.shape[1] + self.first_l
        with torch.autocast(device_type=cond_BD.device.type, enabled=False):
            sos_BlC = cond_BD.unsqueeze(1) + self.pos_start.expand(B, -1, -1)
            x_BLC = torch.cat([sos_BlC, self.word_embed(teacher_input_BLC.to(self.pos_start.dtype))], dim=1)
            return x_BLC + (self.lvl_embed(self.lvl_1L[:, :L]) + self.pos_1LC[:, :L])

    def logits(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x_BLC, cond_BD)).float()

    def forward(self, labels_B: torch.Tensor, teacher_input_BLC: torch.Tensor) -> torch.Tensor:
        """labels (B,) int64, teacher input (B, L - first_l, Cvae) -> logits (B, L, V) float32 (first_l =
        patch_nums[0]² = 1 officially). L may also be any whole-scale prefix of the sequence (the
        recomputing sampler uses that)."""
        if teacher_input_BLC.dim() != 3 or teacher_input_BLC.shape[-1] != self.z_channels:
            raise ValueError(f"teacher_input must be (B, L-{self.first_l}, {self.z_channels}), "
                             f"got {tuple(teacher_input_BLC.shape)}")
        if teacher_input_BLC.shape[1] + self.first_l not in scale_bounds(self.patch_nums)[1:]:
            raise ValueError(f"teacher_input length {teacher_input_BLC.shape[1]} is not L-{self.first_l} for a "
                             f"whole-scale prefix of patch_nums {self.patch_nums} (full: {self.L - self.first_l})")
        if labels_B.shape[0] != teacher_input_BLC.shape[0]:
            raise ValueError(f"batch mismatch: {labels_B.shape[0]} labels, {teacher_input_BLC.shape[0]} inputs")
        with torch.autocast(device_type=labels_B.device.type, enabled=False):
            cond_BD = self.class_emb(labels_B)
        x_BLC = self.embed(cond_BD, teacher_input_BLC)
        use_ckpt = self.act_checkpoint and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            x_BLC = checkpoint(blk, x_BLC, cond_BD, use_reentrant=False) if use_ckpt else blk(x_BLC, cond_BD)
        return self.logits(x_BLC, cond_BD)

    def compile_blocks(self, backend: str = "inductor") -> None:
        """Regional compile: each block's `forward` goes through torch.compile; the blocks share one
        code object, so the first compile serves them all. Only `forward` is compiled, not the
        module call, so module hooks (ZeRO-3's parameter gathering) run eagerly around the compiled
        region; `zero3_leaf_blocks` makes ZeRO-3 gather a block's parameters in the block's own hook."""
        for blk in self.blocks:
            blk.forward = torch.compile(blk.forward, backend=backend, dynamic=False)

    def zero3_leaf_blocks(self) -> None:
        """Tell DeepSpeed ZeRO-3 to treat each block as one leaf: its parameters are gathered once before
        the block (no hooks inside the compiled region). Must run before `deepspeed.initialize`."""
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(self, [type(self.blocks[0])])

    # ------------------------------------------------------------------------------ sampling
    def sample(self, vae, labels_B, cfg_scale: float = 1.5, top_k: int = 900, top_p: float = 0.96,
               seed: Optional[int] = 0, more_smooth: bool = False, incremental: bool = True, seeds_B=None):
        """-> (ids: list of (B, pn²) int64, img (B, 3, H, W) in [0, 1]). seeds_B: optional per-image seeds
        (one generator per row, so an image does not depend on its batch). See `sampler.sample`."""
        from .sampler import sample

        return sample(self, vae, labels_B, cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, seed=seed,
                      more_smooth=more_smooth, incremental=incremental, seeds_B=seeds_B)

    # ------------------------------------------------------------------------------ training helpers
    def no_weight_decay_names(self) -> List[str]:
        """Official rule: 1-D tensors, biases and the listed name fragments get no weight decay."""
        return [n for n, p in self.named_parameters()
                if _ndim(p) <= 1 or n.endswith("bias") or any(f in n for f in _NO_WD_FRAGMENTS)]

    def param_groups(self, weight_decay: float) -> List[dict]:
        """Two AdamW groups: decayed ("wd_mult" 1) and not decayed ("wd_mult" 0); schedulers set
        group["weight_decay"] = wd * group["wd_mult"]."""
        nd = set(self.no_weight_decay_names())
        decay = [p for n, p in self.named_parameters() if p.requires_grad and n not in nd]
        no_decay = [p for n, p in self.named_parameters() if p.requires_grad and n in nd]
        return [{"params": decay, "weight_decay": weight_decay, "wd_mult": 1.0},
                {"params": no_decay, "weight_decay": 0.0, "wd_mult": 0.0}]

    def num_params(self) -> int:
        return sum(_numel(p) for p in self.parameters())

    def flops_per_image(self, train: bool = True, guided: bool = True) -> int:
        """Matmul-level FLOPs per image: training step (fwd + bwd = 3x fwd) or sampling (`guided`: CFG
        runs both halves; the decoder excluded). See `flops.py`."""
        from .flops import sample_flops, train_flops

        sizes = (self.cfg, self.patch_nums, self.vocab_size, self.z_channels)
        return train_flops(*sizes) if train else sample_flops(*sizes, guided=guided)


def _gathered(params):
    """Under ZeRO-3 (zero.Init), gather partitioned parameters for an in-place init; rank 0's values
    win. A no-op for ordinary tensors and for parameters a caller already gathered (then the caller
    owns the collective, and may run the init on rank 0 alone)."""
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if all(getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE for p in params):
        return contextlib.nullcontext()

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _numel(p: torch.Tensor) -> int:
    # ZeRO-3 partitions parameters to shape (0,); ds_numel keeps the real size.
    return int(getattr(p, "ds_numel", p.numel()))


def _ndim(p: torch.Tensor) -> int:
    return len(getattr(p, "ds_shape", p.shape))
