"""Stopping training cleanly: Ctrl-C or SIGTERM ends the run at a step boundary after a checkpoint."""
from __future__ import annotations

import signal
import threading

from tfcompress.errors import TfcompressError
from tfcompress.utils import get_logger

log = get_logger("train")


class TrainingInterrupted(TfcompressError):
    """Ctrl-C or SIGTERM stopped training at a step boundary, right after a checkpoint."""

    def __init__(self, signum: int, stage: str, step: int):
        self.exit_code = 128 + int(signum)  # the shell's convention for a process ended by a signal
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: {stage} stopped at step {step} after saving a checkpoint; run the "
                         "same command again to resume from it")


class StopSignal:
    """Within it, the first SIGINT (Ctrl-C) or SIGTERM (a pre-empted cloud machine) only sets
    ``received``; the training loop stops at the next step boundary. A second one acts as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now
            handler = self._previous.get(signum)
            if callable(handler):
                handler(signum, frame)
            raise KeyboardInterrupt
        self.received = signum
        log.warning("%s received: stopping after the current step (again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False
