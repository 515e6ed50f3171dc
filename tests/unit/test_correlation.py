"""Correlating a patient's results across messages and days (issue 14), without Kafka.

Each scenario is a real TDM workflow; the expected events are what a pharmacist would want a
paging system to receive, not outputs copied from the code.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from interpretation import LabResult, SourceRef, interpret
from interpretation.alerts import Action, Category, Severity
from interpretation.correlation import correlate
from interpretation.findings import Pattern
from interpretation.patient_state import CorrelationRules, PatientState
from tests.unit.helpers import RULES

DAY0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
HERE = SourceRef(topic="lab.results", partition=0, offset=1)


def level(value: str, *, at: datetime = DAY0, status: str = "final", **ids: Any) -> LabResult:
    fields = {"accession": "ACC-1", "specimen_id": "SPM-1", **ids}
    return LabResult(
        patient_id="PT-1", code="39803-2", value=value, unit="ug/mL", collected_at=at, status=status, **fields
    )


def antibodies(value: str, *, at: datetime = DAY0, status: str = "final", **ids: Any) -> LabResult:
    fields = {"accession": "ACC-1", "specimen_id": "SPM-1", **ids}
    return LabResult(
        patient_id="PT-1", code="INXAB", value=value, unit="U/mL", collected_at=at, status=status, **fields
    )


def feed(*results: LabResult, rules: CorrelationRules | None = None):
    """Correlate results in arrival order; return the final state and every event, in order."""
    state: PatientState | None = None
    events = []
    for result in results:
        found = interpret(result, RULES)
        assert found is not None
        state, new = correlate(state, found, HERE, RULES, rules or CorrelationRules())
        events.extend(new)
    assert state is not None
    return state, events


def test_a_reflex_antibody_two_days_later_escalates_the_low_level_to_critical():
    # The reference lab reports the level, then reflexes antibodies (same specimen) on another day.
    _, events = feed(level("2.1"), antibodies("180", accession="ACC-REFLEX", result_id="R-AB"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]
    trigger, update = events
    assert trigger.incident_key == update.incident_key
    assert (trigger.severity, trigger.pattern) == (Severity.HIGH, None)
    assert (update.severity, update.pattern) == (Severity.CRITICAL, Pattern.IMMUNOGENIC_FAILURE)
    assert update.partner is not None and update.partner.value == Decimal("2.1")
    assert "switching" in (update.recommendation or "")
    assert update.event_id != trigger.event_id


def test_the_antibody_result_may_come_first():
    _, events = feed(antibodies("180"), level("1.2", result_id="R-LVL"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]
    assert events[0].category is Category.ANTI_DRUG_ANTIBODIES
    assert events[1].incident_key == events[0].incident_key
    assert (events[1].severity, events[1].pattern) == (Severity.CRITICAL, Pattern.IMMUNOGENIC_FAILURE)


def test_no_antibodies_for_a_low_level_updates_it_with_dose_intensification():
    _, events = feed(level("2.0"), antibodies("20", accession="ACC-2"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]
    assert (events[1].pattern, events[1].severity) == (Pattern.NON_IMMUNE_LOW_LEVEL, Severity.HIGH)
    assert "intensification" in (events[1].recommendation or "")


def test_an_adequate_level_without_antibodies_pages_nobody():
    _, events = feed(level("5.0"), antibodies("20"))
    assert events == []


def test_antibodies_with_an_adequate_level_trigger_once():
    _, events = feed(level("5.0"), antibodies("180"))
    assert [(e.action, e.pattern) for e in events] == [
        (Action.TRIGGER, Pattern.ANTIBODIES_WITH_ADEQUATE_LEVEL)
    ]


@pytest.mark.parametrize(("hours", "pairs"), [(10, True), (30, False)])
def test_without_shared_ids_results_pair_within_the_window(hours, pairs):
    _, events = feed(
        level("2.0", accession=None, specimen_id=None, result_id="L1"),
        antibodies("180", at=DAY0 + timedelta(hours=hours), accession=None, specimen_id=None, result_id="A1"),
    )
    if pairs:
        assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]
    else:
        assert [e.action for e in events] == [Action.TRIGGER, Action.TRIGGER]
        assert events[0].incident_key != events[1].incident_key


def test_a_partner_is_kept_only_for_the_keep_time():
    late = DAY0 + timedelta(days=40)
    _, events = feed(level("2.0"), antibodies("180", at=late, result_id="A-LATE"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.TRIGGER]


def test_a_correction_into_range_resolves_the_incident():
    _, events = feed(level("2.0", result_id="R1"), level("4.0", result_id="R1", status="corrected"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.RESOLVE]
    assert events[1].incident_key == events[0].incident_key
    assert events[1].resolve_reason == "corrected into range"


def test_a_correction_still_low_updates_the_same_incident():
    _, events = feed(level("2.0", result_id="R1"), level("1.5", result_id="R1", status="corrected"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]
    assert events[1].incident_key == events[0].incident_key and events[1].value == Decimal("1.5")


@pytest.mark.parametrize("withdrawn", ["entered_in_error", "cancelled"])
def test_a_withdrawn_result_resolves_its_incident_with_the_reason(withdrawn):
    state, events = feed(level("2.0", result_id="R1"), level("2.0", result_id="R1", status=withdrawn))
    assert [e.action for e in events] == [Action.TRIGGER, Action.RESOLVE]
    assert withdrawn.replace("_", " ") in (events[1].resolve_reason or "")
    assert state.incidents == ()


def test_a_preliminary_result_never_pages_but_the_final_after_it_does():
    _, events = feed(level("2.0", result_id="R1", status="preliminary"), level("2.0", result_id="R1"))
    assert [e.action for e in events] == [Action.TRIGGER]


def test_the_same_report_delivered_twice_says_nothing_new():
    state, events = feed(level("2.0"), level("2.0"))
    assert [e.action for e in events] == [Action.TRIGGER]
    assert len(state.results) == 1


def test_events_carry_previous_levels_newest_first_and_the_change():
    _, events = feed(
        level("5.8", at=DAY0 - timedelta(weeks=16), accession="A0", specimen_id="S0"),
        level("4.0", at=DAY0 - timedelta(weeks=8), accession="A1", specimen_id="S1"),
        level("2.1", at=DAY0, accession="A2", specimen_id="S2"),
    )
    (alert,) = events
    assert [p.value for p in alert.previous_levels] == [Decimal("4.0"), Decimal("5.8")]
    assert alert.change_from_last == Decimal("-1.9")


def test_event_ids_are_stable_across_replays_and_distinct_between_events():
    first = feed(level("2.1"), antibodies("180", accession="ACC-REFLEX"))[1]
    again = feed(level("2.1"), antibodies("180", accession="ACC-REFLEX"))[1]
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len({e.event_id for e in first}) == 2


def test_times_with_and_without_an_offset_compare():
    naive = DAY0.replace(tzinfo=None) + timedelta(hours=2)
    _, events = feed(
        level("2.0", accession=None, specimen_id=None, result_id="L"),
        antibodies("180", at=naive, accession=None, specimen_id=None, result_id="A"),
    )
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]


def test_state_holds_no_free_text_and_stays_bounded():
    results = [
        level(f"{2 + n / 10:.1f}", at=DAY0 + timedelta(weeks=n), accession=f"A{n}", specimen_id=f"S{n}")
        for n in range(60)
    ]
    state, _ = feed(*results, rules=CorrelationRules(max_results=10))
    assert len(state.results) <= 10
    dumped = state.model_dump_json()
    for absent in ("display", "comments", "reference_range", "code"):
        assert f'"{absent}"' not in dumped


def test_withdrawing_one_result_of_a_pair_keeps_the_incident_open_for_the_other():
    # The antibody result is entered in error, but the low level still stands: not resolved.
    _, events = feed(
        level("2.0", result_id="L"),
        antibodies("180", result_id="A", accession="ACC-R"),
        antibodies("180", result_id="A", accession="ACC-R", status="entered_in_error"),
    )
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE, Action.UPDATE]
    downgraded = events[-1]
    assert (downgraded.severity, downgraded.pattern) == (Severity.HIGH, None)
    assert downgraded.incident_key == events[0].incident_key
    assert "entered in error" in downgraded.summary and "still calls for attention" in downgraded.summary


def test_a_correction_that_cannot_be_read_keeps_the_incident_open():
    _, events = feed(level("2.0", result_id="R1"), level("see comment", result_id="R1", status="corrected"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]
    assert events[1].finding.value == "uninterpretable"


def test_reports_without_any_identity_never_correct_each_other():
    no_ids = {"accession": None, "specimen_id": None}
    _, events = feed(level("2.0", **no_ids), level("6.0", at=DAY0 + timedelta(days=60), **no_ids))
    assert [e.action for e in events] == [Action.TRIGGER]  # the later normal level resolves nothing
