"""A real MLLP listener for the tests: TCP, enforcing the framing (VT message FS CR), answering
each message with an ACK the test chooses; the unit tests and the notifier's real-broker test
share it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from consumer.notify.hl7v2 import END, START, framed


@contextmanager
def listener(answer: Callable[[bytes], bytes | None]) -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener that enforces MLLP framing: it reads one frame (VT ... FS CR), refuses
    anything else by closing, and sends `answer(message)` framed (None: closes, no answer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)  # accept wakes to see whether the test is over
    received: list[bytes] = []
    over = threading.Event()

    def serve() -> None:
        while not over.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(5)
            with connection:
                data = b""
                while END not in data:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if not (data.startswith(START) and data.endswith(END)):
                    continue  # not a frame: no answer
                message = data[1 : -len(END)]
                received.append(message)
                if (reply := answer(message)) is not None:
                    connection.sendall(framed(reply.decode()))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        over.set()
        thread.join(timeout=5)
        server.close()


def ack(code: str, text: str = "", acked: str | None = None) -> Callable[[bytes], bytes]:
    def answer(message: bytes) -> bytes:
        control = acked if acked is not None else message.decode().split("\r", 1)[0].split("|")[9]
        header = "MSH|^~\\&|EHR|HOSPITAL|TDM-ALERTS|TDM|20261208090000||ACK|A1|P|2.5.1"
        return f"{header}\rMSA|{code}|{control}|{text}".encode()

    return answer
