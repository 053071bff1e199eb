"""Step checkpoints: atomic folders, completion marker, retention, resume selection, universal conversion.

Layout of `<ckpt.dir>`:

    step_00000120/            one folder per saved optimizer step (published by a rename)
        ds/state/...          DeepSpeed ZeRO-3 engine state (all ranks write their shards)
        ds/universal/...      cached universal-format copy, made when resumed at another world size
        meta.json             step, epoch, samples_consumed, world_size, arch, shapes, precision
        config.yaml           the resolved run config
        loader.json           the loader state
        rng/rank_00000.pt     per-rank RNG states (torch, python, numpy)
        metrics.json          the last logged metrics
        model.safetensors     consolidated model in the official key names
        COMPLETE              written last, before the rename; nothing without it is ever loaded
    .tmp.step_00000120/       in progress (removed at the next start if the writer died)

The folder is assembled under a temporary name and renamed into place, so a reader never sees a
half-written step folder; the marker makes that explicit for readers on object stores and for
copies made by other tools.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from mvar_dist.fsio import write_text_atomic

MARKER = "COMPLETE"
DS_DIR = "ds"
DS_TAG = "state"
UNIVERSAL_TAG = "universal"
_STEP_RE = re.compile(r"^step_(\d{8})$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "meta.json").is_file()


def list_checkpoints(root: Path, complete_only: bool = True) -> List[Path]:
    """Step folders under root, oldest first; by default only those with the completion marker."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name)]
    if complete_only:
        out = [p for p in out if is_complete(p)]
    return sorted(out, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_meta(folder: Path) -> Dict[str, Any]:
    return json.loads((Path(folder) / "meta.json").read_text())


def retention_victims(steps: List[int], keep_last: int, keep_every: int) -> List[int]:
    """Steps to delete: all but the newest keep_last, sparing multiples of keep_every."""
    steps = sorted(steps)
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    if keep_every > 0:
        keep |= {s for s in steps if s % keep_every == 0}
    return [s for s in steps if s not in keep]


def capture_rng() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()[1].tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class ResumePlan:
    folder: Path          # the complete step folder to load
    meta: Dict[str, Any]  # its meta.json
    tag: str              # DeepSpeed tag under folder/ds to load
    universal: bool       # True when the world size differs: load the universal copy


def check_meta_compatible(meta: Dict[str, Any], expect: Dict[str, Any], where: Path) -> None:
    """Refuse a checkpoint made for another architecture or model shape, naming the difference."""
    for key in ("arch", "depth", "width", "vocab_size", "patch_nums", "num_classes"):
        if key in expect and key in meta and meta[key] != expect[key]:
            raise ValueError(f"checkpoint {where} was made for {key}={meta[key]}, this run has {key}={expect[key]}; "
                             f"use another ckpt.dir or ckpt.resume=none")


def plan_resume(resume: str, root: Path, world_size: int, expect: Dict[str, Any]) -> Optional[ResumePlan]:
    """Pick the checkpoint to resume from: "none", "auto" (newest complete under root) or a folder path."""
    if resume == "none":
        return None
    if resume == "auto":
        folder = latest_checkpoint(root)
        if folder is None:
            return None
    else:
        folder = Path(resume)
        if not folder.is_dir():
            raise FileNotFoundError(f"ckpt.resume={resume}: no such checkpoint folder")
        if not is_complete(folder):
            raise ValueError(f"ckpt.resume={resume}: folder has no {MARKER} marker (an interrupted save); refusing it")
    meta = read_meta(folder)
    check_meta_compatible(meta, expect, folder)
    universal = int(meta["world_size"]) != world_size
    return ResumePlan(folder, meta, UNIVERSAL_TAG if universal else DS_TAG, universal)


def ensure_universal(folder: Path) -> Path:
    """Convert folder/ds/state to DeepSpeed's universal format once (cached); call on one rank only."""
    ds_dir = Path(folder) / DS_DIR
    out = ds_dir / UNIVERSAL_TAG
    if (out / MARKER).is_file():
        return out
    tmp = ds_dir / f".tmp.{UNIVERSAL_TAG}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ds_dir / DS_TAG),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
           "--num_merge_workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"universal conversion of {folder} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    (tmp / MARKER).write_text("")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


class CheckpointWriter:
    """Writes one step folder collectively; rank 0 publishes it and applies retention."""

    def __init__(self, root: Path, rank: int, keep_last: int, keep_every: int):
        self.root, self.rank = Path(root), rank
        self.keep_last, self.keep_every = keep_last, keep_every

    def clean_stale(self) -> None:
        """Remove leftovers of saves that died before publishing (rank 0, at start)."""
        if self.rank == 0 and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".tmp.") or p.name.startswith(".trash."):
                    shutil.rmtree(p, ignore_errors=True)
            for p in list_checkpoints(self.root, complete_only=False):
                if not is_complete(p):
                    shutil.rmtree(p, ignore_errors=True)

    def tmp_folder(self, step: int) -> Path:
        return self.root / f".tmp.{step_name(step)}"

    def final_folder(self, step: int) -> Path:
        return self.root / step_name(step)

    def write_rank_files(self, tmp: Path, rng_state: Dict[str, Any]) -> None:
        (tmp / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state, tmp / "rng" / f"rank_{self.rank:05d}.pt")

    def publish(self, step: int, files: Dict[str, str]) -> Path:
        """Rank 0: write the small files, the marker last, rename into place, apply retention."""
        tmp, final = self.tmp_folder(step), self.final_folder(step)
        for name, text in files.items():
            write_text_atomic(tmp / name, text, fsync=True)
        write_text_atomic(tmp / MARKER, json.dumps({"step": step}) + "\n", fsync=True)
        if final.exists():  # an incomplete leftover with the same name (complete ones are never re-saved)
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.apply_retention()
        return final

    def apply_retention(self) -> List[Path]:
        done = {int(_STEP_RE.match(p.name).group(1)): p for p in list_checkpoints(self.root)}
        removed = []
        for s in retention_victims(list(done), self.keep_last, self.keep_every):
            # Rename first so a crash mid-delete never leaves a complete-looking partial folder.
            trash = self.root / f".trash.{done[s].name}"
            os.replace(done[s], trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(done[s])
        return removed


def load_rng(folder: Path, rank: int) -> Optional[Dict[str, Any]]:
    p = Path(folder) / "rng" / f"rank_{rank:05d}.pt"
    return torch.load(p, weights_only=True) if p.is_file() else None
