"""The forecast from the feed: doses, weight and albumin read from the context topic (canonical,
FHIR, HL7 RAS^O17), kept in the patient's state, and the forecast a level's alert carries."""

from __future__ import annotations

import itertools
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from consumer.formats.errors import DecodeError
from consumer.formats.treatment import decode_treatment
from interpretation import LabResult, SourceRef
from interpretation.correlation import correlate_result, record_treatment
from interpretation.covariates import read_covariate
from interpretation.lab_result import Route
from interpretation.pk.forecast import Forecast, Refused
from interpretation.pk.next_trough import forecast_for
from interpretation.treatment import MAX_DOSES, DoseGiven, TreatmentRecord
from tests.conftest import run_cli
from tests.unit.helpers import RULES

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HERE = SourceRef(topic="lab.results", partition=0, offset=0)
MAINTENANCE = (0, 14, 42, 98, 154)  # days: weeks 0, 2, 6, then every 8 weeks
DRAWN = T0 + timedelta(days=210) - timedelta(hours=1)  # just before the week-30 infusion


def rxa(start: str, drug: str, amount: str, unit: str, status: str = "CP") -> str:
    fields = ["RXA", "0", "1", start, "", drug, amount, unit] + [""] * 12 + [status]
    return "|".join(fields)  # RXA-20, the completion status, last


def ras(*rxa: str, weight: str = "") -> bytes:
    segments = [
        "MSH|^~\\&|PHARM|GENHOSP|TDM|GENHOSP|20260105100000||RAS^O17^RAS_O17|R1|P|2.5",
        "PID|1||PT-1^^^H^MR",
    ]
    for line in rxa:
        segments += [line, "RXR|IV^Intravenous^HL70162"]
    if weight:
        segments.append(f"OBX|1|NM|29463-7^Body weight^LN||{weight}|||||F")
    return "\r".join(segments).encode()


def test_an_hl7_administration_message_gives_the_doses_route_and_weight():
    done = decode_treatment(
        b"PT-1",
        ras(
            rxa("20260105090000", "INFX^Infliximab^L", "5", "mg/kg^^UCUM"),
            rxa("20260119090000", "INFX^Remicade (infliximab)^L", "400", "mg^^UCUM", status="RE"),
            rxa("20260119090000", "ADA^Adalimumab^L", "40", "mg^^UCUM"),
            weight="170^^|[lb_av]",
        ),
        RULES.recognition,
    )
    assert done is not None and not done.replace and done.record is not None
    # The refused infusion and the other drug are not doses.
    assert done.record.doses == (DoseGiven(at=datetime(2026, 1, 5, 9), amount=Decimal(5), unit="mg/kg"),)
    assert done.record.route is Route.INTRAVENOUS
    assert done.record.weight_kg is not None and abs(done.record.weight_kg - Decimal("77.11")) < Decimal(
        "0.01"
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (ras(rxa("20260105090000", "INFX^Infliximab^L", "5", "vials")), "RXA-7"),
        (ras(rxa("yesterday", "INFX^Infliximab^L", "5", "mg")), "not a time and an amount"),
        (ras(weight="seventy|kg"), "OBX-5"),
        (b"MSH|^~\\&|LAB|H|TDM|H|20260105||ORU^R01|1|P|2.5\rPID|1||PT-1", "expected RAS^O17"),
    ],
)
def test_a_bad_administration_message_is_a_dead_letter_that_names_the_field(message, error):
    with pytest.raises(DecodeError) as refused:
        decode_treatment(b"PT-1", message, RULES.recognition)
    assert error in refused.value.detail


def test_fhir_gives_the_dose_given_and_the_weight_and_albumin_observed():
    given = decode_treatment(
        b"PT-1",
        json.dumps(
            {
                "resourceType": "MedicationAdministration",
                "status": "completed",
                "medicationCodeableConcept": {"text": "Infliximab"},
                "effectiveDateTime": "2026-01-05T09:00:00Z",
                "dosage": {"dose": {"value": 400, "unit": "mg"}},
            }
        ).encode(),
        RULES.recognition,
    )
    assert given is not None and given.record is not None
    assert given.record.doses == (DoseGiven(at=T0, amount=Decimal(400), unit="mg"),)

    def observation(code: str, value: float, unit: str) -> bytes:
        return json.dumps(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": unit},
            }
        ).encode()

    albumin = decode_treatment(b"PT-1", observation("1751-7", 36, "g/L"), RULES.recognition)
    assert (
        albumin is not None
        and albumin.record is not None
        and albumin.record.albumin_g_per_dl == Decimal("3.6")
    )
    weight = decode_treatment(b"PT-1", observation("29463-7", 80, "kg"), RULES.recognition)
    assert weight is not None and weight.record is not None and weight.record.weight_kg == 80
    assert decode_treatment(b"PT-1", observation("2345-7", 98, "mg/dL"), RULES.recognition) is None
    with pytest.raises(DecodeError, match="unit"):
        decode_treatment(b"PT-1", observation("1751-7", 3.6, "mmol/L"), RULES.recognition)


def test_doses_accumulate_one_per_start_time_and_only_the_last_are_kept():
    record = TreatmentRecord()
    for day in range(0, 7 * 8 * 20, 56):
        dose = DoseGiven(at=T0 + timedelta(days=day), amount=Decimal(400))
        record = record.merged_with(TreatmentRecord(doses=(dose,)))
    again = record.merged_with(
        TreatmentRecord(doses=(record.doses[-1].model_copy(update={"amount": Decimal(500)}),))
    )
    assert len(record.doses) == MAX_DOSES and len(again.doses) == MAX_DOSES
    assert again.doses[-1].amount == 500 and [d.at for d in again.doses] == sorted(d.at for d in again.doses)


def _level(value: str) -> LabResult:
    return LabResult(
        patient_id="PT-1", accession="A-30", code="39803-2", value=value, unit="ug/mL", collected_at=DRAWN
    )  # type: ignore[call-arg]


def _history() -> list[tuple[str, object]]:
    """A level and what the context topic said of the patient, as separate arrivals."""
    doses = tuple(DoseGiven(at=T0 + timedelta(days=d), amount=Decimal(5), unit="mg/kg") for d in MAINTENANCE)
    return [
        ("record", TreatmentRecord(weight_kg=Decimal(70), route=Route.INTRAVENOUS, doses=doses[:3])),
        ("record", TreatmentRecord(doses=doses[3:])),
        # Two albumin results of the lab feed, the later one kept whichever arrives last.
        ("covariate", _albumin("34", DRAWN - timedelta(hours=2))),
        ("covariate", _albumin("28", DRAWN - timedelta(days=60))),
        ("level", _level("1.6")),
    ]


def _albumin(grams_per_litre: str, drawn: datetime) -> LabResult:
    return LabResult(patient_id="PT-1", code="1751-7", value=grams_per_litre, unit="g/L", collected_at=drawn)


def _fold(arrivals):
    state = None
    for kind, item in arrivals:
        if kind == "record":
            state = record_treatment(state, "PT-1", item, replace=False)
        elif kind == "covariate":
            reading = read_covariate(item, RULES.recognition)
            assert reading is not None and reading.record is not None
            state = record_treatment(state, "PT-1", reading.record, replace=False)
        else:
            done = correlate_result(state, item, HERE, RULES)
            assert done is not None
            state = done.state
    return state


def test_a_low_levels_alert_carries_its_forecast_and_says_it_in_its_advice():
    state = _fold(_history()[:-1])
    done = correlate_result(state, _level("1.6"), HERE, RULES)
    assert done is not None
    [event] = done.events
    assert isinstance(event.forecast, Forecast)
    assert event.forecast.current is not None and event.forecast.current.mg_per_kg == 5
    assert event.recommendation is not None and "Forecast: Projected trough" in event.recommendation
    assert {c.name: c.assumed for c in event.forecast.covariates}["albumin_g_per_dl"] is False
    # Turned off in the rule set: no block, the advice as before.
    quiet = correlate_result(state, _level("1.6"), HERE, RULES.model_copy(update={"forecast": False}))
    assert quiet is not None and quiet.events[0].forecast is None
    assert "Forecast" not in (quiet.events[0].recommendation or "")


def test_the_level_and_the_context_in_any_order_give_the_same_forecast_once_all_are_in():
    level = _level("1.6")
    interpretation = correlate_result(None, level, HERE, RULES)
    assert interpretation is not None
    forecasts = set()
    for order in itertools.permutations(_history()):
        state = _fold(order)
        found = forecast_for(state, interpretation.interpretation)  # type: ignore[arg-type]
        forecasts.add(found.model_dump_json() if found is not None else None)
    [once] = forecasts
    assert json.loads(once)["status"] == "forecast"
    covariates = {c["name"]: c for c in json.loads(once)["covariates"]}
    assert covariates["albumin_g_per_dl"]["value"] == 3.4 and not covariates["albumin_g_per_dl"]["assumed"]


def test_a_subcutaneous_patients_alert_says_why_there_is_no_forecast():
    state = _fold(_history()[:-1])
    state = record_treatment(state, "PT-1", TreatmentRecord(route=Route.SUBCUTANEOUS), replace=False)
    done = correlate_result(state, _level("1.6"), HERE, RULES)
    assert done is not None
    forecast = done.events[0].forecast
    assert isinstance(forecast, Refused) and "subcutaneous" in forecast.reason


def test_interpret_reads_the_context_records_in_the_file_and_shows_the_forecast(tmp_path):
    lines = [
        {"patient_id": "PT-FILE", "weight_kg": 70, "route": "intravenous"},
        *(
            {
                "resourceType": "MedicationAdministration",
                "status": "completed",
                "subject": {"reference": "Patient/PT-FILE"},
                "medicationCodeableConcept": {"text": "Infliximab"},
                "effectiveDateTime": (T0 + timedelta(days=d)).isoformat(),
                "dosage": {"dose": {"value": 5, "unit": "mg/kg"}},
            }
            for d in MAINTENANCE
        ),
        # A chemistry panel of the lab feed with the albumin, read as a covariate.
        {
            "patient_id": "PT-FILE",
            "accession": "A-CMP",
            "collected_at": (DRAWN - timedelta(days=1)).isoformat(),
            "results": [
                {"code": "2345-7", "value": "98", "unit": "mg/dL"},
                {"code": "1751-7", "value": "29", "unit": "g/L"},
            ],
        },
        {
            "patient_id": "PT-FILE",
            "accession": "A-F",
            "collected_at": DRAWN.isoformat(),
            "results": [{"code": "39803-2", "value": "1.6", "unit": "ug/mL"}],
        },
    ]
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    event = _interpreted_event(history)
    assert event["forecast"]["status"] == "forecast", event["forecast"]
    assert event["forecast"]["current"]["mg_per_kg"] == 5 and event["forecast"]["levels_used"] == 1
    albumin = next(c for c in event["forecast"]["covariates"] if c["name"] == "albumin_g_per_dl")
    assert albumin["value"] == 2.9 and not albumin["assumed"]


def test_a_preliminary_or_unreadable_level_is_not_fitted():
    state = _fold(_history())
    preliminary = LabResult(
        patient_id="PT-1",
        accession="A-22",
        code="39803-2",
        value="0.2",
        unit="ug/mL",
        status="preliminary",
        collected_at=T0 + timedelta(days=154) - timedelta(hours=1),
    )  # type: ignore[call-arg]
    done = correlate_result(state, preliminary, HERE, RULES)
    assert done is not None
    latest = correlate_result(done.state, _level("1.6").model_copy(update={"accession": "A-31"}), HERE, RULES)
    assert latest is not None
    [event] = [e for e in latest.events if e.forecast is not None]
    assert (
        isinstance(event.forecast, Forecast) and event.forecast.levels_used == 2
    )  # both finals, not the 0.2


def test_interpret_takes_the_context_out_of_a_fhir_bundle_and_reads_its_lab_results(tmp_path):
    subject = {"reference": "Patient/PT-BUNDLE"}
    doses = [
        {
            "resource": {
                "resourceType": "MedicationAdministration",
                "status": "completed",
                "subject": subject,
                "medicationCodeableConcept": {"text": "Infliximab"},
                "effectiveDateTime": (T0 + timedelta(days=d)).isoformat(),
                "dosage": {"dose": {"value": 5, "unit": "mg/kg"}},
            }
        }
        for d in MAINTENANCE
    ]
    weight = {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "valueQuantity": {"value": 70, "unit": "kg"},
        }
    }
    level = {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "subject": subject,
            "identifier": [{"value": "OBS-B"}],
            "effectiveDateTime": DRAWN.isoformat(),
            "code": {"coding": [{"system": "http://loinc.org", "code": "39803-2"}]},
            "valueQuantity": {"value": 1.6, "unit": "ug/mL"},
        }
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [*doses, weight, level]}
    history = tmp_path / "history.json"
    history.write_text(json.dumps(bundle))
    event = _interpreted_event(history)
    assert event["forecast"]["status"] == "forecast", event["forecast"]
    assert event["forecast"]["current"]["mg_per_kg"] == 5


def _interpreted_event(history) -> dict:
    """`tdm-alerts interpret` over the file: the one event of its one result line."""
    done = run_cli(dict(os.environ), "interpret", str(history))
    [line] = [json.loads(out) for out in done.stdout.splitlines()]
    [event] = line["events"]
    return event


def test_the_interpret_line_states_the_reading_its_events_were_decided_on(tmp_path):
    """Issue 37: a subcutaneous patient's 25 ug/mL: the line said above_target against the IV
    range, de-escalation may be considered, beside events read against the subcutaneous targets."""
    subject = {"reference": "Patient/PT-SC"}
    given = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "subject": subject,
        "medicationCodeableConcept": {"text": "Zymfentra (infliximab-dyyb)"},
        "effectiveDateTime": (DRAWN - timedelta(days=14)).isoformat(),
        "dosage": {"dose": {"value": 120, "unit": "mg"}},
    }
    low = {
        "resourceType": "Observation",
        "status": "final",
        "subject": subject,
        "identifier": [{"value": "OBS-SC"}],
        "effectiveDateTime": DRAWN.isoformat(),
        "code": {"coding": [{"system": "http://loinc.org", "code": "39803-2"}]},
        "valueQuantity": {"value": 15, "unit": "ug/mL"},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": given}, {"resource": low}],
    }
    history = tmp_path / "sc.json"
    history.write_text(json.dumps(bundle))
    done = run_cli(dict(os.environ), "interpret", str(history))
    [line] = [json.loads(out) for out in done.stdout.splitlines()]
    assert line["finding"] == "subtherapeutic", line  # 15 against the subcutaneous 17.5
    assert [e["category"] for e in line["events"]] == ["subtherapeutic_level"]
