"""Checkpoints under an s3:// root (`ckpt.dir=s3://bucket/run/checkpoints`).

Object stores have no rename, so a step folder is uploaded in place and its `COMPLETE` marker,
written by global rank 0 after every rank reported a successful upload, is what makes it complete:
a folder without the marker (a failed or killed upload) is invisible to resume and to the
evaluation service, and is deleted at the next start. Each rank saves into node-local staging
(`ckpt.stage_dir`), uploads the files it wrote and, on resume, downloads the files it loads, so no
node needs a filesystem shared with the others. Resumed at another world size, global rank 0 makes
the universal copy (all of ds/state downloaded, converted) and uploads it as ds/universal with its
own marker; every rank then downloads that (ckpt_sync.py). Retention deletes the marker first, so a
folder being deleted never looks complete.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from mvar_dist.fsio import open_fs, sha256_file
from . import manifest as mf

_STEP_RE = re.compile(r"^step_(\d{8})$")


def is_remote(root) -> bool:
    return str(root).startswith("s3://")


class RemoteRoot:
    """One checkpoint root on an object store; names are step folder names (step_00000120)."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        self.fs, self.base = open_fs(self.uri)  # endpoint from $AWS_ENDPOINT_URL, like the data loader

    def _path(self, name: str, rel: str = "") -> str:
        return f"{self.base}/{name}/{rel}" if rel else f"{self.base}/{name}"

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def names(self, complete_only: bool = True) -> List[str]:
        """Step folder names, oldest first; by default only those with the marker and meta.json."""
        self.fs.invalidate_cache()  # s3fs caches listings per instance; other ranks may have written since
        if not self.fs.exists(self.base):
            return []
        found = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.base, detail=False)]
        steps = sorted((n for n in found if _STEP_RE.match(n)), key=lambda n: int(n[5:]))
        if complete_only:
            steps = [n for n in steps if self.is_complete(n)]
        return steps

    def marked_names(self) -> List[str]:
        """Step folders with the marker (complete, or damaged: e.g. meta.json lost), oldest first."""
        return [n for n in self.names(complete_only=False) if self.fs.exists(self._path(n, mf.MARKER))]

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._path(name))

    def is_complete(self, name: str) -> bool:
        return self.fs.exists(self._path(name, mf.MARKER)) and self.fs.exists(self._path(name, "meta.json"))

    def read_text(self, name: str, rel: str) -> str:
        return self.fs.cat_file(self._path(name, rel)).decode()

    def sizes(self, name: str) -> Dict[str, int]:
        prefix = self._path(name) + "/"
        return {p[len(prefix):]: int(info["size"]) for p, info in self.fs.find(prefix, detail=True).items()}

    def problem(self, name: str, mode: str) -> Optional[str]:
        """The first file of this folder that does not match its marker (hashes are streamed), or None."""
        if not self.fs.exists(self._path(name, "meta.json")):
            return "meta.json is missing"
        try:
            files = mf.parse_marker(self.read_text(name, mf.MARKER))
        except (OSError, ValueError) as e:
            return str(e)
        if files is None:
            return None
        sizes = self.sizes(name)

        def digest(rel: str) -> str:
            with self.fs.open(self._path(name, rel), "rb") as f:
                return sha256_file(f)

        return mf.verify_entries(files, sizes.get, digest, mode)

    def upload(self, local: Path, name: str, rels: Iterable[str]) -> None:
        for rel in rels:
            self.fs.put_file(str(Path(local) / rel), self._path(name, rel))

    def download(self, name: str, rels: Iterable[str], local: Path) -> None:
        """Through a temp name: ranks on one node fetch the shared files (meta.json) into the same folder."""
        for rel in rels:
            dst = Path(local) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            part = dst.with_name(f".{dst.name}.part{os.getpid()}")
            self.fs.get_file(self._path(name, rel), str(part))
            os.replace(part, dst)

    def write_marker(self, name: str, text: str) -> None:
        self.fs.pipe_file(self._path(name, mf.MARKER), text.encode())

    def delete(self, name: str) -> None:
        """Marker first: an interrupted delete leaves an incomplete (ignored, later cleaned) folder."""
        if self.fs.exists(self._path(name, mf.MARKER)):
            self.fs.rm_file(self._path(name, mf.MARKER))
        if self.fs.exists(self._path(name)):
            self.fs.rm(self._path(name), recursive=True)

    def set_aside(self, name: str) -> str:
        """Move a damaged folder out of the step_* namespace (server-side copies, then deletes)."""
        dst, n = f"damaged.{name}", 1
        while self.fs.exists(self._path(dst)):
            dst, n = f"damaged.{name}.{n}", n + 1
        prefix = self._path(name) + "/"
        for key in self.fs.find(prefix):  # key by key: s3fs's recursive mv also tries the folder "keys"
            self.fs.copy(key, self._path(dst, key[len(prefix):]))
        self.delete(name)
        return dst

    def clean_incomplete(self) -> List[str]:
        """Delete step folders without a marker: uploads that failed or were killed (rank 0, at start)."""
        gone = [n for n in self.names(complete_only=False) if not self.fs.exists(self._path(n, mf.MARKER))]
        for n in gone:
            self.delete(n)
        return gone


UNIVERSAL = "ds/universal"  # checkpoint.DS_DIR/UNIVERSAL_TAG (not imported: checkpoint imports this module)


def has_universal(store: RemoteRoot, name: str) -> bool:
    """Whether the step folder has a complete universal copy (its own marker, written after its files)."""
    return store.fs.exists(store._path(name, f"{UNIVERSAL}/{mf.MARKER}"))


def upload_universal(store: RemoteRoot, name: str, folder: Path) -> None:
    """Upload folder/ds/universal (made by checkpoint.ensure_universal), then its marker listing every file.

    Rank 0 only. A half-uploaded copy has no marker: the next resume at another world size converts again."""
    src = Path(folder) / UNIVERSAL
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and p.name != mf.MARKER)
    store.upload(src, f"{name}/{UNIVERSAL}", rels)
    marker = {"step": int(name[5:]), "format": mf.MARKER_FORMAT, "files": mf.describe(src, rels)}
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
    """What a rank loads at the same world size: its own shards and RNG file, and the loader/meta files."""
    return sorted(r for r in files if mf.file_owner(r) == rank or r in ("meta.json", "loader.json"))
