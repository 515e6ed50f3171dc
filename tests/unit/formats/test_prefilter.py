"""The byte-level pre-filter may say "maybe" wrongly, but never "no" to an infliximab result."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.dead_letters import Reason
from consumer.formats import Format
from consumer.formats.prefilter import Prefilter
from consumer.pipeline import Outcome, Pipeline
from interpretation import SourceRef, default_ruleset

from .conftest import DATA

RULES = default_ruleset()
PRE = Prefilter(RULES.recognition)


@pytest.mark.parametrize(
    "data",
    [
        b"OBX|1|NM|39803-2^Level^LN||2.1",
        b"OBX|1|NM|X^Remicade (infliximab) trough^L||2.1",
        b'{"code": "X", "display": "CT-P13 level"}',
        b'{"display": "INFLIXIMAB"}',
        b'{"display": "\\u0069nfliximab"}',  # a JSON escape could spell the name
        b"OBX|1|ST|X^Inf\\X6C\\iximab^L||2.1",  # so could an HL7 hex escape
        b"MSH|^~#&|LIS\rOBX|1|NM|X^Any^L||2.1",  # another escape character: cannot tell
    ],
)
def test_maybe(data):
    assert PRE.may_be_relevant(data)


@pytest.mark.parametrize(
    "data",
    [
        b"OBX|1|NM|2345-7^Glucose^LN||98",
        b'{"code": "1988-5", "display": "C reactive protein"}',
        b"OBX|1|NM|X^Adalimumab level^L||2.1",
    ],
)
def test_no(data):
    assert not PRE.may_be_relevant(data)


def test_every_fixture_with_a_result_passes_the_filter():
    pipeline = Pipeline(RULES, 1 << 20)
    for path in [*DATA.glob("hl7/*"), *DATA.glob("fhir/*"), *DATA.glob("equivalent/*")]:
        for line in [path.read_bytes()] if path.suffix != ".jsonl" else path.read_bytes().splitlines():
            if pipeline.process(line, SourceRef()).interpretations:
                assert PRE.may_be_relevant(line), path.name


NAMES = st.sampled_from([*RULES.recognition.drug_names, "INFLIXIMAB", "Remicade", "CT-P13", "ct p13"])
CODES = st.sampled_from([*RULES.recognition.drug_level_codes, *RULES.recognition.antibody_codes])
TEXT = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="\\"), max_size=40
)


@settings(max_examples=300)
@given(TEXT, NAMES, TEXT, CODES)
def test_never_says_no_when_recognition_would_say_yes(before, name, after, code):
    display = f"{before}{name}{after}"
    for code_text, shown in ((code, "Glucose"), ("LOCAL-1", display)):
        if PRE.may_be_relevant(f"OBX|1|NM|{code_text}^{shown}^L||2.1".encode()):
            continue
        from interpretation import recognise

        assert recognise(code_text, shown, RULES.recognition) is None


def test_skipped_without_parsing_checks_the_first_bytes_and_binary_content_only_if_it_may_be_ours():
    pipeline = Pipeline(RULES, 1 << 20)
    here = SourceRef()
    assert pipeline.process(b"name,value\nalbumin,3.1", here).dead_letter.reason is Reason.UNSUPPORTED_FORMAT
    binary = pipeline.process(b'{"resourceType": "Observation", "x": "\x01 infliximab"}', here)
    assert binary.dead_letter.reason is Reason.BINARY
    # Naming nothing we read, binary content is not looked for: skipped on its first bytes.
    assert pipeline.process(b'{"resourceType": "Patient", "x": "\x01"}', here).outcome is Outcome.SKIPPED
    configured = pipeline.process(b'{"resourceType": "Patient"}', here, Format.HL7V2)
    assert configured.dead_letter.reason is Reason.UNSUPPORTED_FORMAT
    assert pipeline.process(b'{"resourceType": "Patient"}', here).outcome is Outcome.SKIPPED
    assert pipeline.process(b"MSH|^~\\&|LIS|X\rPID|1||P", here).outcome is Outcome.SKIPPED
