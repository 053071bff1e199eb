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
        model_ema.safetensors the same for the EMA weights (ema.enabled; train/ema.py)
        ema/rank_00000.safetensors  per-rank fp32 EMA of the rank's ZeRO-3 partition (ema.enabled)
        COMPLETE              written last, before the rename; nothing without it is ever loaded;
                              lists every file with its size and sha256 (manifest.py)
    .tmp.step_00000120/       in progress (removed at the next start if the writer died)
    damaged.step_00000120/    a marked folder that failed verification, set aside by --resume auto (kept)

The folder is assembled under a temporary name and renamed into place, so a reader never sees a
half-written step folder; the marker makes that explicit for readers on object stores and for
copies made by other tools. Its file list lets resume tell a damaged folder (a truncated shard, a
flipped bit) from a whole one before loading anything. An s3:// root has no rename: the folder is
staged locally, uploaded by its writers, and the marker alone publishes it (runs/storage.py).
Folder names, the marker and meta.json belong to runs/layout.py; local/S3 access to runs/storage.py.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from mvar_dist.fsio import atomic_path, write_text_atomic
from mvar_dist.runs import manifest as mf
from mvar_dist.runs.layout import (is_complete, is_marked, latest_checkpoint, list_checkpoints,  # noqa: F401 (ck.* callers)
                                   parse_step, read_meta, step_name, step_of)
from mvar_dist.runs.manifest import MARKER, CheckpointDamaged
from mvar_dist.runs.storage import LocalRoot, RemoteRoot, is_remote, open_root, set_aside

DS_DIR = "ds"
DS_TAG = "state"
UNIVERSAL_TAG = "universal"


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
class ResumePoint:
    folder: Path          # the complete, verified step folder to load
    meta: Dict[str, Any]  # its meta.json
    tag: str              # DeepSpeed tag under folder/ds to load
    universal: bool       # True when the world size differs: load the universal copy
    notes: List[str] = field(default_factory=list)  # what choose_resume found (damaged folders, fallback)
    remote: str = ""      # s3:// step folder the ranks download `folder` from; "" = folder is the checkpoint


def check_meta_compatible(meta: Dict[str, Any], expect: Dict[str, Any], where: Path) -> None:
    """Refuse a checkpoint made for another architecture or model shape, naming the difference."""
    for key in ("arch", "depth", "width", "vocab_size", "patch_nums", "num_classes"):
        if key in expect and key in meta and meta[key] != expect[key]:
            raise ValueError(f"checkpoint {where} was made for {key}={meta[key]}, this run has {key}={expect[key]}; "
                             f"use another ckpt.dir or ckpt.resume=none")


def choose_resume(resume: str, root, world_size: int, expect: Dict[str, Any], verify: str = "hash",
                max_fallback_steps: int = 0, allow_fallback: bool = False,
                stage_dir: Optional[Path] = None) -> Optional[ResumePoint]:
    """Pick the checkpoint to resume from: "none", "auto" (newest complete one that verifies) or a folder.

    Runs on one rank (it may set damaged folders aside); the caller shares the answer with the others.
    For a remote checkpoint, its `folder` is where each rank downloads the files (under stage_dir)."""
    if resume == "none":
        return None
    notes: List[str] = []
    if resume == "auto":
        store = open_root(root)
        name = _newest_verified(store, verify, max_fallback_steps, allow_fallback, notes)
        if name is None:
            return None
    else:
        store, name = _explicit(resume, verify)
    _note_unverified(store, name, notes)
    meta = json.loads(store.read_text(name, "meta.json"))
    check_meta_compatible(meta, expect, store.uri_of(name))
    universal = int(meta["world_size"]) != world_size
    remote = "" if isinstance(store, LocalRoot) else store.uri_of(name)
    folder = Path(stage_dir) / name if remote else store.root / name
    return ResumePoint(folder, meta, UNIVERSAL_TAG if universal else DS_TAG, universal, notes, remote)


def _explicit(resume: str, verify: str):
    """(root, name) of an explicitly named folder, refused when absent, unmarked or damaged."""
    parent, name = resume.rstrip("/").rsplit("/", 1) if "/" in resume.rstrip("/") else (".", resume)
    store = open_root(parent)
    if not store.exists(name):
        raise FileNotFoundError(f"ckpt.resume={resume}: no such checkpoint folder")
    if name not in store.marked_names():
        raise ValueError(f"ckpt.resume={resume}: folder has no {MARKER} marker (an interrupted save); refusing it")
    problem = store.problem(name, verify)
    if problem:
        raise CheckpointDamaged(name, f"{problem}; it is left as it is: pass another folder or --resume auto")
    return store, name


def _newest_verified(store, verify: str, max_fallback_steps: int, allow_fallback: bool,
                     notes: List[str]) -> Optional[str]:
    """The newest complete folder that verifies; damaged newer ones are reported and set aside."""
    mf.check_mode(verify)
    damaged = []
    for name in reversed(store.marked_names()):  # a marked folder that lost meta.json is damaged, not absent
        problem = store.problem(name, verify)
        if problem is None:
            break
        damaged.append(name)
        notes.append(str(CheckpointDamaged(name, problem)))
    else:
        if damaged:  # starting from scratch over them would silently throw the run away
            raise ValueError(f"no checkpoint under {store.uri_of('')} verifies ({'; '.join(notes)}); repair one, "
                             f"or start over with ckpt.resume=none")
        return None
    if damaged:
        newest = damaged[0]
        gap = step_of(newest) - step_of(name)
        if gap > max_fallback_steps and not allow_fallback:
            raise ValueError(f"{'; '.join(notes)}. The newest checkpoint that "
                             f"verifies, {name}, is {gap} steps before {newest}, more than "
                             f"ckpt.max_fallback_steps={max_fallback_steps}; set ckpt.allow_fallback=true to resume "
                             f"from {name}, or repair {newest}")
        for bad in damaged:
            notes.append(f"kept {bad} (not deleted) as {store.set_aside(bad)}")
        notes.append(f"falling back to {name}, {gap} steps before {newest}")
    return name


def _note_unverified(store, name: str, notes: List[str]) -> None:
    try:
        legacy = mf.parse_marker(store.read_text(name, MARKER)) is None
    except ValueError:
        legacy = False
    if legacy:
        notes.append(f"warning: {name}'s {MARKER} marker has no file list (written before "
                     f"checkpoints were verified); loading it unverified")


def ensure_universal(folder: Path) -> Path:
    """Convert folder/ds/state to DeepSpeed's universal format once (cached); call on one rank only."""
    ds_dir = Path(folder) / DS_DIR
    out = ds_dir / UNIVERSAL_TAG
    if (out / MARKER).is_file():
        return out
    with atomic_path(out) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a dead process with this pid
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ds_dir / DS_TAG),
               "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
               "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"universal conversion of {folder} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        (tmp / MARKER).write_text("")
    return out


class SaveRecorder:
    """Wraps a DeepSpeed engine's checkpoint engine to note every file it saves on this rank.

    Those are the rank's own files in the step folder's marker, so per-rank state is told by who
    wrote it, never by DeepSpeed's file names. Everything else is the wrapped engine's."""

    def __init__(self, inner):
        self._inner = inner
        self._saved: List[str] = []

    def save(self, state_dict, path):
        self._inner.save(state_dict, path)
        self._saved.append(str(path))

    def take_saved(self) -> List[str]:
        """The paths saved since the last call."""
        saved, self._saved = self._saved, []
        return saved

    def __getattr__(self, name):
        return getattr(self._inner, name)

    @classmethod
    def install(cls, engine) -> None:
        engine.checkpoint_engine = cls(engine.checkpoint_engine)


class CheckpointWriter:
    """Writes one step folder collectively; rank 0 publishes it and applies retention.

    With an s3:// root the folder is assembled in `stage_dir` (node-local), each rank uploads the
    files it wrote, and publishing is writing the remote marker (see runs/storage.py)."""

    def __init__(self, root, rank: int, keep_last: int, keep_every: int, stage_dir: Optional[Path] = None):
        self.remote = RemoteRoot(str(root)) if is_remote(root) else None
        if self.remote is not None and stage_dir is None:
            raise ValueError(f"ckpt.dir={root} needs a local staging folder (ckpt.stage_dir)")
        self.root = Path(stage_dir) if self.remote is not None else Path(root)
        self.rank = rank
        self.keep_last, self.keep_every = keep_last, keep_every
        self._own: Dict[int, set] = {}  # step -> files this rank wrote into that step's folder (claim)

    def clean_stale(self) -> None:
        """Remove leftovers of saves that died before publishing (rank 0, at start)."""
        if self.rank != 0:
            return
        if self.remote is not None:
            self.remote.clean_incomplete()
            shutil.rmtree(self.root, ignore_errors=True)  # staging only: nothing in it is a checkpoint
            return
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".tmp.") or p.name.startswith(".trash."):
                    shutil.rmtree(p, ignore_errors=True)
            for p in list_checkpoints(self.root, complete_only=False):
                if not is_marked(p):  # a marked folder missing a file is resume's to set aside, never deleted
                    shutil.rmtree(p, ignore_errors=True)

    def tmp_folder(self, step: int) -> Path:
        return self.root / f".tmp.{step_name(step)}"

    def final_folder(self, step: int):
        """Where the published folder is: a Path, or an s3:// URI (str) for a remote root."""
        if self.remote is not None:
            return self.remote.uri_of(step_name(step))
        return self.root / step_name(step)

    def claim(self, step: int, paths) -> None:
        """Note files this rank wrote into the step folder: the marker lists them as its own."""
        tmp = os.path.abspath(self.tmp_folder(step))
        for p in paths:
            rel = os.path.relpath(os.path.abspath(p), tmp)
            if rel == os.pardir or rel.startswith(os.pardir + os.sep):
                raise ValueError(f"{p} is not inside the step folder {tmp}")
            self._own.setdefault(step, set()).add(Path(rel).as_posix())

    def write_rank_files(self, step: int, rng_state: Dict[str, Any]) -> None:
        path = self.tmp_folder(step) / "rng" / f"rank_{self.rank:05d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state, path)
        self.claim(step, [path])

    def write_shared_files(self, step: int, files: Dict[str, str]) -> None:
        """Rank 0: the small files, before the ranks report (rank 0's report hashes them)."""
        for name, text in files.items():
            write_text_atomic(self.tmp_folder(step) / name, text, fsync=True)

    def report(self, step: int, before_upload=None) -> Dict[str, Any]:
        """This rank's files with sizes and sha256 (manifest.rank_report), uploaded for a remote root.

        before_upload(step, rank): a fault-drill hook; raising there counts as a failed upload."""
        rep = mf.rank_report(self.tmp_folder(step), self.rank, self._own.pop(step, ()))
        if self.remote is None or not rep["ok"]:
            return rep
        try:
            if before_upload is not None:
                before_upload(step, self.rank)
            self.remote.upload(self.tmp_folder(step), step_name(step), rep["files"])
        except Exception as e:  # any failure must reach the gather, or the other ranks wait forever
            rep.update(ok=False, error=f"upload failed ({type(e).__name__}: {e})")
        return rep

    def publish(self, step: int, files: Dict[str, str], reports: Optional[List[Dict[str, Any]]] = None):
        """Rank 0: write the small files, hash (and upload) the shared ones, the marker last, rename into
        place, apply retention.

        reports: every rank's `report`; a failed one raises ValueError and nothing is published.
        Without them (one process) this writer's own report is the only one."""
        tmp, final = self.tmp_folder(step), self.final_folder(step)
        self.write_shared_files(step, files)
        if reports is None:
            reports = [self.report(step)]
        mf.check_reports(reports)  # before hashing the shared files: no marker will be written anyway
        shared = mf.unclaimed(tmp, reports)
        text = mf.marker_text(mf.build_marker(step, reports, mf.describe(tmp, shared)))
        if self.remote is not None:
            self.remote.upload(tmp, step_name(step), shared)
            self.remote.write_marker(step_name(step), text)
            self.apply_retention()
            return final
        write_text_atomic(tmp / MARKER, text, fsync=True)
        if final.exists() and is_marked(final):  # a damaged finished save (e.g. lost meta.json): keep it
            set_aside(final)
        elif final.exists():  # an incomplete leftover with the same name
            shutil.rmtree(final)
        # Not fsio.atomic_path: every rank wrote into this temp folder, so its name is fixed by the
        # step (not this process), and clean_stale removes it if the save died.
        os.replace(tmp, final)
        self.apply_retention()
        return final

    def apply_retention(self) -> List:
        if self.remote is not None:
            names = {step_of(n): n for n in self.remote.names()}
            victims = [names[s] for s in retention_victims(list(names), self.keep_last, self.keep_every)]
            for n in victims:
                self.remote.delete(n)
            return [self.remote.uri_of(n) for n in victims]
        done = {parse_step(p.name): p for p in list_checkpoints(self.root)}
        removed = []
        for s in retention_victims(list(done), self.keep_last, self.keep_every):
            # Rename first so a crash mid-delete never leaves a complete-looking partial folder. This
            # takes a folder out of view rather than publishing one, hence a plain rename.
            trash = self.root / f".trash.{done[s].name}"
            os.replace(done[s], trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(done[s])
        return removed


def load_rng(folder: Path, rank: int) -> Optional[Dict[str, Any]]:
    p = Path(folder) / "rng" / f"rank_{rank:05d}.pt"
    return torch.load(p, weights_only=True) if p.is_file() else None
