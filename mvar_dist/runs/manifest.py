"""The file list in a checkpoint's completion marker: who wrote each file, its size and sha256.

Marker (`COMPLETE`, JSON), written by global rank 0 once every rank has reported its files:

    {"step": 120, "format": 3, "world_size": 2,
     "files": {"ds/state/zero_pp_rank_1_mp_rank_00_optim_states.pt":
                   {"size": 5678, "sha256": "...", "rank": 1, "per_rank": true},
               "meta.json": {"size": 404, "sha256": "...", "rank": 0, "per_rank": false}, ...}}

A rank's own ("per_rank") files are the ones it says it wrote: the trainer records every file its
DeepSpeed engine saves (train/checkpoint.SaveRecorder) and its RNG and EMA files, and each rank hashes
those. Nothing here knows DeepSpeed's file names, so new per-rank state needs no pattern. Files no
rank claimed are shared, written once by rank 0 (model.safetensors, the small JSON/YAML files,
DeepSpeed's recovery scripts); rank 0 hashes them after the gather. Hashing where a file was written
spreads the cost over the ranks and works when a rank's files are on a disk only that rank sees.

Format-2 markers (no "per_rank") told per-rank files by DeepSpeed's names; `owner` still reads them
that way. Markers without "files" (`{"step": N}` or empty, written before verification existed) are
accepted unverified, with a warning: refusing them would strand every existing run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from mvar_dist.fsio import sha256_file

MARKER = "COMPLETE"
MARKER_FORMAT = 3
VERIFY_MODES = ("hash", "size")
# Format-2 markers only: their per-rank files are told by DeepSpeed's names (data-parallel rank = global rank).
_V2_SHARD_RE = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:optim|model)_states\.pt$")
_V2_RANK_FILE_RE = re.compile(r"^(?:rng/rank_(\d+)\.pt|ema/rank_(\d+)\.safetensors)$")
# Added after publishing (the cached universal conversion has its own marker), so never listed.
_LATER = ("ds/universal/", "ds/.universal")


class CheckpointDamaged(ValueError):
    """A marked checkpoint whose files do not match its marker; `problem` names the file."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"checkpoint {name} is damaged: {problem}")
        self.name, self.problem = name, problem


def owner(rel: str, entry: Dict[str, Any]) -> Optional[int]:
    """The rank whose own file a marker entry is, or None for a shared file (written by rank 0)."""
    if "per_rank" in entry:
        return int(entry["rank"]) if entry["per_rank"] else None
    m = _V2_SHARD_RE.search(rel) or _V2_RANK_FILE_RE.match(rel)
    return int(next(g for g in m.groups() if g is not None)) if m else None


def folder_files(folder: Path) -> List[str]:
    """Relative posix paths of every file under folder, except the marker and later additions."""
    folder = Path(folder)
    out = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(folder).as_posix()
            if rel != MARKER and not rel.startswith(_LATER):
                out.append(rel)
    return sorted(out)


def describe(folder: Path, rels: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    folder = Path(folder)
    return {rel: {"size": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)} for rel in rels}


def rank_report(folder: Path, rank: int, own: Iterable[str]) -> Dict[str, Any]:
    """This rank's own files (relative paths it wrote) with size and sha256; never raises, so every
    rank reaches the gather. ok=False with the reason when one of them is missing or unreadable."""
    try:
        return {"rank": rank, "ok": True, "error": "", "files": describe(folder, sorted(set(own)))}
    except OSError as e:
        return {"rank": rank, "ok": False, "error": f"{type(e).__name__}: {e}", "files": {}}


def unclaimed(folder: Path, reports: List[Dict[str, Any]]) -> List[str]:
    """The files in folder no rank reported as its own: the shared ones, written by rank 0."""
    claimed = {rel for r in reports for rel in r["files"]}
    return [rel for rel in folder_files(folder) if rel not in claimed]


def check_reports(reports: List[Dict[str, Any]]) -> None:
    """ValueError naming each rank whose report failed."""
    failed = [f"rank {r['rank']}: {r['error']}" for r in reports if not r["ok"]]
    if failed:
        raise ValueError("; ".join(failed))


def build_marker(step: int, reports: List[Dict[str, Any]], shared: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The marker from every rank's report and rank 0's shared files ({rel: describe entry});
    ValueError naming each rank that failed, or a file claimed twice."""
    check_reports(reports)
    files: Dict[str, Dict[str, Any]] = {}
    for r in sorted(reports, key=lambda r: r["rank"]):
        for rel, entry in r["files"].items():
            if rel in files:  # two ranks claiming a file would mean two writers of it
                raise ValueError(f"{rel} reported by rank {files[rel]['rank']} and rank {r['rank']}")
            files[rel] = {**entry, "rank": r["rank"], "per_rank": True}
    for rel, entry in (shared or {}).items():
        if rel in files:
            raise ValueError(f"{rel} reported by rank {files[rel]['rank']} and as a shared file")
        files[rel] = {**entry, "rank": 0, "per_rank": False}
    return {"step": step, "format": MARKER_FORMAT, "world_size": len(reports), "files": files}


def marker_text(marker: Dict[str, Any]) -> str:
    return json.dumps(marker, indent=1, sort_keys=True) + "\n"


def parse_marker(text: str) -> Optional[Dict[str, Any]]:
    """The marker's file list, or None for an old marker without one; ValueError for an unreadable marker.

    An old marker is empty or JSON without "files"; anything else that does not parse was damaged after
    it was written (markers are written atomically), so it is not mistaken for an old one."""
    try:
        marker = json.loads(text) if text.strip() else {}
    except ValueError:
        raise ValueError(f"{MARKER} is not valid JSON") from None
    files = marker.get("files") if isinstance(marker, dict) else None
    return files if isinstance(files, dict) else None


def read_files_entry(folder: Path) -> Optional[Dict[str, Any]]:
    return parse_marker((Path(folder) / MARKER).read_text())


def check_mode(mode: str) -> None:
    if mode not in VERIFY_MODES:
        raise ValueError(f"ckpt.verify must be one of {list(VERIFY_MODES)}, got {mode!r}")


def verify_entries(files: Dict[str, Any], size_of: Callable[[str], Optional[int]], digest_of: Callable[[str], str],
                   mode: str, names: Optional[Iterable[str]] = None) -> Optional[str]:
    """The first problem of the listed files (all sizes first: cheap), or None.

    size_of(rel): the stored size, None when absent; digest_of(rel): its sha256. names: only these."""
    check_mode(mode)
    names = sorted(files) if names is None else [n for n in names if n in files]
    for pass_mode in ("size", mode) if mode == "hash" else ("size",):
        for rel in names:
            try:
                problem = _check(rel, files[rel], size_of, digest_of, pass_mode)
            except OSError as e:
                problem = f"{rel} cannot be read ({type(e).__name__}: {e})"
            if problem:
                return problem
    return None


def _check(rel: str, entry: Dict[str, Any], size_of, digest_of, mode: str) -> Optional[str]:
    size = size_of(rel)
    if size is None:
        return f"{rel} is missing"
    if size != entry["size"]:
        return f"{rel} has {size} bytes, the marker says {entry['size']}"
    if mode == "hash":
        digest = digest_of(rel)
        if digest != entry["sha256"]:
            return f"{rel} has sha256 {digest[:12]}..., the marker says {entry['sha256'][:12]}... (same size)"
    return None


def verify_folder(folder: Path, mode: str, only: Optional[Iterable[str]] = None) -> Optional[str]:
    """The first problem of a local folder against its marker, or None; old markers pass.

    only: check just these files (a reader that loads a few of them)."""
    check_mode(mode)
    folder = Path(folder)
    try:
        files = read_files_entry(folder)
    except (OSError, ValueError) as e:
        return str(e)
    if files is None:
        return None

    def size_of(rel: str) -> Optional[int]:
        p = folder / rel
        return p.stat().st_size if p.is_file() else None

    return verify_entries(files, size_of, lambda rel: sha256_file(folder / rel), mode, only)
