"""Process group, gradient all-reduce, step checkpoints and export of the tokenizer trainer.

Checkpoints reuse the main trainer's helpers (`mvar_dist.train.checkpoint`): a step folder is
assembled under `.tmp.step_XXXXXXXX`, gets its COMPLETE marker last and is renamed into place;
retention and the cleanup of dead saves are the same code. A folder holds

    state.pt            generator, optimizer(s), discriminator, codebook health, counters (rank 0)
    rng/rank_XXXXX.pt   per-rank RNG states
    vae.safetensors     the generator in the official key names (loadable by from_official)
    meta.json           kind, step, world size, tokenizer hparams
    config.json         the run config

Every rank holds the same replica (gradients are all-reduced), so a checkpoint resumes at any world size.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from mvar_dist.distributed import barrier, gather_to_0, init_process_group
from mvar_dist.runs.layout import TOKENIZER_EXPORT, TOKENIZER_KIND, read_meta
from mvar_dist.train.checkpoint import CheckpointWriter, capture_rng, load_rng, restore_rng

KIND = TOKENIZER_KIND
STATE_FILE = "state.pt"
EXPORT_FILE = TOKENIZER_EXPORT


# ----------------------------------------------------------------------------------------- process group
def init_distributed() -> Tuple[int, int, torch.device]:
    """(rank, world, device): a group only under torchrun / deepspeed (one plain process needs none)."""
    return init_process_group(single_process=False)


# ----------------------------------------------------------------------------------------- export
def export_copy(vae: torch.nn.Module, l2_norm_codes: bool) -> torch.nn.Module:
    """A CPU copy of the generator as inference sees it (unit codes baked in when they are l2-normalised)."""
    out = copy.deepcopy(vae).to("cpu")
    if l2_norm_codes:
        with torch.no_grad():
            out.quantize.embedding.weight.copy_(F.normalize(out.quantize.embedding.weight, dim=1))
    return out


def export_generator(vae: torch.nn.Module, folder: Path, l2_norm_codes: bool, stem: str = "vae") -> Dict[str, Path]:
    """Write <stem>.pth (torch.save of a plain official-key state dict) and <stem>.safetensors."""
    model = export_copy(vae, l2_norm_codes)
    return {ext: model.save_official(Path(folder) / f"{stem}.{ext}") for ext in ("pth", "safetensors")}


# ----------------------------------------------------------------------------------------- checkpoints
def make_meta(step: int, world: int, hparams: Dict[str, Any], l2_norm_codes: bool) -> Dict[str, Any]:
    return {"kind": KIND, "step": int(step), "world_size": int(world), "hparams": hparams,
            "l2_norm_codes": bool(l2_norm_codes)}


def save_checkpoint(writer: CheckpointWriter, step: int, state: Dict[str, Any], export_model: torch.nn.Module,
                    meta: Dict[str, Any], config: Dict[str, Any], rank: int) -> Optional[Path]:
    """Collective: rank 0 writes the state and export, every rank its RNG, rank 0 publishes."""
    tmp = writer.tmp_folder(step)
    if rank == 0:
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp / f".{STATE_FILE}.part")
        os.replace(tmp / f".{STATE_FILE}.part", tmp / STATE_FILE)
        export_model.save_official(tmp / EXPORT_FILE)
    barrier()
    writer.write_rank_files(step, capture_rng())
    reports = gather_to_0(writer.report(step))  # after every rank wrote its files
    final = None
    if rank == 0:
        final = writer.publish(step, {"meta.json": json.dumps(meta, indent=1) + "\n",
                                      "config.json": json.dumps(config, indent=1, default=str) + "\n"}, reports)
    barrier()
    return final


def check_meta(meta: Dict[str, Any], hparams: Dict[str, Any], folder: Path) -> None:
    if meta.get("kind") != KIND:
        raise ValueError(f"checkpoint {folder} is not a tokenizer-training checkpoint (kind={meta.get('kind')!r}, "
                         f"expected {KIND!r}); use another ckpt.dir or ckpt.resume=none")
    theirs = meta.get("hparams", {})
    diff = [f"{k}: checkpoint {theirs.get(k)} vs run {v}" for k, v in hparams.items() if theirs.get(k) != v]
    if diff:
        raise ValueError(f"checkpoint {folder} was made for another tokenizer ({'; '.join(diff)}); "
                         f"use another ckpt.dir or ckpt.resume=none")


def load_checkpoint(folder: Path, hparams: Dict[str, Any], rank: int) -> Dict[str, Any]:
    """The state dict of a step folder after checking it belongs to this tokenizer; restores this rank's RNG."""
    meta = read_meta(folder)
    check_meta(meta, hparams, folder)
    state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    rng = load_rng(folder, rank)
    if rng is not None:
        restore_rng(rng)
    state["meta"] = meta
    return state
