"""What a rank fetches from an s3:// checkpoint: its own files, or the cached universal copy.

Resumed at another world size, global rank 0 makes the universal copy (all of ds/state downloaded,
converted by checkpoint.ensure_universal) and uploads it as ds/universal with its own marker; every
rank then downloads that (ckpt_sync.py). DeepSpeed-specific, so it lives with the trainer, above the
storage interface (runs/storage.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from mvar_dist.runs import manifest as mf
from mvar_dist.runs.layout import step_of
from mvar_dist.runs.storage import RemoteRoot

from .checkpoint import DS_DIR, UNIVERSAL_TAG

UNIVERSAL = f"{DS_DIR}/{UNIVERSAL_TAG}"


def has_universal(store: RemoteRoot, name: str) -> bool:
    """Whether the step folder has a complete universal copy (its own marker, written after its files)."""
    return store.fs.exists(store._path(name, f"{UNIVERSAL}/{mf.MARKER}"))


def upload_universal(store: RemoteRoot, name: str, folder: Path) -> None:
    """Upload folder/ds/universal (made by checkpoint.ensure_universal), then its marker listing every file.

    Rank 0 only. A half-uploaded copy has no marker: the next resume at another world size converts again."""
    src = Path(folder) / UNIVERSAL
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and p.name != mf.MARKER)
    store.upload(src, f"{name}/{UNIVERSAL}", rels)
    marker = {"step": step_of(name), "format": mf.MARKER_FORMAT, "files": mf.describe(src, rels)}
    store.fs.pipe_file(store._path(name, f"{UNIVERSAL}/{mf.MARKER}"), mf.marker_text(marker).encode())


def download_universal(store: RemoteRoot, name: str, folder: Path) -> Optional[str]:
    """Download the remote universal copy into folder/ds/universal (all of it: every rank loads from every
    parameter's file); sizes are checked against its marker. Returns the first problem, or None."""
    text = store.read_text(name, f"{UNIVERSAL}/{mf.MARKER}")
    files = mf.parse_marker(text) or {}
    dst = Path(folder) / UNIVERSAL
    here = dst / mf.MARKER
    if here.is_file() and here.read_text() == text:  # another rank of this node fetched it already
        return None
    store.download(f"{name}/{UNIVERSAL}", sorted(files), dst)
    problem = mf.verify_entries(files, lambda r: (dst / r).stat().st_size if (dst / r).is_file() else None,
                                None, "size")
    if problem is None:
        (dst / mf.MARKER).write_text(text)
    return problem


def files_for_rank(files: Dict[str, Any], rank: int) -> List[str]:
    """What a rank loads at the same world size: its own shards, RNG and EMA files, and the loader/meta files."""
    return sorted(r for r, e in files.items() if mf.owner(r, e) == rank or r in ("meta.json", "loader.json"))
