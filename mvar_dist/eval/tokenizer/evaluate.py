"""Tokenizer evaluation on a held-out image folder: PSNR, SSIM, LPIPS, rFID and per-scale codebook usage.

    load_tokenizer(path)       a .safetensors / .pth in the official key names, or a trainer step folder
    EvalImages(root, R)        the images with VAR's eval transform: shorter side to round(ratio * R) with
                               LANCZOS (ratio 1 by default; VAR's val_aug uses 1.125), centre R x R crop
    evaluate_tokenizer(...)    one pass -> a results row (also upserted into the results table)

Every metric is computed on the 8-bit reconstruction (as a saved PNG would hold it) against the 8-bit
original. LPIPS is the trainer's VGG LPIPS (`train/tokenizer/lpips.py`) from the user's backbone file, rFID is
the Frechet distance of our FID Inception's pool features (`mvar_dist/eval`) of reconstructions vs
originals, usage/perplexity per scale come from `train/tokenizer/codebook_health.py`. LPIPS/rFID are skipped
(and the row's note says so) when their weights file is not given.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from mvar_dist.fsio import sha256_file
from mvar_dist.runs.layout import TOKENIZER_EXPORT as EXPORT_FILE
from mvar_dist.runs.layout import TOKENIZER_KIND as KIND
from mvar_dist.runs.layout import is_complete, read_meta, step_of
from mvar_dist.train.tokenizer.codebook_health import CodebookHealth
from mvar_dist.vqvae import MultiScaleVQVAE

from . import recon_metrics as M
from .results import TokenizerResultsTable

# bump when a metric's definition changes. v2: rFID's Inception mode (adm | pytorch-fid) enters the protocol
METRICS_VERSION = "mvar_dist-tok-eval-2"


# ----------------------------------------------------------------------------------------- checkpoint
@dataclass
class LoadedTokenizer:
    vae: MultiScaleVQVAE
    checkpoint_id: str      # resolved path of the file or step folder
    weights_path: Path      # the file the weights came from
    step: Optional[int]     # the trainer step for a step folder, else None


def _hparams_of_safetensors(path: Path) -> Dict:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("hparams", "{}"))
    except Exception:  # noqa: BLE001 - no or unreadable metadata: the weights loader reports real problems
        return {}


def load_tokenizer(checkpoint: str, patch_nums: Optional[Tuple[int, ...]] = None) -> LoadedTokenizer:
    """From a weights file (.safetensors written by save_official carries patch_nums; a .pth gets
    `patch_nums` or VAR's 256 px scales) or a complete tokenizer-trainer step folder (meta.json)."""
    p = Path(checkpoint)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer checkpoint not found: {p} (give a vae .safetensors/.pth file or a "
                                f"tokenizer step folder)")
    step = None
    hp: Dict = {}
    if p.is_dir():
        if not is_complete(p):
            raise ValueError(f"{p} is not a complete tokenizer step folder (no COMPLETE marker or meta.json)")
        meta = read_meta(p)
        if meta.get("kind") != KIND:
            raise ValueError(f"{p} is not a tokenizer-training checkpoint (kind={meta.get('kind')!r}, "
                             f"expected {KIND!r})")
        hp, step, weights = dict(meta.get("hparams", {})), int(meta.get("step", step_of(p))), p / EXPORT_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{p}: step folder lacks {EXPORT_FILE}")
    else:
        weights = p
        if p.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise ValueError(f"{p}: expected a .safetensors or .pth tokenizer checkpoint, or a step folder")
        if p.suffix == ".safetensors":
            hp = _hparams_of_safetensors(p)
    keep = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hp.items()
            if k in ("patch_nums", "share_quant_resi", "num_res_blocks")}
    if patch_nums:
        keep["patch_nums"] = tuple(int(x) for x in patch_nums)
    vae = MultiScaleVQVAE.from_official(weights, **keep)
    return LoadedTokenizer(vae, str(p.resolve()), weights, step)


# ----------------------------------------------------------------------------------------- images
class EvalImages(torch.utils.data.Dataset):
    """(3, R, R) uint8 tensors of an ImageFolder / tar-shard root with VAR's eval transform; unreadable
    images yield None and are counted as rejected."""

    def __init__(self, root: str, resolution: int, resize_ratio: float = 1.0, min_side: int = 8):
        from mvar_dist.data_pipeline.augment import VariantSpec
        from mvar_dist.data_pipeline.sources import list_inputs

        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root!r} (give a held-out ImageFolder dir)")
        self.root, self.resolution = root, int(resolution)
        self.side = max(self.resolution, int(round(float(resize_ratio) * self.resolution)))
        self.refs = list_inputs(root).refs
        if not self.refs:
            raise FileNotFoundError(f"no images under {root} (expected <class>/<image> files or .tar shards)")
        self.spec = VariantSpec(count=1, seed=0, hflip=False, resolution=self.resolution, min_side=min_side)
        self._fs: Dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def listing_hash(self) -> str:
        return hashlib.sha256("\n".join(r.image_id for r in self.refs).encode()).hexdigest()[:16]

    def __getitem__(self, i: int):
        from mvar_dist.data_pipeline.augment import Rejected, decode, resize_shorter
        from mvar_dist.data_pipeline.sources import read_bytes

        ref = self.refs[i]
        try:
            img = decode(read_bytes(ref, self._fs), self.spec)
        except (Rejected, OSError) as e:
            return None, f"{ref.image_id}: {e}"
        arr = np.asarray(resize_shorter(img, self.side), dtype=np.uint8)
        h, w = arr.shape[:2]
        r = self.resolution
        top, left = int(round((h - r) / 2.0)), int(round((w - r) / 2.0))
        crop = np.ascontiguousarray(arr[top:top + r, left:left + r])
        return torch.from_numpy(crop).permute(2, 0, 1), ""


def _collate(items):
    good = [x for x, _ in items if x is not None]
    return (torch.stack(good) if good else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)), [w for x, w in items if x is None]


# ----------------------------------------------------------------------------------------- options
@dataclass
class TokEvalOptions:
    images: str
    lpips_vgg: str = ""            # torchvision vgg16 state dict; "" = LPIPS skipped
    lpips_lin: str = ""            # "" = the lin weights shipped in the `lpips` package
    inception_weights: str = ""    # pytorch-fid pt_inception-2015-12-05-6726825d.pth; "" = rFID skipped
    inception_mode: str = "adm"    # rFID's Inception preprocessing: "adm" or "pytorch-fid" (mvar_dist/eval)
    resize_ratio: float = 1.0
    batch_size: int = 16
    num_workers: int = 0
    device: str = "cpu"
    max_images: int = 0            # 0 = all


class MetricNets:
    """The optional LPIPS and Inception networks, loaded once (a service reuses them over checkpoints)."""

    def __init__(self, opts: TokEvalOptions):
        from mvar_dist.eval.inception import build_inception
        from mvar_dist.train.tokenizer.lpips import LPIPS

        self.lpips = self.inception = None
        self.lpips_sha = self.inception_sha = ""
        if opts.lpips_vgg:
            self.lpips = LPIPS.from_files(opts.lpips_vgg, opts.lpips_lin or None).to(opts.device)
            self.lpips_sha = sha256_file(opts.lpips_vgg)[:16]
        if opts.inception_weights:
            self.inception = build_inception(opts.inception_weights, opts.device, opts.inception_mode)
            self.inception_sha = self.inception.weights_sha256[:16]

    def notes(self) -> List[str]:
        out = []
        if self.lpips is None:
            out.append("LPIPS skipped (no --lpips-vgg backbone file)")
        if self.inception is None:
            out.append("rFID skipped (no --inception-weights file)")
        return out


def protocol_hash(opts: TokEvalOptions, data: EvalImages, nets: MetricNets) -> Tuple[str, Dict]:
    proto = {"images": str(Path(opts.images).resolve()), "listing": data.listing_hash(), "resolution": data.resolution,
             "resize_side": data.side, "max_images": opts.max_images, "lpips": nets.lpips_sha,
             "inception": nets.inception_sha, "inception_mode": opts.inception_mode, "metrics_version": METRICS_VERSION}
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:16], proto


# ----------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _score_images(vae, data: "EvalImages", idx: List[int], opts: TokEvalOptions, nets: MetricNets,
                  health: CodebookHealth, bar) -> List[Tuple[int, Dict[str, list]]]:
    """This rank's share of idx: the fixed chunks [b*B, (b+1)*B) dealt round robin, so each image runs in the
    same batch whatever the rank count. Returns (chunk start, per-image results) per chunk."""
    from mvar_dist.distributed import rank_world

    rank, world = rank_world()
    starts = list(range(0, len(idx), opts.batch_size))[rank::world]
    mine = [i for s in starts for i in idx[s:s + opts.batch_size]]
    # only the globally last chunk can be short, and it is this rank's last: loader batches = chunks
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, mine), batch_size=opts.batch_size,
                                         num_workers=opts.num_workers, collate_fn=_collate)
    out = []
    for start, (imgs_u8, bad) in zip(starts, loader):
        r: Dict[str, list] = {"psnr": [], "ssim": [], "lpips": [], "rejected": list(bad), "real": [], "fake": []}
        if imgs_u8.shape[0]:
            real = imgs_u8.to(opts.device).float().div(255.0)
            ids = vae.img_to_ids(real * 2 - 1)
            health.observe(ids, torch.zeros(0, vae.z_channels), step=0)
            fake = M.to_unit_uint8(vae.ids_to_img(ids))
            r["psnr"], r["ssim"] = M.psnr(fake, real).tolist(), M.ssim(fake, real).tolist()
            if nets.lpips is not None:
                r["lpips"] = nets.lpips(fake * 2 - 1, real * 2 - 1).flatten().double().tolist()
            if nets.inception is not None:
                # uint8 in: the pixels the evaluator sees, exactly (fake is on the 1/255 grid)
                fake_u8 = fake.mul(255).round().to(torch.uint8)
                r["real"] = [nets.inception(imgs_u8.to(opts.device))["pool"].double().cpu().numpy()]
                r["fake"] = [nets.inception(fake_u8)["pool"].double().cpu().numpy()]
        out.append((start, r))
        if bar is not None:
            bar.update((imgs_u8.shape[0] + len(bad)) * world)  # rank 0's progress stands for all
    return out


def _in_image_order(parts: List[List[Tuple[int, Dict[str, list]]]]) -> Dict[str, list]:
    """Every rank's chunks concatenated by chunk start: the one-process order, so sums match bit for bit."""
    merged: Dict[str, list] = {k: [] for k in ("psnr", "ssim", "lpips", "rejected", "real", "fake")}
    for _, r in sorted((c for rank_chunks in parts for c in rank_chunks), key=lambda c: c[0]):
        for k in merged:
            merged[k] += r[k]
    return merged


@torch.no_grad()
def _rfid(nets: MetricNets, feats: Dict[str, List[np.ndarray]], n: int, notes: List[str]) -> Optional[float]:
    """Reconstruction FID of the gathered Inception features (None without the Inception net or < 2 images)."""
    from mvar_dist.eval.metrics import frechet_distance, gaussian_stats

    if nets.inception is None:
        return None
    if n < 2:
        notes.append("rFID skipped (needs at least 2 images)")
        return None
    real_f, fake_f = np.concatenate(feats["real"]), np.concatenate(feats["fake"])
    if n < 2048:
        notes.append(f"rFID from {n} images (< 2048 feature dims: biased upwards, compare like with like)")
    return frechet_distance(*gaussian_stats(fake_f), *gaussian_stats(real_f))


def evaluate_tokenizer(tok: LoadedTokenizer, opts: TokEvalOptions, table: Optional[TokenizerResultsTable] = None,
                       nets: Optional[MetricNets] = None, progress: bool = True,
                       log: Callable[[str], None] = print) -> Optional[Dict[str, object]]:
    """One pass -> a results row (upserted into table). Under a process group every rank must call it: each
    scores its share of the images, rank 0 gathers them and returns the row, the others None."""
    from mvar_dist.distributed import gather_to_0, rank_world

    t0 = time.time()
    nets = nets or MetricNets(opts)
    vae = tok.vae.to(opts.device)
    data = EvalImages(opts.images, vae.resolution, opts.resize_ratio)
    proto_hash, proto = protocol_hash(opts, data, nets)
    idx = list(range(len(data)))[:opts.max_images or None]
    health = CodebookHealth(vae.vocab_size, len(vae.patch_nums), vae.z_channels, buffer_rows=0)
    bar = None
    if progress and rank_world()[0] == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(idx), unit="img", desc="[tok-eval]", dynamic_ncols=True)
    mine = _score_images(vae, data, idx, opts, nets, health, bar)
    if bar is not None:
        bar.close()
    stats = health.interval_stats(torch.device(opts.device))  # a sum over ranks: every rank calls it
    parts = gather_to_0(mine)
    if parts is None:
        return None
    merged = _in_image_order(parts)
    psnrs, ssims, lpipss, rejected = merged["psnr"], merged["ssim"], merged["lpips"], merged["rejected"]
    feats = {"real": merged["real"], "fake": merged["fake"]}
    n = len(psnrs)
    if n == 0:
        raise ValueError(f"no readable images under {opts.images} ({len(rejected)} rejected: {rejected[:3]})")
    notes = nets.notes()
    row: Dict[str, object] = {"checkpoint_id": tok.checkpoint_id, "protocol_hash": proto_hash,
                              "step": "" if tok.step is None else tok.step, "status": "ok",
                              "num_images": n, "rejected": len(rejected), "resolution": vae.resolution,
                              **M.summarise_psnr(psnrs), "ssim": float(np.mean(ssims)),
                              "lpips": float(np.mean(lpipss)) if lpipss else None, "rfid": None}
    row["rfid"] = _rfid(nets, feats, n, notes)
    if row["psnr_exact"]:
        notes.append(f"{row['psnr_exact']} image(s) reconstructed exactly (PSNR +inf, left out of the psnr mean)")
    row["usage_all"] = stats.pop("usage_all")
    row.update(stats)
    row.update({"note": "; ".join(notes), "checkpoint": str(tok.weights_path),
                "weights_sha256": sha256_file(tok.weights_path), "hparams": json.dumps(vae.hparams()),
                **{f"proto_{k}": v for k, v in proto.items()},
                "wall_s": round(time.time() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if table is not None:
        table.upsert(row)
    log(f"[tok-eval] {tok.checkpoint_id}: " + " ".join(
        f"{k}={float(row[k]):.4f}" for k in ("psnr", "ssim", "lpips", "rfid", "usage_all") if row.get(k) is not None)
        + (f" ({row['note']})" if row["note"] else ""))
    return row


def options_dict(opts: TokEvalOptions) -> Dict:
    return asdict(opts)
