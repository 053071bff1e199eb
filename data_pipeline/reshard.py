"""`reshard`: rewrite a finished token dataset into class-mixed shards, without re-encoding.

Datasets written before the tokenisation job dealt images to shards follow the input listing, which
is class-sorted on ImageNet. This rewrites one into the dealt order (`ORDER_SCHEME`, the order a new
job writes) in three passes, holding at most one input or one output shard in memory:

1. ids: the `image_id` column of every input shard -> each image's dealt position;
2. scatter: each input shard is read whole, checked against the input manifest's size and sha256,
   and split into pieces, one per output shard, in a local work folder;
3. gather: each output shard is its pieces, rows sorted by (dealt position, variant), written
   atomically with a completion record (as in the job: a record always points at a complete file).

The manifest is written last, after an order-independent digest of every row (id, label, variant,
tokens) and the row and image counts of the output are found equal to the input's. A killed run
resumes: finished scatter pieces (marker per input shard) and output shards (records) are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from mvar_dist.data.shards import MANIFEST_NAME, ORDER_SCHEME, Manifest, ShardInfo, deal_permutation
from mvar_dist.fsio import sha256_bytes

from .writer import REJECTS_NAME, Destination, read_shard_table, record_from, shard_bytes, shard_name

_MASK = (1 << 64) - 1


@dataclass
class ReshardOptions:
    source: str                         # finished dataset to rewrite (local dir or s3://); never modified
    dest: str                           # new dataset (local dir or s3://), not the source
    seed: int = 0                       # seed of the dealing permutation (as the job's order_seed)
    images_per_shard: int = 1000        # images per output shard
    row_group_size: int = 1024          # Parquet rows per row group
    work_dir: Optional[str] = None      # local scratch for pass 2 (default: system temp dir; needs ~the dataset's size)
    s3_endpoint: Optional[str] = None   # explicit S3 endpoint (else AWS_ENDPOINT_URL / AWS config)
    overwrite: bool = False             # replace a different finished dataset at dest

    def validate(self) -> None:
        if self.images_per_shard < 1 or self.row_group_size < 1 or self.seed < 0:
            raise ValueError("images_per_shard and row_group_size must be >= 1, seed >= 0")
        if self.source.rstrip("/") == self.dest.rstrip("/"):
            raise ValueError("reshard writes a new dataset: --dest must differ from --source")


def rows_digest(table) -> int:
    """Sum over rows (mod 2^64) of a 64-bit hash of (image_id, label, variant, tokens): equal for
    the same multiset of rows whatever their order or split into shards."""
    n = table.num_rows
    if n == 0:
        return 0
    seq_len = table.schema.field("tokens").type.list_size
    tok = table.column("tokens").combine_chunks().values.to_numpy().reshape(n, seq_len).astype(np.uint64)
    powers = np.cumprod(np.full(seq_len, 1000003, dtype=np.uint64), dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (tok * powers).sum(axis=1, dtype=np.uint64)
        ids = np.array([zlib.crc32(s.encode()) for s in table.column("image_id").to_pylist()], dtype=np.uint64)
        h ^= ids * np.uint64(0x9E3779B97F4A7C15)
        h += table.column("label").to_numpy().astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h += table.column("variant").to_numpy().astype(np.uint64) * np.uint64(0x165667B19E3779F9)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
    return int(h.sum(dtype=np.uint64)) & _MASK


def _unique_ids(ids: List[str]) -> Tuple[List[str], np.ndarray]:
    """(distinct ids in first-appearance order, each row's index into them)."""
    index: Dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(i, len(index)) for i in ids), dtype=np.int64, count=len(ids))
    return list(index), inverse


def _image_ids(src: Destination, manifest: Manifest) -> Tuple[List[str], np.ndarray]:
    """Pass 1: every image id (shard by shard, first appearance) and each shard's first image index."""
    import pyarrow.parquet as pq

    ids: List[str] = []
    starts = [0]
    seen = set()
    for info in manifest.shards:
        with src.fs.open(src.path(info.name), "rb") as f:
            shard_ids = _unique_ids(pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist())[0]
        dup = seen.intersection(shard_ids)
        if dup:
            raise ValueError(f"{src.uri}/{info.name}: image {sorted(dup)[0]!r} also sits in an earlier shard; "
                             "every image's variants must sit in one shard")
        seen.update(shard_ids)
        ids += shard_ids
        starts.append(len(ids))
    return ids, np.asarray(starts, dtype=np.int64)


def _fingerprint(manifest: Manifest, opts: ReshardOptions) -> str:
    job = {"input": [(s.name, s.sha256) for s in manifest.shards], "seed": opts.seed, "scheme": ORDER_SCHEME,
           "images_per_shard": opts.images_per_shard, "row_group_size": opts.row_group_size, "tool": "reshard-v1"}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


def _read_verified(src: Destination, info: ShardInfo) -> bytes:
    data = src.read(info.name)
    if len(data) != info.bytes or sha256_bytes(data) != info.sha256:
        raise ValueError(f"{src.uri}/{info.name} does not match the input manifest (size or sha256): the input is "
                         "damaged; nothing was written to the destination's manifest")
    return data


def _scatter(src: Destination, manifest: Manifest, pos_of: np.ndarray, starts: np.ndarray, work: str,
             opts: ReshardOptions, log) -> int:
    """Pass 2; returns the input rows' digest (kept in each shard's marker, so a resume needs no re-read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    digest = 0
    for i, info in enumerate(manifest.shards):
        marker = os.path.join(work, f"scatter-{i:05d}.json")
        if os.path.exists(marker):
            with open(marker) as f:
                digest = (digest + int(json.load(f)["digest"])) & _MASK
            continue
        table = read_shard_table(_read_verified(src, info))
        local = _unique_ids(table.column("image_id").to_pylist())[1]
        pos = pos_of[starts[i] + local]
        out = pos // opts.images_per_shard
        table = table.append_column("pos", pa.array(pos, pa.int64()))
        for j in np.unique(out):
            piece = os.path.join(work, f"{int(j):05d}", f"{i:05d}.parquet")
            os.makedirs(os.path.dirname(piece), exist_ok=True)
            pq.write_table(table.filter(pa.array(out == j)), piece + ".tmp")
            os.replace(piece + ".tmp", piece)
        d = rows_digest(table.drop_columns(["pos"]))
        with open(marker + ".tmp", "w") as f:
            json.dump({"digest": str(d), "rows": table.num_rows}, f)
        os.replace(marker + ".tmp", marker)        # after every piece: a marker means the shard is scattered
        digest = (digest + d) & _MASK
        log(f"[reshard] scattered {info.name} ({i + 1}/{len(manifest.shards)})")
    return digest


def _gather(dest: Destination, n_out: int, work: str, fp: str, opts: ReshardOptions, log) -> List[dict]:
    """Pass 3: output shard j from its pieces; finished shards (valid record) are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    for j in range(n_out):
        name, shard_fp = shard_name(j), f"{fp}:{j}"
        rec = dest.completed_record(name, shard_fp)
        if rec is None:
            folder = os.path.join(work, f"{j:05d}")
            pieces = sorted(p for p in os.listdir(folder) if p.endswith(".parquet"))
            table = pa.concat_tables([pq.read_table(os.path.join(folder, p)) for p in pieces])
            table = table.sort_by([("pos", "ascending"), ("variant", "ascending")])
            n, seq_len = table.num_rows, table.schema.field("tokens").type.list_size
            tokens = table.column("tokens").combine_chunks().values.to_numpy().reshape(n, seq_len)
            variant = table.column("variant").to_numpy()
            data = shard_bytes(table.column("image_id").to_pylist(), table.column("label").to_numpy(), variant,
                               tokens, opts.row_group_size)
            rec = record_from(name, data, n, len(set(table.column("image_id").to_pylist())), shard_fp, [])
            rec["digest"] = str(rows_digest(read_shard_table(data)))
            dest.write(name, data)
            dest.write_record(rec)
            log(f"[reshard] wrote {name} ({j + 1}/{n_out}, {n} rows)")
        records.append(rec)
    return records


def reshard(opts: ReshardOptions, log=print) -> str:
    """Rewrite `opts.source` into class-mixed shards at `opts.dest`; returns the new manifest's URI."""
    opts.validate()
    src, dest = Destination(opts.source, opts.s3_endpoint), Destination(opts.dest, opts.s3_endpoint)
    manifest = src.read_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{src.uri}: no {MANIFEST_NAME} (not a finished token dataset)")
    fp = _fingerprint(manifest, opts)
    done = dest.read_manifest()
    if done is not None:
        if done.order.get("reshard_fingerprint") == fp:
            log(f"[reshard] {dest.uri} is already complete for these settings; nothing to do")
            return f"{dest.uri}/{MANIFEST_NAME}"
        if not opts.overwrite:
            raise FileExistsError(f"{dest.uri} already holds a finished dataset; pass --overwrite or choose another dest")
    dest.check_writable()
    dest.remove(MANIFEST_NAME)
    dest.clean_temps()
    work = opts.work_dir or os.path.join(tempfile.gettempdir(), f"mvar-reshard-{fp[:16]}")
    os.makedirs(work, exist_ok=True)

    ids, starts = _image_ids(src, manifest)
    perm = deal_permutation(len(ids), opts.seed)
    pos_of = np.empty(len(ids), dtype=np.int64)
    pos_of[perm] = np.arange(len(ids))
    log(f"[reshard] {len(ids)} images in {len(manifest.shards)} shards -> "
        f"{-(-len(ids) // opts.images_per_shard)} class-mixed shards at {dest.uri} (work dir {work})")
    in_digest = _scatter(src, manifest, pos_of, starts, work, opts, log)
    records = _gather(dest, -(-len(ids) // opts.images_per_shard), work, fp, opts, log)
    out_digest = sum(int(r["digest"]) for r in records) & _MASK
    rows, images = sum(r["rows"] for r in records), sum(r["images"] for r in records)
    if (rows, images, out_digest) != (manifest.num_rows, len(ids), in_digest):
        raise RuntimeError(f"reshard output ({rows} rows, {images} images) differs from the input "
                           f"({manifest.num_rows} rows, {len(ids)} images) or in content; no manifest written")
    if src.exists(REJECTS_NAME):
        dest.write(REJECTS_NAME, src.read(REJECTS_NAME))
    dealt = [ids[k] for k in perm]
    out = Manifest.from_json(manifest.to_json())
    out.shards = [ShardInfo(r["name"], r["rows"], r["sha256"], r["bytes"]) for r in records]
    out.order = {"scheme": ORDER_SCHEME, "seed": opts.seed, "reshard_fingerprint": fp,
                 "order_sha256": hashlib.sha256("\n".join(dealt).encode()).hexdigest(),
                 "resharded_from": {"uri": src.uri, "manifest_sha256": sha256_bytes(src.read(MANIFEST_NAME))}}
    dest.write(MANIFEST_NAME, out.to_json().encode())
    shutil.rmtree(work, ignore_errors=True)
    log(f"[reshard] done: {rows} rows of {images} images in {len(records)} shards -> {dest.uri}/{MANIFEST_NAME}")
    return f"{dest.uri}/{MANIFEST_NAME}"
