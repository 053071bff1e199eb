"""The one validator for numbers a user gives, used by the config schemas and the CLI flags alike.

`check_number` raises ConfigError naming the key; `cli_number` wraps it as an argparse `type=`, so
`--limit -3` and `data.limit=-3` are refused with the same words (argparse then exits 2).
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional, Sequence

from .errors import ConfigError


def check_number(key: str, value, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    """value must be finite and within [lo, hi] (an open end excludes the bound; None = unbounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        raise ConfigError(key, f"must be {_in(lo, hi, lo_open, hi_open)}, got {value}")


def positive(key: str, value) -> None:
    check_number(key, value, lo=0, lo_open=True)


def non_negative(key: str, value) -> None:
    check_number(key, value, lo=0)


def strictly_increasing(key: str, values: Sequence[int]) -> None:
    """Non-empty, positive and strictly increasing (a repeated scale would duplicate a token map)."""
    if not values or any(not isinstance(v, int) or v <= 0 for v in values):
        raise ConfigError(key, f"must be a non-empty list of positive ints, got {list(values)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(key, f"must be strictly increasing (coarse to fine, no repeats), got {list(values)}")


def cli_number(kind: Callable = int, lo: Optional[float] = None, hi: Optional[float] = None,
               lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse `type=` that parses with `kind` and applies check_number."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        try:
            check_number("value", value, lo, hi, lo_open, hi_open)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1])
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _in(lo, hi, lo_open, hi_open) -> str:
    if hi is None and lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    left = "(-inf" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
    return f"in {left}, {right}"
