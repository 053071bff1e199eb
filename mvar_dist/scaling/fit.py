"""Scaling-law fits with bootstrap confidence intervals.

* VAR's form  L = (beta * X)^alpha  (X = parameters or compute): least squares in log-log space,
  with the Pearson correlation of (log X, log L). Given the tokens' entropy, the fit is done on the
  reducible loss L - entropy, as VAR plots it.
* Chinchilla's approach 3  L(N, D) = E + A / N^a + B / D^b: Huber loss (delta 1e-3) on
  log L, parameterised as log L = LSE(log A - a log N, log B - b log D, log E), minimised with
  L-BFGS from a grid of starts.

Every fit carries a hash of the data it was fitted on, so a stored fit can be matched to its table.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mvar_dist.fsio import write_json_atomic


def data_hash(*columns: Sequence[float], extra: Any = None) -> str:
    """sha256 over the points (order-independent) and the fit options."""
    rows = sorted(zip(*[[float(v) for v in c] for c in columns]))
    return hashlib.sha256(json.dumps({"rows": rows, "extra": extra}, sort_keys=True).encode()).hexdigest()


def pareto_frontier(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats on both x (less) and y (less), sorted by x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.lexsort((y, x))
    keep, best = [], np.inf
    for i in order:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=int)


# ----------------------------------------------------------------------------------------- VAR form
@dataclass
class PowerLawFit:
    alpha: float
    log_c: float                       # intercept: log L = log_c + alpha * log(X / x_scale)
    pearson_r: float
    n: int
    x_scale: float                     # X was divided by this before fitting (beta is in those units)
    entropy: Optional[float]           # subtracted from L when given (reducible loss)
    ci: Dict[str, List[float]]         # bootstrap percentile intervals
    ci_level: float
    n_boot: int
    data_hash: str
    samples: np.ndarray = field(repr=False, default=None)  # (n_boot, 2) bootstrap (alpha, log_c)

    @property
    def beta(self) -> Optional[float]:
        """VAR's beta = exp(log_c / alpha); None when alpha ~ 0 makes it overflow (a flat curve)."""
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            b = float(np.exp(self.log_c / self.alpha)) if self.alpha != 0 else float("inf")
        return b if np.isfinite(b) and b > 0 else None

    def predict(self, x) -> np.ndarray:
        # Evaluated through the intercept, which stays finite when beta does not.
        return np.exp(self.log_c + self.alpha * np.log(np.asarray(x, float) / self.x_scale)) + (self.entropy or 0.0)

    def band(self, x, level: Optional[float] = None) -> np.ndarray:
        """(2, len(x)) pointwise bootstrap band of the fitted curve."""
        level = self.ci_level if level is None else level
        lx = np.log(np.asarray(x, float) / self.x_scale)
        curves = np.exp(self.samples[:, 1:2] + self.samples[:, 0:1] * lx[None, :]) + (self.entropy or 0.0)
        q = 100 * (1 - level) / 2
        return np.percentile(curves, [q, 100 - q], axis=0)

    def to_dict(self) -> Dict[str, Any]:
        return {"form": "L = (beta * X / x_scale) ^ alpha" + (" + entropy" if self.entropy else ""),
                "alpha": self.alpha, "beta": self.beta, "log_c": self.log_c, "pearson_r": self.pearson_r,
                "n": self.n, "x_scale": self.x_scale, "entropy": self.entropy, "ci": self.ci,
                "ci_level": self.ci_level, "n_boot": self.n_boot, "data_hash": self.data_hash}


def fit_power_law(x, y, x_scale: float = 1.0, entropy: Optional[float] = None, n_boot: int = 1000,
                  ci_level: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Fit L = (beta * X / x_scale)^alpha (+ entropy) by least squares on log L vs log X."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if len(np.unique(x)) < 2:
        raise ValueError(f"a power-law fit needs at least 2 distinct X values, got {len(np.unique(x))}")
    if np.any(x <= 0):
        raise ValueError("X must be > 0 for a power-law fit")
    target = y - entropy if entropy is not None else y
    if np.any(target <= 0):
        bad = np.flatnonzero(target <= 0).tolist()
        raise ValueError(f"loss must exceed the entropy ({entropy}) for a reducible-loss fit; points {bad} do not")
    lx, ly = np.log(x / x_scale), np.log(target)
    alpha, log_c = np.polyfit(lx, ly, 1)
    r = float(np.corrcoef(lx, ly)[0, 1])
    rng = np.random.default_rng(seed)
    samples = []
    while len(samples) < n_boot:
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(lx[idx])) < 2:  # a resample with one X value has no slope
            continue
        samples.append(np.polyfit(lx[idx], ly[idx], 1))
    samples = np.asarray(samples, float).reshape(-1, 2)
    q = 100 * (1 - ci_level) / 2
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        betas = np.exp(samples[:, 1] / samples[:, 0])
    ci = {"alpha": np.percentile(samples[:, 0], [q, 100 - q]).tolist(),
          "log_c": np.percentile(samples[:, 1], [q, 100 - q]).tolist()}
    if n_boot and np.all(np.isfinite(betas)):
        ci["beta"] = np.percentile(betas, [q, 100 - q]).tolist()
    h = data_hash(x, y, extra={"form": "var", "x_scale": x_scale, "entropy": entropy})
    return PowerLawFit(float(alpha), float(log_c), r, len(x), float(x_scale), entropy, ci, ci_level, n_boot, h,
                       samples)


# ----------------------------------------------------------------------------------- Chinchilla
@dataclass
class ChinchillaFit:
    E: float
    A: float
    B: float
    a: float
    b: float
    huber_delta: float
    objective: float
    n: int
    n_starts: int
    ci: Dict[str, List[float]]
    ci_level: float
    n_boot: int
    data_hash: str
    samples: np.ndarray = field(repr=False, default=None)  # (n_boot, 5) rows of (E, A, B, a, b)

    def predict(self, N, D) -> np.ndarray:
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A / N ** self.a + self.B / D ** self.b

    def to_dict(self) -> Dict[str, Any]:
        return {"form": "L = E + A / N^a + B / D^b", "E": self.E, "A": self.A, "B": self.B, "a": self.a,
                "b": self.b, "huber_delta": self.huber_delta, "objective": self.objective, "n": self.n,
                "n_starts": self.n_starts, "ci": self.ci, "ci_level": self.ci_level, "n_boot": self.n_boot,
                "data_hash": self.data_hash}


def _huber_objective(theta, lN, lD, lL, delta):
    """Sum of Huber(delta) residuals of the LSE-parameterised log-loss, and its gradient."""
    la, lb, le, a, b = theta
    t = np.stack([la - a * lN, lb - b * lD, np.full_like(lN, le)])
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    pred = m + np.log(s)
    w /= s
    r = pred - lL
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    g = np.where(small, r, delta * np.sign(r))
    grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                     -(g * w[0] * lN).sum(), -(g * w[1] * lD).sum()])
    return loss, grad


def _huber_scores(thetas, lN, lD, lL, delta) -> np.ndarray:
    """Objective of many parameter vectors at once (scoring the grid of starts)."""
    la, lb, le, a, b = (thetas[:, i:i + 1] for i in range(5))
    t = np.stack(np.broadcast_arrays(la - a * lN, lb - b * lD, le + 0 * lN))
    pred = np.logaddexp.reduce(t, axis=0)
    r = np.abs(pred - lL)
    return np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)).sum(axis=1)


DEFAULT_GRID = {"a": (0.0, 0.5, 1.0, 1.5, 2.0), "b": (0.0, 0.5, 1.0, 1.5, 2.0), "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
                "log_A": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "log_B": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)}


def _grid_starts(grid: Dict[str, Sequence[float]]) -> np.ndarray:
    return np.array([(la, lb, le, a, b) for la, lb, le, a, b in
                     itertools.product(grid["log_A"], grid["log_B"], grid["e"], grid["a"], grid["b"])], float)


def _single_thread_blas():
    """L-BFGS-B on 5 parameters is latency-bound: a multi-threaded BLAS made it ~40x slower on a
    loaded 2-core box. threadpoolctl is optional; without it the fit is just slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _minimise(starts, lN, lD, lL, delta):
    from scipy.optimize import minimize

    best = None
    for x0 in starts:
        res = minimize(_huber_objective, x0, args=(lN, lD, lL, delta), jac=True, method="L-BFGS-B",
                       options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-10})
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    return best


def fit_chinchilla(N, D, L, huber_delta: float = 1e-3, grid: Optional[Dict[str, Sequence[float]]] = None,
                   n_starts: Optional[int] = 64, n_boot: int = 200, ci_level: float = 0.95,
                   seed: int = 0) -> ChinchillaFit:
    """Chinchilla approach 3. The grid of starts is scored first; L-BFGS runs from the best `n_starts`
    (None = all of them, as in the paper). Bootstrap refits start from the full-data optimum."""
    N, D, L = (np.asarray(v, float) for v in (N, D, L))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError(f"N, D, L must be 1-D of one length, got {N.shape}, {D.shape}, {L.shape}")
    if len(N) < 5:
        raise ValueError(f"the Chinchilla form has 5 parameters; got only {len(N)} points")
    if np.any(N <= 0) or np.any(D <= 0) or np.any(L <= 0):
        raise ValueError("N, D and L must all be > 0")
    import scipy.optimize  # noqa: F401  loaded before the BLAS limit, which only covers loaded libraries

    with _single_thread_blas():
        return _fit_chinchilla(N, D, L, huber_delta, grid, n_starts, n_boot, ci_level, seed)


def _fit_chinchilla(N, D, L, huber_delta, grid, n_starts, n_boot, ci_level, seed) -> ChinchillaFit:
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    starts = _grid_starts(grid or DEFAULT_GRID)
    if n_starts is not None and n_starts < len(starts):
        scores = _huber_scores(starts, lN, lD, lL, huber_delta)
        starts = starts[np.argsort(scores, kind="stable")[:n_starts]]
    best = _minimise(starts, lN, lD, lL, huber_delta)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        res = _minimise([best.x, starts[0]], lN[idx], lD[idx], lL[idx], huber_delta)
        samples.append(_natural(res.x))
    samples = np.asarray(samples, float).reshape(-1, 5)
    q = 100 * (1 - ci_level) / 2
    names = ("E", "A", "B", "a", "b")
    ci = {k: np.percentile(samples[:, j], [q, 100 - q]).tolist() for j, k in enumerate(names)} if n_boot else {}
    E, A, B, a, b = _natural(best.x)
    h = data_hash(N, D, L, extra={"form": "chinchilla", "delta": huber_delta})
    return ChinchillaFit(E, A, B, a, b, huber_delta, float(best.fun), len(N), len(starts), ci, ci_level, n_boot, h,
                         samples)


def _natural(theta) -> tuple:
    la, lb, le, a, b = (float(v) for v in theta)
    return float(np.exp(le)), float(np.exp(la)), float(np.exp(lb)), a, b


# ----------------------------------------------------------------------------------------- output
def save_fits(fits: Dict[str, Any], path) -> Path:
    """Write {name: fit.to_dict() or a plain dict} as sorted JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in fits.items()}
    write_json_atomic(path, payload, indent=2)
    return path
