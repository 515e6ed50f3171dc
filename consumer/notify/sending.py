"""Sending a request to a receiver: one try per call, retried by the caller while transient.

Transient: no connection, a time-out, 429 and 5xx (with `Retry-After` honoured). Anything else
the receiver refused is permanent and is not retried. A transient failure raises NotYet with
the back-off (exponential with jitter, capped: tenacity's policy), so only the event's
partition waits, not the loop; once the retry budget, counted from the event's first failure,
has run out, or on a refusal, Undelivered, and the caller dead-letters the event with the
receiver's answer.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import structlog
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from consumer.loop.waiting import NotYet
from consumer.notify.receivers import HttpRequest

log = structlog.get_logger("tdm_alerts.notify")
BACKOFF_MAX_S = 30.0
# Every wait is kept between these, whatever computed it: a Retry-After in the past, zero or
# negative asked again at once (932 requests in 15 s); one of days would outlast any budget.
WAIT_MIN_S = 0.5
WAIT_MAX_S = 600.0
_BACKOFF = wait_exponential_jitter(multiplier=0.5, max=BACKOFF_MAX_S, jitter=0.5)
T = TypeVar("T")


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
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # not a date either: the back-off decides
        return None
    return max(when.timestamp() - time.time(), 0.0)


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


@dataclass
class Failing:
    """One request's transient failures so far: since when (monotonic), and how many."""

    since: float | None = None
    attempts: int = 0


def backoff_s(attempts: int, retry_after_s: float | None) -> float:
    """How long to wait after the `attempts`-th failure: the receiver's Retry-After if it gave one,
    beyond our own back-off cap (asking sooner would be refused again, and counts against the
    receiver's limit), else tenacity's back-off; always within WAIT_MIN_S..WAIT_MAX_S. The
    retry budget still bounds it (`Sender.send`)."""
    if retry_after_s is not None:
        wait = retry_after_s
    else:
        # tenacity's policy, asked directly: the loop does the waiting, not a sleep.
        state = RetryCallState(Retrying(), None, (), {})
        state.attempt_number = attempts
        wait = float(_BACKOFF(state))
    if math.isnan(wait):
        return WAIT_MIN_S
    return min(max(wait, WAIT_MIN_S), WAIT_MAX_S)


class Sender:
    def __init__(
        self,
        client: httpx.Client,
        budget_s: float,
        retried: Callable[[str], None] = lambda receiver: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.budget_s = budget_s
        self.retried = retried  # counted per receiver
        self.clock = clock

    def send(self, request: HttpRequest, failing: Failing) -> int:
        """The receiver's status once it accepted the request (see `attempt`)."""
        return self.attempt(request.receiver, failing, lambda: _once(self.client, request))

    def attempt(self, receiver: str, failing: Failing, once: Callable[[], T]) -> T:
        """What `once` returns once the receiver accepted: one try of any transport (HTTP,
        MLLP) that raises Transient for what may pass and Undelivered for a refusal.

        Raises NotYet after a transient failure while the budget lasts (`failing` counts them),
        Undelivered on a refusal or once the budget ran out.
        """
        try:
            return once()
        except Transient as err:
            now = self.clock()
            failing.since = now if failing.since is None else failing.since
            failing.attempts += 1
            left = self.budget_s - (now - failing.since)
            if left <= 0:
                raise Undelivered(
                    receiver, err.status, f"{err.reason} for {self.budget_s:.0f} s", permanent=False
                ) from err
            self.retried(receiver)
            wait = min(backoff_s(failing.attempts, err.retry_after_s), left)
            log.warning(
                "delivery failed; retrying",
                receiver=receiver,
                reason=err.reason,
                attempt=failing.attempts,
                retry_in_s=round(wait, 2),
            )
            raise NotYet(wait, f"{receiver}: {err.reason}") from err
