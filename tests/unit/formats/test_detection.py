"""Choosing the decoder: by the bytes, or by the format configured for a topic."""

import pytest

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


def test_json_that_is_not_an_object_is_invalid():
    done = Pipeline(default_ruleset(), 1 << 20).process(b"[1]", SourceRef(), Format.CANONICAL)
    assert done.dead_letter.reason is Reason.INVALID
