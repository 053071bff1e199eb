"""Small synthetic token datasets that follow the shard contract (mvar_dist/data/shards.py).

Each row's tokens encode where it came from, so tests can recognise every sample:
tokens[0] = variant, tokens[1] = image // vocab, tokens[2] = image % vocab, the rest pseudo-random.
Used by the loader tests and by the trainer's tests.
"""
from __future__ import annotations

import io
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mvar_dist.data.shards import MANIFEST_NAME, ORDER_SCHEME, Manifest, ShardInfo, sha256_bytes, shard_schema, write_bytes_atomic

FAKE_TOKENIZER_HASH = "f" * 64


def image_id(i: int) -> str:
    return f"class{i % 10}/img{i:05d}.png"


def write_token_shards(uri: str, num_images: int = 60, variants: int = 2, patch_nums: Sequence[int] = (1, 2, 3, 4),
                       vocab_size: int = 256, images_per_shard: int = 13, rows_per_group: int = 8,
                       num_classes: int = 10, seed: int = 0, tokenizer_hash: str = FAKE_TOKENIZER_HASH,
                       storage_options: Optional[Dict[str, Any]] = None, class_sorted: bool = False) -> Manifest:
    """Write shards + manifest (last) under a local dir or s3:// prefix; returns the manifest.

    An image's variants are written next to each other in descending variant order, so readers
    cannot rely on rows being sorted by variant. Labels go round-robin (image i has class i % num_classes),
    so shards are class-mixed; `class_sorted` makes them follow a class-by-class listing instead (image i
    has class i * num_classes // num_images), the layout of datasets written before shards were dealt."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mvar_dist.data.io import resolve_fs

    seq_len = sum(p * p for p in patch_nums)
    if seq_len < 3 or num_images > vocab_size ** 2:
        raise ValueError("need >= 3 tokens per row and num_images <= vocab_size**2 to encode the sample identity")
    fs, root = resolve_fs(uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)

    def label_of(i: int) -> int:
        return i * num_classes // num_images if class_sorted else i % num_classes

    shards: List[ShardInfo] = []
    for s, first in enumerate(range(0, num_images, images_per_shard)):
        images = range(first, min(first + images_per_shard, num_images))
        rows = [(i, v) for i in images for v in reversed(range(variants))]
        tokens = rng.integers(0, vocab_size, size=(len(rows), seq_len), dtype=np.uint16)
        tokens[:, 0] = [v for _, v in rows]
        tokens[:, 1] = [i // vocab_size for i, _ in rows]
        tokens[:, 2] = [i % vocab_size for i, _ in rows]
        table = pa.table({
            "image_id": pa.array([image_id(i) for i, _ in rows], pa.string()),
            "label": pa.array([label_of(i) for i, _ in rows], pa.int32()),
            "variant": pa.array([v for _, v in rows], pa.int16()),
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1), pa.uint16()), seq_len),
        }, schema=shard_schema(seq_len))
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=rows_per_group, write_page_checksum=True)
        data = buf.getvalue()
        name = f"shard-{s:05d}.parquet"
        write_bytes_atomic(fs, f"{root}/{name}", data)
        shards.append(ShardInfo(name=name, rows=len(rows), sha256=sha256_bytes(data), bytes=len(data)))
    manifest = Manifest(
        tokenizer={"hash": tokenizer_hash, "random_weights": True, "vocab_size": vocab_size},
        patch_nums=list(patch_nums), resolution=patch_nums[-1] * 16,
        variants={"count": variants, "seed": seed, "hflip": False, "scheme": "synthetic"},
        num_classes=num_classes, shards=shards, num_images=num_images, source="tests/helpers/shard_factory.py",
        created="2026-01-01T00:00:00Z",
        order={"scheme": "sorted"} if class_sorted else {"scheme": ORDER_SCHEME, "seed": seed, "note": "round-robin labels"})
    write_bytes_atomic(fs, f"{root}/{MANIFEST_NAME}", manifest.to_json().encode())
    return manifest


def flip_byte(path: str, where: float = 0.5) -> None:
    """Corrupt a local shard in place without changing its size: only content checks can catch it."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[int(len(data) * where)] ^= 0xFF
        f.seek(0)
        f.write(bytes(data))


def decode(tokens_BL, vocab_size: int = 256) -> List[Tuple[int, int]]:
    """(image index, variant) of each row written by write_token_shards."""
    t = np.asarray(tokens_BL, dtype=np.int64)
    return [(int(r[1]) * vocab_size + int(r[2]), int(r[0])) for r in t]
