"""Treatment context from the patient's record, and trough timing (issue 13, classes 1 and 2)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from consumer.formats.errors import DecodeError
from consumer.formats.treatment import decode_treatment
from interpretation import LabResult, SourceRef, TreatmentContext, interpret
from interpretation.alerts import Action
from interpretation.correlation import correlate_result, record_treatment
from interpretation.findings import DrugLevelFinding
from interpretation.lab_result import Phase, Route
from interpretation.treatment import ContextSource, TreatmentRecord, resolve_context
from tests.unit.helpers import RULES

DRAWN = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
HERE = SourceRef(topic="lab.results", partition=0, offset=0)
SUB, OK, UNINT = (
    DrugLevelFinding.SUBTHERAPEUTIC,
    DrugLevelFinding.THERAPEUTIC,
    DrugLevelFinding.UNINTERPRETABLE,
)


def level(value: str, **fields: object) -> LabResult:
    return LabResult(
        patient_id="PT-1",
        accession="A1",
        code="39803-2",
        value=value,
        unit="ug/mL",
        collected_at=DRAWN,
        **fields,
    )  # type: ignore[arg-type]


def with_record(result: LabResult, record: TreatmentRecord):
    state = record_treatment(None, "PT-1", record, replace=True)
    done = correlate_result(state, result, HERE, RULES)
    assert done is not None
    return done.state, done.events


def test_a_subcutaneous_patient_with_15_is_low_not_above_target():
    # 15 ug/mL is above the IV maintenance range but below the SC mucosal-healing threshold 17.5.
    _, events = with_record(level("15"), TreatmentRecord(route=Route.SUBCUTANEOUS, phase=Phase.MAINTENANCE))
    (alert,) = events
    assert alert.action is Action.TRIGGER and alert.finding is SUB
    assert alert.target is not None and alert.target.low == 17.5
    assert alert.context_source["route"] is ContextSource.PATIENT_RECORD
    assert "assumed" not in alert.summary


def test_the_induction_week_is_computed_from_the_start_and_the_collection_time():
    start = (DRAWN - timedelta(days=41)).date()  # the week-6 infusion, a day early
    _, events = with_record(level("3.9"), TreatmentRecord(phase=Phase.INDUCTION, induction_start=start))
    (alert,) = events
    assert alert.context.week == 6 and alert.target is not None and alert.target.low == 4.5


def test_the_message_outranks_the_record_which_outranks_the_default():
    message = TreatmentContext(route=Route.INTRAVENOUS)
    record = TreatmentContext(route=Route.SUBCUTANEOUS, phase=Phase.INDUCTION)
    context, sources = resolve_context(RULES.defaults, record, message)
    assert (context.route, sources["route"]) == (Route.INTRAVENOUS, ContextSource.MESSAGE)
    assert (context.phase, sources["phase"]) == (Phase.INDUCTION, ContextSource.PATIENT_RECORD)
    _, bare_sources = resolve_context(RULES.defaults, None, TreatmentContext())
    assert bare_sources == {
        "phase": ContextSource.DEFAULT,
        "route": ContextSource.DEFAULT,
        "indication": ContextSource.DEFAULT,
    }


def test_an_assumed_context_is_said_in_words():
    found = interpret(level("2.0"), RULES)
    assert found is not None
    assert found.context_source["route"] is ContextSource.DEFAULT
    done = correlate_result(None, level("2.0"), HERE, RULES)
    assert done is not None
    assert "Treatment context assumed, not known: maintenance, intravenous" in done.events[0].summary


def test_records_replace_merge_and_delete():
    canonical = TreatmentRecord(route=Route.INTRAVENOUS, dosing_interval_days=56)
    state = record_treatment(None, "PT-1", canonical, replace=True)
    dose = TreatmentRecord(last_dose_at=DRAWN - timedelta(days=10))
    state = record_treatment(state, "PT-1", dose, replace=False)
    assert state is not None and state.treatment is not None
    assert (state.treatment.route, state.treatment.dosing_interval_days) == (Route.INTRAVENOUS, 56)
    assert state.treatment.last_dose_at == dose.last_dose_at
    assert record_treatment(state, "PT-1", None, replace=True) is None  # nothing else known: no state


@pytest.mark.parametrize(
    ("days_since", "value", "finding"),
    [
        (10, "5.0", UNINT),  # in range, but 10 days into 56: the trough will be lower
        (10, "12", UNINT),  # "above target" that early means nothing
        (10, "2.0", SUB),  # low even early: still pages
        (50, "5.0", OK),  # a trough
    ],
)
def test_a_sample_drawn_early_in_the_interval_is_not_a_trough(days_since, value, finding):
    found = interpret(level(value, context=TreatmentContext(days_since_last_dose=days_since)), RULES)
    assert found is not None and found.finding is finding
    if days_since == 10:
        assert "trough" in found.reason
    assert found.alert == (finding is SUB)


def test_the_recorded_interval_and_last_dose_decide_timing():
    record = TreatmentRecord(
        route=Route.SUBCUTANEOUS, dosing_interval_days=14, last_dose_at=DRAWN - timedelta(days=3)
    )
    _, events = with_record(level("25"), record)  # in range for SC, but day 3 of 14
    # Not a trough, so it says little of the trough: a person reviews it (a ticket, never a page).
    assert [(e.category.value, e.severity.value) for e in events] == [("review", "low")]
    assert "not a trough" in events[0].summary
    late = record.model_copy(update={"last_dose_at": DRAWN - timedelta(days=13)})
    _, later = with_record(level("12"), late)
    assert [e.finding for e in later] == [SUB]


def _fhir(resource: dict[str, object]) -> bytes:
    return json.dumps(resource).encode()


def test_a_medication_administration_sets_the_last_dose_and_route():
    update = decode_treatment(
        b"PT-1",
        _fhir(
            {
                "resourceType": "MedicationAdministration",
                "status": "completed",
                "medicationCodeableConcept": {"text": "Inflectra (infliximab-dyyb) 5 mg/kg"},
                "effectiveDateTime": "2026-10-20T10:00:00Z",
                "dosage": {"route": {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]}},
            }
        ),
        RULES.recognition,
    )
    assert update is not None and not update.replace and update.record is not None
    assert update.record.route is Route.INTRAVENOUS
    assert update.record.last_dose_at == datetime(2026, 10, 20, 10, tzinfo=UTC)


def test_a_medication_request_sets_the_interval_and_a_subcutaneous_brand_the_route():
    update = decode_treatment(
        b"PT-1",
        _fhir(
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "medicationCodeableConcept": {"coding": [{"display": "Zymfentra 120 mg/mL pen"}]},
                "dosageInstruction": [{"timing": {"repeat": {"period": 2, "periodUnit": "wk"}}}],
            }
        ),
        RULES.recognition,
    )
    assert update is not None and update.record is not None
    assert (update.record.route, update.record.dosing_interval_days) == (Route.SUBCUTANEOUS, 14)


@pytest.mark.parametrize(
    "resource",
    [
        {
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "medicationCodeableConcept": {"text": "Adalimumab 40 mg"},
        },
        {
            "resourceType": "MedicationAdministration",
            "status": "not-done",
            "medicationCodeableConcept": {"text": "Remicade"},
        },
    ],
)
def test_other_medications_and_doses_not_given_are_skipped(resource):
    assert decode_treatment(b"PT-1", _fhir(resource), RULES.recognition) is None


def test_canonical_records_replace_tombstones_delete_and_bad_ones_are_dead_letters():
    canonical = decode_treatment(
        b"PT-1", b'{"phase": "induction", "induction_start": "2026-09-01"}', RULES.recognition
    )
    assert canonical is not None and canonical.replace and canonical.record is not None
    assert canonical.record.induction_start == date(2026, 9, 1)
    deleted = decode_treatment(b"PT-1", None, RULES.recognition)
    assert deleted is not None and deleted.record is None
    for bad in (b'{"phase": "Jane Doe"}', b"[1]", b"not json"):
        with pytest.raises(DecodeError) as err:
            decode_treatment(b"PT-1", bad, RULES.recognition)
        assert "Jane" not in err.value.detail
    with pytest.raises(DecodeError, match="key"):
        decode_treatment(None, b"{}", RULES.recognition)


def test_the_patient_stage_reports_the_reading_it_made_with_the_record():
    """The service counts this reading (tdm_interpretations_total): the one made with the record."""
    record = TreatmentRecord(route=Route.SUBCUTANEOUS, phase=Phase.MAINTENANCE)
    done = correlate_result(record_treatment(None, "PT-1", record, replace=True), level("15"), HERE, RULES)
    assert done is not None
    assert done.interpretation.finding is SUB
    assert done.interpretation.context.route is Route.SUBCUTANEOUS
    assert done.interpretation.context_source["route"] is ContextSource.PATIENT_RECORD


def test_a_canonical_context_with_an_unknown_field_is_read_like_the_rest_of_the_message():
    """Issue 28: unknown fields are ignored everywhere in a canonical message, context included
    (an unknown context key dead-lettered the whole message, so its low level never paged)."""
    from consumer.formats.canonical import decode_canonical

    message = {
        "patient_id": "PT-1",
        "sender_field": "ignored",
        "context": {"phase": "induction", "week": 6, "ward": "GI-3"},
        "results": [{"code": "39803-2", "value": "3.0", "unit": "ug/mL", "lab_extension": 1}],
    }
    [result] = decode_canonical(json.dumps(message).encode(), lambda code, display: True)
    assert result.context == TreatmentContext(phase=Phase.INDUCTION, week=6)
    assert interpret(result, RULES).finding is DrugLevelFinding.SUBTHERAPEUTIC  # below 4.5 at week 6
    with pytest.raises(DecodeError):  # a known field's bad value is still refused
        decode_canonical(json.dumps({**message, "context": {"week": -1}}).encode(), lambda c, d: True)
