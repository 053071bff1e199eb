"""Scaling-law sweeps: sweep file -> runs (local or Ray jobs) -> results table -> fits -> plots."""
from .sweep import RunSpec, Sweep, SweepError, expand, load_sweep, parse_sweep

__all__ = ["RunSpec", "Sweep", "SweepError", "expand", "load_sweep", "parse_sweep"]
