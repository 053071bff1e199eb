"""SIGTERM/SIGINT handling: finish the current step, save, exit cleanly.

The handler only sets a flag; the loop all-reduces it once per step so every rank stops at the same
step even when the signal reached only some of them (a scheduler that preempts one node).
"""
from __future__ import annotations

import signal
import threading


class StopFlag:
    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be caught on the main thread (e.g. inside some test runners)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: give up on the clean exit
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
