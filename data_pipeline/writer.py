"""The destination side: Parquet shard bytes, atomic writes, per-shard completion records, verify.

Layout of a destination (local dir or s3:// prefix):
    shard-00000.parquet ...      the token shards (names fixed by input order)
    _progress/job.json           the job's settings fingerprint
    _progress/shard-00000.json   completion record, written AFTER its shard: rows, sha256, bytes,
                                 fingerprint, rejects. A shard counts as done only when its record
                                 exists, the fingerprint matches and the file's size and sha256 agree.
    rejects.jsonl                every rejected input (path + reason), written before the manifest
    manifest.json                written LAST: its presence marks a complete dataset
"""
from __future__ import annotations

import io
import json
import posixpath
from dataclasses import asdict
from typing import Dict, List, Optional

import numpy as np

from mvar_dist.data.shards import MANIFEST_NAME, Manifest, ShardInfo, shard_schema
from mvar_dist.fsio import is_local, sha256_bytes, write_bytes_atomic

from .sources import open_fs

PROGRESS_DIR = "_progress"
REJECTS_NAME = "rejects.jsonl"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def shard_bytes(image_id: List[str], label_N, variant_N, tokens_NL: np.ndarray, row_group_size: int = 1024) -> bytes:
    """Rows -> Parquet file bytes in the shard schema (tokens as fixed_size_list<uint16>[L])."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, seq_len = tokens_NL.shape
    if tokens_NL.size and int(tokens_NL.max()) > 65535:
        raise ValueError("token id above 65535 cannot be stored as uint16")
    flat = pa.array(np.ascontiguousarray(tokens_NL, dtype=np.uint16).reshape(-1), type=pa.uint16())
    table = pa.Table.from_arrays([
        pa.array(image_id, type=pa.string()),
        pa.array(np.asarray(label_N, dtype=np.int32), type=pa.int32()),
        pa.array(np.asarray(variant_N, dtype=np.int16), type=pa.int16()),
        pa.FixedSizeListArray.from_arrays(flat, seq_len),
    ], schema=shard_schema(seq_len))
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, row_group_size), compression="zstd",
                   write_page_checksum=True)  # lets readers detect corruption without a full sha256
    return buf.getvalue()


def read_shard_table(data: bytes):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


class Destination:
    """A dataset root on any fsspec filesystem, with the write rules above."""

    def __init__(self, uri: str, s3_endpoint: Optional[str] = None):
        self.uri = uri.rstrip("/")
        self.fs, self.root = open_fs(self.uri, s3_endpoint)
        self.local = is_local(self.fs)

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    def write(self, name: str, data: bytes) -> None:
        if self.local:
            self.fs.makedirs(posixpath.dirname(self.path(name)), exist_ok=True)
        write_bytes_atomic(self.fs, self.path(name), data)

    def remove(self, name: str) -> None:
        if self.exists(name):
            self.fs.rm_file(self.path(name))

    def check_writable(self) -> None:
        """Fail before any work when the destination cannot be written (permissions, credentials, bad path)."""
        probe = f"{PROGRESS_DIR}/.write-probe"
        try:
            if self.local:
                self.fs.makedirs(self.root, exist_ok=True)
            self.write(probe, b"ok")
            self.remove(probe)
        except Exception as e:
            raise PermissionError(f"destination {self.uri} is not writable: {_describe(e)}") from None

    def clean_temps(self) -> int:
        """Remove temp files a killed writer left behind (local disks only; S3 PUTs leave none)."""
        if not self.local or not self.fs.isdir(self.root):
            return 0
        stale = [p for p in self.fs.find(self.root) if ".tmp" in posixpath.basename(p)]
        for p in stale:
            self.fs.rm_file(p)
        return len(stale)

    # completion records -------------------------------------------------------------------------
    def record_name(self, shard: str) -> str:
        return f"{PROGRESS_DIR}/{shard.replace('.parquet', '.json')}"

    def write_record(self, record: dict) -> None:
        self.write(self.record_name(record["name"]), json.dumps(record, sort_keys=True).encode())

    def completed_record(self, shard: str, fingerprint: str, check_sha: bool = True) -> Optional[dict]:
        """The shard's record if the shard is complete and belongs to this job, else None."""
        try:
            rec = json.loads(self.read(self.record_name(shard)))
        except (FileNotFoundError, ValueError):
            return None
        if rec.get("fingerprint") != fingerprint or not self.exists(shard):
            return None
        if self.fs.size(self.path(shard)) != rec["bytes"]:
            return None
        if check_sha and sha256_bytes(self.read(shard)) != rec["sha256"]:
            return None
        return rec

    def read_manifest(self) -> Optional[Manifest]:
        try:
            text = self.read(MANIFEST_NAME).decode()
        except FileNotFoundError:
            return None
        return Manifest.from_json(text, where=f"{self.uri}/{MANIFEST_NAME}")


def finalize(dest: Destination, manifest: Manifest, records: List[dict]) -> str:
    """Rejects file, then the manifest (last). Returns the manifest's URI."""
    rejects = [r for rec in sorted(records, key=lambda r: r["name"]) for r in rec["rejects"]]
    dest.write(REJECTS_NAME, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
    manifest.shards = [ShardInfo(r["name"], r["rows"], r["sha256"], r["bytes"]) for r in sorted(records, key=lambda r: r["name"])]
    manifest.num_rejected = len(rejects)
    manifest.num_images = sum(r["images"] for r in records)
    dest.write(MANIFEST_NAME, manifest.to_json().encode())
    return f"{dest.uri}/{MANIFEST_NAME}"


def verify(uri: str, s3_endpoint: Optional[str] = None) -> List[str]:
    """Check every shard of a finished dataset against its manifest. Returns the problems ([] = all good)."""
    dest = Destination(uri, s3_endpoint)
    manifest = dest.read_manifest()
    if manifest is None:
        return [f"{uri}: no {MANIFEST_NAME} (the dataset is incomplete)"]
    problems = []
    for info in manifest.shards:
        if not dest.exists(info.name):
            problems.append(f"{info.name}: missing")
            continue
        data = dest.read(info.name)
        if len(data) != info.bytes:
            problems.append(f"{info.name}: {len(data)} bytes, manifest says {info.bytes}")
        if sha256_bytes(data) != info.sha256:
            problems.append(f"{info.name}: sha256 mismatch")
            continue
        table = read_shard_table(data)
        if table.num_rows != info.rows:
            problems.append(f"{info.name}: {table.num_rows} rows, manifest says {info.rows}")
        if table.schema.field("tokens").type.list_size != manifest.seq_len:
            problems.append(f"{info.name}: token rows are not {manifest.seq_len} long")
    return problems


def load_rows(uri: str, s3_endpoint: Optional[str] = None) -> Dict[str, np.ndarray]:
    """All rows of a finished dataset in manifest order (small datasets: tests, tools)."""
    import pyarrow as pa

    dest = Destination(uri, s3_endpoint)
    manifest = dest.read_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{uri}: no {MANIFEST_NAME}")
    tables = [read_shard_table(dest.read(s.name)) for s in manifest.shards]
    table = pa.concat_tables(tables) if tables else shard_schema(manifest.seq_len).empty_table()
    tokens = table.column("tokens").combine_chunks()
    return {
        "image_id": np.asarray(table.column("image_id").to_pylist(), dtype=object),
        "label": table.column("label").to_numpy(),
        "variant": table.column("variant").to_numpy(),
        "tokens": tokens.values.to_numpy().reshape(len(table), manifest.seq_len) if len(table) else
        np.zeros((0, manifest.seq_len), np.uint16),
    }


def _describe(e: Exception) -> str:
    """An exception as text without anything that could carry a secret (botocore messages do not)."""
    name = type(e).__name__
    if "Credential" in name or "credential" in str(e).lower():
        return ("no usable AWS credentials (standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                f"AWS_PROFILE, ~/.aws/credentials, instance role): {name}")
    return f"{name}: {e}"


def record_from(name: str, data: bytes, rows: int, images: int, fingerprint: str, rejects: List[dict]) -> dict:
    info = ShardInfo(name, rows, sha256_bytes(data), len(data))
    return {**asdict(info), "images": images, "fingerprint": fingerprint, "rejects": rejects}
