"""Staging complete checkpoints locally for the evaluation service, verifying them and building their sampler.

Finding them (local or s3://, any ckpt.dir) is runs/layout.py's `find_checkpoints`; loading the
generator is runs/generator.py's checked `load_generator`. The marker lists every file's size and
sha256: `verify` checks the files the service reads against it, so a file damaged after the save is
caught before sampling.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from mvar_dist.fsio import atomic_path, open_fs
from mvar_dist.runs import manifest as mf
from mvar_dist.runs.generator import READ_FILES, load_generator
from mvar_dist.runs.layout import CheckpointRef

MARKER = mf.MARKER
STAGED_FILES = READ_FILES + (MARKER,)


def stage(ckpt: CheckpointRef, cache_dir) -> Path:
    """A local folder holding the files the sampler needs (the folder itself when it is already local)."""
    if not ckpt.is_remote:
        return Path(ckpt.uri)
    dst = Path(cache_dir) / ckpt.id
    if all((dst / f).exists() for f in STAGED_FILES):
        return dst
    fs, base = open_fs(ckpt.uri)
    with atomic_path(dst, mkdir=True) as tmp:
        tmp.mkdir(exist_ok=True)  # a leftover of a dead process with this pid is overwritten
        for name in STAGED_FILES:
            fs.get(f"{base}/{name}", str(tmp / name))
    return dst


def verify(folder, mode: str, names=READ_FILES) -> Optional[str]:
    """The first of `names` in folder that does not match the marker (size; sha256 in "hash" mode), or None.

    Old markers without a file list pass (as in the trainer)."""
    return mf.verify_folder(Path(folder), mode, only=names)


def drop_staged(ckpt: CheckpointRef, cache_dir) -> None:
    """Forget a staged copy (a bad download must not be reused); local checkpoints are never touched."""
    if ckpt.is_remote:
        shutil.rmtree(Path(cache_dir) / ckpt.id, ignore_errors=True)


def sampler_for(folder, cfg_scale: float, top_k: int, top_p: float, more_smooth: bool = False, device="cpu",
                run_cfg=None):
    """The default "images for a checkpoint" step: a SampleFn backed by the checkpoint's model."""
    from .sampling import model_sample_fn

    _, model, vae = load_generator(folder, device, run_cfg)
    return model_sample_fn(model, vae, cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, more_smooth=more_smooth)

