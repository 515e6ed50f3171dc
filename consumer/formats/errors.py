"""What every decoder shares: the one error it raises, and how it builds a checked result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from consumer.dead_letters import Reason
from interpretation import LabResult

# Whether an observation (code, display name) is about infliximab. Decoders ask it before
# building a result, so the other 99% of a feed is skipped unvalidated: a glucose result
# with an odd status is not this service's business and must not dead-letter a panel.
Relevance = Callable[[str, str | None], bool]


class DecodeError(ValueError):
    """The bytes are not a lab message this service can read; `reason` is a metrics-safe label."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def describe_validation_error(err: ValidationError) -> str:
    """pydantic's error list without the offending input values, which may be patient data."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}"
        for e in err.errors(include_url=False, include_input=False)[:5]
    ]
    more = f" (+{err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return "; ".join(parts) + more


def lab_result(where: str, **fields: Any) -> LabResult:
    """A `LabResult`, or a DecodeError naming `where` in the message (an OBX, an Observation)."""
    try:
        return LabResult(**fields)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, f"{where}: {describe_validation_error(err)}") from err


def truncated(text: str, limit: int) -> str:
    """Free text cut to a model's limit, marked so a reader knows it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
