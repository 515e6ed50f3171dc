"""A result that cannot be read never withdraws a page (issue 23, class 1).

Only a readable result that shows the problem is gone, or a correction, entered-in-error or
cancellation of the very result that opened an incident, may resolve or downgrade it. An
indeterminate, not-performed or interfered-with result says nothing either way.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interpretation import LabResult, interpret
from interpretation.alerts import Action, Category, Severity
from interpretation.correlation import correlate
from interpretation.patient_state import PatientState
from tests.unit.helpers import RULES, ati, read
from tests.unit.helpers import level as bare_level
from tests.unit.test_correlation import DAY0, HERE, antibodies, feed, level

UNREADABLE = ("indeterminate", "QNS", "Test not performed", "interference", "see comment")
_RANK = {Severity.LOW: 0, Severity.HIGH: 1, Severity.CRITICAL: 2}


def clinical(events):
    """The events of clinical incidents; an unreadable result also opens a review of its own."""
    return [e for e in events if e.category is not Category.REVIEW]


def test_an_indeterminate_reflex_antibody_result_leaves_the_low_level_paging():
    state, events = feed(level("1.8"), antibodies("indeterminate", accession="ACC-REFLEX", result_id="R-AB"))
    assert [e.action for e in clinical(events)] == [Action.TRIGGER]
    assert events[0].incident_key in {i.key for i in state.incidents}
    # The unreadable reflex result is not swallowed either: a review incident of its own.
    assert [(e.category, e.severity) for e in events[1:]] == [(Category.REVIEW, Severity.LOW)]


def test_an_unreadable_level_leaves_the_antibody_page_standing_in_either_order():
    for results in (
        (antibodies("180"), level("QNS", result_id="R-LVL")),
        (level("QNS", result_id="R-LVL"), antibodies("180")),
    ):
        state, events = feed(*results)
        assert [e.action for e in clinical(events)] == [Action.TRIGGER], results
        assert len([i for i in state.incidents if i.category is not Category.REVIEW]) == 1


def test_an_unreadable_level_does_not_downgrade_immunogenic_failure():
    state, events = feed(
        level("1.2", result_id="R-1"),
        antibodies("180", result_id="R-AB"),
        level("interference", result_id="R-2", at=DAY0 + timedelta(hours=2)),
    )
    assert [e.action for e in clinical(events)] == [Action.TRIGGER, Action.UPDATE]
    assert state.incidents[0].severity is Severity.CRITICAL


def test_a_correction_that_cannot_be_read_keeps_the_incident_at_its_severity():
    state, events = feed(
        level("1.2", result_id="R-1"),
        antibodies("180", result_id="R-AB"),
        antibodies("indeterminate", result_id="R-AB", status="corrected"),
    )
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE, Action.UPDATE]
    assert events[-1].severity is Severity.CRITICAL
    assert state.incidents[0].severity is Severity.CRITICAL


def test_a_readable_negative_partner_still_updates_and_a_readable_correction_still_resolves():
    # The rule above is narrow: readable results keep doing what they did.
    _, events = feed(level("2.0"), antibodies("20", accession="ACC-2"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.UPDATE]
    _, events = feed(level("2.0", result_id="R-1"), level("4.5", result_id="R-1", status="corrected"))
    assert [e.action for e in events] == [Action.TRIGGER, Action.RESOLVE]


# -- the property: over any history, an unreadable result never closes or lowers an incident ----

_ids = st.sampled_from(["A", "B", "C"])
_hours = st.integers(min_value=0, max_value=24 * 40)


@st.composite
def _results(draw: st.DrawFn, readable: bool = True) -> LabResult:
    analyte = draw(st.sampled_from(["level", "antibodies"]))
    if readable:
        values = ["0.8", "2.1", "4.5", "9.0", "<0.4"] if analyte == "level" else ["20", "180"]
        value = draw(st.sampled_from(values))
        status = draw(st.sampled_from(["final", "final", "corrected", "preliminary", "entered_in_error"]))
    else:
        value = draw(st.sampled_from(UNREADABLE))
        status = "final"
    build = level if analyte == "level" else antibodies
    return build(
        value,
        at=DAY0 + timedelta(hours=draw(_hours)),
        status=status,
        accession=f"ACC-{draw(_ids)}",
        specimen_id=f"SPM-{draw(_ids)}",
        result_id=draw(st.one_of(st.none(), _ids.map(lambda i: f"R-{analyte}-{i}"))),
    )


def _fold(state: PatientState | None, result: LabResult) -> tuple[PatientState, list]:
    found = interpret(result, RULES)
    assert found is not None
    return correlate(state, found, HERE, RULES)


@settings(max_examples=300, deadline=None)
@given(history=st.lists(_results(), max_size=8), unreadable=_results(readable=False))
def test_appending_an_unreadable_result_never_resolves_or_lowers_an_incident(history, unreadable):
    state: PatientState | None = None
    for result in history:
        state, _ = _fold(state, result)
    before = {i.key: i.severity for i in state.incidents} if state else {}
    after, events = _fold(state, unreadable)
    now = {i.key: i.severity for i in after.incidents}
    for key, severity in before.items():
        assert key in now, "an unreadable result closed an incident"
        assert _RANK[now[key]] >= _RANK[severity], "an unreadable result lowered an incident's severity"
    assert all(e.action is not Action.RESOLVE for e in events)
    assert all(_RANK[e.severity] >= _RANK[before.get(e.incident_key, Severity.LOW)] for e in events)
    if unreadable.status.value == "final" and not any(e.incident_key in before for e in events):
        assert [e.category for e in events] == [Category.REVIEW]  # never swallowed


def test_a_review_resolves_when_its_result_is_corrected_into_a_reading_and_pages_if_low():
    _, events = feed(level("QNS", result_id="R-1"), level("1.9", result_id="R-1", status="corrected"))
    assert [(e.category, e.action) for e in events] == [
        (Category.REVIEW, Action.TRIGGER),
        (Category.REVIEW, Action.RESOLVE),
        (Category.SUBTHERAPEUTIC_LEVEL, Action.TRIGGER),
    ]
    _, events = feed(level("QNS", result_id="R-1"), level("QNS", result_id="R-1", status="entered_in_error"))
    assert [(e.category, e.action) for e in events] == [
        (Category.REVIEW, Action.TRIGGER),
        (Category.REVIEW, Action.RESOLVE),
    ]


def test_a_preliminary_result_that_cannot_be_read_opens_nothing():
    _, events = feed(level("QNS", status="preliminary"))
    assert events == []


@pytest.mark.parametrize(
    ("result", "context", "reason"),
    [
        (bare_level("QNS"), {}, "no_valid_result"),
        (bare_level("see comment"), {}, "not_a_number"),
        (bare_level("2.5", unit=None), {}, "unit"),
        (bare_level("2.5", unit="mmol/L"), {}, "unit"),
        (bare_level("4,500", unit="ng/mL"), {}, "ambiguous_number"),
        (bare_level("900"), {}, "implausible"),
        (bare_level("4.2"), {"phase": "induction", "week": 10}, "no_target"),
        (bare_level("<5"), {}, "censored_near_target"),
        (ati("12", unit="AU/mL"), {}, "no_cutoff"),
        (ati("indeterminate"), {}, "no_valid_result"),
    ],
)
def test_every_review_says_why_as_a_code(result, context, reason):
    from interpretation import TreatmentContext
    from interpretation.review import review_reason

    found = interpret(result, RULES, TreatmentContext(**context))
    assert found is not None and found.finding.value == "uninterpretable"
    assert review_reason(found).value == reason
    _, events = feed(result) if not context else (None, [])
    if events:
        assert events[0].review_reason is not None and events[0].review_reason.value == reason


def test_an_unreadable_partner_leaves_the_level_with_its_incident_so_a_correction_still_resolves_it():
    # Low level, indeterminate reflex antibodies (their own review), then the level corrected
    # into range: the page resolves, the review of the unreadable antibody result stays open.
    state, events = feed(
        level("1.8", result_id="L1"),
        antibodies("indeterminate", accession="ACC-R", result_id="B1"),
        level("4.5", result_id="L1", status="corrected"),
    )
    assert [(e.category, e.action) for e in events] == [
        (Category.SUBTHERAPEUTIC_LEVEL, Action.TRIGGER),
        (Category.REVIEW, Action.TRIGGER),
        (Category.SUBTHERAPEUTIC_LEVEL, Action.RESOLVE),
    ]
    assert [i.category for i in state.incidents] == [Category.REVIEW]


@pytest.mark.parametrize(
    ("value", "unit"),
    [
        ("\u22640.4", "ug/mL"),  # ≤
        ("=<0.4", "ug/mL"),
        ("&lt;0.4", "ug/mL"),
        ("Below lower limit of quantitation", "ug/mL"),
        ("below the lower limit of quantification", None),
        ("BLQ", "ug/mL"),
        ("Not quantifiable", None),
        ("1.1", "microgram/mL"),
        ("1.1", "micrograms per mL".replace(" per ", "/")),
        ("1.1", "mcg/mL"),
        ("1.1", "\u00b5g/ml"),
        ("1.1", "\u03bcg/mL"),
    ],
)
def test_the_wording_labs_use_for_a_low_level_pages_not_a_review(value, unit):
    """Issue 37: unambiguous low levels written these ways became low review tickets."""
    found = read(bare_level(value, unit))
    assert found.finding.value == "subtherapeutic", found.reason
    assert found.alert
