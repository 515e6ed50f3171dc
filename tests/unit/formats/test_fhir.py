"""FHIR R4 Observations and Bundles: resolution of references, values, status, and refusals."""

import json

import pytest

from consumer.dead_letters import Reason
from consumer.formats import DecodeError
from consumer.formats.fhir import decode_fhir
from interpretation import ResultStatus

from .conftest import DATA

LOINC_IFX = {
    "system": "http://loinc.org",
    "code": "39803-2",
    "display": "Infliximab [Mass/volume] in Serum or Plasma",
}


def observation(**fields):
    base = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [LOINC_IFX]},
        "subject": {"identifier": {"value": "PT-1"}},
        "valueQuantity": {"value": 2.1, "unit": "ug/mL"},
    }
    base.update(fields)
    return base


def bundle(*resources, kind="collection"):
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"fullUrl": f"urn:uuid:{n}", "resource": r} for n, r in enumerate(resources)],
    }


def fixture(name):
    return json.loads((DATA / "fhir" / name).read_text())


def test_bundle_resolves_patient_specimen_and_report(relevant):
    level, antibodies = decode_fhir(fixture("bundle-collection-report.json"), relevant)
    assert level.patient_id == "TDM-PT-0201"  # the MR identifier, not the first one
    assert (level.accession, level.specimen_id) == ("ACC-26-7201", "SPM-7201")
    assert (level.code, level.code_system, level.value, level.unit) == ("39803-2", "LN", "2.1", "ug/mL")
    assert (level.reference_range, level.abnormal_flags) == ("3.0-7.0", ("L",))
    assert level.comments == ("Trough drawn before the 8-week infusion.",)
    assert (antibodies.code, antibodies.value, antibodies.reference_range) == ("INXAB", ">180", "<50")


def test_loinc_coding_is_preferred_over_a_local_one(relevant):
    [level, _] = decode_fhir(fixture("bundle-collection-report.json"), relevant)
    assert level.display == "Infliximab [Mass/volume] in Serum or Plasma"


def test_single_observation_with_subject_identifier(relevant):
    [result] = decode_fhir(fixture("observation-single.json"), relevant)
    assert (result.patient_id, result.result_id, result.status) == (
        "TDM-PT-0202",
        "RES-7202-1",
        ResultStatus.CORRECTED,
    )
    assert result.collected_at.isoformat() == "2026-11-03T09:00:00+01:00"


def test_qualitative_result_in_a_message_bundle(relevant):
    [result] = decode_fhir(fixture("bundle-message-qualitative.json"), relevant)
    assert (result.patient_id, result.value, result.abnormal_flags) == ("TDM-PT-0203", "Positive", ("POS",))
    assert result.code == "Anti-infliximab antibodies (ATI)"  # only text names the test


def test_accession_can_come_from_the_report_listing_the_observation(relevant):
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"value": "REP-9"}],
        "result": [{"reference": "urn:uuid:1"}],
    }
    [result] = decode_fhir(bundle(report, observation()), relevant)
    assert result.accession == "REP-9"


def test_value_string_and_ucum_code(relevant):
    [text] = decode_fhir(observation(valueQuantity=None, valueString=" <1.0 "), relevant)
    assert text.value == "<1.0"
    ucum = {
        "value": 2400,
        "unit": "nanogram per millilitre",
        "system": "http://unitsofmeasure.org",
        "code": "ng/mL",
    }
    [quantity] = decode_fhir(observation(valueQuantity=ucum), relevant)
    assert (quantity.value, quantity.unit) == ("2400", "ng/mL")


@pytest.mark.parametrize(
    ("reference_range", "text"),
    [
        ([{"high": {"value": 49}}], "<=49"),
        ([{"low": {"value": 3}}], ">=3"),
        ([{"low": {"value": 3}, "high": {"value": 7}, "text": "3-7 ug/mL"}], "3-7 ug/mL"),
    ],
)
def test_reference_range_as_text(reference_range, text, relevant):
    [result] = decode_fhir(observation(referenceRange=reference_range), relevant)
    assert result.reference_range == text


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("final", ResultStatus.FINAL),
        ("amended", ResultStatus.CORRECTED),
        ("registered", ResultStatus.PRELIMINARY),
        ("unknown", ResultStatus.PRELIMINARY),
        ("entered-in-error", ResultStatus.ENTERED_IN_ERROR),
    ],
)
def test_status_mapping(status, expected, relevant):
    assert decode_fhir(observation(status=status), relevant)[0].status is expected


def test_patient_id_from_the_reference_when_nothing_else(relevant):
    [result] = decode_fhir(observation(subject={"reference": "Patient/12345"}), relevant)
    assert result.patient_id == "12345"


def test_unrelated_observation_is_not_validated(relevant):
    glucose = {
        "resourceType": "Observation",
        "code": {"coding": [{"code": "2345-7"}]},
        "valueQuantity": "oops",
    }
    assert decode_fhir(bundle(glucose, kind="searchset"), relevant) == []


@pytest.mark.parametrize(
    ("document", "reason", "words"),
    [
        (observation(subject={"reference": "urn:uuid:nowhere"}), Reason.INVALID, "subject names no patient"),
        (observation(status="guess"), Reason.INVALID, "not an Observation status"),
        (observation(code="39803-2"), Reason.INVALID, "code"),
        ({"resourceType": "Bundle", "entry": []}, Reason.INVALID, "type"),
        ({"resourceType": "Patient"}, Reason.UNSUPPORTED_FORMAT, "expected Observation or Bundle"),
        ({"status": "final"}, Reason.UNSUPPORTED_FORMAT, "missing"),
        (bundle(observation(effectiveDateTime="yesterday")), Reason.INVALID, "effectiveDateTime"),
    ],
)
def test_refusals(document, reason, words, relevant):
    with pytest.raises(DecodeError) as refused:
        decode_fhir(document, relevant)
    assert refused.value.reason is reason
    assert words in refused.value.detail


@pytest.mark.parametrize("name", ["fhir-missing-status.json", "fhir-bad-quantity.json"])
def test_broken_fixtures_are_invalid(name, relevant):
    with pytest.raises(DecodeError) as refused:
        decode_fhir(json.loads((DATA / "broken" / name).read_text()), relevant)
    assert refused.value.reason is Reason.INVALID
