"""Paper-ready scaling plots (matplotlib Agg; each figure saved as PNG and PDF).

VAR and M-VAR share every axis (one colour per architecture); fitted laws are drawn with their
bootstrap bands. A figure whose data is missing (no FID yet) still gets written, saying so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mvar_dist.fsio import atomic_path

COLORS = {"var": "tab:blue", "mvar": "tab:red"}
LABELS = {"var": "VAR", "mvar": "M-VAR"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: never try a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, name: str) -> List[Path]:
    out = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path, keep_suffix=True) as tmp:  # savefig picks the format from the suffix
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
        out.append(path)
    _plt().close(fig)
    return out


def _fit_line(ax, fit, x_lo, x_hi, color, label):
    xs = np.logspace(np.log10(x_lo), np.log10(x_hi), 100)
    ax.plot(xs, fit.predict(xs), "--", color=color, lw=1.2,
            label=f"{label}: $\\alpha$={fit.alpha:.3g}, r={fit.pearson_r:.3f}")
    if fit.samples is not None and len(fit.samples):
        lo, hi = fit.band(xs)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)


def _readable_log_ticks(ax) -> None:
    """Plain-number labels on a log y axis: a loss axis spans less than a decade, where matplotlib's
    default labels only the minor ticks as 3x10^0-style powers or leaves the axis bare."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    lo, hi = ax.get_ylim()
    if hi / max(lo, 1e-300) < 30:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)))
        fmt = ScalarFormatter()
        fmt.set_scientific(False)
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(NullFormatter())


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")


def plot_loss_vs_params(rows, fits, out_dir: Path) -> List[Path]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, target in zip(axes, ("L_mean", "L_tail")):
        for arch in sorted({r["arch"] for r in rows}):
            pts = [r for r in rows if r["arch"] == arch and r.get("is_final") and r.get(target) is not None]
            if not pts:
                continue
            x = [r["params_total"] for r in pts]
            ax.scatter(x, [r[target] for r in pts], color=COLORS.get(arch), s=22, label=LABELS.get(arch, arch))
            for name, fit in fits.items():
                if name.startswith(f"{arch}/{target}~params/"):
                    _fit_line(ax, fit, min(x) / 1.3, max(x) * 1.3, COLORS.get(arch),
                              f"{LABELS.get(arch, arch)} fit [{name.rsplit('/', 1)[1]}]")
        ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel=f"{target} (final)",
               title=f"{target} vs parameters")
        if ax.has_data():
            _readable_log_ticks(ax)
            ax.legend(fontsize=7)
        else:
            _empty(ax, "no finished runs")
    return _save(fig, out_dir, "loss_vs_params")


def plot_loss_vs_compute(rows, curves: Dict[str, Dict[str, Any]], fits, out_dir: Path) -> List[Path]:
    from .analyze import frontier_rows

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for run_id, c in sorted(curves.items()):
        ax.plot(c["train_flops"], c["L_mean"], color=COLORS.get(c["arch"]), alpha=0.25, lw=0.8)
    for arch in sorted({r["arch"] for r in rows}):
        front = frontier_rows(rows, arch)
        if not front:
            continue
        x = [r["train_flops"] for r in front]
        ax.plot(x, [r["L_mean"] for r in front], "o-", color=COLORS.get(arch), ms=4, lw=1,
                label=f"{LABELS.get(arch, arch)} frontier")
        fit = fits.get(f"{arch}/L_mean~compute_frontier")
        if fit is not None:
            _fit_line(ax, fit, min(x) / 1.5, max(x) * 1.5, COLORS.get(arch), f"{LABELS.get(arch, arch)} fit")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="L_mean",
           title="loss vs compute (thin: training curves)")
    if ax.has_data():
        _readable_log_ticks(ax)
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no runs with metrics yet")
    return _save(fig, out_dir, "loss_vs_compute")


def quality_metric(rows) -> Tuple[str, str]:
    """(column, axis label) of the quality plot: FID when any row has one, else FD-demo."""
    if any(r.get("fid") is not None for r in rows):
        return "fid", "FID"
    return "fd_demo", "FD-demo (demo classifier features, not FID)"


def plot_fid_vs_compute(rows, out_dir: Path) -> List[Path]:
    """FID vs compute; where no checkpoint has a FID, FD-demo (the demos' offline distance) instead,
    labelled as such on the axis and in the title."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    metric, name = quality_metric(rows)
    for arch in sorted({r["arch"] for r in rows}):
        pts = sorted((r["train_flops"], r[metric], r["depth"]) for r in rows
                     if r["arch"] == arch and r.get(metric) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=COLORS.get(arch), ms=4,
                    label=LABELS.get(arch, arch))
    if ax.has_data():
        ax.set(xscale="log", yscale="log")
        _readable_log_ticks(ax)
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no FID or FD-demo evaluated yet\n(give the sweep an eval_command: Inception weights for FID,\n"
                   "`python -m mvar_dist fd-demo` for the embedded-dataset demos)")
    ax.set(xlabel="training compute C (FLOPs)", ylabel=name, title=f"{name.split(' (')[0]} vs compute")
    return _save(fig, out_dir, "fid_vs_compute")


def plot_per_scale(rows, out_dir: Path) -> List[Path]:
    plt = _plt()
    finals = [r for r in rows if r.get("is_final")]
    scales = sorted({int(k.rsplit("_", 1)[1]) for r in finals for k in r if k.startswith("loss_scale_")
                     and r[k] is not None})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cmap = _plt().get_cmap("viridis")
    for arch, style in (("var", "o-"), ("mvar", "s--")):
        pts = sorted((r for r in finals if r["arch"] == arch), key=lambda r: r["params_total"])
        for si in scales:
            xy = [(r["params_total"], r.get(f"loss_scale_{si}")) for r in pts if r.get(f"loss_scale_{si}") is not None]
            if xy:
                ax.plot(*zip(*xy), style, color=cmap(si / max(1, len(scales) - 1)), ms=4, lw=1,
                        label=f"{LABELS[arch]} scale {si}")
    if ax.has_data():
        ax.set(xscale="log")
        ax.legend(fontsize=6, ncol=2)
    else:
        _empty(ax, "no finished runs")
    ax.set(xlabel="parameters N", ylabel="cross-entropy per scale (final)", title="per-scale losses")
    return _save(fig, out_dir, "per_scale_loss")


def plot_all(rows, curves, fits, out_dir) -> List[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fits = {k: v for k, v in fits.items() if hasattr(v, "predict")}
    return (plot_loss_vs_params(rows, fits, out_dir) + plot_loss_vs_compute(rows, curves, fits, out_dir)
            + plot_fid_vs_compute(rows, out_dir) + plot_per_scale(rows, out_dir))
