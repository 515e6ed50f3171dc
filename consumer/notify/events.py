"""Alert events as the notifier reads them: tolerantly, so a newer `run` never loses a page.

`run` publishes with the core's strict model (`interpretation.alerts.Alert`); the notifier may be
older than the `run` that wrote an event (a rolling upgrade) and must still deliver it. So it
reads only what the receivers need, keeps every other field (the webhook passes the event on as
published), and falls back where a value is new to it (README "Paging", "Reading events from a
newer version"):

- an unknown severity is delivered as `high` (a page, never silently a ticket);
- an unknown action other than `resolve` is an `update` (the incident stays open, with new facts);
- an unknown category passes every route's category filter (a route narrows by severity only);
- another `tdm-alerts/alert@N` schema is read the same way.

Only what cannot be an alert event at all (not JSON, no incident key, no summary) is unreadable.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from interpretation.alerts import Action, Category, Severity

SCHEMA_FAMILY = "tdm-alerts/alert@"
KNOWN_SCHEMA = "tdm-alerts/alert@3"
FALLBACK_SEVERITY = Severity.HIGH
# What a PagerDuty event's custom_details may carry: how a clinician finds the result, no patient id.
DETAIL_FIELDS = (
    "event_id",
    "incident_key",
    "action",
    "severity",
    "value",
    "unit",
    "recommendation",
    "accession",
    "collected_at",
)

Key = Annotated[str, Field(min_length=1, max_length=255)]


class AlertEvent(BaseModel):
    """The fields every receiver needs; the rest are kept as they came (`model_extra`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    alert_schema: str = KNOWN_SCHEMA
    action: Annotated[str, Field(min_length=1)]
    incident_key: Key
    event_id: Key
    severity: Annotated[str, Field(min_length=1)]
    category: Annotated[str, Field(min_length=1)]
    summary: Annotated[str, Field(min_length=1)]
    recommendation: str | None = None
    analyte: str | None = None
    finding: str | None = None

    @property
    def act(self) -> Action:
        """The action as this version knows it (an unknown one keeps the incident open)."""
        try:
            return Action(self.action)
        except ValueError:
            return Action.UPDATE

    @property
    def level(self) -> Severity:
        """The severity as this version knows it (an unknown one pages as `high`)."""
        try:
            return Severity(self.severity)
        except ValueError:
            return FALLBACK_SEVERITY

    @property
    def kind(self) -> Category | None:
        """The category, or None where it is new to this version."""
        try:
            return Category(self.category)
        except ValueError:
            return None

    @property
    def known(self) -> bool:
        """Every value is one this version knows: nothing fell back."""
        return (
            self.alert_schema == KNOWN_SCHEMA
            and self.act.value == self.action
            and self.level.value == self.severity
            and self.kind is not None
        )

    def details(self) -> dict[str, Any]:
        """PagerDuty's custom_details: the DETAIL_FIELDS the event has, as published."""
        every = self.model_dump()  # the extra fields too (extra="allow")
        return {name: every[name] for name in DETAIL_FIELDS if every.get(name) is not None}


class Unreadable(Exception):
    """Not an alert event at all; `why` names what is wrong, never a value (it may be PHI)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def read_event(value: bytes | None) -> AlertEvent:
    """The event in a record's value, or Unreadable."""
    if not value:
        raise Unreadable("empty value")
    try:
        event = AlertEvent.model_validate_json(value)
    except ValidationError as err:
        where = sorted({".".join(str(part) for part in e["loc"]) or e["type"] for e in err.errors()})
        raise Unreadable(f"not an alert event: {', '.join(where)[:300]}") from None
    if not event.alert_schema.startswith(SCHEMA_FAMILY):
        raise Unreadable("not an alert event: alert_schema is not tdm-alerts/alert@N")
    return event
