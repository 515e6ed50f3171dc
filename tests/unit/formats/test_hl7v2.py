"""HL7 v2 ORU^R01: what is read from where, and what is refused, with hand-written messages."""

import pytest

from consumer.dead_letters import Reason
from consumer.formats import DecodeError
from consumer.formats.hl7v2 import decode_hl7v2, split_messages
from interpretation import ResultStatus

from .conftest import DATA

MSH = "MSH|^~\\&|LIS|LAB|TDM|LAB|20261102083000||ORU^R01^ORU_R01|M1|P|2.5.1"
PID = "PID|1||PT-1^^^LAB^MR"
OBR = "OBR|1|PL-1|ACC-1|INFXR^Infliximab^L|||20261102080500"
LEVEL = "OBX|1|NM|39803-2^Infliximab [Mass/volume] in Serum or Plasma^LN||2.1|ug/mL|3-7|L|||F"


def hl7(*segments: str, sep: str = "\r") -> bytes:
    return sep.join(segments).encode() + sep.encode()


def decode(data: bytes, relevant):
    return decode_hl7v2(data, relevant)


def test_reads_the_fields_a_clinician_needs(relevant):
    [result] = decode((DATA / "hl7" / "oru-trough-and-antibodies.hl7").read_bytes(), relevant)[:1]
    assert result.patient_id == "TDM-PT-0101"  # the MR identifier, not the NHS number after it
    assert (result.accession, result.specimen_id) == ("ACC-26-7001", "SPM-7001")
    assert (result.code, result.code_system, result.value, result.unit) == ("39803-2", "LN", "2.1", "ug/mL")
    assert (result.reference_range, result.abnormal_flags, result.status) == (
        "3.0-7.0",
        ("L",),
        ResultStatus.FINAL,
    )
    assert result.collected_at.isoformat() == "2026-11-02T08:05:00+00:00"
    assert result.comments == ("Trough drawn before the 8-week infusion & sent same day.",)


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_separators_cr_lf_and_crlf_read_alike(sep, relevant):
    [result] = decode(hl7(MSH, PID, OBR, LEVEL, sep=sep), relevant)
    assert (result.patient_id, result.value) == ("PT-1", "2.1")


def test_mllp_framing_bytes_are_not_content(relevant):
    framed = b"\x0b" + hl7(MSH, PID, OBR, LEVEL) + b"\x1c\r"
    assert decode(framed, relevant) == decode(hl7(MSH, PID, OBR, LEVEL), relevant)


def test_structured_numeric_keeps_its_comparator(relevant):
    obx = "OBX|1|SN|39803-2^Infliximab^LN||<^1.0|ug/mL|||||F"
    assert decode(hl7(MSH, PID, OBR, obx), relevant)[0].value == "<1.0"


def test_structured_numeric_range_is_passed_on_for_the_engine_to_refuse(relevant):
    obx = "OBX|1|SN|39803-2^Infliximab^LN||^1^-^3|ug/mL|||||F"
    assert decode(hl7(MSH, PID, OBR, obx), relevant)[0].value == "1-3"


def test_coded_value_reads_its_text(relevant):
    obx = "OBX|1|CWE|INXAB^Infliximab Ab^L||POS^Positive^L||||||F"
    assert decode(hl7(MSH, PID, OBR, obx), relevant)[0].value == "Positive"


def test_escape_sequences_are_undone_in_text(relevant):
    obx = "OBX|1|ST|INXAB^Infliximab \\T\\ Ab\\S\\ATI^L||Detected \\F\\ confirmed||||||F"
    [result] = decode(hl7(MSH, PID, OBR, obx), relevant)
    assert result.display == "Infliximab & Ab^ATI"
    assert result.value == "Detected | confirmed"


def test_alternate_code_is_used_when_only_it_is_ours(relevant):
    obx = "OBX|1|NM|88776^Biologic level^99LOCAL^INFX^Infliximab level^L||2.1|ug/mL|||||F"
    [result] = decode(hl7(MSH, PID, OBR, obx), relevant)
    assert (result.code, result.code_system) == ("INFX", "L")


def test_a_panel_yields_only_the_infliximab_result(relevant):
    found = decode((DATA / "hl7" / "oru-v23-panel-lf.hl7").read_bytes(), relevant)
    assert [(r.code, r.value, r.unit) for r in found] == [("INFX", "2400", "ng/mL")]


def test_an_odd_unrelated_result_does_not_spoil_the_panel(relevant):
    odd = "OBX|2|NM|2345-7^Glucose^LN||98|mg/dL|||||NOT-A-STATUS|||not-a-time"
    assert [r.value for r in decode(hl7(MSH, PID, OBR, odd, LEVEL), relevant)] == ["2.1"]


def test_notes_belong_to_the_result_before_them(relevant):
    order_note = "NTE|1||Order comment"
    other = "OBX|2|NM|2345-7^Glucose^LN||98|mg/dL|||||F"
    note = "NTE|1||About glucose"
    [result] = decode(hl7(MSH, PID, OBR, order_note, LEVEL, other, note), relevant)
    assert result.comments == ()


def test_batch_file_holds_several_messages_and_skips_non_results(relevant):
    found = decode((DATA / "hl7" / "batch-crlf.hl7").read_bytes(), relevant)
    assert [(r.patient_id, r.status) for r in found] == [
        ("TDM-PT-0104", ResultStatus.FINAL),
        ("TDM-PT-0105", ResultStatus.PRELIMINARY),
        ("TDM-PT-0105", ResultStatus.CORRECTED),
    ]


def test_each_patient_group_keeps_its_own_patient(relevant):
    data = hl7(MSH, PID, OBR, LEVEL, "PID|1||PT-2^^^LAB^MR", OBR.replace("ACC-1", "ACC-2"), LEVEL)
    assert [(r.patient_id, r.accession) for r in decode(data, relevant)] == [
        ("PT-1", "ACC-1"),
        ("PT-2", "ACC-2"),
    ]


def test_first_identifier_is_used_when_none_is_marked_mr(relevant):
    pid = "PID|1||111^^^A^PI~222^^^B^NH"
    assert decode(hl7(MSH, pid, OBR, LEVEL), relevant)[0].patient_id == "111"


def test_specimen_collection_time_wins_over_the_order_time(relevant):
    spm = "SPM|1|S-1||SER|||||||||||||20261102070000"
    [result] = decode(hl7(MSH, PID, OBR, LEVEL, spm), relevant)
    assert (result.specimen_id, result.collected_at.hour) == ("S-1", 7)


def test_v23_without_spm_uses_the_order_time(relevant):
    [result] = decode(hl7(MSH.replace("2.5.1", "2.3"), PID, OBR, LEVEL), relevant)
    assert result.collected_at.isoformat() == "2026-11-02T08:05:00"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("F", ResultStatus.FINAL),
        ("C", ResultStatus.CORRECTED),
        ("P", ResultStatus.PRELIMINARY),
        ("X", ResultStatus.CANCELLED),
        ("W", ResultStatus.ENTERED_IN_ERROR),
    ],
)
def test_result_status_follows_hl7_table_0085(status, expected, relevant):
    obx = LEVEL[: LEVEL.rindex("|") + 1] + status
    assert decode(hl7(MSH, PID, OBR, obx), relevant)[0].status is expected


def test_non_result_messages_give_nothing(relevant):
    assert decode(hl7(MSH.replace("ORU^R01^ORU_R01", "ADT^A01"), PID), relevant) == []


def test_latin1_message_is_read(relevant):
    data = hl7(MSH, PID, OBR, LEVEL.replace("Serum", "Sérum")).decode().encode("latin-1")
    assert decode(data, relevant)[0].display == "Infliximab [Mass/volume] in Sérum or Plasma"


@pytest.mark.parametrize(
    ("name", "reason", "words"),
    [
        ("hl7-no-patient-id.hl7", Reason.INVALID, "no patient identifier in PID-3"),
        ("hl7-bad-status.hl7", Reason.INVALID, "OBX-11"),
        ("hl7-bad-collection-time.hl7", Reason.INVALID, "OBR-7 is not an HL7 date/time"),
        ("hl7-wrong-version.hl7", Reason.UNSUPPORTED_FORMAT, "MSH-12"),
        ("hl7-no-header.hl7", Reason.UNDECODABLE, "before the first MSH"),
    ],
)
def test_broken_messages_are_refused_with_a_reason(name, reason, words, relevant):
    with pytest.raises(DecodeError) as refused:
        decode((DATA / "broken" / name).read_bytes(), relevant)
    assert refused.value.reason is reason
    assert words in refused.value.detail


def test_refusals_name_positions_not_values(relevant):
    with pytest.raises(DecodeError) as refused:
        decode((DATA / "broken" / "hl7-bad-collection-time.hl7").read_bytes(), relevant)
    assert "2026-11-06" not in refused.value.detail and "TDM-PT" not in refused.value.detail


def test_split_drops_batch_envelopes():
    text = (DATA / "hl7" / "batch-crlf.hl7").read_text()
    messages = split_messages(text)
    assert len(messages) == 3
    assert all(m.startswith("MSH") and "\n" not in m for m in messages)


def test_python_hl7_never_logs_message_content(relevant, caplog):
    obx = "OBX|1|ST|INXAB^Infliximab Ab^L||SECRET-NAME \\\\ here||||||F"  # an empty escape sequence
    with caplog.at_level("DEBUG"):
        decode(hl7(MSH, PID, OBR, obx), relevant)
    assert "SECRET-NAME" not in caplog.text


def test_fields_late_in_their_segments_are_read(relevant):
    """A message with every field filled in (names, addresses, observers, equipment): the fields
    the reader needs sit among them, up to OBX-23, and come out as HL7 defines them."""
    level, antibody = decode((DATA / "hl7" / "oru-every-field.hl7").read_bytes(), relevant)
    assert level.patient_id == "TDM-PT-0202"  # PID-3's MR identifier, not PID-2 or the NHS number
    assert (level.accession, level.specimen_id) == ("ACC-26-8001", "SPM-8001")  # OBR-3, SPM-2
    assert level.collected_at.isoformat() == "2026-11-10T07:50:00+00:00"  # SPM-17 before OBR-7
    assert (level.value, level.unit, level.reference_range, level.abnormal_flags) == (
        "5.6",
        "ug/mL",
        "3.0-7.0",
        ("N",),
    )
    assert level.result_id == "OBS-INST-991"  # OBX-21
    assert level.performing_lab == "PATHOLOGY PARTNERS LAB"  # OBX-23 (v2.5) before OBX-15
    assert level.comments == ("Drawn & labelled at the infusion suite.",)
    assert (antibody.value, antibody.result_id, antibody.performing_lab) == ("Not detected", None, "GENLAB")
