"""What the service remembers about one patient: recent results and open incidents, nothing more.

State holds only what correlation needs (result identities, findings, values, times, incident
keys): no names, no raw messages, no free text. It is bounded per patient.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import Field

from interpretation.alerts import Acknowledged, Category, Severity
from interpretation.findings import Analyte, AntibodyFinding, DrugLevelFinding, Pattern, Titre
from interpretation.lab_result import Frozen, ResultStatus
from interpretation.quantities import Comparator
from interpretation.ruleset import FollowUpKind
from interpretation.treatment import TreatmentRecord


class CorrelationRules(Frozen):
    """How results of one patient are put together; operational settings, not clinical thresholds."""

    # A level and an antibody result with no shared specimen or accession belong together when
    # drawn this close in time (the same visit).
    pair_window_hours: Annotated[int, Field(ge=0, le=24 * 14)] = 24
    # How long a result waits for its partner (reference labs run the reflex test days later).
    partner_keep_days: Annotated[int, Field(ge=1, le=3650)] = 30
    # How many earlier levels an alert shows, and how many results are kept per patient.
    previous_levels: Annotated[int, Field(ge=0, le=20)] = 5
    max_results: Annotated[int, Field(ge=2, le=200)] = 30
    # A critical or high page not acknowledged this long escalates (a follow-up of severity
    # critical); None: never. The hospital's escalation policy, not a clinical threshold.
    escalate_after_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] | None = None


class RememberedResult(Frozen):
    """One result as correlation needs it."""

    key: str  # the result's identity: result id, else specimen/accession + analyte
    fingerprint: str  # the reported content: a redelivery has the same one, a correction not
    analyte: Analyte
    specimen_id: str | None
    accession: str | None
    collected_at: datetime | None
    status: ResultStatus
    finding: DrugLevelFinding | AntibodyFinding
    value: Decimal | None
    comparator: Comparator | None
    unit: str | None
    incident_key: str | None = None  # the open incident this result is part of
    titre: Titre | None = None  # detected antibodies graded by the assay's high titre


class OpenIncident(Frozen):
    """An incident that has been triggered and not resolved."""

    key: str
    category: Category
    severity: Severity
    pattern: Pattern | None
    opened_at: datetime | None = None  # when the service read the result that opened it
    acknowledgements: tuple[Acknowledged, ...] = ()  # the audit trail, oldest first


class FollowUp(Frozen):
    """A result the service waits for after another (the rule set's `follow_ups`): a durable
    deadline, kept in the patient's state and its changelog so a restart or a takeover keeps it.

    Kept after it fires (so it fires once) until what it waits for arrives or its incident ends;
    its own incident (`key`) is then resolved.
    """

    rule_id: str
    kind: FollowUpKind
    follows: str  # the incident it follows up (the low level's)
    key: str  # its own incident, opened when it fires
    # The result its events describe (the low level; the page's latest result), by key: it stays
    # in `results` while its incident is open. Not a copy: that tripled a patient's state.
    about: str
    due: datetime
    fired_at: datetime | None = None
    # Pending results that moved the deadline already (each re-times it once).
    retimed_by: tuple[str, ...] = ()


class PatientState(Frozen):
    """Everything remembered about one patient; `last_seen` drives retention."""

    patient_id: str
    results: tuple[RememberedResult, ...] = ()  # oldest first
    incidents: tuple[OpenIncident, ...] = ()
    treatment: TreatmentRecord | None = None  # from the treatment-context topic
    last_seen: datetime | None = None
    follow_ups: tuple[FollowUp, ...] = ()

    def next_due(self) -> datetime | None:
        """When the next follow-up fires (the store's index of deadlines), if one waits."""
        return min((f.due for f in self.follow_ups if f.fired_at is None), default=None)

    def incident(self, key: str | None) -> OpenIncident | None:
        return next((i for i in self.incidents if i.key == key), None)

    def result(self, key: str) -> RememberedResult | None:
        return next((r for r in reversed(self.results) if r.key == key), None)
