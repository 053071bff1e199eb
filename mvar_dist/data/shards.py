"""The token-shard contract shared by the writer (data_pipeline) and the reader (mvar_dist.data).

A dataset is a folder (local or s3://) of Parquet shards plus `manifest.json`, written last: its
presence marks a complete dataset. One row = one training example:

    image_id: string   (stable id of the source image, e.g. its relative path)
    label:    int32    (class index)
    variant:  int16    (augmentation variant; 0 = centre crop, no flip)
    tokens:   fixed_size_list<uint16>[L]  (all scales concatenated, coarse to fine, raster order)
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

# part of the shard contract's public names; the implementations live in mvar_dist.fsio
from mvar_dist.fsio import sha256_bytes, write_bytes_atomic  # noqa: F401

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# How images are dealt to shards: shard i holds images [i*n, (i+1)*n) of a seeded permutation of the
# whole input, so every shard (and every loader window of a few shards) mixes all classes.
ORDER_SCHEME = "pcg64-permutation-v1"
RESHARD_COMMAND = "python launchers/reshard.py --source OLD --dest NEW"


def shard_schema(seq_len: int):
    import pyarrow as pa

    return pa.schema([
        ("image_id", pa.string()),
        ("label", pa.int32()),
        ("variant", pa.int16()),
        ("tokens", pa.list_(pa.uint16(), seq_len)),
    ])


@dataclass
class ShardInfo:
    name: str          # file name relative to the dataset root, e.g. "shard-00003.parquet"
    rows: int          # number of rows
    sha256: str        # hex digest of the file bytes
    bytes: int         # file size


@dataclass
class Manifest:
    tokenizer: Dict[str, Any]        # {"hash": weights sha256, "random_weights": bool, vocab_size, ch, ch_mult, z_channels, share_quant_resi, num_res_blocks}
    patch_nums: List[int]            # scales, coarse to fine
    resolution: int                  # image side the tokens were made at
    variants: Dict[str, Any]         # {"count": K, "seed": s, "hflip": bool, "scheme": "var-crop-1.125-lanczos"}
    num_classes: int
    shards: List[ShardInfo] = field(default_factory=list)
    num_images: int = 0              # distinct source images encoded
    num_rejected: int = 0            # images listed in the rejects file
    class_names: List[str] = field(default_factory=list)
    source: str = ""                 # input location (never with credentials)
    created: str = ""                # ISO-8601 UTC
    version: int = FORMAT_VERSION
    # {"scheme": ORDER_SCHEME, "seed": s, "order_sha256": hash of the dealt image ids} for class-mixed
    # shards; {"scheme": "sorted"} or {} (datasets written before this field) for shards that follow
    # the input listing, i.e. hold one or two classes each on ImageNet.
    order: Dict[str, Any] = field(default_factory=dict)

    @property
    def class_mixed(self) -> bool:
        return self.order.get("scheme") == ORDER_SCHEME

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest.json") -> "Manifest":
        try:
            d = json.loads(text)
            d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
            m = cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{where} is not a valid mvar-dist manifest: {e}") from e
        if m.version != FORMAT_VERSION:
            raise ValueError(f"{where} has format version {m.version}; this code reads version {FORMAT_VERSION}")
        return m

    def check_compatible(self, patch_nums: Sequence[int], tokenizer_hash: Optional[str] = None,
                         vocab_size: Optional[int] = None) -> None:
        """Refuse shards made with another tokenizer / patch_nums than the run's, with a clear message."""
        if list(patch_nums) != list(self.patch_nums):
            raise ValueError(f"token shards were made with patch_nums {self.patch_nums}, the run uses {list(patch_nums)}")
        if vocab_size is not None and vocab_size != self.tokenizer.get("vocab_size"):
            raise ValueError(f"token shards use vocab_size {self.tokenizer.get('vocab_size')}, the run uses {vocab_size}")
        if tokenizer_hash is not None and tokenizer_hash != self.tokenizer.get("hash"):
            raise ValueError(f"token shards were made with tokenizer {str(self.tokenizer.get('hash'))[:12]}..., "
                             f"the run's tokenizer is {tokenizer_hash[:12]}...")


def deal_permutation(n: int, seed: int):
    """The ORDER_SCHEME permutation of n items: position k of the dealt order is input item perm[k]."""
    import numpy as np

    if seed < 0:
        raise ValueError(f"order seed must be >= 0, got {seed}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, n, 0x5EED]))).permutation(n)


def split_tokens(tokens_BL, patch_nums: Sequence[int]) -> List[Any]:
    """(B, L) concatenated ids -> list of (B, pn*pn) per scale (works for numpy arrays and torch tensors)."""
    out, start = [], 0
    for pn in patch_nums:
        out.append(tokens_BL[:, start:start + pn * pn])
        start += pn * pn
    if start != tokens_BL.shape[1]:
        raise ValueError(f"token rows have length {tokens_BL.shape[1]}, patch_nums {list(patch_nums)} need {start}")
    return out


def scale_offsets(patch_nums: Sequence[int]) -> List[Tuple[int, int]]:
    """[begin, end) of each scale in the concatenated sequence."""
    out, start = [], 0
    for pn in patch_nums:
        out.append((start, start + pn * pn))
        start += pn * pn
    return out
