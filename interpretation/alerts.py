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
from interpretation.lab_result import Frozen, ResultStatus, TreatmentContext
from interpretation.quantities import Comparator
from interpretation.ruleset import Citation

# A JSON number, not pydantic's default string, so consumers can compare it directly.
JsonNumber = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"


class Category(StrEnum):
    SUBTHERAPEUTIC_LEVEL = "subtherapeutic_level"
    ANTI_DRUG_ANTIBODIES = "anti_drug_antibodies"


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


class Alert(Frozen):
    """One alert; `dedup_key` is the same for the same result however often it is delivered."""

    alert_schema: Literal["tdm-alerts/alert@1"] = "tdm-alerts/alert@1"
    dedup_key: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    severity: Severity
    category: Category
    summary: str
    analyte: str
    finding: DrugLevelFinding | AntibodyFinding
    pattern: Pattern | None
    value: JsonNumber | None
    comparator: Comparator | None
    unit: str | None
    decided_by: DecidedBy | None
    target: AlertTarget | None
    context: TreatmentContext
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
    source: SourceRef


def dedup_key(interpretation: Interpretation) -> str:
    """A stable key for one lab result: its identity, value and status, never where it was read.

    A redelivered or replayed message gives the same key; a corrected result (new value or
    status) gives a new one, because a correction is news to the clinician.
    """
    r = interpretation.result
    identity = "\x1f".join(
        str(part or "")
        for part in (
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
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _summary(interpretation: Interpretation) -> str:
    if isinstance(interpretation, DrugLevelInterpretation):
        shown = f"{interpretation.comparator or ''}{interpretation.value} {interpretation.unit}"
        target = interpretation.target
        where = f" below target {target.describe_range()} ({target.description})" if target else ""
        text = f"Infliximab trough {shown}{where}"
    else:
        text = "Anti-infliximab antibodies detected"
        if interpretation.value is not None:
            shown = f"{interpretation.comparator or ''}{interpretation.value} {interpretation.unit or ''}"
            text += f" ({shown.rstrip()})"
    if interpretation.pattern is Pattern.IMMUNOGENIC_FAILURE:
        text += "; low level with antibodies (immunogenic failure)"
    return text + "."


def alert_for(interpretation: Interpretation, source: SourceRef) -> Alert | None:
    """The alert this interpretation calls for, or None when it does not page."""
    if not interpretation.alert:
        return None
    is_level = isinstance(interpretation, DrugLevelInterpretation)
    target = interpretation.target if isinstance(interpretation, DrugLevelInterpretation) else None
    r = interpretation.result
    return Alert(
        dedup_key=dedup_key(interpretation),
        severity=Severity.CRITICAL
        if interpretation.pattern is Pattern.IMMUNOGENIC_FAILURE
        else Severity.HIGH,
        category=Category.SUBTHERAPEUTIC_LEVEL if is_level else Category.ANTI_DRUG_ANTIBODIES,
        summary=_summary(interpretation),
        analyte=interpretation.analyte.value,
        finding=interpretation.finding,
        pattern=interpretation.pattern,
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
        source=source,
    )
