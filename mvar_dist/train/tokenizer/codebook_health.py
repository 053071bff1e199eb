"""Codebook health: per-scale usage and perplexity, and dead-code re-initialisation from recent
encoder residuals (a known cure for coarse-scale codebook collapse; docs/tokenizer_training.md).

Counts are kept per scale over a log interval and summed over ranks before they are reported.
"Last used" steps are reduced with MAX over ranks at each check, so every rank finds the same dead
codes; rank 0 draws their new values from its residual buffer and broadcasts the codebook, so the
replicas stay identical. The optimizer moments of re-initialised rows are zeroed.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist

from mvar_dist.distributed import world_size



class CodebookHealth:
    def __init__(self, vocab_size: int, num_scales: int, z_channels: int, buffer_rows: int = 4096,
                 rows_per_step: int = 256, seed: int = 0, rank: int = 0):
        self.V, self.S, self.C = int(vocab_size), int(num_scales), int(z_channels)
        self.buffer_rows, self.rows_per_step = int(buffer_rows), int(rows_per_step)
        self.seed, self.rank = int(seed), int(rank)
        self.counts_SV = torch.zeros(self.S, self.V, dtype=torch.float64)
        self.last_hit_V = torch.zeros(self.V, dtype=torch.long)
        self.buffer_NC = torch.zeros(0, self.C)
        self.buffer_pos = 0
        self.last_reinit_D = torch.zeros(0, dtype=torch.long)  # codes replaced by the latest re-init

    # ------------------------------------------------------------------------------- observing
    @torch.no_grad()
    def observe(self, ids: Sequence[torch.Tensor], rows_NC: torch.Tensor, step: int) -> None:
        for si, ids_Bl in enumerate(ids):
            self.counts_SV[si] += torch.bincount(ids_Bl.reshape(-1).cpu(), minlength=self.V).double()
        hit_V = torch.zeros(self.V, dtype=torch.bool)
        for ids_Bl in ids:
            hit_V[ids_Bl.reshape(-1).cpu()] = True
        self.last_hit_V[hit_V] = int(step)
        self._add_rows(rows_NC, step)

    def _add_rows(self, rows_NC: torch.Tensor, step: int) -> None:
        if self.buffer_rows <= 0 or rows_NC.numel() == 0:
            return
        g = torch.Generator().manual_seed(self.seed * 7919 + step * 31 + self.rank)
        take = min(self.rows_per_step, rows_NC.shape[0])
        pick = torch.randperm(rows_NC.shape[0], generator=g)[:take]
        new_NC = rows_NC[pick.to(rows_NC.device)].float().cpu()
        if self.buffer_NC.shape[0] < self.buffer_rows:
            room = self.buffer_rows - self.buffer_NC.shape[0]
            self.buffer_NC = torch.cat([self.buffer_NC, new_NC[:room]])
            new_NC = new_NC[room:]
        if new_NC.shape[0]:  # ring overwrite once full
            new_NC = new_NC[-self.buffer_rows:]
            at = (self.buffer_pos + torch.arange(new_NC.shape[0])) % self.buffer_rows
            self.buffer_NC[at] = new_NC
            self.buffer_pos = int((self.buffer_pos + new_NC.shape[0]) % self.buffer_rows)

    # ------------------------------------------------------------------------------- reporting
    def interval_stats(self, device: torch.device) -> Dict[str, float]:
        """usage_s<si> (fraction of codes used), ppl_s<si> (perplexity) per scale; resets the counts."""
        counts_SV = self.counts_SV.to(device)
        if world_size() > 1:
            dist.all_reduce(counts_SV)
        counts_SV = counts_SV.cpu()
        out: Dict[str, float] = {}
        for si in range(self.S):
            c_V = counts_SV[si]
            total = float(c_V.sum())
            out[f"usage_s{si}"] = float((c_V > 0).double().mean())
            if total > 0:
                p_V = c_V[c_V > 0] / total
                out[f"ppl_s{si}"] = math.exp(float(-(p_V * p_V.log()).sum()))
            else:
                out[f"ppl_s{si}"] = 0.0
        used_any = (counts_SV.sum(0) > 0).double().mean()
        out["usage_all"] = float(used_any)
        self.counts_SV.zero_()
        return out

    # ------------------------------------------------------------------------------- re-init
    def dead_codes(self, step: int, dead_after: int, device: torch.device) -> torch.Tensor:
        last_V = self.last_hit_V.to(device)
        if world_size() > 1:
            dist.all_reduce(last_V, op=dist.ReduceOp.MAX)
        self.last_hit_V = last_V.cpu()
        return torch.nonzero(int(step) - self.last_hit_V >= int(dead_after)).flatten()

    @torch.no_grad()
    def reinit_dead(self, embedding: torch.nn.Embedding, optimizer: Optional[torch.optim.Optimizer],
                    step: int, dead_after: int) -> int:
        """Replace dead codes with buffered residual rows (rank 0's, broadcast). Returns how many."""
        weight_VC = embedding.weight
        dead_D = self.dead_codes(step, dead_after, weight_VC.device)
        have = torch.tensor([self.buffer_NC.shape[0]], device=weight_VC.device)
        if world_size() > 1:
            dist.all_reduce(have, op=dist.ReduceOp.MIN)  # every rank takes the same branch
        if dead_D.numel() == 0 or int(have[0]) == 0:
            return 0
        g = torch.Generator().manual_seed(self.seed * 104729 + int(step))
        pick = torch.randint(0, self.buffer_NC.shape[0], (dead_D.numel(),), generator=g)
        weight_VC[dead_D.to(weight_VC.device)] = self.buffer_NC[pick].to(weight_VC)
        if world_size() > 1:
            dist.broadcast(weight_VC.data, src=0)
        self.last_reinit_D = dead_D
        self.last_hit_V[dead_D] = int(step)  # a grace period before the same code can be declared dead again
        if optimizer is not None:
            self._reset_moments(optimizer, weight_VC, dead_D)
        return int(dead_D.numel())

    @staticmethod
    def _reset_moments(optimizer: torch.optim.Optimizer, weight_VC: torch.Tensor, dead_D: torch.Tensor) -> None:
        state = optimizer.state.get(weight_VC, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][dead_D.to(state[key].device)] = 0

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"counts_SV": self.counts_SV.clone(), "last_hit_V": self.last_hit_V.clone(),
                "buffer_NC": self.buffer_NC.clone(), "buffer_pos": torch.tensor(self.buffer_pos)}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        if tuple(sd["counts_SV"].shape) != (self.S, self.V):
            raise ValueError(f"codebook-health state is for {tuple(sd['counts_SV'].shape)} (scales, vocab), "
                             f"this run has {(self.S, self.V)}")
        self.counts_SV = sd["counts_SV"].clone()
        self.last_hit_V = sd["last_hit_V"].clone()
        self.buffer_NC = sd["buffer_NC"].clone()
        self.buffer_pos = int(sd["buffer_pos"])
