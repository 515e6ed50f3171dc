"""Why a kafka-python connection failed, told apart from "the cluster is unreachable".

kafka-python 3 reports every failed bootstrap as the same time-out; the reason (a rejected
password, a certificate nobody trusts) only appears in its own log records. A handler on its
logger reads the exceptions those records carry, so the adapter can raise the cause and the
service can say what is wrong and stop, instead of retrying for ever with "brokers unreachable".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from kafka import errors as kafka_errors

from consumer.clients.seam import Failure

# OpenSSL alert reasons a server sends when it does not accept the client's certificate.
_CLIENT_CERT_ALERTS = (
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_BAD_CERTIFICATE",
    "CERTIFICATE_REQUIRED",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_ACCESS_DENIED",
)


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """The error, the exceptions it wraps in its args (kafka-python wraps errors so), and its causes."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def classify(error: BaseException) -> Failure | None:
    """The cause of a failed connection, or None when it looks like plain unreachability."""
    for part in exception_chain(error):
        if isinstance(part, kafka_errors.SaslAuthenticationFailedError):
            return Failure.AUTHENTICATION
        if isinstance(part, kafka_errors.UnsupportedSaslMechanismError):
            return Failure.SASL_MECHANISM
        text = str(part)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return Failure.TLS_HOSTNAME if "mismatch" in text else Failure.TLS_TRUST
        if any(alert in text for alert in _CLIENT_CERT_ALERTS):
            return Failure.TLS_CLIENT_CERTIFICATE
    return None


def _closed_during_sasl(connection: object) -> bool:
    """A connection the broker closed after the version exchange but before SASL completed.

    On a rejected password the broker often closes the socket before kafka-python has read the
    SASL error, which then reports only "socket disconnected". A connection that got as far as
    ApiVersions, had SASL to do and never finished initialising was refused at authentication.
    (kafka-python 3 connection internals, read defensively: a change there makes this False.)
    """
    init = getattr(connection, "_init_future", None)
    try:
        return bool(
            getattr(connection, "sasl_enabled", False)
            and getattr(connection, "broker_version_data", None) is not None
            and init is not None
            and init.failed()
        )
    except Exception:
        return False


class FailureWatch(logging.Handler):
    """Collects the classified connection failures kafka-python logs, one per failed connection.

    kafka-python logs one failure in several records (transport, connection, bootstrap), all
    carrying the same exception object: failures are counted by that object.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._lock = threading.Lock()
        self._seen: dict[Failure, list[BaseException]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        errors = (
            [a for a in record.args if isinstance(a, BaseException)] if isinstance(record.args, tuple) else []
        )
        if record.exc_info and record.exc_info[1] is not None:
            errors.append(record.exc_info[1])
        # The "Connection lost" record carries the connection too: one the broker closed during
        # SASL was refused at authentication, though the error says only "socket disconnected".
        closed_during_sasl = isinstance(record.args, tuple) and any(
            _closed_during_sasl(a) for a in record.args if not isinstance(a, BaseException)
        )
        for error in errors:
            cause = classify(error)
            if cause is None and closed_during_sasl and isinstance(error, kafka_errors.KafkaConnectionError):
                cause = Failure.AUTHENTICATION
            if cause is not None:
                with self._lock:
                    known = self._seen.setdefault(cause, [])
                    if not any(error is k for k in known):
                        known.append(error)

    def take(self) -> tuple[Failure | None, int]:
        """The most frequent cause since the previous call, and how many connections it failed."""
        with self._lock:
            seen, self._seen = self._seen, {}
        if not seen:
            return None, 0
        cause = max(seen, key=lambda c: len(seen[c]))
        return cause, len(seen[cause])


WATCH = FailureWatch()
logging.getLogger("kafka").addHandler(WATCH)
