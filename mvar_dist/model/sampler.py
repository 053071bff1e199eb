"""Class-conditional sampling with classifier-free guidance, one scale at a time.

Incremental (default): each scale's tokens run through the blocks once. M-VAR attends within the
current scale and carries each block's Mamba2 state (the last d_conv-1 pre-conv rows + the fp32 SSM
state) from scale to scale; VAR keeps a per-block K/V cache. The AdaLN modulations are computed once.
Recompute (`incremental=False`): at every scale the whole prefix goes through `model.forward`, as the
official M-VAR code does; it is the reference the incremental path must reproduce id for id.

Both share one per-scale step (`_step`): CFG ramp t = cfg_scale * si / (S-1), logits = (1+t) cond - t uncond,
then top-k, top-p and one inverse-CDF draw per token (official filter order, so greedy settings give the argmax),
the scale's codes and the next scale's input.

Noise (mvar_dist/model/noise.py): counter-based, one key per row, so a scale's uniforms for the whole batch are
one hash over a (B, l) counter grid - no per-row generators or loops. `seeds_B` gives row b the key of its own
seed, so an image depends on its label and seed only, not on the batch size or its position in the batch;
`seed` gives row b the key of (seed, b), so a one-row call with `seed=s` equals `seeds_B=[s]`. Every scale's
shapes are static (B, pn², V) and the draw has no host sync or data-dependent shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from mvar_dist.ops.attention import scale_bounds

from .noise import STREAM_GUMBEL, STREAM_IDS, Noise

def top_k_top_p_filter_(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """In place: mask logits below the k-th largest, then the low tail whose softmax mass is <= 1-top_p
    (the largest logit always stays). top_k <= 0 / top_p <= 0 turn a filter off."""
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:
        kth = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, float("-inf"))
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits_BlV.masked_fill_(remove.scatter(-1, sorted_idx, remove), float("-inf"))
    return logits_BlV


def sample_ids(logits_BlV: torch.Tensor, top_k: int, top_p: float, noise: Noise, si: int) -> torch.Tensor:
    """(B, l) int64 ids: filter, then one inverse-CDF draw per token from the scale's uniforms (batched: a
    cumsum and a searchsorted over the fp32 probabilities, no per-row work)."""
    probs_BlV = top_k_top_p_filter_(logits_BlV, top_k, top_p).float().softmax(dim=-1)
    cdf_BlV = probs_BlV.cumsum(dim=-1)
    u_Bl1 = noise.uniform(si, STREAM_IDS, logits_BlV.shape[1]).unsqueeze(-1)
    idx_Bl = torch.searchsorted(cdf_BlV, u_Bl1 * cdf_BlV[..., -1:], right=True).squeeze(-1)
    # u * total can round up to the total: then take the last token that has mass (never a filtered one)
    V = probs_BlV.shape[-1]
    last_Bl = (V - 1) - (probs_BlV.flip(-1) > 0).to(torch.int8).argmax(dim=-1)
    return torch.minimum(idx_Bl, last_Bl)


def _gumbel_softmax(logits_BlV: torch.Tensor, tau: float, noise: Noise, si: int) -> torch.Tensor:
    B, l, V = logits_BlV.shape
    gumbels_BlV = -(-noise.uniform_vocab(si, STREAM_GUMBEL, l, V).log()).log()
    return ((logits_BlV + gumbels_BlV.to(logits_BlV.dtype)) / tau).softmax(dim=-1)


def _noise(seed: Optional[int], seeds_B, B: int, device) -> Noise:
    """seeds_B (B per-row seeds) wins over seed; neither = a seed drawn from torch's global generator."""
    if seeds_B is None:
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        return Noise.call_wide(int(seed), B, device)
    seeds = torch.as_tensor(seeds_B).reshape(-1)
    if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
        raise ValueError(f"seeds_B must hold integers, got dtype {seeds.dtype}")
    if seeds.numel() != B:
        raise ValueError(f"seeds_B has {seeds.numel()} seeds for {B} labels: give one seed per image")
    return Noise.per_image(seeds, device)


def _labels(labels_B: Union[torch.Tensor, Sequence[int]], num_classes: int, device) -> torch.Tensor:
    labels = torch.as_tensor(labels_B, dtype=torch.long).reshape(-1).to(device)
    if labels.numel() == 0:
        raise ValueError("labels_B is empty")
    if int(labels.max()) > num_classes:
        raise ValueError(f"label {int(labels.max())} out of range: the model has {num_classes} classes "
                         f"(index {num_classes} or any negative label = unconditional)")
    return torch.where(labels < 0, torch.full_like(labels, num_classes), labels)


def _check_vae(model, vae) -> None:
    if tuple(vae.patch_nums) != tuple(model.patch_nums):
        raise ValueError(f"tokenizer patch_nums {tuple(vae.patch_nums)} != model patch_nums {model.patch_nums}")
    V, Cvae = vae.codebook.shape
    if (V, Cvae) != (model.vocab_size, model.z_channels):
        raise ValueError(f"tokenizer codebook (V={V}, Cvae={Cvae}) does not fit the model "
                         f"(vocab {model.vocab_size}, z_channels {model.z_channels})")


@dataclass(frozen=True)
class _Draw:
    """How every scale's ids are drawn from the two CFG halves' logits."""
    cfg_scale: float
    top_k: int
    top_p: float
    more_smooth: bool
    noise: Noise
    per_image: bool  # seeds_B given: keep the soft codes' GEMM row by row (batch-invariant kernels)


def _codes(logits_BlV: torch.Tensor, idx_Bl: torch.Tensor, si: int, ratio: float, codebook_VC: torch.Tensor,
           draw: _Draw) -> torch.Tensor:
    """(B, l, Cvae) codes of one scale: the drawn ids' codebook rows, or (more_smooth, pictures only: the
    official visualisation mode) soft Gumbel mixtures of the rows."""
    if not draw.more_smooth:
        return codebook_VC[idx_Bl]
    tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
    soft_BlV = _gumbel_softmax(logits_BlV.mul(1 + ratio), tau, draw.noise, si)
    cb_VC = codebook_VC.to(logits_BlV.dtype)
    if draw.per_image:  # row by row: a (B*l)-row GEMM picks B-dependent kernels
        return torch.stack([soft_lV @ cb_VC for soft_lV in soft_BlV])
    return soft_BlV @ cb_VC


def _step(vae, si: int, logits_2BlV: torch.Tensor, f_hat_BChw: torch.Tensor, draw: _Draw):
    """One scale: guided logits -> ids -> codes -> f_hat. Returns (idx_Bl, f_hat_BChw, next_BlC), where
    next_BlC is the next scale's teacher input (B, pn², Cvae), None after the last scale."""
    S, pn = len(vae.patch_nums), vae.patch_nums[si]
    ratio = si / (S - 1) if S > 1 else 1.0
    t, B = draw.cfg_scale * ratio, logits_2BlV.shape[0] // 2
    logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
    idx_Bl = sample_ids(logits_BlV, draw.top_k, draw.top_p, draw.noise, si)  # filters logits_BlV in place
    h_BlC = _codes(logits_BlV, idx_Bl, si, ratio, vae.codebook, draw)
    f_hat_BChw, next_BChw = vae.next_ar_input(si, f_hat_BChw, h_BlC.transpose(1, 2).reshape(B, -1, pn, pn))
    next_BlC = next_BChw.flatten(2).transpose(1, 2) if si < S - 1 else None
    return idx_Bl, f_hat_BChw, next_BlC


def _sample_incremental(model, vae, labels_2B: torch.Tensor, f_hat_BChw: torch.Tensor, draw: _Draw):
    """Each scale's tokens through the blocks once, with the per-block caches and AdaLN modulations."""
    cond_2BD = model.class_emb(labels_2B)
    lvl_pos_1LC = model.lvl_embed(model.lvl_1L) + model.pos_1LC
    bounds = scale_bounds(model.patch_nums)
    x_2BlC = cond_2BD.unsqueeze(1) + model.pos_start.expand(len(labels_2B), -1, -1) + lvl_pos_1LC[:, :bounds[1]]
    mods = [blk.modulation(cond_2BD) for blk in model.blocks]
    caches: List[dict] = [{} for _ in model.blocks]
    ids: List[torch.Tensor] = []
    for si in range(len(model.patch_nums)):
        h_2BlC = x_2BlC
        for blk, mods_blk, cache in zip(model.blocks, mods, caches):
            h_2BlC = blk.forward_scale(h_2BlC, mods_blk, cache)
        idx_Bl, f_hat_BChw, next_BlC = _step(vae, si, model.logits(h_2BlC, cond_2BD), f_hat_BChw, draw)
        ids.append(idx_Bl)
        if next_BlC is not None:
            x_BlC = model.word_embed(next_BlC.to(model.word_embed.weight.dtype))
            x_2BlC = (x_BlC + lvl_pos_1LC[:, bounds[si + 1]:bounds[si + 2]]).repeat(2, 1, 1)
    return ids, f_hat_BChw


def _sample_recompute(model, vae, labels_2B: torch.Tensor, f_hat_BChw: torch.Tensor, draw: _Draw):
    """The whole prefix through `model.forward` at every scale, as the official M-VAR code does."""
    bounds = scale_bounds(model.patch_nums)
    teacher: List[torch.Tensor] = [model.pos_start.new_zeros(len(labels_2B), 0, model.z_channels)]
    ids: List[torch.Tensor] = []
    for si in range(len(model.patch_nums)):
        logits_2BlV = model(labels_2B, torch.cat(teacher, dim=1))[:, bounds[si]:bounds[si + 1]]
        idx_Bl, f_hat_BChw, next_BlC = _step(vae, si, logits_2BlV, f_hat_BChw, draw)
        ids.append(idx_Bl)
        if next_BlC is not None:
            teacher.append(next_BlC.to(model.pos_start.dtype).repeat(2, 1, 1))
    return ids, f_hat_BChw


@torch.no_grad()  # not inference_mode: callers may edit the returned tensors in place
def sample(model, vae, labels_B, cfg_scale: float = 1.5, top_k: int = 900, top_p: float = 0.96,
           seed: Optional[int] = 0, more_smooth: bool = False, incremental: bool = True,
           seeds_B=None) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """-> (ids: list of (B, pn²) int64 per scale, img (B, 3, H, W) float32 in [0, 1]).
    seeds_B: optional per-image seeds (B ints); when given, `seed` is unused and row b draws only from a
    generator seeded with seeds_B[b]."""
    _check_vae(model, vae)
    device = model.pos_start.device
    labels_B = _labels(labels_B, model.num_classes, device)
    B, side = labels_B.shape[0], model.patch_nums[-1]
    noise = _noise(seed, seeds_B, B, device)
    if seeds_B is not None and B == 1:
        # A lone row runs on other conv/matmul kernels than a batch does (measured on CPU: pixels 1.5e-5 apart),
        # so it is sampled as one of two twins: with per-image seeds, B=1 then gives the pixels of any batch.
        twin_ids, twin_img = sample(model, vae, labels_B.repeat(2), cfg_scale=cfg_scale, top_k=top_k, top_p=top_p,
                                    more_smooth=more_smooth, incremental=incremental,
                                    seeds_B=torch.as_tensor(seeds_B).reshape(-1).repeat(2))
        return [t[:1] for t in twin_ids], twin_img[:1]
    draw = _Draw(cfg_scale, top_k, top_p, more_smooth, noise, seeds_B is not None)
    labels_2B = torch.cat([labels_B, torch.full_like(labels_B, model.num_classes)])  # cond, then uncond half
    f_hat_BChw = vae.codebook.new_zeros(B, model.z_channels, side, side).float()
    was_training = model.training
    model.eval()
    try:
        algorithm = _sample_incremental if incremental else _sample_recompute
        ids, f_hat_BChw = algorithm(model, vae, labels_2B, f_hat_BChw, draw)
        img = (vae.fhat_to_img(f_hat_BChw).float() + 1) / 2
    finally:
        model.train(was_training)
    return ids, img
