"""Ways a run stops early: divergence (non-finite numbers) and Ctrl-C, each with its own error."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class TrainingDiverged(RuntimeError):
    """A loss, gradient norm, weight or validation metric became NaN or infinite.

    Nothing is saved after this: ``checkpoint.pt`` keeps the last good step.
    """


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; a checkpoint of the last finished step was saved."""


@contextmanager
def catch_sigint():
    """Turn the first SIGINT into a flag (``stop[0]``) checked between steps.

    A second SIGINT raises ``KeyboardInterrupt`` at once, for a run stuck in a long step.
    Outside the main thread (no signal handlers there) the flag just stays ``False``.
    """
    stop = [False]
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop[0]:
            raise KeyboardInterrupt
        stop[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
