"""Class-conditional sampling with classifier-free guidance, one scale at a time.

Incremental (default): each scale's tokens run through the blocks once. M-VAR attends within the
current scale and carries each block's Mamba2 state (the last d_conv-1 pre-conv rows + the fp32 SSM
state) from scale to scale; VAR keeps a per-block K/V cache. The AdaLN modulations are computed once.
Recompute (`incremental=False`): at every scale the whole prefix goes through `model.forward`, as the
official M-VAR code does; it is the reference the incremental path must reproduce id for id.

Per scale: CFG ramp t = cfg * si / (S-1), logits = (1+t) cond - t uncond, then top-k, top-p and one
multinomial draw from a seeded generator (official order, so greedy settings give the argmax).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F


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


def sample_ids(logits_BlV: torch.Tensor, top_k: int, top_p: float, rng: Optional[torch.Generator]) -> torch.Tensor:
    """(B, l) int64 ids: filter, then one multinomial draw per token."""
    B, l, V = logits_BlV.shape
    probs = top_k_top_p_filter_(logits_BlV, top_k, top_p).softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=rng).view(B, l)


def _gumbel_softmax(logits_BlV: torch.Tensor, tau: float, rng: Optional[torch.Generator]) -> torch.Tensor:
    gumbels = -torch.empty_like(logits_BlV).exponential_(generator=rng).log()
    return ((logits_BlV + gumbels) / tau).softmax(dim=-1)


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


@torch.no_grad()  # not inference_mode: callers may edit the returned tensors in place
def sample(model, vae, labels_B, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96,
           seed: Optional[int] = 0, more_smooth: bool = False, incremental: bool = True):
    """-> (ids: list of (B, pn²) int64 per scale, img (B, 3, H, W) float32 in [0, 1])."""
    _check_vae(model, vae)
    device = model.pos_start.device
    labels = _labels(labels_B, model.num_classes, device)
    B, pns, S = labels.shape[0], model.patch_nums, len(model.patch_nums)
    rng = None
    if seed is not None:
        rng = torch.Generator(device=device)
        rng.manual_seed(int(seed))
    was_training = model.training
    model.eval()
    try:
        labels_2B = torch.cat([labels, torch.full_like(labels, model.num_classes)])
        cond_2BD = model.class_emb(labels_2B)
        lvl_pos_1LC = model.lvl_embed(model.lvl_1L) + model.pos_1LC
        x_2BlC = cond_2BD.unsqueeze(1) + model.pos_start.expand(2 * B, -1, -1) + lvl_pos_1LC[:, :model.first_l]
        codebook_VC = vae.codebook
        f_hat = codebook_VC.new_zeros(B, model.z_channels, pns[-1], pns[-1]).float()
        if incremental:
            mods = [blk.modulation(cond_2BD) for blk in model.blocks]
            caches: List[dict] = [{} for _ in model.blocks]
        else:
            teacher: List[torch.Tensor] = [x_2BlC.new_zeros(2 * B, 0, model.z_channels)]
        ids: List[torch.Tensor] = []
        cur = 0
        for si, pn in enumerate(pns):
            cur += pn * pn
            if incremental:
                h_2BlC = x_2BlC
                for blk, m, c in zip(model.blocks, mods, caches):
                    h_2BlC = blk.forward_scale(h_2BlC, m, c)
                logits_2BlV = model.logits(h_2BlC, cond_2BD)
            else:
                logits_2BlV = model(labels_2B, torch.cat(teacher, dim=1))[:, cur - pn * pn:]
            ratio = si / (S - 1) if S > 1 else 1.0
            t = cfg * ratio
            logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
            idx_Bl = sample_ids(logits_BlV, top_k, top_p, rng)
            ids.append(idx_Bl)
            if more_smooth:  # soft Gumbel codes, for pictures only (official visualisation mode)
                tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
                h_BlC = _gumbel_softmax(logits_BlV.mul(1 + ratio), tau, rng) @ codebook_VC.to(logits_BlV.dtype)
            else:
                h_BlC = codebook_VC[idx_Bl]
            h_BChw = h_BlC.transpose(1, 2).reshape(B, model.z_channels, pn, pn)
            f_hat, nxt_BChw = vae.next_ar_input(si, f_hat, h_BChw)
            if si < S - 1:
                nxt_BlC = nxt_BChw.flatten(2).transpose(1, 2)
                if incremental:
                    nxt_pn2 = pns[si + 1] ** 2
                    x_BlC = model.word_embed(nxt_BlC.to(model.word_embed.weight.dtype)) + lvl_pos_1LC[:, cur:cur + nxt_pn2]
                    x_2BlC = x_BlC.repeat(2, 1, 1)
                else:
                    teacher.append(nxt_BlC.to(x_2BlC.dtype).repeat(2, 1, 1))
        img = (vae.fhat_to_img(f_hat).float() + 1) / 2
    finally:
        model.train(was_training)
    return ids, img
