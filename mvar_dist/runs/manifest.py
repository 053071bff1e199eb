"""The file list in a checkpoint's completion marker: who wrote each file, its size and sha256.

Marker (`COMPLETE`, JSON), written by global rank 0 once every rank has reported its files:

    {"step": 120, "format": 2, "world_size": 2,
     "files": {"ds/state/zero_pp_rank_1_mp_rank_00_optim_states.pt": {"size": 5678, "sha256": "...", "rank": 1},
               "meta.json": {"size": 404, "sha256": "...", "rank": 0}, ...}}

Each rank hashes the files it wrote (its ZeRO-3 shards, named by DeepSpeed after the data-parallel
rank, and its RNG file); rank 0 also hashes the shared files (model.safetensors, the small JSON/YAML
files, DeepSpeed's recovery scripts). Hashing where the file was written spreads the cost over the
ranks and works when a rank's files are on a disk only that rank sees.

Markers without "files" (`{"step": N}` or empty, written before verification existed) are accepted
unverified, with a warning: refusing them would strand every existing run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from mvar_dist.fsio import sha256_file

MARKER = "COMPLETE"
MARKER_FORMAT = 2
VERIFY_MODES = ("hash", "size")
# DeepSpeed names ZeRO shards after the data-parallel rank (= global rank here: no model/pipeline parallelism).
_SHARD_RE = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(optim|model)_states\.pt$")
_RNG_RE = re.compile(r"^rng/rank_(\d+)\.pt$")
# Added after publishing (the cached universal conversion has its own marker), so never listed.
_LATER = ("ds/universal/", "ds/.universal")


class CheckpointDamaged(ValueError):
    """A marked checkpoint whose files do not match its marker; `problem` names the file."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"checkpoint {name} is damaged: {problem}")
        self.name, self.problem = name, problem


def file_owner(rel: str) -> Optional[int]:
    """The rank that writes this file (by its name), or None for a shared file (written by rank 0)."""
    m = _SHARD_RE.search(rel) or _RNG_RE.match(rel)
    return int(m.group(1)) if m else None


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


def _missing_own(rank: int, rels: List[str]) -> List[str]:
    kinds = {m.group(2) for m in map(_SHARD_RE.search, rels) if m}
    want = [f"ZeRO {k} shard" for k in ("optim", "model") if k not in kinds]
    if not any(_RNG_RE.match(r) for r in rels):
        want.append(f"rng/rank_{rank:05d}.pt")
    return want


def rank_report(folder: Path, rank: int) -> Dict[str, Any]:
    """This rank's files with size and sha256; never raises, so every rank reaches the gather.

    ok=False (with the reason) when the rank's own shards or RNG file are missing or unreadable."""
    try:
        rels = [r for r in folder_files(folder) if file_owner(r) == rank or (rank == 0 and file_owner(r) is None)]
        missing = _missing_own(rank, [r for r in rels if file_owner(r) == rank])
        if missing:
            return {"rank": rank, "ok": False, "error": f"no {', '.join(missing)} written", "files": {}}
        return {"rank": rank, "ok": True, "error": "", "files": describe(folder, rels)}
    except OSError as e:
        return {"rank": rank, "ok": False, "error": f"{type(e).__name__}: {e}", "files": {}}


def build_marker(step: int, reports: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The marker from every rank's report; ValueError naming each rank that failed."""
    failed = [f"rank {r['rank']}: {r['error']}" for r in reports if not r["ok"]]
    if failed:
        raise ValueError("; ".join(failed))
    files: Dict[str, Dict[str, Any]] = {}
    for r in sorted(reports, key=lambda r: r["rank"]):
        for rel, entry in r["files"].items():
            if rel in files:  # two ranks claiming a file would mean two writers of it
                raise ValueError(f"{rel} reported by rank {files[rel]['rank']} and rank {r['rank']}")
            files[rel] = {**entry, "rank": r["rank"]}
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
