"""Acknowledgement: someone has seen the page, and what they decided is on record.

An acknowledgement names an open incident of the patient, a role (never a person's name) and a
decision. It stops the incident's escalation, ends the follow-ups the decision makes moot, adds
to the incident's audit trail, and publishes that trail as an update of the incident. One for
an incident the patient does not have open changes nothing: the caller says so (a dead letter
with its reason).

Pure: the acknowledgement carries its own time.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, ValidationError

from interpretation.alerts import Acknowledged, Action, Alert, Category, Decision, Role, Severity
from interpretation.findings import Analyte
from interpretation.follow_ups import WAITED_FOR, described_by, describing, with_follow_ups
from interpretation.lab_result import Frozen, validation_problems
from interpretation.patient_state import FollowUp, PatientState, RememberedResult
from interpretation.ruleset import FollowUpKind, RuleSet

# The audit trail an incident keeps (its state is bounded like the rest of the patient's).
MAX_ACKNOWLEDGEMENTS = 20
# A decision taken ends the wait for antibodies: the follow-up asked for them to decide.
_DECIDED = (Decision.DOSE_CHANGED, Decision.NO_CHANGE, Decision.SWITCHED)

Key = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class Acknowledgement(Frozen):
    """An acknowledgement as the patient stage reads it (from the CLI, or a signed request)."""

    ack_id: Annotated[str, Field(min_length=1, max_length=100)]  # the same for a resend
    incident_key: Key
    patient_id: Annotated[str, Field(min_length=1, max_length=200)]
    decision: Decision
    by: Role
    at: datetime
    via: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")] = "cli"


def read_acknowledgement(data: dict[str, object]) -> Acknowledgement:
    """An acknowledgement from what a record or a request says; ValueError naming each problem
    (field and what is wrong, never the value: it may name a patient)."""
    try:
        return Acknowledgement.model_validate(data)
    except ValidationError as err:
        raise ValueError("; ".join(validation_problems(err, "(acknowledgement)"))) from None


class AckOutcome(StrEnum):
    """What became of an acknowledgement; the `outcome` label of tdm_acknowledgements_total."""

    APPLIED = "applied"
    REPEATED = "repeated"  # this acknowledgement was applied already (a resend)
    UNKNOWN_INCIDENT = "unknown_incident"  # not open for this patient: nothing changed


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def acknowledge(
    state: PatientState | None, ack: Acknowledgement, ruleset: RuleSet
) -> tuple[PatientState | None, list[Alert], AckOutcome]:
    """(state, acknowledgement) -> (state, the events it publishes, what became of it)."""
    if state is None:
        return state, [], AckOutcome.UNKNOWN_INCIDENT
    follow_up = next((f for f in state.follow_ups if f.key == ack.incident_key and f.fired_at), None)
    if follow_up is not None:  # a follow-up's own incident (an escalation, a missing result)
        return _acknowledge_follow_up(state, follow_up, ack, ruleset)
    incident = state.incident(ack.incident_key)
    if incident is None:
        return state, [], AckOutcome.UNKNOWN_INCIDENT
    entry = Acknowledged(by=ack.by, at=ack.at, decision=ack.decision, via=ack.via)
    event_id = _digest("ack", ack.incident_key, ack.ack_id)
    if entry in incident.acknowledgements:
        return state, [], AckOutcome.REPEATED
    trail = (*incident.acknowledgements, entry)[-MAX_ACKNOWLEDGEMENTS:]
    acknowledged = incident.model_copy(update={"acknowledgements": trail})
    state = state.model_copy(
        update={"incidents": tuple(acknowledged if i.key == incident.key else i for i in state.incidents)}
    )
    events: list[Alert] = []
    kept: list[FollowUp] = []
    for f in state.follow_ups:
        if f.follows != incident.key or not _ended_by(f, ack.decision):
            kept.append(f)
        elif f.fired_at is not None:
            events.append(_follow_up_resolved(state, f, ruleset, ack))
    state = with_follow_ups(state, kept)
    described = next((r for r in reversed(state.results) if r.incident_key == incident.key), None)
    if described is not None:
        said = ack.decision.value.replace("_", " ")
        events.insert(
            0,
            describing(
                state.patient_id,
                described,
                ruleset,
                action=Action.UPDATE,
                incident=incident.key,
                event_id=event_id,
                category=incident.category,
                severity=incident.severity,
                summary=f"{_described(described)}; acknowledged by the {ack.by.replace('-', ' ')}: {said}.",
                rule_id="acknowledgement",
                acknowledgements=trail,
            ),
        )
    return state, events, AckOutcome.APPLIED


def _described(result: RememberedResult) -> str:
    """The incident's latest result in a few words (no identifiers), as the page's summary began."""
    shown = (
        f" {result.comparator or ''}{result.value} {result.unit or ''}".rstrip()
        if result.value is not None
        else ""
    )
    if result.analyte is Analyte.INFLIXIMAB:
        return f"Infliximab trough{shown} ({result.finding.value.replace('_', ' ')})"
    said = result.finding.value.replace("antibodies_", "").replace("_", " ")
    return f"Anti-infliximab antibodies {said}{shown}"


def _ended_by(f: FollowUp, decision: Decision) -> bool:
    if f.kind is FollowUpKind.NOT_ACKNOWLEDGED:
        return True  # someone has acted: no escalation
    return decision in _DECIDED


def _follow_up_resolved(state: PatientState, f: FollowUp, ruleset: RuleSet, ack: Acknowledgement) -> Alert:
    reason = f"acknowledged by the {ack.by.replace('-', ' ')}"
    return describing(
        state.patient_id,
        described_by(state, f),
        ruleset,
        action=Action.RESOLVE,
        incident=f.key,
        event_id=_digest("event", f.key, Action.RESOLVE.value, f.due.isoformat()),
        category=Category.FOLLOW_UP,
        severity=_severity(f),
        summary=f"Resolved: {WAITED_FOR[f.kind]}; {reason}.",
        rule_id=f.rule_id,
        resolve_reason=reason,
    )


def _severity(f: FollowUp) -> Severity:
    return Severity.CRITICAL if f.kind is FollowUpKind.NOT_ACKNOWLEDGED else Severity.LOW


def _acknowledge_follow_up(
    state: PatientState, f: FollowUp, ack: Acknowledgement, ruleset: RuleSet
) -> tuple[PatientState, list[Alert], AckOutcome]:
    """An acknowledgement of a follow-up's own incident ends that follow-up (resolved), and,
    for an escalation, counts as acknowledging the page it escalated."""
    kept = [g for g in state.follow_ups if g is not f]
    state = with_follow_ups(state, kept)
    events = [_follow_up_resolved(state, f, ruleset, ack)]
    if f.kind is FollowUpKind.NOT_ACKNOWLEDGED and state.incident(f.follows) is not None:
        page = ack.model_copy(update={"incident_key": f.follows})
        after, more, _ = acknowledge(state, page, ruleset)
        return after or state, [*events, *more], AckOutcome.APPLIED
    return state, events, AckOutcome.APPLIED
