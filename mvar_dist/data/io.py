"""Reading token shards from a local dir or s3://: manifest, per-shard image index, row groups.

Everything here fails loudly and names the shard: a missing, truncated or corrupt file, a schema
that disagrees with the manifest, token ids outside the vocabulary. A corrupt shard must never be
read as garbage tokens or silently shorten an epoch.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from mvar_dist.fsio import open_fs as resolve_fs  # noqa: F401  (re-exported: the loader's name for it)
from mvar_dist.fsio import is_local, sha256_file

from .order import is_val_image, variant_choices
from .shards import MANIFEST_NAME, RESHARD_COMMAND, Manifest, ShardInfo

_warned_sorted: set = set()


class ShardError(RuntimeError):
    """A token shard is missing, corrupt or inconsistent with its manifest; the message names it."""


def is_remote(fs) -> bool:
    return not is_local(fs)


def read_manifest(uri: str, storage_options: Optional[Dict[str, Any]] = None) -> Manifest:
    fs, root = resolve_fs(uri, storage_options)
    path = f"{root}/{MANIFEST_NAME}"
    if not fs.exists(path):
        raise FileNotFoundError(f"no {MANIFEST_NAME} under {uri}: the token dataset is missing or incomplete "
                                f"(the tokenisation job writes the manifest last)")
    return Manifest.from_json(fs.cat_file(path).decode(), where=f"{uri.rstrip('/')}/{MANIFEST_NAME}")


def warn_if_sorted(manifest: Manifest, uri: str) -> None:
    """Warn once per dataset and process when its shards follow the (class-sorted) input listing: the
    loader only shuffles within windows of a few shards, so its batches would hold a few classes."""
    if manifest.class_mixed or uri in _warned_sorted:
        return
    _warned_sorted.add(uri)
    said = f"says its order is {manifest.order['scheme']!r}" if manifest.order else "does not record its order"
    warnings.warn(f"the manifest of {uri} {said}: its shards are probably class-sorted, so every batch would hold "
                  f"a few classes. Rewrite it into class-mixed shards without re-encoding: {RESHARD_COMMAND} "
                  f"(docs/data_pipeline.md, 'Class-mixed shards')", UserWarning, stacklevel=3)


def check_shards_present(fs, root: str, manifest: Manifest, uri: str) -> None:
    """One listing call: every shard the manifest names exists with the recorded size."""
    sizes = {os.path.basename(e["name"].rstrip("/")): e.get("size") for e in fs.ls(root, detail=True)}
    for info in manifest.shards:
        if info.name not in sizes:
            raise ShardError(f"token shard {info.name} listed in the manifest is missing from {uri}")
        if sizes[info.name] is not None and int(sizes[info.name]) != info.bytes:
            raise ShardError(f"token shard {info.name} in {uri} has {sizes[info.name]} bytes, the manifest "
                             f"records {info.bytes}: truncated or replaced")


class ShardIndex:
    """Which rows of one shard hold which image's variants, restricted to one split."""

    def __init__(self, name: str, image_ids, variants: np.ndarray, split: str, val_fraction: float):
        import pyarrow.compute as pc

        if image_ids.null_count:
            raise ShardError(f"token shard {name} has rows without image_id")
        encoded = pc.dictionary_encode(image_ids)  # dictionary keeps first-appearance order
        codes = encoded.indices.to_numpy().astype(np.int64)
        self.ids = encoded.dictionary.to_pylist()
        self.row_order = np.lexsort((variants, codes))  # rows grouped by image, variants ascending
        sorted_codes, sorted_variants = codes[self.row_order], variants[self.row_order]
        dup = (sorted_codes[1:] == sorted_codes[:-1]) & (sorted_variants[1:] == sorted_variants[:-1])
        if dup.any():
            img = self.ids[sorted_codes[1:][dup][0]]
            raise ShardError(f"token shard {name} holds variant {sorted_variants[1:][dup][0]} of image {img!r} twice")
        self.n_variants = np.bincount(codes, minlength=len(self.ids))
        self.first_row = np.concatenate([[0], np.cumsum(self.n_variants)[:-1]])
        held_out = np.array([is_val_image(i, val_fraction) for i in self.ids], dtype=bool)
        keep = held_out if split == "val" else ~held_out
        self.images = np.flatnonzero(keep)  # split's images, in file order

    @property
    def num_images(self) -> int:
        return len(self.images)

    def chosen_rows(self, seed: int, epoch: int, local: np.ndarray) -> np.ndarray:
        """Row numbers of the variant each requested image (split-local index) uses in this epoch."""
        img = self.images[local]
        pick = variant_choices(seed, epoch, [self.ids[i] for i in img], self.n_variants[img])
        return self.row_order[self.first_row[img] + pick]


class ShardStore:
    """Per-process reader with bounded caches: open files, shard indexes, decoded row groups."""

    def __init__(self, uri: str, manifest: Manifest, storage_options: Optional[Dict[str, Any]] = None,
                 cache_dir: Optional[str] = None, split: str = "train", val_fraction: float = 0.0,
                 vocab_size: Optional[int] = None, cache_bytes: int = 256 << 20, max_open: int = 8,
                 verify_sha256: bool = True):
        self.uri, self.manifest = uri.rstrip("/"), manifest
        self.fs, self.root = resolve_fs(uri, storage_options)
        self.cache_dir = cache_dir if (cache_dir and is_remote(self.fs)) else None
        self.split, self.val_fraction = split, val_fraction
        self.vocab_size = vocab_size
        self.seq_len = manifest.seq_len
        self.cache_bytes, self.max_open = cache_bytes, max_open
        self._files: "OrderedDict[int, Any]" = OrderedDict()
        self._indexes: "OrderedDict[int, ShardIndex]" = OrderedDict()
        self._groups: "OrderedDict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]]" = OrderedDict()
        self._group_bytes = 0
        self._rg_starts: Dict[int, np.ndarray] = {}
        # Whole-file sha256 once per process for local files (remote ones: on download into cache_dir;
        # read in place, only sizes and Parquet page CRCs guard them).
        self.verify_sha256 = verify_sha256
        self._verified: set = set()

    # -- files ----------------------------------------------------------------------------------
    def _where(self, info: ShardInfo) -> str:
        return f"{self.uri}/{info.name}"

    def _cached_copy(self, info: ShardInfo) -> str:
        """Local copy of a remote shard, keyed by its checksum; downloaded once, verified, renamed in."""
        os.makedirs(self.cache_dir, exist_ok=True)
        local = os.path.join(self.cache_dir, f"{info.sha256}.parquet")
        if os.path.exists(local) and os.path.getsize(local) == info.bytes:
            return local
        tmp = f"{local}.tmp{os.getpid()}"
        try:
            self.fs.get_file(f"{self.root}/{info.name}", tmp)
            with open(tmp, "rb") as f:
                digest = sha256_file(f)
            if digest != info.sha256:
                raise ShardError(f"token shard {info.name} from {self.uri} fails its manifest sha256 check: corrupt")
            os.replace(tmp, local)  # atomic: concurrent workers/ranks never see a partial copy
        except FileNotFoundError as e:
            raise ShardError(f"token shard {info.name} is missing from {self.uri}") from e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return local

    def parquet(self, shard: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        hit = self._files.get(shard)
        if hit is not None:
            self._files.move_to_end(shard)
            return hit[0]
        info = self.manifest.shards[shard]
        handle = None
        try:
            if self.cache_dir:
                handle = open(self._cached_copy(info), "rb")  # verified when downloaded
            else:
                path = f"{self.root}/{info.name}"
                size = self.fs.size(path)
                if size != info.bytes:
                    raise ShardError(f"token shard {self._where(info)} has {size} bytes, the manifest records "
                                     f"{info.bytes}: truncated or replaced")
                if self.verify_sha256 and not is_remote(self.fs) and shard not in self._verified:
                    with self.fs.open(path, "rb") as f:
                        if sha256_file(f) != info.sha256:
                            raise ShardError(f"token shard {self._where(info)} fails its manifest sha256 check: corrupt")
                    self._verified.add(shard)
                # pyarrow asks for whole column chunks; fsspec's own read-ahead would only add requests
                handle = self.fs.open(path, "rb", cache_type="none") if is_remote(self.fs) else self.fs.open(path, "rb")
            pf = pq.ParquetFile(handle, page_checksum_verification=True, pre_buffer=is_remote(self.fs))
        except FileNotFoundError as e:
            raise ShardError(f"token shard {self._where(info)} is missing") from e
        except (pa.ArrowException, OSError) as e:
            if handle is not None:
                handle.close()
            raise ShardError(f"token shard {self._where(info)} is unreadable or corrupt: {e}") from e
        try:
            self._check_layout(info, pf)
        except ShardError:
            handle.close()
            raise
        self._files[shard] = (pf, handle)
        if len(self._files) > self.max_open:
            self._files.popitem(last=False)[1][1].close()
        return pf

    def _check_layout(self, info: ShardInfo, pf) -> None:
        import pyarrow as pa

        if pf.metadata.num_rows != info.rows:
            raise ShardError(f"token shard {self._where(info)} has {pf.metadata.num_rows} rows, the manifest "
                             f"records {info.rows}")
        schema = pf.schema_arrow
        missing = {"image_id", "label", "variant", "tokens"} - set(schema.names)
        if missing:
            raise ShardError(f"token shard {self._where(info)} lacks columns {sorted(missing)}")
        tokens_type = schema.field("tokens").type
        if not pa.types.is_fixed_size_list(tokens_type) or tokens_type.list_size != self.seq_len:
            raise ShardError(f"token shard {self._where(info)} stores tokens as {tokens_type}; the manifest's "
                             f"patch_nums need fixed_size_list<uint16>[{self.seq_len}]")

    def _read(self, info: ShardInfo, fn):
        import pyarrow as pa

        try:
            return fn()
        except (pa.ArrowException, OSError) as e:
            raise ShardError(f"token shard {self._where(info)} is unreadable or corrupt: {e}") from e

    # -- index and rows -------------------------------------------------------------------------
    def index(self, shard: int) -> ShardIndex:
        idx = self._indexes.get(shard)
        if idx is not None:
            self._indexes.move_to_end(shard)
            return idx
        info, pf = self.manifest.shards[shard], self.parquet(shard)
        table = self._read(info, lambda: pf.read(columns=["image_id", "variant"]))
        ids = table.column("image_id").combine_chunks()
        variants = table.column("variant").to_numpy().astype(np.int64)
        idx = ShardIndex(info.name, ids, variants, self.split, self.val_fraction)
        self._indexes[shard] = idx
        if len(self._indexes) > self.max_open:
            self._indexes.popitem(last=False)
        return idx

    def _row_group(self, shard: int, rg: int) -> Tuple[np.ndarray, np.ndarray]:
        key = (shard, rg)
        hit = self._groups.get(key)
        if hit is not None:
            self._groups.move_to_end(key)
            return hit
        info, pf = self.manifest.shards[shard], self.parquet(shard)
        table = self._read(info, lambda: pf.read_row_group(rg, columns=["label", "tokens"]))
        tokens = table.column("tokens").combine_chunks()
        labels = table.column("label")
        if tokens.null_count or labels.null_count:
            raise ShardError(f"token shard {self._where(info)} has null labels or tokens in row group {rg}")
        tokens_nL = tokens.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.seq_len)
        hit = (labels.to_numpy().astype(np.int64), tokens_nL)
        self._groups[key] = hit
        self._group_bytes += hit[0].nbytes + hit[1].nbytes
        while self._group_bytes > self.cache_bytes and len(self._groups) > 1:
            old = self._groups.popitem(last=False)[1]
            self._group_bytes -= old[0].nbytes + old[1].nbytes
        return hit

    def gather(self, shard: int, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(labels int64 (n,), tokens uint16 (n, L)) of the given rows, in the given order."""
        starts = self._rg_starts.get(shard)
        if starts is None:
            md = self.parquet(shard).metadata
            starts = np.concatenate([[0], np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])])
            self._rg_starts[shard] = starts
        groups = np.searchsorted(starts, rows, side="right") - 1
        labels = np.empty(len(rows), dtype=np.int64)
        tokens = np.empty((len(rows), self.seq_len), dtype=np.uint16)
        for rg in np.unique(groups):
            sel = groups == rg
            g_labels, g_tokens = self._row_group(shard, int(rg))
            local = rows[sel] - starts[rg]
            labels[sel], tokens[sel] = g_labels[local], g_tokens[local]
        self._check_values(shard, labels, tokens)
        return labels, tokens

    def _check_values(self, shard: int, labels: np.ndarray, tokens: np.ndarray) -> None:
        where = self._where(self.manifest.shards[shard])
        if self.vocab_size is not None and tokens.size and int(tokens.max()) >= self.vocab_size:
            raise ShardError(f"token shard {where} has token id {int(tokens.max())} >= vocab_size {self.vocab_size}")
        n_cls = self.manifest.num_classes
        if labels.size and (labels.min() < 0 or (n_cls and labels.max() >= n_cls)):
            raise ShardError(f"token shard {where} has labels outside [0, {n_cls})")

    def close(self) -> None:
        for _, handle in self._files.values():
            handle.close()
        self._files.clear()


def split_counts(store: ShardStore, variants_per_image: Optional[int]) -> Sequence[int]:
    """Images of the store's split in each shard.

    Fast path (no I/O): the whole dataset is the split and every image has K variants in one shard,
    so a shard holds rows / K images (the loader re-checks each shard's count when it reads it).
    Otherwise each shard's image_id and variant columns are scanned once."""
    m = store.manifest
    if store.split == "train" and store.val_fraction <= 0 and variants_per_image \
            and all(s.rows % variants_per_image == 0 for s in m.shards):
        counts = [s.rows // variants_per_image for s in m.shards]
        if not m.num_images or sum(counts) == m.num_images:
            return counts
    counts, total = [], 0
    for shard in range(len(m.shards)):
        index = store.index(shard)
        counts.append(index.num_images)
        total += len(index.ids)
    if m.num_images and total != m.num_images:
        raise ShardError(f"the manifest of {store.uri} records {m.num_images} images, its shards hold {total} "
                         f"(an image's variants split over several shards count twice)")
    return counts
