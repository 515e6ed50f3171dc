"""SIGTERM stops a process whatever its main thread is doing, here writing log lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# The service's shape: the main thread logs (an alert published per alert) while signals arrive,
# and what a stop signal does logs a line too. Ten signals, each acted on before the next is sent.
BUSY_LOGGER = textwrap.dedent(
    """
    import os, signal, threading, time
    import structlog
    from consumer.logs import configure_logging
    from consumer.stop_signals import on_stop_signal

    configure_logging("INFO", "json")
    log = structlog.get_logger()
    acted = threading.Semaphore(0)
    done = threading.Event()

    def act(name):
        log.info("stop requested", signal=name)
        acted.release()

    def send():
        for _ in range(10):
            time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)
            acted.acquire()
        done.set()

    on_stop_signal(act)
    threading.Thread(target=send, daemon=True).start()
    while not done.is_set():
        log.info("alert published")
    print("stopped", flush=True)
    """
)


def test_a_stop_signal_while_the_main_thread_writes_a_log_line_is_acted_on():
    # With the logging done in the signal handler, a signal landing inside a log write waited on
    # its own thread's lock for ever (two runs in three hung at the first signal).
    run = subprocess.run(
        [sys.executable, "-c", BUSY_LOGGER],
        capture_output=True,
        check=False,
        timeout=30,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == "stopped\n"
    assert run.stderr.count('"stop requested"') == 10
