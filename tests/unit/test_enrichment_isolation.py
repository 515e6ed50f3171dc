"""Decision support never costs a page (issue 37): whatever the patient's dose history holds, and
whatever fails in the forecast or in correlating with the history, a low level pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interpretation import LabResult, SourceRef
from interpretation.alerts import Action, Category
from interpretation.correlation import correlate_result, record_treatment
from interpretation.lab_result import Route
from interpretation.pk.forecast import Forecast, RefusalCode, Refused
from interpretation.review import ReviewReason
from interpretation.treatment import DoseGiven, TreatmentRecord
from tests.unit.helpers import RULES

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HERE = SourceRef(topic="lab.results", partition=0, offset=0)
DRAWN = T0 + timedelta(days=210) - timedelta(hours=1)


def _level(value: str = "1.2", drawn: datetime = DRAWN) -> LabResult:
    return LabResult(
        patient_id="PT-1", accession="A-30", code="39803-2", value=value, unit="ug/mL", collected_at=drawn
    )  # type: ignore[call-arg]


def _paged(done) -> list:  # type: ignore[no-untyped-def]
    return [
        e
        for e in done.events
        if e.category is Category.SUBTHERAPEUTIC_LEVEL and e.action in (Action.TRIGGER, Action.UPDATE)
    ]


def test_an_infusion_paused_and_restarted_no_longer_breaks_the_forecast_or_the_page():
    """Two administrations 90 minutes apart made the current regimen 'every 0.0 weeks' and the
    forecast divided by zero: `interpret` exited 1, the service dead-lettered the level."""
    days = (0, 14, 42, 98, 154)
    doses = [DoseGiven(at=T0 + timedelta(days=d), amount=Decimal(5), unit="mg/kg") for d in days]
    doses.append(DoseGiven(at=T0 + timedelta(days=154, minutes=90), amount=Decimal(5), unit="mg/kg"))
    record = TreatmentRecord(weight_kg=Decimal(70), route=Route.INTRAVENOUS, doses=tuple(doses))
    state = record_treatment(None, "PT-1", record, replace=True)
    done = correlate_result(state, _level(), HERE, RULES)
    assert done is not None and len(_paged(done)) == 1
    [page] = _paged(done)
    assert page.forecast is not None
    if isinstance(page.forecast, Forecast) and page.forecast.current is not None:
        assert page.forecast.current.every_weeks >= 1


def test_a_forecast_that_fails_is_a_refusal_that_says_so_and_the_page_goes_out(monkeypatch):
    def broken(*args: object) -> None:
        raise ZeroDivisionError

    monkeypatch.setattr("interpretation.correlation.forecast_for", broken)
    done = correlate_result(None, _level(), HERE, RULES)
    assert done is not None
    [page] = _paged(done)
    assert isinstance(page.forecast, Refused) and page.forecast.code is RefusalCode.INTERNAL_ERROR
    assert "ZeroDivisionError" in page.forecast.reason and "No forecast" in (page.recommendation or "")


def test_a_correlation_that_fails_reads_the_result_as_a_new_patient_and_opens_a_review(monkeypatch):
    state = record_treatment(None, "PT-1", TreatmentRecord(weight_kg=Decimal(70)), replace=True)
    earlier = _level("5.0", DRAWN - timedelta(days=56)).model_copy(update={"accession": "A-22"})
    first = correlate_result(state, earlier, HERE, RULES)
    assert first is not None

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("history")

    real = correlate_result.__globals__["correlate"]
    calls: list[object] = []

    def fails_with_history(state, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(state)
        if state is not None:
            raise KeyError("history")
        return real(state, *args, **kwargs)

    monkeypatch.setattr("interpretation.correlation.correlate", fails_with_history)
    done = correlate_result(first.state, _level("1.2"), HERE, RULES)
    assert done is not None
    [page] = _paged(done)
    assert "Read as a new patient" in (page.recommendation or "") and "KeyError" in page.recommendation
    [review] = [e for e in done.events if e.category is Category.REVIEW]
    assert review.review_reason is ReviewReason.HISTORY_NOT_APPLIED and review.action is Action.TRIGGER
    # The state keeps the history and the treatment, with the new result added.
    assert len(done.state.results) == 2 and done.state.treatment == first.state.treatment


_when = st.integers(min_value=-30 * 24, max_value=220 * 24).map(lambda h: T0 + timedelta(hours=h))
_dose = st.builds(
    DoseGiven,
    at=_when,
    amount=st.sampled_from([Decimal(5), Decimal(10), Decimal(400), Decimal("0.5"), Decimal(5000)]),
    unit=st.sampled_from(["mg", "mg/kg"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doses=st.lists(_dose, max_size=14),
    weight=st.one_of(st.none(), st.sampled_from([Decimal(3), Decimal(70), Decimal(399)])),
    route=st.sampled_from([None, Route.INTRAVENOUS, Route.SUBCUTANEOUS]),
    earlier=st.lists(st.sampled_from(["0.4", "2.0", "9.0", "40", "<1.0"]), max_size=3),
    value=st.sampled_from(["1.2", "0.3", "<1.0", "2.9"]),
)
def test_whatever_the_history_holds_correlate_never_raises_and_every_low_level_pages(
    doses, weight, route, earlier, value
):
    state = None
    for n, chunk in enumerate([doses[:5], doses[5:10], doses[10:]]):
        record = TreatmentRecord(weight_kg=weight, route=route, doses=tuple(chunk))
        state = record_treatment(state, "PT-1", record, replace=n == 0)
    for n, said in enumerate(earlier):
        drawn = DRAWN - timedelta(days=20 * (n + 1))
        old = LabResult(
            patient_id="PT-1",
            accession=f"A-{n}",
            code="39803-2",
            value=said,
            unit="ug/mL",
            collected_at=drawn,
        )  # type: ignore[call-arg]
        done = correlate_result(state, old, HERE, RULES)
        assert done is not None
        state = done.state
    done = correlate_result(state, _level(value), HERE, RULES)
    assert done is not None and _paged(done), [e.summary for e in done.events]


@pytest.mark.parametrize("minutes", [0, 90, 60 * 6])
def test_administrations_hours_apart_are_one_infusion(minutes):
    first = DoseGiven(at=T0, amount=Decimal(400))
    again = DoseGiven(at=T0 + timedelta(minutes=minutes), amount=Decimal(300))
    record = TreatmentRecord(doses=(first, again))
    assert len(record.doses) == 1 and record.doses[0].at == T0


# -- one dose history, whatever its source and arrival order ------------------------------------


def _administration(at: str, status: str = "completed", ident: str = "MA-1", **more: object) -> bytes:
    import json

    resource = {
        "resourceType": "MedicationAdministration",
        "id": ident,
        "status": status,
        "medicationCodeableConcept": {"text": "Infliximab"},
        "effectiveDateTime": at,
        "dosage": {"dose": {"value": 400, "unit": "mg"}},
        **more,
    }
    return json.dumps(resource).encode()


def _apply(state, value: bytes):  # type: ignore[no-untyped-def]
    from consumer.formats.treatment import decode_treatment

    update = decode_treatment(b"PT-1", value, RULES.recognition)
    assert update is not None
    return record_treatment(state, "PT-1", update.record, replace=update.replace)


def test_fhir_doses_in_grams_by_reference_or_without_an_amount_are_all_in_the_history():
    state = _apply(
        None, _administration("2026-01-05T09:00:00Z", dosage={"dose": {"value": 0.4, "unit": "g"}})
    )
    contained = {
        "medicationCodeableConcept": None,
        "contained": [
            {"resourceType": "Medication", "id": "m", "code": {"text": "Inflectra (infliximab-dyyb)"}}
        ],
        "medicationReference": {"reference": "#m"},
    }
    state = _apply(state, _administration("2026-01-19T09:00:00Z", ident="MA-2", **contained))
    state = _apply(state, _administration("2026-02-16T09:00:00Z", ident="MA-3", dosage={}))
    doses = state.treatment.doses
    assert [d.amount for d in doses] == [Decimal(400), Decimal(400), None]
    state = record_treatment(state, "PT-1", TreatmentRecord(weight_kg=Decimal(70)), replace=False)
    done = correlate_result(state, _level("1.2", datetime(2026, 4, 10, 8, tzinfo=UTC)), HERE, RULES)
    [page] = _paged(done)
    assert isinstance(page.forecast, Refused) and "2026-02-16 is not known" in page.forecast.reason


def test_a_resent_administration_replaces_and_one_entered_in_error_is_withdrawn_in_any_order():
    corrected = _administration("2026-01-05T11:00:00Z")  # the same id, a corrected start
    withdrawn = _administration("2026-01-05T11:00:00Z", status="entered-in-error")
    state = _apply(_apply(None, _administration("2026-01-05T09:00:00Z")), corrected)
    assert [d.at.hour for d in state.treatment.doses] == [11]
    assert _apply(state, withdrawn).treatment.doses == ()
    # The withdrawal first, the original later: it stays withdrawn.
    assert _apply(_apply(None, withdrawn), _administration("2026-01-05T09:00:00Z")).treatment.doses == ()


def test_trough_timing_reads_the_doses_a_day_7_level_is_not_a_trough():
    """Issue 37: a pharmacy RAS^O17 infusion on 3 Aug and a level of 5.0 on 10 Aug read as
    'therapeutic, continue dosing': a day-7 level of 5 predicts a trough near zero."""
    given = TreatmentRecord(doses=(DoseGiven(at=datetime(2026, 8, 3, 9, tzinfo=UTC), amount=Decimal(400)),))
    state = record_treatment(None, "PT-1", given, replace=True)
    done = correlate_result(state, _level("5.0", datetime(2026, 8, 10, 9, tzinfo=UTC)), HERE, RULES)
    assert done is not None and done.interpretation.finding.value == "uninterpretable"
    assert "not a trough sample" in done.interpretation.reason


@given(order=st.permutations(range(4)))
@settings(max_examples=24, deadline=None)
def test_the_last_dose_is_the_latest_before_the_draw_whatever_order_the_records_came_in(order):
    starts = [T0 + timedelta(days=d) for d in (0, 14, 42, 98)]
    state = None
    for n in order:  # a back-charted older administration never moves the last dose backwards
        update = TreatmentRecord(
            last_dose_at=starts[n], doses=(DoseGiven(at=starts[n], amount=Decimal(400)),)
        )
        state = record_treatment(state, "PT-1", update, replace=False)
    assert state.treatment.last_dose_before(T0 + timedelta(days=100)) == starts[3]
    assert state.treatment.last_dose_before(T0 + timedelta(days=50)) == starts[2]


# -- a forecast withheld where it would mislead -------------------------------------------------


def _maintained(**record: object) -> object:
    days = (0, 14, 42, 98, 154)
    doses = tuple(DoseGiven(at=T0 + timedelta(days=d), amount=Decimal(5), unit="mg/kg") for d in days)
    base = {"weight_kg": Decimal(70), "route": Route.INTRAVENOUS, "doses": doses, **record}
    return record_treatment(None, "PT-1", TreatmentRecord(**base), replace=True)  # type: ignore[arg-type]


def test_antibodies_detected_in_the_same_report_withhold_the_levels_forecast():
    """Issue 37: a level with antibodies at 650 U/mL in the same report carried '5 mg/kg every 4
    weeks projects 6.3 ug/mL (98% chance)', read before the report's own antibody result."""
    from interpretation.engine import interpret_all, report_order

    ati = LabResult(
        patient_id="PT-1", accession="A-30", code="INXAB", value="650", unit="U/mL", collected_at=DRAWN
    )  # type: ignore[call-arg]
    state = _maintained()
    events = []
    for item in report_order(interpret_all([_level("1.2"), ati], RULES)):
        done = correlate_result(state, item.result, HERE, RULES)
        state, events = done.state, [*events, *done.events]
    told = [e.forecast for e in events if e.forecast is not None]
    assert told and all(isinstance(f, Refused) and f.code is RefusalCode.WITHHELD for f in told), told
    assert "antibodies detected" in told[0].reason


def test_induction_and_a_level_drawn_during_an_infusion_withhold_the_forecast():
    from interpretation.lab_result import Phase

    induction = _maintained(phase=Phase.INDUCTION, induction_start=T0.date())
    done = correlate_result(induction, _level("3.0", T0 + timedelta(days=42, hours=-1)), HERE, RULES)
    told = [e.forecast for e in done.events if e.forecast is not None]
    assert told and told[0].code is RefusalCode.WITHHELD and "induction" in told[0].reason

    during = _level("1.2", T0 + timedelta(days=154, minutes=30))
    done = correlate_result(_maintained(), during, HERE, RULES)
    told = [e.forecast for e in done.events if e.forecast is not None]
    assert told and told[0].code is RefusalCode.WITHHELD and "after an infusion began" in told[0].reason


def test_a_fhir_patient_gives_the_forecast_its_sex_and_birth_date():
    """Issue 38: Patient.gender was ignored (women read as men, flagged assumed)."""
    import json

    patient = {"resourceType": "Patient", "id": "PT-1", "gender": "female", "birthDate": "1980-02-01"}
    state = _apply(_maintained(), json.dumps(patient).encode())
    assert state.treatment.sex == "female" and str(state.treatment.birth_date) == "1980-02-01"
    done = correlate_result(state, _level("1.2"), HERE, RULES)
    [page] = _paged(done)
    assert isinstance(page.forecast, Forecast), page.forecast
    sex = next(c for c in page.forecast.covariates if c.name == "sex")
    assert sex.value == "female" and not sex.assumed
    other = {"resourceType": "Patient", "id": "PT-1", "gender": "unknown"}
    from consumer.formats.treatment import decode_treatment

    assert decode_treatment(b"PT-1", json.dumps(other).encode(), RULES.recognition) is None


def test_a_canonical_dose_without_an_amount_counts_for_timing():
    record = TreatmentRecord.model_validate({"doses": [{"at": "2026-08-03T09:00:00Z"}]})
    assert record.doses[0].amount is None
    assert record.last_dose_before(datetime(2026, 8, 10, tzinfo=UTC)) == datetime(2026, 8, 3, 9, tzinfo=UTC)
