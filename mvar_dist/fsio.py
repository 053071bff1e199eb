"""Shared file plumbing: local/s3:// filesystem resolution, atomic writes, sha256.

Two families of atomic write exist on purpose:
  * `write_bytes_atomic(fs, path, data)` works on any fsspec filesystem (token shards, manifests on
    s3://): temp name + rename on local disks, a single PUT (already atomic) on object stores;
  * `atomic_path` / `write_text_atomic` / `write_json_atomic` take plain local paths (checkpoints,
    configs, tables, images, staged folders) and always go through a temp name in the same folder +
    os.replace.
Credentials always come from the standard AWS chain; nothing here logs them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

PathLike = Union[str, Path]


# ------------------------------------------------------------------------------------- filesystems
def open_fs(uri: str, storage_options: Optional[Dict[str, Any]] = None, *, endpoint_url: Optional[str] = None,
            env_endpoint: bool = True):
    """(fsspec filesystem, path without trailing slash) for a local path or URL.

    For s3:// the endpoint is `endpoint_url`, else storage_options["endpoint_url"], else (when
    `env_endpoint`) $AWS_ENDPOINT_URL. With env_endpoint=False an unset endpoint is left to botocore,
    which reads AWS_ENDPOINT_URL and the AWS config itself."""
    import fsspec.core

    opts = dict(storage_options or {})
    if uri.startswith("s3://"):
        if endpoint_url:
            opts["endpoint_url"] = endpoint_url
        elif env_endpoint and "endpoint_url" not in opts and os.environ.get("AWS_ENDPOINT_URL"):
            opts["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    fs, path = fsspec.core.url_to_fs(uri, **opts)
    return fs, path.rstrip("/")


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


# ------------------------------------------------------------------------------------- atomic writes
def write_bytes_atomic(fs, path: str, data: bytes) -> None:
    """Write via a temp name + rename on local disks; a single PUT (already atomic) on object stores."""
    if is_local(fs):
        tmp = f"{path}.tmp{os.getpid()}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, mkdir: bool = False, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temp path in the same folder as `path`; on success it replaces `path`, on error it is removed.

    The caller may make the temp path a file or a folder. A folder replaces an existing folder at
    `path` (removed first: a rename cannot replace a non-empty folder, so readers must tell a complete
    folder by its contents, e.g. a marker file). keep_suffix puts the final suffix last on the temp
    name, for writers that pick the format from it or append their own (np.save, savefig)."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tail = path.suffix if keep_suffix else ""
    tmp = path.with_name(f".{path.stem if keep_suffix else path.name}.tmp{os.getpid()}{tail}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~current_umask())  # some writers (safetensors) create files 0600
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: PathLike, text: str, *, fsync: bool = False, mkdir: bool = False) -> None:
    """fsync=True makes the bytes durable before the rename (checkpoint files a crash must not lose)."""
    with atomic_path(path, mkdir=mkdir) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_json_atomic(path: PathLike, obj: Any, *, indent: Optional[int] = 1, sort_keys: bool = True,
                      mkdir: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n", mkdir=mkdir)


# ------------------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path_or_file) -> str:
    """sha256 hex of a file, given as a path or as a binary file object (read from its position to EOF)."""
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return sha256_file(f)
    digest = hashlib.sha256()
    for chunk in iter(lambda: path_or_file.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
