"""The checkpoint-watching loop both evaluation services run: a pass, then a sleep, until told to stop."""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence


def watch(run_once: Callable[[], List], roots: Sequence[str], poll_s: float, log: Callable[[str], None],
          prefix: str, max_passes: Optional[int] = None) -> None:
    """Call run_once every poll_s seconds (max_passes times, or forever); say so when a pass found nothing."""
    passes = 0
    while max_passes is None or passes < max_passes:
        rows = run_once()
        passes += 1
        if not rows:
            log(f"[{prefix}] nothing new under {list(roots)}; next look in {poll_s:.0f}s")
        if max_passes is not None and passes >= max_passes:
            break
        time.sleep(poll_s)
