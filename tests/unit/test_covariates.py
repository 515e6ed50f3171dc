"""Serum albumin and body weight from the lab feed (issue 26): read as the forecast's covariates,
kept in the patient's record by measurement time, never an alert, never a dead letter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.formats.detect import Format
from consumer.pipeline import Outcome, Pipeline
from interpretation import LabResult, SourceRef
from interpretation.covariates import Covariate, read_covariate
from interpretation.lab_result import ResultStatus
from interpretation.treatment import TreatmentRecord
from tests.unit.helpers import RULES

T0 = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
HERE = SourceRef(topic="lab.results", partition=0, offset=0)


def result(code: str, value: str, unit: str | None, status: ResultStatus = ResultStatus.FINAL) -> LabResult:
    return LabResult(patient_id="PT-1", code=code, value=value, unit=unit, status=status, collected_at=T0)


@pytest.mark.parametrize(
    ("code", "value", "unit", "field", "expected"),
    [
        ("1751-7", "3.6", "g/dL", "albumin_g_per_dl", Decimal("3.6")),
        ("1751-7", "36", "g/L", "albumin_g_per_dl", Decimal("3.6")),
        ("29463-7", "70.5", "kg", "weight_kg", Decimal("70.5")),
        ("3141-9", "154", "[lb_av]", "weight_kg", Decimal("154") * Decimal("0.45359237")),
        ("8351-9", "70000", "g", "weight_kg", Decimal(70)),
    ],
)
def test_albumin_and_weight_are_read_in_the_models_units_with_their_time(code, value, unit, field, expected):
    reading = read_covariate(result(code, value, unit), RULES.recognition)
    assert reading is not None and reading.unusable is None and reading.record is not None
    assert getattr(reading.record, field) == expected
    assert getattr(reading.record, field.split("_")[0] + "_at") == T0


@pytest.mark.parametrize(
    ("value", "unit", "status", "why"),
    [
        ("3.6", "g/dL", ResultStatus.PRELIMINARY, "not a final"),
        ("<1.0", "g/dL", ResultStatus.FINAL, "censored"),
        ("hemolysed", "g/dL", ResultStatus.FINAL, "not a number"),
        ("540", "umol/L", ResultStatus.FINAL, "unit"),  # molar albumin: no conversion is guessed
        ("36", None, ResultStatus.FINAL, "unit"),
        ("36", "g/dL", ResultStatus.FINAL, "outside"),  # g/L sent as g/dL
    ],
)
def test_an_albumin_that_cannot_be_used_says_why_and_changes_nothing(value, unit, status, why):
    reading = read_covariate(result("1751-7", value, unit, status), RULES.recognition)
    assert reading is not None and reading.covariate is Covariate.ALBUMIN
    assert reading.record is None and reading.unusable is not None and why in reading.unusable
    assert value not in reading.unusable  # the reason never repeats the value


def test_other_results_are_no_covariate():
    assert read_covariate(result("2345-7", "98", "mg/dL"), RULES.recognition) is None
    assert read_covariate(result("39803-2", "2.1", "ug/mL"), RULES.recognition) is None


measurements = st.lists(
    st.tuples(st.integers(0, 400), st.decimals("2.0", "5.5", places=1)),
    min_size=1,
    max_size=6,
    unique_by=lambda m: m[0],  # one measurement a day: distinct times
)


@given(measurements, st.randoms())
def test_the_latest_measurement_is_kept_whatever_order_they_arrive_in(found, rng):
    arrivals = [TreatmentRecord(albumin_g_per_dl=v, albumin_at=T0 + timedelta(days=d)) for d, v in found]
    rng.shuffle(arrivals)
    record = TreatmentRecord(weight_kg=Decimal(70))
    for arrival in arrivals:
        record = record.merged_with(arrival)
    day, value = max(found)
    assert (record.albumin_g_per_dl, record.albumin_at) == (value, T0 + timedelta(days=day))
    assert record.weight_kg == 70  # other fields untouched


def test_a_value_without_a_time_never_borrows_the_kept_ones():
    kept = TreatmentRecord(albumin_g_per_dl=Decimal("3.1"), albumin_at=T0)
    now = kept.merged_with(TreatmentRecord(albumin_g_per_dl=Decimal("4.0")))
    assert (now.albumin_g_per_dl, now.albumin_at) == (Decimal("4.0"), None)


def hl7_panel(albumin_obx: str, *, level: bool = False) -> bytes:
    segments = [
        "MSH|^~\\&|LIS|LAB|TDM|H|20261102083000||ORU^R01^ORU_R01|M1|P|2.5.1",
        "PID|1||PT-1^^^H^MR",
        "OBR|1|P1|A1|CMP^Metabolic panel^L|||20261102083000",
        "OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F",
        *(["OBX|3|NM|39803-2^Infliximab^LN||1.6|ug/mL|||||F"] if level else []),
        albumin_obx,
    ]
    return "\r".join(segments).encode()


ALBUMIN = "OBX|2|NM|1751-7^Albumin^LN||36|g/L|||||F"


def test_the_pipeline_reads_covariates_only_when_asked():
    off = Pipeline(RULES, 1_000_000).process(hl7_panel(ALBUMIN), HERE, Format.AUTO, interpret=False)
    assert off.outcome is Outcome.SKIPPED and not off.covariates
    on = Pipeline(RULES, 1_000_000, lab_covariates=True)
    done = on.process(hl7_panel(ALBUMIN), HERE, Format.AUTO, interpret=False)
    assert done.outcome is Outcome.SKIPPED and done.dead_letter is None and not done.results
    [found] = done.covariates
    assert found.patient_id == "PT-1" and found.reading.record is not None
    assert found.reading.record.albumin_g_per_dl == Decimal("3.6")
    assert found.reading.record.albumin_at == datetime(2026, 11, 2, 8, 30)  # OBR-7, as the lab sent it


def test_a_bad_albumin_costs_the_covariate_never_the_message_or_its_level():
    pipeline = Pipeline(RULES, 1_000_000, lab_covariates=True)
    # The albumin's own order has a collection time that is no time.
    bad = "OBR|2|P2|A2|ALB^Albumin^L|||not-a-date\r" + ALBUMIN
    done = pipeline.process(hl7_panel(bad, level=True), HERE, Format.AUTO, interpret=False)
    assert done.dead_letter is None and [r.code for r in done.results] == ["39803-2"]
    assert not done.covariates and done.covariate_error is not None and "OBR-7" in done.covariate_error


def test_fhir_and_canonical_albumin_results_are_read_too():
    pipeline = Pipeline(RULES, 1_000_000, lab_covariates=True)
    fhir = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/PT-1"},
        "effectiveDateTime": "2026-11-02T08:30:00Z",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1751-7"}]},
        "valueQuantity": {"value": 3.4, "unit": "g/dL"},
    }
    canonical = {
        "patient_id": "PT-1",
        "collected_at": "2026-11-02T08:30:00Z",
        "results": [{"code": "29463-7", "value": "71", "unit": "kg"}],
    }
    for document, field, value in ((fhir, "albumin_g_per_dl", "3.4"), (canonical, "weight_kg", "71")):
        done = pipeline.process(json.dumps(document).encode(), HERE, Format.AUTO, interpret=False)
        [found] = done.covariates
        assert found.reading.record is not None and getattr(found.reading.record, field) == Decimal(value)
        assert found.reading.record.model_dump()[field.split("_")[0] + "_at"] == T0.replace(minute=30)


def test_an_unexpected_failure_reading_a_covariate_never_escapes_the_pipeline(monkeypatch):
    from consumer import pipeline as module

    def broken(result, recognition):
        raise RuntimeError("a bug")

    monkeypatch.setattr(module, "read_covariate", broken)
    done = Pipeline(RULES, 1_000_000, lab_covariates=True).process(
        hl7_panel(ALBUMIN, level=True), HERE, Format.AUTO, interpret=False
    )
    assert done.dead_letter is None and [r.code for r in done.results] == ["39803-2"]
    assert not done.covariates and done.covariate_error == "RuntimeError"
