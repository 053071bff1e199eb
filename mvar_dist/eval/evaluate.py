"""Metrics of a finished sample folder: FID, sFID, IS, precision/recall against a reference batch.

`Evaluator` holds the Inception net and the reference (both optional). Without Inception weights nothing is
computed and the result says why and how to enable it: a number from random weights is never reported as FID.
Under a process group every rank runs the net on its share of the images (`extract_features_sharded`) and
rank 0 computes the metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from mvar_dist.fsio import atomic_path

from .inception import DEFAULT_MODE, STANDARD_FILE, STANDARD_URL, FIDInceptionV3, build_inception, check_mode
from .npz import list_pngs, load_png
from .reference import Reference, extract_features_sharded, load_reference
from .registry import METRIC_COLUMNS, METRICS

FID_SKIPPED_HINT = (f"FID skipped: no Inception weights. To enable it, download {STANDARD_FILE} from {STANDARD_URL} "
                    "and pass --inception-weights PATH (or eval.inception_weights=PATH), plus a reference batch "
                    "such as ADM's VIRTUAL_imagenet256_labeled.npz via --reference (eval.reference_npz)")
REF_SKIPPED_HINT = ("FID/sFID/precision/recall skipped: no reference batch; pass --reference PATH "
                    "(ADM's VIRTUAL_imagenet256_labeled.npz or one built by `launchers/sample.py reference`)")


class Evaluator:
    def __init__(self, inception_weights: str = "", reference_npz: str = "", device="cpu", batch_size: int = 50,
                 cache_dir: Optional[str] = None, mode: str = DEFAULT_MODE):
        self.mode = check_mode(mode)  # Inception mode (inception.py): preprocessing and IS logits
        # both load eagerly so a bad file fails at start-up, not after hours of sampling
        self.net: Optional[FIDInceptionV3] = build_inception(inception_weights, device, mode) \
            if inception_weights else None
        self.reference: Optional[Reference] = load_reference(reference_npz, mode) if reference_npz else None
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        # reference pool features once computed (rank 0; None elsewhere); the flag is set on every rank alike
        # so all ranks skip or join the collective extraction together
        self._ref_pool: Optional[np.ndarray] = None
        self._ref_pool_done = False

    @property
    def inception_sha256(self) -> str:
        return self.net.weights_sha256 if self.net is not None else ""

    @property
    def reference_sha256(self) -> str:
        return self.reference.sha256 if self.reference is not None else ""

    def status(self) -> str:
        if self.net is None:
            return FID_SKIPPED_HINT
        if self.reference is None:
            return REF_SKIPPED_HINT
        return "ok"

    def _features(self, num_images: int, load) -> Optional[Dict[str, np.ndarray]]:
        return extract_features_sharded(self.net, num_images, load, self.batch_size, self.device)

    def reference_features(self) -> Optional[np.ndarray]:
        """Pool features of the reference images (precision/recall), cached per (reference, weights, mode)
        on disk and kept in memory (the service evaluates many folders against one reference).

        Every rank calls it; rank 0 decides whether the cache serves, so the ranks agree. Rank 0 gets the
        features, the others None."""
        from mvar_dist.distributed import broadcast_from_0

        if self._ref_pool_done:
            return self._ref_pool
        self._ref_pool_done = True
        ref, cache = self.reference, None
        if self.cache_dir is not None:
            cache = self.cache_dir / f"ref_pool_{ref.sha256[:16]}_{self.inception_sha256[:16]}_{self.mode}.npy"
        if broadcast_from_0(cache is not None and cache.exists()):
            self._ref_pool = np.load(cache)
            return self._ref_pool
        images = ref.images()
        feats = self._features(len(images), lambda s, e: images[s:e])
        if feats is None:
            return None
        if cache is not None:
            with atomic_path(cache, mkdir=True, keep_suffix=True) as tmp:  # np.save appends .npy otherwise
                np.save(tmp, feats["pool"])
        self._ref_pool = feats["pool"]
        return self._ref_pool

    def evaluate(self, sample_dir) -> Optional[Dict[str, object]]:
        """{"status", "note"} and every registry column (None where skipped).

        Under a process group every rank must call it (they share the Inception work); rank 0 gets the
        result, the others None."""
        out: Dict[str, object] = {k: None for k in METRIC_COLUMNS}
        out["status"], out["note"] = ("ok", "") if self.status() == "ok" else ("fid_skipped", self.status())
        if self.net is None:
            return out
        pngs = list_pngs(sample_dir)
        feats = self._features(len(pngs), lambda s, e: np.stack([load_png(p) for p in pngs[s:e]]))
        if self.reference is not None and self.reference.has_images:
            self.reference_features()  # collective: before rank 0 alone runs the registry
        if feats is None:
            return None
        for metric in METRICS:
            values = metric.compute(self, feats)
            if values is not None:
                out.update(zip(metric.columns, values))
        return out
