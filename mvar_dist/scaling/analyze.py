"""From the results table to the sweep's fits: which rows feed which law.

* loss / error vs parameters: the final row of every run, per (arch, budget); VAR form.
* loss vs compute: the compute-efficient frontier of all (run, checkpoint) rows, per arch; VAR form.
* Chinchilla L(N, D): every row of an arch (N = parameters, D = tokens seen).
A fit that lacks data (fewer than 2 sizes, fewer than 5 points for Chinchilla) is listed under
"skipped" with the reason instead of failing the whole analysis.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional

from .fit import fit_chinchilla, fit_power_law, pareto_frontier, save_fits

PARAM_TARGETS = ("L_mean", "L_tail", "err_mean", "err_tail")


def _rows(rows, **match) -> List[Dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def fit_table(rows: List[Dict[str, Any]], entropy: Optional[float] = None, n_boot: int = 500,
              chinchilla_boot: int = 100, chinchilla_starts: Optional[int] = 64, seed: int = 0) -> Dict[str, Any]:
    """All fits the table supports: {name: PowerLawFit | ChinchillaFit} plus {"skipped": {name: reason}}."""
    fits: Dict[str, Any] = {}
    skipped: Dict[str, str] = {}
    archs = sorted({r["arch"] for r in rows})
    for arch in archs:
        finals = [r for r in _rows(rows, arch=arch) if r.get("is_final")]
        for budget in sorted({r["budget"] for r in finals}):
            pts = _rows(finals, budget=budget)
            for target in PARAM_TARGETS:
                name = f"{arch}/{target}~params/{budget}"
                xy = [(r["params_total"], r[target]) for r in pts if r.get(target) is not None]
                ent = entropy if target.startswith("L_") else None
                _try(fits, skipped, name, lambda: fit_power_law(*zip(*xy), x_scale=1e9, entropy=ent,
                                                                n_boot=n_boot, seed=seed), xy)
        pts = [r for r in _rows(rows, arch=arch) if r.get("L_mean") is not None and r.get("train_flops")]
        for target in ("L_mean", "L_tail"):
            pts_t = [r for r in pts if r.get(target) is not None]
            front = pareto_frontier([r["train_flops"] for r in pts_t], [r[target] for r in pts_t])
            xy = [(pts_t[i]["train_flops"], pts_t[i][target]) for i in front]
            ent = entropy
            _try(fits, skipped, f"{arch}/{target}~compute_frontier",
                 lambda: fit_power_law(*zip(*xy), x_scale=1e15, entropy=ent, n_boot=n_boot, seed=seed), xy)
        ndl = [(r["params_total"], r["tokens_seen"], r["L_mean"]) for r in pts if r.get("tokens_seen")]
        name = f"{arch}/L_mean~chinchilla(N,D)"
        if len({p[0] for p in ndl}) < 2 or len({p[1] for p in ndl}) < 2:
            skipped[name] = f"needs >= 2 distinct N and D; got {len({p[0] for p in ndl})} and {len({p[1] for p in ndl})}"
        else:
            _try(fits, skipped, name, lambda: fit_chinchilla(*zip(*ndl), n_starts=chinchilla_starts,
                                                             n_boot=chinchilla_boot, seed=seed), ndl)
    fits["skipped"] = skipped
    return fits


def _try(fits, skipped, name, fn, pts) -> None:
    if len({p[0] for p in pts}) < 2:
        skipped[name] = f"needs >= 2 distinct X values, got {len({p[0] for p in pts})}"
        return
    try:
        fits[name] = fn()
    except ValueError as exc:
        skipped[name] = str(exc)


def write_fits(table_path, out_path, entropy: Optional[float] = None, **kw) -> Dict[str, Any]:
    """Fit everything in a results CSV and save `fits.json` (with the table's sha256 and each fit's data hash)."""
    from .results import read_table

    table_path = Path(table_path)
    fits = fit_table(read_table(table_path), entropy=entropy, **kw)
    meta = {"table": table_path.name, "table_sha256": hashlib.sha256(table_path.read_bytes()).hexdigest(),
            "entropy": entropy}
    save_fits({**fits, "meta": meta}, out_path)
    return fits


def frontier_rows(rows, arch: str, target: str = "L_mean") -> List[Dict[str, Any]]:
    pts = [r for r in _rows(rows, arch=arch) if r.get(target) is not None and r.get("train_flops")]
    return [pts[i] for i in pareto_frontier([r["train_flops"] for r in pts], [r[target] for r in pts])]
