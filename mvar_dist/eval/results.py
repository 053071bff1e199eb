"""The evaluation protocol and the results table keyed by (checkpoint id, protocol hash).

Every number is stored next to the full protocol that produced it, so two FIDs are comparable exactly when their
protocol hashes are equal. The table is a CSV (`<root>/eval_results.csv`), rewritten atomically under a file lock,
so concurrent services and restarts never lose or duplicate rows.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, List, Optional

from mvar_dist.fsio import atomic_path

from .registry import METRIC_COLUMNS

RESULTS_NAME = "eval_results.csv"
# bump when a metric's definition changes: old rows stop matching. v2: the Inception mode (adm | pytorch-fid)
# is part of the definition; a row's metrics_version names it ("mvar_dist-eval-2/adm")
METRICS_VERSION = "mvar_dist-eval-2"
# the sampler's noise scheme (mvar_dist.model.noise.SAMPLER_VERSION, pinned equal by tests/unit/test_eval_npz.py;
# not imported: this module stays free of torch so reading the table is cheap). Part of the sample folder's name.
SAMPLER_VERSION = "counter-hash-v1"


def metrics_version(mode: str) -> str:
    return f"{METRICS_VERSION}/{mode}"


@dataclass(frozen=True)
class Protocol:
    num_classes: int                # classes sampled (labels 0..num_classes-1)
    num_per_class: int              # images per class (50 for the standard 50k)
    cfg_scale: float                # classifier-free guidance scale at the last scale
    top_k: int                      # top-k filter (0 = off)
    top_p: float                    # nucleus filter
    more_smooth: bool               # soft Gumbel sampling (visualisation only; False for FID)
    seed: int                       # base seed; image i's seed derives from (seed, i) (batch size plays no part)
    resolution: int                 # image side in pixels
    image_format: str = "png"       # samples are lossless PNG (JPEG shifts FID)
    reference_sha256: str = ""      # sha256 of the reference .npz ("" = no reference: FID skipped)
    inception_sha256: str = ""      # sha256 of the Inception weights file ("" = none: FID skipped)
    inception_mode: str = "adm"     # Inception preprocessing + IS logits: "adm" (the papers') or "pytorch-fid"
    metrics_version: str = ""       # metric definitions; "" = metrics_version(inception_mode)

    def __post_init__(self):
        if not self.metrics_version:
            object.__setattr__(self, "metrics_version", metrics_version(self.inception_mode))
    weights: str = "raw"            # generator weights sampled: "raw" (model.safetensors) or "ema" (model_ema.safetensors)

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.num_per_class

    @property
    def fid_enabled(self) -> bool:
        return bool(self.reference_sha256 and self.inception_sha256)

    def hash(self) -> str:
        blob = json.dumps(self._fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _fields(self) -> Dict[str, object]:
        """The hashed fields; weights=raw is left out, so raw rows and sample folders made before the field
        existed keep their hashes."""
        out = asdict(self)
        if out["weights"] == "raw":
            del out["weights"]
        return out

    def sampling_hash(self) -> str:
        """Hash of what fixes the images only: the metric fields are blanked (and the blob is the one of
        metrics version 1, before the mode existed). `sampler` names the sampler's noise scheme: the same seed
        gives other images under another scheme, so their folders must not be reused."""
        blob = {**self._fields(), "reference_sha256": "", "inception_sha256": "", "metrics_version": "mvar_dist-eval-1",
                "sampler": SAMPLER_VERSION}
        del blob["inception_mode"]
        return hashlib.sha256(json.dumps(blob, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def row_fields(self) -> Dict[str, object]:
        return {**asdict(self), "num_samples": self.num_samples}


PROTOCOL_COLUMNS = [f.name for f in fields(Protocol)] + ["num_samples"]
COLUMNS = (["checkpoint_id", "protocol_hash", "run", "step", "status", "note"] + METRIC_COLUMNS
           + PROTOCOL_COLUMNS + ["model_sha256", "sample_dir", "wall_s", "created"])


class KeyedCsvTable:
    """Rows keyed by (checkpoint_id, protocol_hash) in one CSV file, rewritten atomically under a file lock.

    columns: the fixed columns, in order. open_columns: rows may add more (appended after `columns`);
    otherwise an unknown column is refused."""

    def __init__(self, path, columns: List[str], open_columns: bool = False, kind: str = "results"):
        self.path, self.columns, self.open_columns, self.kind = Path(path), list(columns), open_columns, kind
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self):
        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> List[Dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            text = f.read()
        lines = list(csv.reader(io.StringIO(text, newline="")))
        if not lines:
            return []
        header = lines[0]
        if not {"checkpoint_id", "protocol_hash"} <= set(header):
            raise ValueError(f"{self.path}: not a {self.kind} table (columns {header})")
        damage = "it ends inside a row (truncated)" if not text.endswith("\n") else next(
            (f"row {i} has {len(r)} fields, the header {len(header)} (a column missing from the header or a cut row)"
             for i, r in enumerate(lines[1:], 1) if len(r) != len(header)), "")
        if damage:  # trusting it would keep a cut number as final, or shift every value by a column
            raise ValueError(f"{self.path}: damaged {self.kind} table: {damage}; repair it or move it away "
                             f"(then every checkpoint is evaluated again)")
        return [dict(zip(header, r)) for r in lines[1:]]

    def rows(self) -> List[Dict[str, str]]:
        with self._locked():
            return self._read()

    def get(self, checkpoint_id: str, protocol_hash: str) -> Optional[Dict[str, str]]:
        return next((r for r in self.rows()
                     if r["checkpoint_id"] == checkpoint_id and r["protocol_hash"] == protocol_hash), None)

    def has(self, checkpoint_id: str, protocol_hash: str) -> bool:
        return self.get(checkpoint_id, protocol_hash) is not None

    def upsert(self, row: Dict[str, object]) -> None:
        """Insert or replace the row with the same (checkpoint_id, protocol_hash); atomic rewrite."""
        missing = [c for c in ("checkpoint_id", "protocol_hash") if not row.get(c)]
        if missing:
            raise ValueError(f"results row lacks {missing}")
        unknown = sorted(set(row) - set(self.columns))
        if unknown and not self.open_columns:
            raise ValueError(f"results row has unknown columns {unknown}")
        key = (str(row["checkpoint_id"]), str(row["protocol_hash"]))
        with self._locked():
            rows = [r for r in self._read() if (r["checkpoint_id"], r["protocol_hash"]) != key]
            rows.append({k: ("" if v is None else v) for k, v in row.items()})
            cols = list(self.columns)
            for r in rows if self.open_columns else ():
                cols += [k for k in r if k not in cols]
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols, restval="", extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)


def best_per_checkpoint(rows, weights: str = "raw") -> Dict[str, Dict[str, str]]:
    """checkpoint id -> its row with the most samples (ties: the smallest protocol hash), among the rows of
    one weights kind ("raw" or "ema"; rows written before the column existed are raw)."""
    best: Dict[str, Dict[str, str]] = {}
    rows = [r for r in rows if (r.get("weights") or "raw") == weights]
    for row in sorted(rows, key=lambda r: (-int(r.get("num_samples") or 0), r.get("protocol_hash", ""))):
        best.setdefault(row["checkpoint_id"], row)
    return best


class ResultsTable(KeyedCsvTable):
    """The generator evaluation table `<root>/eval_results.csv` (fixed columns)."""

    def __init__(self, root):
        self.root = Path(root)
        super().__init__(self.root / RESULTS_NAME, COLUMNS, kind="eval results")
