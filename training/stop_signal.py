"""Stopping a single-process ``d2a-train`` run cleanly on SIGINT / SIGTERM (``train.Loop``)."""
from __future__ import annotations

import signal
import threading


class StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) during a single-process run: the
    current step finishes, a checkpoint is written and ``train.run`` returns, so that ``--resume``
    loses nothing. A second signal interrupts at once (KeyboardInterrupt). ``received``: the
    signal's name, or None. ``restore`` puts the previous handlers back. Handlers can only be
    set from the main thread; elsewhere (and with ``signals=()``, under DDP, where ranks would
    stop at different steps) signals act as before."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.received: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        # A scheduler's SIGTERM reaches the loader's workers too (the whole process group).
        # Python runs pending handlers in signal-number order: SIGTERM (15) before SIGCHLD (17).
        self.ignore_workers()

    def ignore_workers(self) -> None:
        """Once a loader worker has died, torch's SIGCHLD handler raises "DataLoader worker ...
        exited" anywhere, in the step or the checkpoint; when no more batches are needed, stop
        listening (``restore`` puts the handler back)."""
        if threading.current_thread() is threading.main_thread():
            self._previous.setdefault(signal.SIGCHLD,
                                      signal.signal(signal.SIGCHLD, signal.SIG_DFL))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
