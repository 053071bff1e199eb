"""The checkpoint-watching loop both evaluation services run: a pass, then a sleep, until told to stop.

Under a process group (torchrun, N ranks) rank 0 alone lists the work of a pass (it reads the results
table and verifies checkpoints) and tells the others, so every rank walks the same items in the same
order and joins the same collectives; each item is processed by all ranks and its row comes back on
rank 0. Without a group this is the one-process loop.
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence, TypeVar

from mvar_dist.distributed import broadcast_from_0, rank_world
from mvar_dist.fsio import open_fs

Item = TypeVar("Item")


def one_pass(todo: Callable[[], List[Item]], process: Callable[[Item], Optional[dict]]) -> List[dict]:
    """Rank 0's todo list, processed by every rank; the rows (rank 0; [] elsewhere)."""
    items = broadcast_from_0(todo() if rank_world()[0] == 0 else None)
    rows = []
    for item in items:
        row = process(item)
        if row is not None:
            rows.append(row)
    return rows


def watch(run_once: Callable[[], List], roots: Sequence[str], poll_s: float, log: Callable[[str], None],
          prefix: str, max_passes: Optional[int] = None) -> None:
    """Call run_once every poll_s seconds (max_passes times, or forever); say so (rank 0) when a pass found
    nothing. Every rank runs the loop: the passes stay in step because each starts with rank 0's list."""
    passes = 0
    while max_passes is None or passes < max_passes:
        rows = run_once()
        passes += 1
        if not rows and rank_world()[0] == 0:
            absent = [r for r in roots if not _exists(r)]
            note = f" ({', '.join(absent)} not there yet: waiting for it to appear)" if absent else ""
            log(f"[{prefix}] nothing new under {list(roots)}{note}; next look in {poll_s:.0f}s")
        if max_passes is not None and passes >= max_passes:
            break
        time.sleep(poll_s)


def _exists(root: str) -> bool:
    """Whether a watched root (local or s3://) exists; an unreadable one counts as there (its pass said why)."""
    try:
        fs, path = open_fs(root)
        return fs.exists(path)
    except Exception:  # noqa: BLE001  only colours a log line
        return True
