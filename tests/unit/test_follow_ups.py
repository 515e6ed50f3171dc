"""Follow-ups (issue 39): the antibody result a low level calls for, waited for and asked after.

The numbers come from the rule set (`antibodies-after-low-level`: due 240 h after the draw, never
sooner than 96 h after the level was read; the reference lab's analytic time of 4-10 days), read
here from the rule set rather than repeated, so a test fails when the behaviour does, not when
the data is revised.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from interpretation import LabResult, SourceRef
from interpretation.alerts import Action, Category, Severity
from interpretation.correlation import correlate_result
from interpretation.follow_ups import fire_due
from interpretation.patient_state import CorrelationRules, PatientState
from interpretation.ruleset import FollowUpKind, parse_ruleset
from tests.unit.helpers import RULES

DRAWN = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
HERE = SourceRef(topic="lab.results", partition=0, offset=1)
RULE = RULES.follow_up(FollowUpKind.ANTIBODIES_NOT_RESULTED)
assert RULE is not None
DUE_AFTER = timedelta(hours=float(RULE.due_after_hours))
LEAST_WAIT = timedelta(hours=float(RULE.least_wait_hours))


OFF = CorrelationRules()  # no escalation


def fire(state: PatientState, ruleset=RULES, now: datetime = DRAWN, rules: CorrelationRules = OFF):
    return fire_due(state, ruleset, now, rules)


def level(value: str = "1.8", *, status: str = "final", **ids: Any) -> LabResult:
    fields = {"accession": "ACC-1", "specimen_id": "SPM-1", "collected_at": DRAWN, **ids}
    return LabResult(patient_id="PT-1", code="39803-2", value=value, unit="ug/mL", status=status, **fields)


def antibodies(value: str, *, status: str = "final", **ids: Any) -> LabResult:
    fields = {"accession": "ACC-1", "specimen_id": "SPM-1", "collected_at": DRAWN, **ids}
    return LabResult(patient_id="PT-1", code="INXAB", value=value, unit="U/mL", status=status, **fields)


def read(state: PatientState | None, result: LabResult, at: datetime, ruleset=RULES):
    done = correlate_result(state, result, HERE, ruleset, read_at=at)
    assert done is not None
    return done.state, done.events


def test_a_low_level_alone_waits_for_its_antibodies_until_the_reflex_tests_longest_turnaround():
    state, _ = read(None, level(), DRAWN + timedelta(days=1))
    (follow_up,) = state.follow_ups
    assert follow_up.kind is FollowUpKind.ANTIBODIES_NOT_RESULTED
    assert follow_up.due == DRAWN + DUE_AFTER
    assert state.next_due() == DRAWN + DUE_AFTER
    assert follow_up.follows == state.incidents[0].key


def test_a_level_read_late_gets_the_shortest_turnaround_from_when_it_was_read():
    late = DRAWN + DUE_AFTER + timedelta(days=3)  # a backlog, or a slow interface
    state, _ = read(None, level(), late)
    assert state.follow_ups[0].due == late + LEAST_WAIT


def test_it_fires_once_at_its_due_time_as_a_low_severity_follow_up_incident():
    state, _ = read(None, level(), DRAWN)
    due = state.follow_ups[0].due
    early, events = fire(state, RULES, due - timedelta(seconds=1))
    assert events == [] and early == state
    fired, events = fire(state, RULES, due + timedelta(seconds=30))
    (event,) = events
    assert (event.action, event.category, event.severity) == (
        Action.TRIGGER,
        Category.FOLLOW_UP,
        Severity.LOW,
    )
    assert event.follow_up is not None
    assert event.follow_up.late_seconds == 30 and event.follow_up.due_at == due
    assert event.follow_up.follows_incident == state.incidents[0].key
    assert event.incident_key != state.incidents[0].key  # its own incident, not the page's
    assert event.recommendation == RULE.text
    assert {c.id for c in event.citations} == set(RULE.citations)
    assert "PT-1" not in event.summary and "SPM-1" not in event.summary
    assert fired.next_due() is None  # fired: nothing more waits
    again, more = fire(fired, RULES, due + timedelta(days=5))
    assert more == [] and again == fired


def test_after_downtime_it_fires_late_and_says_how_late():
    state, _ = read(None, level(), DRAWN)
    due = state.follow_ups[0].due
    _, (event,) = fire(state, RULES, due + timedelta(minutes=10))
    assert event.follow_up is not None and event.follow_up.late_seconds == 600


def test_the_same_deadline_fires_the_same_event_id_on_any_instance():
    """A takeover that fires again what an aborted transaction fired must give the same event."""
    state, _ = read(None, level(), DRAWN)
    due = state.follow_ups[0].due
    _, (one,) = fire(state, RULES, due)
    _, (other,) = fire(state, RULES, due + timedelta(seconds=3))
    assert one.event_id == other.event_id and one.incident_key == other.incident_key


def test_antibodies_resulted_in_time_end_the_follow_up_without_a_word():
    state, _ = read(None, level(), DRAWN)
    state, events = read(state, antibodies("<50", accession="ACC-REFLEX"), DRAWN + timedelta(days=4))
    assert state.follow_ups == ()
    assert all(e.category is not Category.FOLLOW_UP for e in events)


def test_antibodies_resulted_after_it_fired_resolve_the_follow_up_incident():
    state, _ = read(None, level(), DRAWN)
    due = state.follow_ups[0].due
    state, (fired,) = fire(state, RULES, due)
    state, events = read(state, antibodies("180", accession="ACC-REFLEX"), due + timedelta(days=1))
    follow = [e for e in events if e.category is Category.FOLLOW_UP]
    assert [(e.action, e.incident_key) for e in follow] == [(Action.RESOLVE, fired.incident_key)]
    assert follow[0].resolve_reason == "the antibody result has arrived"
    assert state.follow_ups == ()
    # The page itself goes on: the antibodies make the low level an immunogenic failure.
    assert any(
        e.category is Category.SUBTHERAPEUTIC_LEVEL and e.severity is Severity.CRITICAL for e in events
    )


def test_a_level_corrected_into_range_ends_its_follow_up():
    state, _ = read(None, level(), DRAWN)
    due = state.follow_ups[0].due
    state, _ = fire(state, RULES, due)
    state, events = read(state, level("5.2", status="corrected"), due + timedelta(hours=2))
    assert state.follow_ups == ()
    resolved = [e for e in events if e.category is Category.FOLLOW_UP]
    assert [e.action for e in resolved] == [Action.RESOLVE]
    assert resolved[0].resolve_reason == "the incident it follows up has ended"


def test_a_pending_antibody_result_moves_the_deadline_once():
    state, _ = read(None, level(), DRAWN)
    first_due = state.follow_ups[0].due
    pending_read = first_due - timedelta(hours=1)  # the reflex test is running, an hour before
    state, _ = read(state, antibodies("pending", status="preliminary", accession="ACC-REFLEX"), pending_read)
    assert state.follow_ups[0].due == pending_read + LEAST_WAIT
    # The same pending result again (a redelivery) does not move it further.
    again, _ = read(state, antibodies("pending", status="preliminary", accession="ACC-REFLEX"), first_due)
    assert again.follow_ups[0].due == pending_read + LEAST_WAIT


def test_a_level_paired_with_its_antibodies_needs_no_follow_up():
    state, _ = read(None, antibodies("<50"), DRAWN)
    state, _ = read(state, level(), DRAWN)
    assert state.follow_ups == ()


def test_an_adequate_level_opens_none():
    state, _ = read(None, level("5.0"), DRAWN)
    assert state.follow_ups == ()


def test_without_a_clock_or_without_the_rule_nothing_is_scheduled():
    done = correlate_result(None, level(), HERE, RULES)
    assert done is not None and done.state.follow_ups == ()
    without = parse_ruleset(RULES.model_copy(update={"follow_ups": ()}).model_dump_json())
    state, _ = read(None, level(), DRAWN, ruleset=without)
    assert state.follow_ups == ()


def test_a_rule_the_deployment_turned_off_drops_its_waiting_follow_ups_silently():
    state, _ = read(None, level(), DRAWN)
    without = RULES.model_copy(update={"follow_ups": ()})
    after, events = fire(state, without, DRAWN + DUE_AFTER + timedelta(days=1))
    assert events == [] and after.follow_ups == () and after.next_due() is None


def test_the_deadline_survives_the_changelog_round_trip():
    state, _ = read(None, level(), DRAWN)
    again = PatientState.model_validate_json(state.model_dump_json())
    assert again == state and again.next_due() == state.next_due()


def test_a_state_written_before_follow_ups_reads_with_none():
    old = PatientState(patient_id="PT-1").model_dump(mode="json")
    del old["follow_ups"]
    assert PatientState.model_validate(old).follow_ups == ()


@pytest.mark.parametrize(("least", "due"), [("241", "240"), ("-1", "240"), ("0", "0")])
def test_the_rule_set_refuses_a_wait_that_cannot_be(least: str, due: str):
    data = RULES.model_dump(mode="json")
    data["follow_ups"][0].update(least_wait_hours=least, due_after_hours=due)
    with pytest.raises(ValueError, match="follow_ups"):
        parse_ruleset(__import__("json").dumps(data))


def test_a_resolve_goes_out_even_when_the_result_it_described_is_gone():
    """Enrichment never costs an event: a follow-up whose level aged out of the state still
    resolves, described by the bare finding."""
    from interpretation.follow_ups import follow_through
    from interpretation.patient_state import CorrelationRules

    state, _ = read(None, level(), DRAWN)
    state, _ = fire(state, RULES, state.follow_ups[0].due)
    gone = state.model_copy(update={"results": (), "incidents": ()})
    _, (event,) = follow_through(gone, RULES, DRAWN + timedelta(days=20), CorrelationRules())
    assert (event.action, event.category, event.value) == (Action.RESOLVE, Category.FOLLOW_UP, None)
    assert event.resolve_reason == "the incident it follows up has ended"
