import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.dead_letters import Reason, Stage
from consumer.pipeline import Outcome, Pipeline
from interpretation import SourceRef, default_ruleset

PIPE = Pipeline(default_ruleset(), max_message_bytes=4096)
HERE = SourceRef(topic="lab.results", partition=0, offset=1)


def message(**fields):
    base = {
        "patient_id": "PT-9",
        "accession": "ACC-9",
        "results": [{"code": "39803-2", "value": 2.1, "unit": "ug/mL"}],
    }
    base.update(fields)
    return json.dumps(base).encode()


def test_low_trough_alerts():
    done = PIPE.process(message(), HERE)
    assert done.outcome is Outcome.ALERTED
    assert [a.patient_id for a in done.alerts] == ["PT-9"]
    assert done.alerts[0].source == HERE


def test_json_numbers_keep_their_digits():
    done = PIPE.process(message(results=[{"code": "39803-2", "value": 2.10, "unit": "ug/mL"}]), HERE)
    assert str(done.interpretations[0].value) == "2.1"


def test_irrelevant_message_is_skipped_not_dead_lettered():
    done = PIPE.process(message(results=[{"code": "2345-7", "display": "Glucose", "value": 5}]), HERE)
    assert done.outcome is Outcome.SKIPPED and done.dead_letter is None


def test_therapeutic_level_is_interpreted_without_alert():
    done = PIPE.process(message(results=[{"code": "39803-2", "value": "5", "unit": "ug/mL"}]), HERE)
    assert done.outcome is Outcome.INTERPRETED and not done.alerts


@pytest.mark.parametrize(
    ("data", "reason", "stage"),
    [
        (b"", Reason.EMPTY, Stage.INTAKE),
        (None, Reason.EMPTY, Stage.INTAKE),
        (b"{" + b" " * 5000 + b"}", Reason.TOO_LARGE, Stage.INTAKE),
        (b"\x00\xff\xfe binary", Reason.UNSUPPORTED_FORMAT, Stage.DECODE),
        (b'{"code": "39803-2", "x": "\x00\xff"}', Reason.BINARY, Stage.INTAKE),
        (b"\xff\xfe not a format we read", Reason.UNSUPPORTED_FORMAT, Stage.DECODE),
        (b'{not json "39803-2"', Reason.UNDECODABLE, Stage.DECODE),
        (b'{"accession": "INFXR"}', Reason.INVALID, Stage.DECODE),
        (b'{"patient_id": "P", "results": [], "note": "infliximab"}', Reason.INVALID, Stage.DECODE),
        (b"[39803-2]", Reason.UNSUPPORTED_FORMAT, Stage.DECODE),
        (
            b'{"patient_id": "P", "results": [{"code": "39803-2", "status": "maybe"}]}',
            Reason.INVALID,
            Stage.DECODE,
        ),
    ],
)
def test_bad_input_becomes_a_dead_letter_with_a_reason(data, reason, stage):
    done = PIPE.process(data, HERE)
    assert done.outcome is Outcome.DEAD_LETTERED
    assert (done.dead_letter.reason, done.dead_letter.stage) == (reason, stage)


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b'{"accession": "A"}',
        b'{"patient_id": "P", "results": []}',
        b'{"resourceType": "Patient"}',
        b'{"resourceType": "Bundle", ',
        b"MSH|^~\\&|LIS|X\rPID|1||P",
    ],
)
def test_a_message_that_names_nothing_we_read_is_skipped_on_its_first_bytes(data):
    """The skip path (README, "What is read and what is skipped"): a message naming no
    infliximab code, name or escape is checked for a format we read (its first bytes) and for
    binary content, and skipped, broken or not; the same message naming a code is dead-lettered
    above."""
    done = PIPE.process(data, HERE)
    assert (done.outcome, done.dead_letter) == (Outcome.SKIPPED, None)


def test_dead_letter_detail_never_echoes_the_input():
    done = PIPE.process(b'{"patient_id": ["SECRET-MRN-123"], "results": [{"code": "39803-2"}]}', HERE)
    assert done.dead_letter is not None
    assert "SECRET-MRN-123" not in done.dead_letter.detail


def test_dead_letter_headers_name_reason_stage_and_source():
    done = PIPE.process(b"{not json INXAB", HERE)
    headers = dict(done.dead_letter.headers("lab.results", 2, 41, 1_700_000_000_000))
    assert headers["tdm.dlq.reason"] == b"undecodable"
    assert headers["tdm.dlq.stage"] == b"decode"
    assert (headers["tdm.dlq.source.partition"], headers["tdm.dlq.source.offset"]) == (b"2", b"41")


@given(st.binary(max_size=300))
def test_no_bytes_make_the_pipeline_raise(data):
    assert PIPE.process(data, HERE).outcome in Outcome


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_no_json_shape_makes_the_pipeline_raise(value):
    assert PIPE.process(json.dumps({"patient_id": "P", "results": [value]}).encode(), HERE).outcome in Outcome
