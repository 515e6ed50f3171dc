"""Escalation and acknowledgement (issue 39): a page nobody acknowledges escalates; an
acknowledgement stops that, puts the decision on record and ends what the decision makes moot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from interpretation import LabResult, SourceRef
from interpretation.acknowledgement import Acknowledgement, AckOutcome, acknowledge
from interpretation.alerts import Action, Category, Decision, Severity
from interpretation.correlation import correlate_result
from interpretation.follow_ups import fire_due
from interpretation.patient_state import CorrelationRules, PatientState
from interpretation.ruleset import FollowUpKind
from tests.unit.helpers import RULES

DRAWN = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
READ = DRAWN + timedelta(hours=6)
HERE = SourceRef(topic="lab.results", partition=0, offset=1)
ESCALATING = CorrelationRules(escalate_after_minutes=30)


def result(code: str, value: str, unit: str, **extra: object) -> LabResult:
    fields = {"accession": "ACC-1", "specimen_id": "SPM-1", "collected_at": DRAWN, **extra}
    return LabResult(patient_id="PT-1", code=code, value=value, unit=unit, status="final", **fields)


def paged(rules: CorrelationRules = ESCALATING, value: str = "1.8") -> PatientState:
    done = correlate_result(None, result("39803-2", value, "ug/mL"), HERE, RULES, rules=rules, read_at=READ)
    assert done is not None
    return done.state


def ack(state: PatientState, decision: Decision = Decision.DOSE_CHANGED, *, key: str | None = None, **extra):
    return Acknowledgement(
        ack_id=str(extra.pop("ack_id", "A-1")),
        incident_key=key or state.incidents[0].key,
        patient_id="PT-1",
        decision=decision,
        by=str(extra.pop("by", "pharmacist")),
        at=extra.pop("at", READ + timedelta(minutes=10)),  # type: ignore[arg-type]
    )


def test_a_page_nobody_acknowledges_escalates_once_at_the_set_time_as_critical():
    state = paged()
    (escalation,) = [f for f in state.follow_ups if f.kind is FollowUpKind.NOT_ACKNOWLEDGED]
    assert escalation.due == READ + timedelta(minutes=30)
    assert state.incidents[0].opened_at == READ
    state, events = fire_due(state, RULES, escalation.due + timedelta(seconds=1), ESCALATING)
    (event,) = events
    assert (event.category, event.severity, event.action) == (
        Category.FOLLOW_UP,
        Severity.CRITICAL,
        Action.TRIGGER,
    )
    assert event.follow_up is not None and event.follow_up.kind is FollowUpKind.NOT_ACKNOWLEDGED
    assert "30 minutes" in event.summary
    _, again = fire_due(state, RULES, escalation.due + timedelta(hours=1), ESCALATING)
    assert again == []


def test_without_the_setting_nothing_escalates():
    state = paged(CorrelationRules())
    assert not [f for f in state.follow_ups if f.kind is FollowUpKind.NOT_ACKNOWLEDGED]


def test_an_acknowledgement_in_time_stops_the_escalation_and_puts_the_decision_on_record():
    state = paged()
    after, events, outcome = acknowledge(state, ack(state), RULES)
    assert outcome is AckOutcome.APPLIED and after is not None
    assert not [f for f in after.follow_ups if f.kind is FollowUpKind.NOT_ACKNOWLEDGED]
    (update,) = events
    assert (update.action, update.incident_key) == (Action.UPDATE, state.incidents[0].key)
    assert (
        update.summary
        == "Infliximab trough 1.8 ug/mL (subtherapeutic); acknowledged by the pharmacist: dose changed."
    )
    (entry,) = update.acknowledgements
    assert (entry.by, entry.decision, entry.via) == ("pharmacist", Decision.DOSE_CHANGED, "cli")
    assert after.incidents[0].acknowledgements == (entry,)
    # A dose decided: the antibody follow-up that asked for them before deciding is moot.
    assert after.follow_ups == ()
    _, fired = fire_due(after, RULES, READ + timedelta(days=30), ESCALATING)
    assert fired == []


def test_a_repeat_level_decision_keeps_waiting_for_the_antibodies():
    state = paged()
    after, _, _ = acknowledge(state, ack(state, Decision.REPEAT_LEVEL), RULES)
    assert after is not None
    assert [f.kind for f in after.follow_ups] == [FollowUpKind.ANTIBODIES_NOT_RESULTED]


def test_an_acknowledgement_after_the_escalation_resolves_it():
    state = paged()
    due = next(f.due for f in state.follow_ups if f.kind is FollowUpKind.NOT_ACKNOWLEDGED)
    state, (escalated,) = fire_due(state, RULES, due, ESCALATING)
    after, events, _ = acknowledge(
        state, ack(state, Decision.NO_CHANGE, at=due + timedelta(minutes=5)), RULES
    )
    assert after is not None
    resolved = [e for e in events if e.action is Action.RESOLVE]
    assert [e.incident_key for e in resolved] == [escalated.incident_key]


def test_acknowledging_the_escalation_itself_acknowledges_the_page():
    state = paged()
    due = next(f.due for f in state.follow_ups if f.kind is FollowUpKind.NOT_ACKNOWLEDGED)
    state, (escalated,) = fire_due(state, RULES, due, ESCALATING)
    after, events, outcome = acknowledge(state, ack(state, key=escalated.incident_key), RULES)
    assert outcome is AckOutcome.APPLIED and after is not None
    assert after.incidents[0].acknowledgements  # the page it escalated is acknowledged
    assert {(e.action, e.incident_key) for e in events} >= {
        (Action.RESOLVE, escalated.incident_key),
        (Action.UPDATE, state.incidents[0].key),
    }


def test_the_same_acknowledgement_again_changes_nothing():
    state = paged()
    once, _, _ = acknowledge(state, ack(state), RULES)
    assert once is not None
    twice, events, outcome = acknowledge(once, ack(state), RULES)
    assert (outcome, events, twice) == (AckOutcome.REPEATED, [], once)


@pytest.mark.parametrize("known", [True, False], ids=["closed-incident", "no-state"])
def test_an_acknowledgement_for_an_incident_the_patient_does_not_have_open_changes_nothing(known: bool):
    state = paged() if known else None
    other = "f" * 32
    acked = Acknowledgement(
        ack_id="A-9", incident_key=other, patient_id="PT-1", decision=Decision.OTHER, by="nurse", at=READ
    )
    after, events, outcome = acknowledge(state, acked, RULES)
    assert (outcome, events, after) == (AckOutcome.UNKNOWN_INCIDENT, [], state)


def test_a_role_is_not_a_name():
    with pytest.raises(ValueError, match="by"):
        Acknowledgement(
            ack_id="A", incident_key="a" * 32, patient_id="P", decision="other", by="Dr Jane Smith", at=READ
        )


def test_a_review_ticket_never_escalates():
    done = correlate_result(
        None, result("39803-2", "see note", "ug/mL"), HERE, RULES, rules=ESCALATING, read_at=READ
    )
    assert done is not None and done.state.incidents[0].category is Category.REVIEW
    assert done.state.follow_ups == ()


def _record(value: object, key: bytes | None = b"PT-1") -> object:
    import json

    from consumer.clients.seam import Record

    return Record("lab.acks", 2, 41, key, json.dumps(value).encode(), (), 1_900_000_000_000)


def test_an_ack_topic_record_takes_the_patient_time_and_id_from_the_record_and_keeps_no_note():
    from consumer.stages.acks import acknowledgement_in

    ack = acknowledgement_in(
        _record(
            {"incident_key": "a" * 32, "decision": "no_change", "by": "pharmacist", "note": "PT-1 is fine"}
        )
    )
    assert (ack.patient_id, ack.ack_id, ack.at.year) == ("PT-1", "lab.acks/2/41", 2030)
    assert "PT-1 is fine" not in ack.model_dump_json()


@pytest.mark.parametrize(
    ("value", "key", "why"),
    [
        (
            {"incident_key": "a" * 32, "decision": "no_change", "by": "pharmacist", "patient_id": "PT-2"},
            b"PT-1",
            "key",
        ),
        ({"incident_key": "a" * 32, "decision": "no_change"}, b"PT-1", "by"),
        ({"incident_key": "a" * 32, "decision": "no_change", "by": "pharmacist"}, None, "patient_id"),
        (["not", "an", "object"], b"PT-1", "object"),
    ],
    ids=["patient-differs-from-key", "no-role", "no-patient", "not-an-object"],
)
def test_an_ack_topic_record_that_is_not_an_acknowledgement_says_why(value, key, why):
    from consumer.stages.acks import acknowledgement_in

    with pytest.raises(ValueError, match=why):
        acknowledgement_in(_record(value, key))


def test_a_page_opened_before_escalation_existed_does_not_escalate_on_the_next_result():
    """Its state has no opening time: escalating it now would page for an incident weeks old."""
    state = paged(CorrelationRules())
    legacy = state.model_copy(
        update={"incidents": tuple(i.model_copy(update={"opened_at": None}) for i in state.incidents)}
    )
    later = result("39803-2", "1.7", "ug/mL", accession="ACC-2", specimen_id="SPM-2")
    done = correlate_result(legacy, later, HERE, RULES, rules=ESCALATING, read_at=READ + timedelta(days=30))
    assert done is not None
    escalations = {f.follows for f in done.state.follow_ups if f.kind is FollowUpKind.NOT_ACKNOWLEDGED}
    new_page = {i.key for i in done.state.incidents} - {i.key for i in legacy.incidents}
    assert escalations == new_page and len(new_page) == 1
