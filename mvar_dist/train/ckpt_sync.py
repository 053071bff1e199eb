"""Checkpoint decisions every rank must share: which folder to resume, whether a save was published.

Rank 0 decides and broadcasts the answer, errors included. Ranks that decided on their own could
load different folders, or one could raise while the others wait in a collective (seen as a gloo
"connection closed by peer" on the healthy rank).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch.distributed as dist

from . import checkpoint as ck
from mvar_dist.distributed import broadcast_from_0
from mvar_dist.runs import manifest as mf
from mvar_dist.runs.layout import EMA_DIR


def stage_dir(cfg) -> Path:
    """Node-local staging for an s3:// ckpt.dir."""
    return Path(cfg.ckpt.stage_dir or Path(cfg.out_dir) / "ckpt_stage")


def agreed_resume(cfg, rank: int, expect: Dict[str, Any]) -> Optional[ck.ResumePoint]:
    """ck.choose_resume on rank 0 (verifying files, maybe falling back); every rank returns or raises the same.

    For a remote checkpoint every rank then downloads the files it loads."""
    c = cfg.ckpt
    resume_from = agreed(rank, lambda: ck.choose_resume(c.resume, c.dir, dist.get_world_size(), expect, c.verify,
                                                         c.fallback_limit, c.allow_fallback, stage_dir(cfg)))
    if resume_from is not None and resume_from.remote:
        _fetch_agreed(resume_from, rank)
    return resume_from


def agreed(rank: int, choose: Callable[[], Optional[ck.ResumePoint]],
           log: Callable[[str], None] = lambda m: print(f"[train] {m}", flush=True)) -> Optional[ck.ResumePoint]:
    """choose() on rank 0, its notes logged there; every rank returns the same point or raises the same error."""
    answer = None
    if rank == 0:
        try:
            resume_from = choose()
            answer = ("ok", resume_from)
            for note in resume_from.notes if resume_from else []:
                log(note)
        except (ValueError, FileNotFoundError) as e:
            # Sent as text: exception objects with extra constructor arguments do not unpickle.
            answer = (type(e).__name__, str(e))
    kind, value = broadcast_from_0(answer)
    if kind != "ok":
        raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(value)
    return value


def _fetch_agreed(resume_from: ck.ResumePoint, rank: int) -> None:
    """Each rank downloads what it loads; a failure anywhere stops all.

    Same world size: its shards, RNG and EMA files and the loader/meta files. Another world size: rank 0 first
    makes the universal copy unless the remote folder has one (downloads all of ds/state, converts,
    uploads ds/universal with its own marker: later resumes reuse it), then every rank downloads it."""
    from . import remote_fetch as remote

    root, name = resume_from.remote.rsplit("/", 1)
    store = None

    def fetch(rels):
        store.download(name, rels, resume_from.folder)
        return mf.verify_entries(files, lambda r: _local_size(resume_from.folder / r), None, "size", rels) or ""

    files, error, converted = {}, "", False
    try:
        store = remote.RemoteRoot(root)
        files = mf.parse_marker(store.read_text(name, mf.MARKER)) or {}
        if resume_from.universal and rank == 0 and not remote.has_universal(store, name):
            print(f"[train] converting {resume_from.remote} to the universal format (saved by "
                  f"{resume_from.meta['world_size']} ranks), then uploading {remote.UNIVERSAL}", flush=True)
            error = fetch(sorted(r for r in files if r.startswith(f"{ck.DS_DIR}/{ck.DS_TAG}/")))
            if not error:
                ck.ensure_universal(resume_from.folder)
                remote.upload_universal(store, name, resume_from.folder)
                converted = True
    except Exception as e:  # every rank must reach the gather below
        error = f"{type(e).__name__}: {e}"
    if resume_from.universal:
        _raise_failed(resume_from, error)
        error = ""
    try:
        if resume_from.universal:
            # Every old rank's EMA file: a new rank's slice may come from any of them (train/ema.py).
            error = fetch(["meta.json", "loader.json", *sorted(r for r in files if r.startswith(f"{EMA_DIR}/"))])
            if not error and not converted:  # rank 0 has the copy it made
                error = remote.download_universal(store, name, resume_from.folder) or ""
        elif not error:
            error = fetch(remote.files_for_rank(files, rank))
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    _raise_failed(resume_from, error)


def _raise_failed(resume_from: ck.ResumePoint, error: str) -> None:
    """Gather every rank's error ("" = fine); raise the same ValueError on every rank if any failed."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [f"rank {r}: {e}" for r, e in enumerate(errors) if e]
    if failed:
        raise ValueError(f"downloading {resume_from.remote} failed: {'; '.join(failed)}")


def _local_size(path: Path) -> Optional[int]:
    return path.stat().st_size if path.is_file() else None


def publish_agreed(writer: ck.CheckpointWriter, step: int, report: Dict[str, Any], world: int,
                   message: Callable[[str], None]) -> Optional[str]:
    """Gather every rank's file report; rank 0 writes the marker only if all are good.

    Returns None when published, else the reason (the same text on every rank)."""
    reports = [None] * world
    try:
        dist.all_gather_object(reports, report)
    except RuntimeError as e:  # a rank died mid-save (gloo: "Connection closed by peer"; or the timeout)
        raise RuntimeError(f"checkpoint step {step} not published (no marker): collecting the ranks' reports "
                           f"failed, another rank probably died ({e}); restart every node with --resume auto, "
                           f"which loads the newest complete checkpoint") from e
    box: list = [None]
    if writer.rank == 0:
        try:
            writer.publish(step, {}, reports)
            message(f"[train] checkpoint {writer.final_folder(step)}")
        except (OSError, ValueError) as e:
            box[0] = str(e)
            # Unpublished, so never loaded; removing it now frees the disk before the next save.
            shutil.rmtree(writer.tmp_folder(step), ignore_errors=True)
    dist.broadcast_object_list(box, src=0)
    if writer.remote is not None:  # uploaded or given up: the staged copy is done with, on every node
        dist.barrier()
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            shutil.rmtree(writer.tmp_folder(step), ignore_errors=True)
    return box[0]
