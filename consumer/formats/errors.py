"""The one error every decoder raises, carrying a fixed reason and a PHI-free explanation."""

from __future__ import annotations

from pydantic import ValidationError

from consumer.dead_letters import Reason


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
