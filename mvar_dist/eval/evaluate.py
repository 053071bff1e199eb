"""Metrics of a finished sample folder: FID, sFID, IS, precision/recall against a reference batch.

`Evaluator` holds the Inception net and the reference (both optional). Without Inception weights nothing is
computed and the result says why and how to enable it: a number from random weights is never reported as FID.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from mvar_dist.fsio import atomic_path

from .inception import STANDARD_FILE, STANDARD_URL, FIDInceptionV3, build_inception
from .npz import list_pngs, load_png
from .reference import Reference, extract_features, iter_batches, load_reference
from .registry import METRIC_COLUMNS, METRICS

FID_SKIPPED_HINT = (f"FID skipped: no Inception weights. To enable it, download {STANDARD_FILE} from {STANDARD_URL} "
                    "and pass --inception-weights PATH (or eval.inception_weights=PATH), plus a reference batch "
                    "such as ADM's VIRTUAL_imagenet256_labeled.npz via --reference (eval.reference_npz)")
REF_SKIPPED_HINT = ("FID/sFID/precision/recall skipped: no reference batch; pass --reference PATH "
                    "(ADM's VIRTUAL_imagenet256_labeled.npz or one built by `launchers/sample.py reference`)")


class Evaluator:
    def __init__(self, inception_weights: str = "", reference_npz: str = "", device="cpu", batch_size: int = 50,
                 cache_dir: Optional[str] = None):
        # both load eagerly so a bad file fails at start-up, not after hours of sampling
        self.net: Optional[FIDInceptionV3] = build_inception(inception_weights, device) if inception_weights else None
        self.reference: Optional[Reference] = load_reference(reference_npz) if reference_npz else None
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None

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

    def _sample_batches(self, sample_dir):
        pngs = list_pngs(sample_dir)
        for i in range(0, len(pngs), self.batch_size):
            yield np.stack([load_png(p) for p in pngs[i:i + self.batch_size]])

    def reference_features(self) -> np.ndarray:
        """Pool features of the reference images (for precision/recall), cached per (reference, weights)."""
        ref = self.reference
        cache = None
        if self.cache_dir is not None:
            cache = self.cache_dir / f"ref_pool_{ref.sha256[:16]}_{self.inception_sha256[:16]}.npy"
            if cache.exists():
                return np.load(cache)
        feats = extract_features(self.net, iter_batches(ref.images(), self.batch_size), self.device)["pool"]
        if cache is not None:
            with atomic_path(cache, mkdir=True, keep_suffix=True) as tmp:  # np.save appends .npy otherwise
                np.save(tmp, feats)
        return feats

    def evaluate(self, sample_dir) -> Dict[str, object]:
        """{"status", "note"} and every registry column (None where skipped)."""
        out: Dict[str, object] = {k: None for k in METRIC_COLUMNS}
        out["status"], out["note"] = ("ok", "") if self.status() == "ok" else ("fid_skipped", self.status())
        if self.net is None:
            return out
        feats = extract_features(self.net, self._sample_batches(sample_dir), self.device)
        for metric in METRICS:
            values = metric.compute(self, feats)
            if values is not None:
                out.update(zip(metric.columns, values))
        return out
