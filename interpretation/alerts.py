"""The alert contract: what a paging integration receives when a result needs attention.

An alert carries what the recipient needs to act and route it (patient and specimen
identifiers, the finding, the target, the recommendation and its citations) and nothing
else: no names, no birth dates, no raw message. `summary` holds no identifiers at all, so
it is safe to show on a pager or in a notification preview.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, PlainSerializer

from interpretation.findings import (
    AntibodyFinding,
    AntibodyInterpretation,
    DecidedBy,
    DrugLevelFinding,
    DrugLevelInterpretation,
    Interpretation,
    Pattern,
)
from interpretation.lab_result import Frozen, LabResult, ResultStatus, TreatmentContext
from interpretation.pk.forecast import Forecast, Refused
from interpretation.quantities import Comparator
from interpretation.review import ReviewReason, review_reason
from interpretation.ruleset import Citation, FollowUpKind
from interpretation.treatment import ContextSource

# A JSON number, not pydantic's default string, so consumers can compare it directly.
JsonNumber = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    # A person should look, in working hours: routed to tickets, never to the pager.
    LOW = "low"


class Category(StrEnum):
    SUBTHERAPEUTIC_LEVEL = "subtherapeutic_level"
    ANTI_DRUG_ANTIBODIES = "anti_drug_antibodies"
    # A final infliximab or antibody result the service could not read: nothing is swallowed.
    REVIEW = "review"
    # A result the service expected after another has not arrived (the rule set's follow-ups).
    FOLLOW_UP = "follow_up"


class SourceRef(Frozen):
    """Where the result came from: Kafka coordinates, or a file position for offline runs.

    In a file, `line` numbers JSON Lines; `message` numbers the messages of an HL7 batch
    or the single JSON document a file holds.
    """

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    file: str | None = None
    line: int | None = None
    message: int | None = None


class AlertTarget(Frozen):
    rule_id: str
    description: str
    low: JsonNumber | None
    high: JsonNumber | None
    unit: str
    applies_to: str


class Action(StrEnum):
    """What an event does to its incident (PagerDuty `event_action`)."""

    TRIGGER = "trigger"  # a new problem
    UPDATE = "update"  # the same incident, new facts (a partner result, a correction)
    RESOLVE = "resolve"  # corrected into range, entered in error, cancelled


class PreviousLevel(Frozen):
    """An earlier infliximab level of the same patient, as a clinician reads the trend."""

    value: JsonNumber
    comparator: Comparator | None
    unit: str
    collected_at: datetime | None
    finding: DrugLevelFinding


class Partner(Frozen):
    """The other half of a level + antibody pair, from another message (or the same one)."""

    analyte: str
    finding: DrugLevelFinding | AntibodyFinding
    value: JsonNumber | None
    comparator: Comparator | None
    unit: str | None
    collected_at: datetime | None
    specimen_id: str | None
    accession: str | None


class Decision(StrEnum):
    """What the clinician decided when acknowledging an incident (the decision on record)."""

    DOSE_CHANGED = "dose_changed"
    NO_CHANGE = "no_change"
    SWITCHED = "switched"  # to another biologic
    REPEAT_LEVEL = "repeat_level"
    OTHER = "other"


# A role, never a person's name: "pharmacist", "ibd-nurse", "gastroenterologist-on-call".
Role = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]


class Acknowledged(Frozen):
    """One acknowledgement of an incident: who (by role), when, and what was decided."""

    by: Role
    at: datetime
    decision: Decision
    via: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]  # cli, webhook, pagerduty


class FollowUpNotice(Frozen):
    """What a follow-up event is about: the deadline, when it fired, and the incident it follows.

    Fired by the service's clock, not by a message: `late_seconds` says how long after its due
    time it fired (0 on time; more after downtime or a partition's move)."""

    kind: FollowUpKind
    follows_incident: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    due_at: datetime
    fired_at: datetime
    late_seconds: Annotated[int, Field(ge=0)]


class Alert(Frozen):
    """One event in an alert's life: trigger, update or resolve, for one incident.

    `incident_key` is the same for every event of one incident (patient + specimen or
    accession + category): a paging system's dedup key. `event_id` is the same for one event
    however often it is delivered: the idempotency key.
    """

    alert_schema: Literal["tdm-alerts/alert@3"] = "tdm-alerts/alert@3"
    action: Action
    incident_key: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    event_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    resolve_reason: str | None = None
    # Why a review incident was opened (category review only): a code, never free text.
    review_reason: ReviewReason | None = None
    severity: Severity
    category: Category
    summary: str
    analyte: str
    finding: DrugLevelFinding | AntibodyFinding
    pattern: Pattern | None
    partner: Partner | None = None
    value: JsonNumber | None
    comparator: Comparator | None
    unit: str | None
    decided_by: DecidedBy | None
    target: AlertTarget | None
    context: TreatmentContext
    context_source: dict[str, ContextSource] = Field(default_factory=dict)
    recommendation: str | None
    citations: tuple[Citation, ...]
    rule_id: str
    ruleset_version: str
    result_status: ResultStatus
    patient_id: str
    accession: str | None
    specimen_id: str | None
    result_id: str | None
    collected_at: datetime | None
    previous_levels: tuple[PreviousLevel, ...] = ()
    change_from_last: JsonNumber | None = None  # ug/mL, this level minus the previous one
    # A level's next-trough forecast (README 'Forecast'), or why the model cannot make one.
    forecast: Forecast | Refused | None = None
    # A follow-up event's deadline (category follow_up; schema @3): fired by a tick, not a message.
    follow_up: FollowUpNotice | None = None
    # On an acknowledgement's event: the incident's audit trail, oldest first (schema @3).
    acknowledgements: tuple[Acknowledged, ...] = ()
    source: SourceRef


def _digest(*parts: object) -> str:
    text = "\x1f".join("" if part is None else str(part) for part in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def result_identity(result: LabResult) -> tuple[object, ...]:
    """What makes one reported result this one: its identity, value and status, never where it was read."""
    r = result
    return (
        r.patient_id,
        r.accession,
        r.specimen_id,
        r.result_id,
        r.code,
        r.value,
        r.unit,
        r.status.value,
        r.collected_at.isoformat() if r.collected_at else "",
    )


def result_fingerprint(result: LabResult) -> str:
    """The reported content of a result: a redelivery has the same one, a correction not."""
    return _digest(*result_identity(result))


def incident_key(result: LabResult, category: Category) -> str:
    """The incident a result opens: patient + specimen (else accession, else result) + category."""
    where = result.specimen_id or result.accession or result.result_id or result_fingerprint(result)
    return _digest("incident", result.patient_id, where, category.value)


def event_id(incident: str, action: Action, result: LabResult, detail: object = None) -> str:
    """Stable for one event: redelivery or replay of the same message gives the same id."""
    return _digest("event", incident, action.value, detail, *result_identity(result))


def _review_summary(interpretation: Interpretation, action: Action) -> str:
    analyte = "infliximab level" if isinstance(interpretation, DrugLevelInterpretation) else "antibody"
    if action is Action.RESOLVE:
        return f"Resolved: the {analyte} result no longer needs review."
    return (
        f"The {analyte} result could not be interpreted: {interpretation.reason}. A person should check it."
    )


def _summary(interpretation: Interpretation, partner: Partner | None, action: Action) -> str:
    status = interpretation.result.status
    if status.is_withdrawn:
        analyte = "infliximab level" if isinstance(interpretation, DrugLevelInterpretation) else "antibody"
        text = f"The {analyte} result was {status.value.replace('_', ' ')}"
        if action is Action.UPDATE and partner is not None:
            text += f"; the {partner.analyte.replace('_', ' ')} result still calls for attention"
        return ("Resolved: " if action is Action.RESOLVE else "") + text + "."
    if isinstance(interpretation, DrugLevelInterpretation):
        shown = f"{interpretation.comparator or ''}{interpretation.value} {interpretation.unit}"
        target = interpretation.target
        where = f" below target {target.describe_range()} ({target.description})" if target else ""
        text = f"Infliximab trough {shown}{where}"
        if partner is not None:
            text += f"; antibodies {partner.finding.value.replace('antibodies_', '').replace('_', ' ')}"
    else:
        said = interpretation.finding.value.replace("antibodies_", "").replace("_", " ")
        text = f"Anti-infliximab antibodies {said}"
        if interpretation.value is not None:
            shown = f"{interpretation.comparator or ''}{interpretation.value} {interpretation.unit or ''}"
            text += f" ({shown.rstrip()})"
        if partner is not None and partner.value is not None:
            text += f"; trough {partner.comparator or ''}{partner.value} {partner.unit or ''}".rstrip()
    if interpretation.pattern is Pattern.IMMUNOGENIC_FAILURE:
        text += "; low level with antibodies (immunogenic failure)"
    elif interpretation.pattern is Pattern.LOW_LEVEL_WITH_LOW_TITRE_ANTIBODIES:
        text += "; low level with low-titre antibodies"
    if action is Action.RESOLVE:
        text = "Resolved: " + text
    target = interpretation.target if isinstance(interpretation, DrugLevelInterpretation) else None
    # The indication is said only where the target depends on it (the goal thresholds).
    fields = (
        (*_TARGET_FIELDS, "indication") if target is not None and target.when.indication else _TARGET_FIELDS
    )
    assumed = [
        str(getattr(interpretation.context, name))
        for name in fields
        if interpretation.context_source.get(name) is ContextSource.DEFAULT
    ]
    if assumed and isinstance(interpretation, DrugLevelInterpretation):
        text += f". Treatment context assumed, not known: {', '.join(assumed)}"
    return text + "."


# The context fields that choose a drug-level target; the summary says when one was assumed.
_TARGET_FIELDS = ("phase", "route", "goal", "monitoring")


def severity_of(pattern: Pattern | None) -> Severity:
    return Severity.CRITICAL if pattern is Pattern.IMMUNOGENIC_FAILURE else Severity.HIGH


def category_of(interpretation: Interpretation) -> Category:
    if isinstance(interpretation, DrugLevelInterpretation):
        return Category.SUBTHERAPEUTIC_LEVEL
    return Category.ANTI_DRUG_ANTIBODIES


def event_for(
    interpretation: Interpretation,
    source: SourceRef,
    *,
    action: Action,
    incident: str,
    category: Category,
    partner: Partner | None = None,
    previous_levels: tuple[PreviousLevel, ...] = (),
    resolve_reason: str | None = None,
    severity: Severity | None = None,
) -> Alert:
    """The event `action` on `incident`, described by this interpretation (and its partner).

    `severity` is the incident's own where the interpretation alone would understate it (an
    unreadable correction of a critical incident's result).
    """
    target = interpretation.target if isinstance(interpretation, DrugLevelInterpretation) else None
    r = interpretation.result
    change = None
    if (
        isinstance(interpretation, DrugLevelInterpretation)
        and interpretation.value is not None
        and previous_levels
    ):
        change = interpretation.value - previous_levels[0].value
    return Alert(
        action=action,
        incident_key=incident,
        event_id=event_id(incident, action, r, partner.model_dump_json() if partner else None),
        resolve_reason=resolve_reason,
        review_reason=review_reason(interpretation)
        if category is Category.REVIEW and action is not Action.RESOLVE
        else None,
        severity=severity
        or (Severity.LOW if category is Category.REVIEW else severity_of(interpretation.pattern)),
        category=category,
        summary=_review_summary(interpretation, action)
        if category is Category.REVIEW and not interpretation.result.status.is_withdrawn
        else _summary(interpretation, partner, action),
        analyte=interpretation.analyte.value,
        finding=interpretation.finding,
        pattern=interpretation.pattern,
        partner=partner,
        value=interpretation.value,
        comparator=interpretation.comparator,
        unit=interpretation.unit,
        decided_by=interpretation.decided_by if isinstance(interpretation, AntibodyInterpretation) else None,
        target=AlertTarget(
            rule_id=target.id,
            description=target.description,
            low=target.low,
            high=target.high,
            unit=target.unit,
            applies_to=target.when.describe(),
        )
        if target
        else None,
        context=interpretation.context,
        context_source=interpretation.context_source,
        recommendation=interpretation.recommendation,
        citations=interpretation.citations,
        rule_id=interpretation.rule_id,
        ruleset_version=interpretation.ruleset_version,
        result_status=r.status,
        patient_id=r.patient_id,
        accession=r.accession,
        specimen_id=r.specimen_id,
        result_id=r.result_id,
        collected_at=r.collected_at,
        previous_levels=previous_levels,
        change_from_last=change,
        source=source,
    )


def needs_review(interpretation: Interpretation) -> bool:
    """A final (or corrected) result that could not be read: a person must see it (issue 23)."""
    return interpretation.finding.value == "uninterpretable" and interpretation.result.status.may_page


def alert_for(interpretation: Interpretation, source: SourceRef) -> Alert | None:
    """The trigger event for an alerting interpretation read on its own (no patient memory)."""
    if needs_review(interpretation):
        key = incident_key(interpretation.result, Category.REVIEW)
        return event_for(
            interpretation, source, action=Action.TRIGGER, incident=key, category=Category.REVIEW
        )
    if not interpretation.alert:
        return None
    category = category_of(interpretation)
    incident = incident_key(interpretation.result, category)
    return event_for(interpretation, source, action=Action.TRIGGER, incident=incident, category=category)
