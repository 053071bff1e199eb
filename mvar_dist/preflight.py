"""Start-of-run checks: what a long job needs at its end is checked before its first step.

A destination must be writable (a local folder, or an s3:// prefix whose bucket exists and whose
credentials work: a probe object is written and removed), and a local disk must have room for one
more checkpoint with a margin. `OutputLock` keeps two jobs off one output folder.
Every failure is an OperatorError whose message names the setting and what to do.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from mvar_dist.errors import OperatorError

FREE_SPACE_MARGIN = 1.5       # free space asked for = margin x the estimated size of one checkpoint
LOCK_NAME = ".lock"


def check_destination(uri: str, what: str) -> None:
    """uri (local folder or s3:// prefix) can be written; `what` names the setting (e.g. "ckpt.dir")."""
    if str(uri).startswith("s3://"):
        _check_s3(str(uri), what)
    else:
        _check_local(Path(uri), what)


def _check_local(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".preflight.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OperatorError(f"{what}={folder} cannot be written ({e.strerror or e}); fix its permissions or "
                            f"choose another folder") from e


def _check_s3(uri: str, what: str) -> None:
    from mvar_dist.fsio import open_fs

    probe = f"{uri.rstrip('/')}/.preflight.{socket.gethostname()}.{os.getpid()}"
    try:
        fs, base = open_fs(uri)
        path = f"{base.rstrip('/')}/{probe.rsplit('/', 1)[1]}"
        fs.pipe_file(path, b"")
        fs.rm_file(path)
    except Exception as e:  # noqa: BLE001  s3fs/botocore raise many types; all mean "cannot write here"
        raise OperatorError(f"{what}={uri} cannot be written ({_s3_reason(e)}); create the bucket, check "
                            f"AWS credentials / AWS_ENDPOINT_URL, or choose another location") from e


def _s3_reason(e: BaseException) -> str:
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return "no usable S3 credentials"
    if isinstance(e, FileNotFoundError) or "NoSuchBucket" in str(e):
        return "the bucket does not exist"
    if isinstance(e, PermissionError) or "AccessDenied" in str(e):
        return "access denied"
    return f"{name}: {e}"


def check_free_space(folder, need_bytes: int, what: str) -> None:
    """The disk holding folder (or its nearest existing parent) has margin x need_bytes free."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    want = int(need_bytes * FREE_SPACE_MARGIN)
    if free < want:
        raise OperatorError(f"{what}={folder}: {free / 2**30:.2f} GiB free, one checkpoint needs about "
                            f"{need_bytes / 2**30:.2f} GiB (asking {FREE_SPACE_MARGIN}x that); free space or "
                            f"choose another folder")


class OutputLock:
    """An exclusive lock on `<folder>/.lock` (flock: released by the kernel when the process dies).

    A second job on the same folder is refused with the holder's pid and host."""

    def __init__(self, folder, what: str):
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OperatorError(f"{self.what}={self.path.parent} is in use by another job ({holder}); wait for it "
                                f"to finish or stop it, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
