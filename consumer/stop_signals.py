"""SIGTERM and SIGINT handled off the signal handler: the handler itself does nothing.

A Python signal handler runs on the main thread between two of its bytecodes, so it may run
while that thread holds a lock the handler then asks for. The service's handler used to log
"stop requested": SIGTERM arriving while the main thread was writing a log line (structlog's
writer holds a plain, non-reentrant lock) left the handler waiting on its own thread's lock, and
the process never stopped (the CI's kill test saw it). The signal's number is written to a pipe by
the interpreter's C-level handler (`signal.set_wakeup_fd`), and a thread of its own reads it and
acts, where taking a lock is only ever a wait.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signal(act: Callable[[str], None]) -> None:
    """Call `act` with the signal's name, on a daemon thread, for each SIGTERM or SIGINT.

    Call once per process, from the main thread (where Python lets signals be handled).
    """
    read_end, write_end = os.pipe()
    # The C-level handler must never block on a full pipe; the reading end waits.
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for number in STOP_SIGNALS:
        # A handler that does nothing: Python still needs one for the wakeup byte to be written
        # (the default action for SIGTERM would end the process before anything is committed).
        signal.signal(number, _nothing)

    def relay() -> None:
        while received := os.read(read_end, 64):
            for number in received:
                if number in STOP_SIGNALS:
                    act(signal.Signals(number).name)

    threading.Thread(target=relay, name="stop-signals", daemon=True).start()


def _nothing(_signum: int, _frame: object) -> None:
    pass
