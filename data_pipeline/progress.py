"""Periodic progress lines (images/s, shards, ETA) that read well in a log file and in `ray job logs`."""
from __future__ import annotations

import time


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total_images: int, total_shards: int, every: float = 10.0, log=print, clock=time.monotonic):
        self.total_images, self.total_shards = total_images, total_shards
        self.every, self.log, self.clock = every, log, clock
        self.t0 = self.last = clock()
        self.done_images = self.done_shards = 0

    def images(self, n: int) -> None:
        self.done_images += n
        self._maybe_log()

    def shard_done(self) -> None:
        self.done_shards += 1
        self._maybe_log()

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        rate = self.done_images / elapsed if elapsed > 0 else 0.0
        left = self.total_images - self.done_images
        eta = _hms(left / rate) if rate > 0 else "?"
        pct = 100.0 * self.done_images / max(1, self.total_images)
        return (f"[tokenize] {self.done_images}/{self.total_images} images ({pct:.1f}%), {rate:.1f} img/s, "
                f"shards {self.done_shards}/{self.total_shards}, elapsed {_hms(elapsed)}, ETA {eta}")

    def _maybe_log(self) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.log(self.line())

    def finish(self) -> None:
        self.log(self.line())
