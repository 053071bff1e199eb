"""The metric registry of the generator's evaluation: one entry per metric gives its result columns,
its TensorBoard tags and how it is computed, so a new metric is one entry here.

`compute(evaluator, feats)` gets the `Evaluator` (its reference, device, cached reference features) and
the sample folder's Inception outputs ({"logits", "logits_unbiased", "pool", "spatial"}); it returns one
value per column, or None when what it needs is absent (no reference batch, no reference images): the
columns stay empty. Entries run only with Inception weights loaded, on rank 0 only, after every rank took
part in the feature extraction (reference features included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

TB_PREFIX = "eval/"


@dataclass(frozen=True)
class Metric:
    columns: Tuple[str, ...]                                        # result columns (eval_results.csv, the log)
    compute: Callable[[object, Dict], Optional[Tuple[float, ...]]]  # (evaluator, feats) -> one value per column

    @property
    def tb_tags(self) -> Tuple[str, ...]:
        return tuple(TB_PREFIX + c for c in self.columns)


def _inception_score(ev, feats):
    from .inception import IS_LOGITS
    from .metrics import inception_score

    # which logits IS uses depends on the Inception mode (adm: unbiased, as ADM's evaluator)
    return (inception_score(feats[IS_LOGITS[ev.mode]]),)


def _fid(ev, feats):
    from .metrics import frechet_distance, gaussian_stats

    if ev.reference is None:
        return None
    return (frechet_distance(*gaussian_stats(feats["pool"]), ev.reference.mu, ev.reference.sigma),)


def _sfid(ev, feats):
    from .metrics import frechet_distance, gaussian_stats

    ref = ev.reference
    if ref is None or ref.mu_s is None:
        return None
    return (frechet_distance(*gaussian_stats(feats["spatial"]), ref.mu_s, ref.sigma_s),)


def _precision_recall(ev, feats):
    from .metrics import precision_recall

    if ev.reference is None or not ev.reference.has_images:
        return None
    return precision_recall(ev.reference_features(), feats["pool"], device=ev.device)


# In the results table's column order (existing tables keep their layout); a new metric goes last.
METRICS = (
    Metric(("fid",), _fid),
    Metric(("sfid",), _sfid),
    Metric(("inception_score",), _inception_score),
    Metric(("precision", "recall"), _precision_recall),
)
METRIC_COLUMNS = [c for m in METRICS for c in m.columns]
