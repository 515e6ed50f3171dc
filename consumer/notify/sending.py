"""Sending a request to a receiver: retried while the failure is transient, within a budget.

Transient: no connection, a time-out, 429 and 5xx (with `Retry-After` honoured). Anything else
the receiver refused is permanent and is not retried. Retries back off exponentially with
jitter (tenacity), capped, and stop at the retry budget; the caller dead-letters what did not
get through, with the receiver's answer.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable

import httpx
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential_jitter,
)

from consumer.clients.seam import ClientError, Failure
from consumer.notify.receivers import HttpRequest

log = structlog.get_logger("tdm_alerts.notify")
BACKOFF_MAX_S = 30.0


class Transient(Exception):
    def __init__(self, status: int | None, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s


class Undelivered(Exception):
    """Refused for good (a 4xx other than 429), or still failing when the budget ran out."""

    def __init__(self, receiver: str, status: int | None, reason: str, *, permanent: bool) -> None:
        super().__init__(f"{receiver}: {reason}")
        self.receiver, self.status, self.reason, self.permanent = receiver, status, reason, permanent


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    when = email.utils.parsedate_to_datetime(value)
    return max(when.timestamp() - time.time(), 0.0) if when is not None else None


def _once(client: httpx.Client, request: HttpRequest) -> int:
    try:
        response = client.post(request.url, content=request.body, headers=dict(request.headers))
    except httpx.TransportError as err:  # no connection, a time-out, a reset
        raise Transient(None, type(err).__name__) from err
    status = response.status_code
    if status == 429 or status >= 500:
        raise Transient(status, f"HTTP {status}", _retry_after(response))
    if status >= 400:
        # The receiver's own words can say why (a bad field); never the request, which holds secrets.
        raise Undelivered(request.receiver, status, f"HTTP {status}: {response.text[:200]}", permanent=True)
    return status


class Sender:
    def __init__(
        self,
        client: httpx.Client,
        budget_s: float,
        retried: Callable[[str], None] = lambda receiver: None,
        sleep: Callable[[float], None] = time.sleep,
        stopping: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.budget_s = budget_s
        self.retried = retried  # counted per receiver
        self.sleep = sleep  # wakes early on a stop request
        self.stopping = stopping or threading.Event()

    def send(self, request: HttpRequest) -> int:
        """The receiver's status once it accepted the request; raises Undelivered."""
        jitter = wait_exponential_jitter(multiplier=0.5, max=BACKOFF_MAX_S, jitter=0.5)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, Transient) and error.retry_after_s is not None:
                return min(error.retry_after_s, BACKOFF_MAX_S)
            return float(jitter(state))

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.retried(request.receiver)
            log.warning(
                "delivery failed; retrying",
                receiver=request.receiver,
                reason=getattr(error, "reason", type(error).__name__),
                attempt=state.attempt_number,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(Transient),
            wait=wait,
            stop=stop_after_delay(self.budget_s) | stop_when_event_set(self.stopping),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return int(retrying(_once, self.client, request))
        except Transient as err:
            if self.stopping.is_set():  # not the receiver's failure: the batch is re-read after the restart
                raise ClientError(Failure.TRANSIENT, f"delivery to {request.receiver} stopped") from err
            raise Undelivered(
                request.receiver, err.status, f"{err.reason} for {self.budget_s:.0f} s", permanent=False
            ) from err
