"""Choosing the decoder: by the bytes, or by the format configured for a topic."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.dead_letters import Reason
from consumer.formats import Format, detect
from consumer.pipeline import Outcome, Pipeline
from interpretation import SourceRef, default_ruleset

from .conftest import DATA


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"MSH|^~\\&|...", Format.HL7V2),
        (b"\x0bMSH|^~\\&|...", Format.HL7V2),
        (b"FHS|^~\\&|", Format.HL7V2),
        (b'  {"resourceType": "Bundle"}', Format.FHIR),
        (b'\xef\xbb\xbf{"patient_id": "P"}', Format.CANONICAL),
        (b"PID|1||x", None),
        (b"[1, 2]", None),
    ],
)
def test_detect(data, fmt):
    assert detect(data) is fmt


def test_a_topic_with_a_fixed_format_refuses_other_formats():
    pipeline = Pipeline(default_ruleset(), 1 << 20, topic_formats={"lab.hl7": Format.HL7V2})
    fhir = (DATA / "fhir" / "observation-single.json").read_bytes()
    refused = pipeline.process(fhir, SourceRef(topic="lab.hl7", partition=0, offset=0))
    assert refused.outcome is Outcome.DEAD_LETTERED and refused.dead_letter.reason is Reason.UNDECODABLE
    detected = pipeline.process(fhir, SourceRef(topic="lab.results", partition=0, offset=0))
    assert detected.outcome is Outcome.ALERTED


def test_json_that_is_not_an_object_is_refused():
    done = Pipeline(default_ruleset(), 1 << 20).process(b"[1]", SourceRef(), Format.CANONICAL)
    assert done.dead_letter.reason is Reason.UNSUPPORTED_FORMAT
    named = Pipeline(default_ruleset(), 1 << 20).process(b' ["39803-2"]', SourceRef(), Format.CANONICAL)
    assert named.dead_letter.reason is Reason.INVALID  # could be ours: read, and refused


FIXTURES = sorted(
    p for folder in ("hl7", "fhir", "broken", "equivalent") for p in (DATA / folder).iterdir() if p.is_file()
)


@pytest.mark.parametrize("path", FIXTURES, ids=[f"{p.parent.name}/{p.name}" for p in FIXTURES])
def test_picking_out_results_for_the_patient_stage_agrees_with_interpreting_them(pipeline, path):
    """With patient state the intake only picks out results; it must pick the ones it would read.

    A result it dropped would never be paged; one it kept that interpretation would not read
    costs a record on the repartition topic. Dead letters and recognition gaps are the same too.
    """
    for data in path.read_bytes().splitlines() if path.suffix == ".jsonl" else [path.read_bytes()]:
        assert_picked_as_read(pipeline, data)


# Codes, names and units that recognition tells apart: a drug or antibody code, a panel name
# that needs the unit, a biosimilar, another biologic, another test.
RESULTS = st.fixed_dictionaries(
    {
        "code": st.sampled_from(["39803-2", "56536-7", "IFX-LOCAL", "2345-7", "ADA-1"]),
        "display": st.sampled_from(
            [None, "Infliximab", "Infliximab and antibodies", "Inflectra trough", "Adalimumab", "Glucose"]
        ),
        "value": st.sampled_from(["2.1", "6", "<0.4", "positive", "12"]),
        "unit": st.sampled_from([None, "ug/mL", "U/mL", "AU/mL", "mg/dL"]),
    }
)


@given(st.lists(RESULTS, min_size=1, max_size=4))
def test_picking_out_agrees_with_interpreting_on_mixed_reports(results):
    report = {"patient_id": "PT-1", "specimen_id": "S-1", "results": results}
    assert_picked_as_read(Pipeline(default_ruleset(), 1 << 20), json.dumps(report).encode())


def assert_picked_as_read(pipeline: Pipeline, data: bytes) -> None:
    here = SourceRef(topic="lab.results")
    read = pipeline.process(data, here)
    picked = pipeline.process(data, here, interpret=False)
    assert list(picked.results) == [i.result for i in read.interpretations]
    assert not picked.interpretations and not picked.alerts
    assert picked.outcome is (Outcome.INTERPRETED if read.outcome is Outcome.ALERTED else read.outcome)
    assert (picked.dead_letter, picked.recognition_gap, picked.maybe_relevant) == (
        read.dead_letter,
        read.recognition_gap,
        read.maybe_relevant,
    )
