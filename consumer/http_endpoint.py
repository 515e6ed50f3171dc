"""The plumbing the small HTTP servers share (`ack-server`, `cds-hooks`): a threaded server
bound to a port (0 picks a free one), JSON answers, the Prometheus registry at /metrics, and
no access log (request lines name paths only; each server logs what matters itself)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.stop_signals import on_stop_signal


class JsonHandler(BaseHTTPRequestHandler):
    def send_json(
        self, status: int, answer: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_metrics(self, registry: CollectorRegistry) -> None:
        data = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Endpoint:
    """A threaded HTTP server whose handler class is given this object as `server_of`."""

    def __init__(self, host: str, port: int, handler: type[JsonHandler]) -> None:
        self._http = ThreadingHTTPServer((host, port), type("Handler", (handler,), {"server_of": self}))
        self._http.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def shutdown(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def serve_until_stopped(self, stop: threading.Event, name: str) -> None:
        """Serve on a thread of its own until `stop` is set (SIGTERM and SIGINT set it), then
        shut the server down."""
        on_stop_signal(lambda _name: stop.set())
        threading.Thread(target=self.serve_forever, name=name, daemon=True).start()
        try:
            stop.wait()
        finally:
            self.shutdown()
