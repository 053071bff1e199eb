"""The tokenisation job: shard spans -> skip finished shards -> Ray Data pipeline -> shards -> manifest.

The driver owns the spans and the writes: shard i holds images [i*n, (i+1)*n) of the dealt listing
(a seeded permutation of the sorted input listing, so every shard mixes all classes: ImageNet lists
class by class), rows sorted by (dealt position, variant), so the output does not depend on which
worker finished first, on how many workers there were, or on where an earlier run was interrupted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

import numpy as np

from mvar_dist.data.shards import MANIFEST_NAME, Manifest

from .augment import VariantSpec
from .progress import Progress
from .sources import Listing, deal, list_inputs
from .writer import PROGRESS_DIR, REJECTS_NAME, Destination, finalize, record_from, shard_bytes, shard_name

@dataclass
class TokenizeOptions:
    source: str                                 # ImageFolder dir, tar dir or s3:// prefix
    dest: str                                   # local dir or s3:// prefix for shards + manifest
    variants: VariantSpec = field(default_factory=VariantSpec)
    images_per_shard: int = 1000                # source images per shard (rows = images x K)
    row_group_size: int = 1024                  # Parquet rows per row group
    batch_size: int = 32                        # crops per encoder call
    read_batch: int = 8                         # images per decode task batch
    num_actors: int = 1                         # encoder actors (one tokenizer each)
    actor_cpus: float = 0.5                     # CPUs per encoder actor (fractional on small boxes)
    read_cpus: float = 0.5                      # CPUs per decode task
    num_gpus: float = -1.0                      # GPUs per encoder actor; 0 = CPU; -1 = auto (1 per actor, an actor per GPU)
    tf32: bool = False                          # allow TF32 on GPU (faster, ids may differ on near-ties)
    torch_threads: int = 0                      # torch threads per actor (0 = Ray's default)
    s3_endpoint: Optional[str] = None           # explicit S3 endpoint (else AWS_ENDPOINT_URL / AWS config)
    overwrite: bool = False                     # replace a finished dataset made with other settings
    check_sha: bool = True                      # re-hash finished shards before skipping them on resume
    progress_every: float = 10.0                # seconds between progress lines
    limit: int = 0                              # only the first N images of the dealt order (0 = all)
    order_seed: int = 0                         # seed of the permutation dealing images to shards

    def validate(self) -> None:
        self.variants.validate()
        for name in ("images_per_shard", "row_group_size", "batch_size", "read_batch", "num_actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.order_seed < 0 or self.limit < 0:
            raise ValueError(f"order_seed and limit must be >= 0, got {self.order_seed}, {self.limit}")
        if self.actor_cpus <= 0 or self.read_cpus <= 0 or (self.num_gpus < 0 and self.num_gpus != -1):
            raise ValueError("actor_cpus and read_cpus must be > 0, num_gpus >= 0 or -1 (auto)")


@dataclass
class ShardSpan:
    index: int
    start: int          # first input position
    stop: int
    fingerprint: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


def _no_op(*args) -> None:
    pass


@dataclass(frozen=True)
class JobHooks:
    """Points where a caller can reach into the job; the defaults do nothing.

    shard_written(dest, written, pending): after each shard this run writes (file and completion
    record); `written` counts them, `pending` lists this run's shard spans in writing order.
    The interruption test kills the driver from here (tests/helpers/pretokenize_killed_after.py)."""

    shard_written: Callable[[Destination, int, List[ShardSpan]], None] = _no_op


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def span_shards(listing: Listing, job_fp: str, per_shard: int) -> List[ShardSpan]:
    spans = []
    for i, start in enumerate(range(0, len(listing.refs), per_shard)):
        refs = listing.refs[start:start + per_shard]
        fp = _sha([job_fp, [(r.image_id, r.label, r.size) for r in refs]])
        spans.append(ShardSpan(i, start, start + len(refs), fp))
    return spans


def load_driver_tokenizer(tok_cfg):
    """Build the tokenizer once in the driver: a wrong checkpoint fails here, before any work."""
    from .stages import build_tokenizer

    path = tok_cfg.checkpoint
    if path and not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer checkpoint {path!r} does not exist")
    from mvar_dist.errors import OperatorError

    try:
        return build_tokenizer(_tok_dict(tok_cfg))
    except OperatorError:
        raise  # already names the file and what to do (e.g. non-finite weights)
    except Exception as e:
        what = f"tokenizer checkpoint {path!r}" if path else "tokenizer"
        raise ValueError(f"{what} does not load with tokenizer config (vocab_size={tok_cfg.vocab_size}, ch={tok_cfg.ch}, "
                         f"z_channels={tok_cfg.z_channels}, ch_mult={list(tok_cfg.ch_mult)}): {e}") from e


def _tok_dict(tok_cfg) -> dict:
    d = asdict(tok_cfg)
    d["ch_mult"], d["patch_nums"] = list(d["ch_mult"]), list(d["patch_nums"])
    return d


def tokenize(tok_cfg, opts: TokenizeOptions, log=print, hooks: JobHooks = JobHooks()) -> str:
    """Run the job; returns the manifest URI. Idempotent: a finished identical job returns at once."""
    opts.validate()
    tok_cfg.validate()
    if opts.variants.resolution != tok_cfg.resolution:
        raise ValueError(f"crop resolution {opts.variants.resolution} != tokenizer.resolution {tok_cfg.resolution}")
    listing = deal(list_inputs(opts.source, opts.s3_endpoint), opts.order_seed)
    if opts.limit:
        listing.refs = listing.refs[:opts.limit]
    dest = Destination(opts.dest, opts.s3_endpoint)
    dest.check_writable()
    from mvar_dist.preflight import OutputLock

    # Two jobs on one local destination would replace each other's shards and manifest.
    with (OutputLock(dest.root, "--dest") if dest.local else contextlib.nullcontext()):
        return _tokenize_into(dest, listing, tok_cfg, opts, log, hooks)


def _tokenize_into(dest: "Destination", listing, tok_cfg, opts: TokenizeOptions, log, hooks: JobHooks) -> str:
    vae = load_driver_tokenizer(tok_cfg)
    tok_info = {"hash": vae.weights_hash(), "random_weights": not tok_cfg.checkpoint, "vocab_size": tok_cfg.vocab_size,
                "ch": tok_cfg.ch, "ch_mult": list(tok_cfg.ch_mult), "z_channels": tok_cfg.z_channels,
                "share_quant_resi": tok_cfg.share_quant_resi, "num_res_blocks": tok_cfg.num_res_blocks}
    if tok_info["random_weights"]:
        log("[tokenize] NOTE: tokenizer.checkpoint is not set: encoding with a RANDOM-WEIGHT tokenizer "
            "(same architecture; fine for demos/tests, not for real training)")
    else:
        log(f"[tokenize] tokenizer weights: {tok_cfg.checkpoint} (sha256 {tok_info['hash'][:12]}...)")
    job = {"tokenizer": tok_info, "patch_nums": list(tok_cfg.patch_nums), "variants": opts.variants.to_manifest(),
           "images_per_shard": opts.images_per_shard, "row_group_size": opts.row_group_size,
           "order": {k: listing.order[k] for k in ("scheme", "seed")}}
    job_fp = _sha(job)
    spans = span_shards(listing, job_fp, opts.images_per_shard)

    done = _existing_job(dest, job_fp, spans, opts)
    if done is not None:
        log(f"[tokenize] {dest.uri} is already complete for these settings ({len(spans)} shards); nothing to do")
        return done
    dest.remove(MANIFEST_NAME)      # from here until the end the dataset is visibly incomplete
    dest.remove(REJECTS_NAME)
    stale = dest.clean_temps()
    dest.write(f"{PROGRESS_DIR}/job.json", json.dumps({**job, "fingerprint": job_fp}, sort_keys=True, indent=1).encode())

    records: Dict[str, dict] = {}
    pending = []
    for p in spans:
        rec = dest.completed_record(p.name, p.fingerprint, opts.check_sha)
        if rec is None:
            pending.append(p)
        else:
            records[p.name] = rec
    log(f"[tokenize] {len(listing.refs)} images in {len(listing.class_names)} classes from {listing.source}; "
        f"{len(spans)} shards ({len(spans) - len(pending)} already done"
        + (f", {stale} stale temp files removed" if stale else "") + f"), K={opts.variants.count} variants -> {dest.uri}")
    if pending:
        import ray

        started = not ray.is_initialized()
        if started:     # callers that manage Ray (the launcher, a cluster job) init it themselves
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            _run_pipeline(listing, pending, tok_cfg, tok_info["hash"], vae, dest, opts, records, log, hooks)
        finally:
            if started:
                ray.shutdown()
    del vae

    manifest = Manifest(tokenizer=tok_info, patch_nums=list(tok_cfg.patch_nums), resolution=tok_cfg.resolution,
                        variants=opts.variants.to_manifest(), num_classes=len(listing.class_names),
                        class_names=list(listing.class_names), source=listing.source, order=dict(listing.order),
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    uri = finalize(dest, manifest, list(records.values()))
    m = dest.read_manifest()
    log(f"[tokenize] done: {m.num_rows} rows from {m.num_images} images, {m.num_rejected} rejected "
        f"(see {dest.uri}/{REJECTS_NAME}), {len(m.shards)} shards, "
        f"{sum(s.bytes for s in m.shards) / 2**20:.2f} MiB -> {uri}")
    return uri


def _existing_job(dest: Destination, job_fp: str, spans: List[ShardSpan], opts: TokenizeOptions) -> Optional[str]:
    """Manifest URI when the destination already holds this exact job; raise if it holds another one."""
    manifest = dest.read_manifest()
    try:
        prev = json.loads(dest.read(f"{PROGRESS_DIR}/job.json"))
    except FileNotFoundError:
        prev = None
    if manifest is None:
        if prev is not None and prev.get("fingerprint") != job_fp and not opts.overwrite:
            raise FileExistsError(f"{dest.uri} holds an unfinished job with other settings; resume it with the same "
                                  "settings, or pass --overwrite to start over")
        return None
    same = prev is not None and prev.get("fingerprint") == job_fp and [s.name for s in manifest.shards] == [
        p.name for p in spans] and all(dest.completed_record(p.name, p.fingerprint, False) for p in spans)
    if same:
        return f"{dest.uri}/{MANIFEST_NAME}"
    if not opts.overwrite:
        raise FileExistsError(f"{dest.uri} already holds a finished dataset made from other inputs or settings; "
                              "pass --overwrite to replace it, or choose another destination")
    return None


def _run_pipeline(listing, pending, tok_cfg, tok_hash, vae, dest, opts, records, log, hooks: JobHooks) -> None:
    import ray

    from .stages import EncodeActor, decode_batch

    num_gpus, num_actors = opts.num_gpus, opts.num_actors
    if num_gpus < 0:    # auto: GPU encoders when the cluster has GPUs
        gpus = int(ray.cluster_resources().get("GPU", 0))
        num_gpus, num_actors = (1.0, max(num_actors, gpus)) if gpus else (0.0, num_actors)
    log(f"[tokenize] encoder pool: {num_actors} actor(s), " + (f"{num_gpus:g} GPU each" if num_gpus else "CPU"))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False    # our own progress line replaces Ray's bars
    items = []
    for p in pending:
        for pos in range(p.start, p.stop):
            r = listing.refs[pos]
            items.append({"image_id": r.image_id, "label": r.label, "uri": r.uri, "offset": r.offset,
                          "size": r.size, "shard": p.index, "pos": pos})
    state_ref = [ray.put(vae.official_state_dict())] if tok_cfg.checkpoint else None
    k = opts.variants.count
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // opts.read_batch, 2000)))
    ds = ds.map_batches(decode_batch, fn_kwargs={"spec": asdict(opts.variants), "s3_endpoint": opts.s3_endpoint},
                        batch_size=opts.read_batch, num_cpus=opts.read_cpus, batch_format="numpy")
    ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={
        "tok_cfg": _tok_dict(tok_cfg), "expected_hash": tok_hash, "state_ref": state_ref,
        "device": "cuda" if num_gpus > 0 else "cpu", "tf32": opts.tf32, "torch_threads": opts.torch_threads},
        compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=opts.batch_size,
        num_cpus=opts.actor_cpus, num_gpus=num_gpus or None, batch_format="numpy")

    by_index = {p.index: p for p in pending}
    buffers: Dict[int, List[dict]] = {p.index: [] for p in pending}
    got_rows = {p.index: 0 for p in pending}
    progress = Progress(total_images=len(items), total_shards=len(pending), every=opts.progress_every, log=log)
    written = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        shards = batch["shard"]
        for s in np.unique(shards):
            sel = shards == s
            part = {key: val[sel] for key, val in batch.items()}
            buffers[int(s)].append(part)
            got_rows[int(s)] += int(sel.sum()) + (k - 1) * int((part["variant"] < 0).sum())
            progress.images(int((part["variant"] <= 0).sum()))
            p = by_index[int(s)]
            if got_rows[int(s)] == k * (p.stop - p.start):
                records[p.name] = _write_shard(dest, p, buffers.pop(int(s)), opts)
                written += 1
                progress.shard_done()
                hooks.shard_written(dest, written, pending)
    if buffers:
        raise RuntimeError(f"pipeline ended with incomplete shards {sorted(buffers)}; rerun to resume")
    progress.finish()


def _write_shard(dest: Destination, span: ShardSpan, parts: List[dict], opts: TokenizeOptions) -> dict:
    cat = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.lexsort((cat["variant"], cat["pos"]))
    cat = {key: val[order] for key, val in cat.items()}
    ok = cat["variant"] >= 0
    rejects = [{"image_id": str(i), "path": str(p), "reason": str(r)}
               for i, p, r in zip(cat["image_id"][~ok], cat["path"][~ok], cat["reason"][~ok])]
    data = shard_bytes([str(i) for i in cat["image_id"][ok]], cat["label"][ok], cat["variant"][ok],
                       cat["tokens"][ok], opts.row_group_size)
    dest.write(span.name, data)
    rec = record_from(span.name, data, int(ok.sum()), int((cat["variant"][ok] == 0).sum()), span.fingerprint, rejects)
    dest.write_record(rec)          # after the shard: a record always points at a complete file
    return rec


def run_tokenize(cfg, source: Optional[str] = None, dest: Optional[str] = None, log=print, **options) -> str:
    """Tokenise `cfg.data.image_root` (or `source`) into `cfg.data.shards` (or `dest`) with the run's
    tokenizer and `cfg.data.variants`/`hflip`/`seed`; returns the manifest URI. `options` are
    TokenizeOptions fields (num_actors, batch_size, images_per_shard, ...)."""
    spec = VariantSpec(count=cfg.data.variants, seed=cfg.seed, hflip=cfg.data.hflip, resolution=cfg.tokenizer.resolution,
                       **{k: options.pop(k) for k in ("min_side", "non_rgb") if k in options})
    src, dst = source or cfg.data.image_root, dest or cfg.data.shards
    if not src or not dst:
        raise ValueError("set data.image_root and data.shards (or pass source= and dest=)")
    t0 = time.time()
    uri = tokenize(cfg.tokenizer, TokenizeOptions(source=src, dest=dst, variants=spec, **options), log=log)
    log(f"[tokenize] finished in {time.time() - t0:.1f}s")
    return uri
