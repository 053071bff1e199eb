"""SIGTERM/SIGINT handling: finish the current step, save, exit cleanly.

The handler only sets a flag; the loop all-reduces it once per step so every rank stops at the same
step even when the signal reached only some of them (a scheduler that preempts one node).

A second signal aborts without saving, unless it comes within `REPEAT_S` seconds of the first: then it
is the same request delivered twice. That is the normal case under a scheduler: Slurm (scancel,
preemption, time limit) or a terminal's Ctrl-C signals every process of the job, the trainer included,
and the launcher (deepspeed's launch.py, torchrun) then forwards its own copy to the trainer within
milliseconds; treating that copy as "abort" would lose the checkpoint the first signal asked for.
"""
from __future__ import annotations

import signal
import threading
import time

# A repeat this soon after the first signal is the same stop request (scheduler + launcher forwarding).
REPEAT_S = 5.0


class StopFlag:
    def __init__(self, repeat_s: float = REPEAT_S):
        self.signum = 0
        self.repeat_s = repeat_s
        self._first = 0.0
        self._previous = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be caught on the main thread (e.g. inside some test runners)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum:
            if now - self._first < self.repeat_s:
                return  # the same request again (the launcher forwarding what the scheduler sent to all)
            raise KeyboardInterrupt  # a later second signal: give up on the clean exit
        self.signum, self._first = signum, now

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
