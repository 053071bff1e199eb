"""Checkpoint storage: one interface over a local root (LocalRoot) and an s3:// root (RemoteRoot).

Both answer the same questions about step folders by name (names, exists, is_complete, problem,
read_text, set_aside, uri_of); `open_root` picks one. This is what resume planning, the trainer's
writer and the readers share (torchtitan's CheckpointStorage plays the same part).

Checkpoints under an s3:// root (`ckpt.dir=s3://bucket/run/checkpoints`).

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
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from mvar_dist.fsio import open_fs, sha256_file
from . import manifest as mf
from .layout import META, is_complete, is_marked, list_checkpoints, parse_step

DAMAGED_PREFIX = "damaged."


def is_remote(root) -> bool:
    return str(root).startswith("s3://")


def open_root(root):
    """LocalRoot, or RemoteRoot for an s3:// root (pass it as a str: Path would fold the //)."""
    return RemoteRoot(str(root)) if is_remote(root) else LocalRoot(Path(root))


class LocalRoot:
    """A checkpoint root on a filesystem, with the methods RemoteRoot has."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def uri_of(self, name: str) -> str:
        return str(self.root / name)

    def names(self) -> List[str]:
        return [p.name for p in list_checkpoints(self.root)]

    def marked_names(self) -> List[str]:
        return [p.name for p in list_checkpoints(self.root, complete_only=False) if is_marked(p)]

    def exists(self, name: str) -> bool:
        return (self.root / name).is_dir()

    def is_complete(self, name: str) -> bool:
        return is_complete(self.root / name)

    def problem(self, name: str, mode: str) -> Optional[str]:
        if not (self.root / name / META).is_file():
            return f"{META} is missing"
        return mf.verify_folder(self.root / name, mode)

    def read_text(self, name: str, rel: str) -> str:
        return (self.root / name / rel).read_text()

    def set_aside(self, name: str) -> str:
        return set_aside(self.root / name).name


def set_aside(folder: Path) -> Path:
    """Move a damaged folder out of the step_* namespace: resume, retention and clean-up ignore it."""
    folder = Path(folder)
    dst = folder.with_name(DAMAGED_PREFIX + folder.name)
    n = 1
    while dst.exists():
        dst = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}.{n}")
        n += 1
    os.replace(folder, dst)
    return dst


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
        steps = sorted((n for n in found if parse_step(n) is not None), key=parse_step)
        if complete_only:
            steps = [n for n in steps if self.is_complete(n)]
        return steps

    def marked_names(self) -> List[str]:
        """Step folders with the marker (complete, or damaged: e.g. meta.json lost), oldest first."""
        return [n for n in self.names(complete_only=False) if self.fs.exists(self._path(n, mf.MARKER))]

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._path(name))

    def is_complete(self, name: str) -> bool:
        return self.fs.exists(self._path(name, mf.MARKER)) and self.fs.exists(self._path(name, META))

    def read_text(self, name: str, rel: str) -> str:
        return self.fs.cat_file(self._path(name, rel)).decode()

    def sizes(self, name: str) -> Dict[str, int]:
        prefix = self._path(name) + "/"
        return {p[len(prefix):]: int(info["size"]) for p, info in self.fs.find(prefix, detail=True).items()}

    def problem(self, name: str, mode: str) -> Optional[str]:
        """The first file of this folder that does not match its marker (hashes are streamed), or None."""
        if not self.fs.exists(self._path(name, "meta.json")):
            return f"{META} is missing"
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
        dst, n = f"{DAMAGED_PREFIX}{name}", 1
        while self.fs.exists(self._path(dst)):
            dst, n = f"{DAMAGED_PREFIX}{name}.{n}", n + 1
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
