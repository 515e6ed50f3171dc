"""Splitting files for `tdm-alerts interpret`."""

from consumer.formats import Format
from consumer.message_files import messages_in

from .conftest import DATA


def test_hl7_batch_is_split_into_numbered_messages():
    found = list(messages_in((DATA / "hl7" / "batch-crlf.hl7").read_bytes(), "b.hl7"))
    assert [s.message for s, _ in found] == [1, 2, 3]
    assert all(m.startswith(b"MSH") for _, m in found)


def test_pretty_printed_fhir_is_one_message():
    [(source, data)] = messages_in((DATA / "fhir" / "bundle-collection-report.json").read_bytes(), "f.json")
    assert (source.message, source.line) == (1, None) and data.startswith(b"{")


def test_json_lines_are_numbered_by_line_and_blank_lines_skipped():
    found = list(messages_in(b'{"a": 1}\n\n{"b": 2}\n', "x.jsonl"))
    assert [(s.line, d) for s, d in found] == [(1, b'{"a": 1}'), (3, b'{"b": 2}')]


def test_unreadable_hl7_is_passed_whole_to_the_decoder():
    [(source, data)] = messages_in(b"PID|1||x\rOBX|1", "x.hl7", Format.HL7V2)
    assert source.message == 1 and data == b"PID|1||x\rOBX|1"
