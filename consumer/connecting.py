"""Connecting to Kafka at start-up, with either client behind the seam: back-off while the cluster
is unreachable, a clear fatal error when it refuses us (credentials, certificates), and TLS
material checked before any connection."""

from __future__ import annotations

import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import structlog

from consumer.clients.seam import CONNECTION_REFUSALS, ClientError, Failure
from consumer.fatal import FatalError
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.kafka")
T = TypeVar("T")
# A failure with a known cause (bad password, untrusted certificate) is fatal once this many
# connections have failed with it: a second refusal rules out a one-off (a broker mid-restart).
FATAL_AFTER_FAILURES = 2

ADVICE = {
    Failure.AUTHENTICATION: "the broker rejected the SASL credentials; check TDM_SASL_USERNAME, "
    "TDM_SASL_PASSWORD (or TDM_SASL_PASSWORD_FILE) and TDM_SASL_MECHANISM",
    Failure.SASL_MECHANISM: "the broker does not offer the SASL mechanism in TDM_SASL_MECHANISM",
    Failure.TLS_TRUST: "the broker's certificate is not signed by a CA we trust; check TDM_SSL_CAFILE "
    "(the CA that signed the broker certificates)",
    Failure.TLS_HOSTNAME: "the broker's certificate does not name the host we connected to; use the "
    "host name the certificate was issued for in TDM_BOOTSTRAP_SERVERS (TDM_SSL_CHECK_HOSTNAME=false "
    "turns the check off, which is not safe outside a test)",
    Failure.TLS_CLIENT_CERTIFICATE: "the broker refused our client certificate (missing, expired or "
    "signed by a CA it does not trust); check TDM_SSL_CERTFILE and TDM_SSL_KEYFILE",
}


class StopRequested(Exception):
    """Start-up was interrupted by a stop request while waiting for the brokers."""


def _not_connecting(err: ClientError) -> bool:
    """A failure other than the cluster not answering or refusing the connection."""
    return err.failure not in CONNECTION_REFUSALS and err.failure is not Failure.TRANSIENT


def with_backoff(make: Callable[[], T], what: str, max_backoff_s: float, stopping: Callable[[], bool]) -> T:
    """Call `make` until the brokers answer, doubling the wait up to `max_backoff_s`.

    An unreachable cluster is retried for ever; a failure whose cause says retrying cannot help
    (credentials, certificates) raises FatalError after FATAL_AFTER_FAILURES such failures.
    """
    delay = 0.5
    refused: Counter[Failure] = Counter()
    while True:
        try:
            return make()
        except ClientError as err:
            if _not_connecting(err):
                raise
            if stopping():
                raise StopRequested from None
            cause = err.failure if err.failure in CONNECTION_REFUSALS else None
            if cause is not None:
                refused[cause] += err.connections
                if refused[cause] >= FATAL_AFTER_FAILURES:
                    raise FatalError(f"cannot connect to Kafka ({cause.value}): {ADVICE[cause]}") from None
                log.warning("connection refused; retrying once", client=what, cause=cause.value)
            else:
                log.warning("brokers unreachable; retrying", client=what, retry_in_s=delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if stopping():
                    raise StopRequested from None
                time.sleep(0.1)
            delay = min(delay * 2, max_backoff_s)


def connect_once(make: Callable[[], T], settings: Settings) -> T:
    """For operator commands: one attempt, and a failure is a clear error naming its cause."""
    check_tls_material(settings)
    try:
        return make()
    except ClientError as err:
        if _not_connecting(err):
            raise FatalError(f"{err.name}: {err.detail}") from None
        why = ADVICE.get(err.failure, "check TDM_BOOTSTRAP_SERVERS, the network and the security settings")
        servers = ",".join(settings.bootstrap_servers)
        raise FatalError(f"cannot connect to the Kafka cluster at {servers}: {why}") from None


def check_tls_material(settings: Settings) -> None:
    """Load the CA, certificate and key now, so a wrong path or key password is a clear error.

    Either client would hit the same problem inside its connection loop and retry for ever.
    """
    if "SSL" not in settings.security_protocol:
        return
    for variable, path in (
        ("TDM_SSL_CAFILE", settings.ssl_cafile),
        ("TDM_SSL_CERTFILE", settings.ssl_certfile),
        ("TDM_SSL_KEYFILE", settings.ssl_keyfile),
    ):
        # OpenSSL reports a missing CA file without its name ("TLS file not found: None").
        if path is not None and not path.is_file():
            raise FatalError(f"{variable}={path}: no such file")
    try:
        context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
        if settings.ssl_certfile:
            password = settings.ssl_password.get_secret_value() if settings.ssl_password else None
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                password=password or "",  # "" rather than None: never prompt on a terminal
            )
    except FileNotFoundError as err:
        raise FatalError(
            f"TLS file not found: {err.filename} (TDM_SSL_CAFILE / _CERTFILE / _KEYFILE)"
        ) from None
    except ssl.SSLError as err:
        raise FatalError(
            f"TLS material could not be loaded ({err.reason or 'unreadable'}): check TDM_SSL_CAFILE, "
            "TDM_SSL_CERTFILE, TDM_SSL_KEYFILE and, for an encrypted key, TDM_SSL_PASSWORD (or _FILE)"
        ) from None


def fatal_message(err: ClientError, settings: Settings) -> str:
    """What went wrong and which setting or ACL fixes it."""
    name, failure = err.name, err.failure
    if failure is Failure.FENCED:
        # A fence on a transaction younger than the transaction timeout (older ones are the
        # broker's own abort after an outage, survived in delivery.survive_fence).
        return (
            f"{name}: another instance took over this instance's transactional id; "
            "give each instance its own TDM_INSTANCE_ID"
        )
    if failure is Failure.NOT_AUTHORISED_GROUP:
        return (
            f"{name}: not authorised to use consumer group {settings.group_id} (TDM_GROUP_ID): "
            f"grant READ on Group:{settings.group_id} (README 'Security')"
        )
    if failure is Failure.NOT_AUTHORISED_TRANSACTIONAL_ID:
        return (
            f"{name}: not authorised to use transactional id {settings.group_id}-{settings.instance_id}: "
            f"grant WRITE on TransactionalId prefixed {settings.group_id}- (README 'Security'), "
            "or set TDM_DELIVERY=at_least_once"
        )
    if failure is Failure.NOT_AUTHORISED_TOPIC:
        return f"{name}: not authorised for a topic this service reads or writes (README 'Security')"
    if failure is Failure.NOT_AUTHORISED_CLUSTER:
        return f"{name}: not authorised for a cluster operation (README 'Security')"
    return f"{name}: {err.detail[:300]} (check credentials and ACLs; restarting will not help)"
