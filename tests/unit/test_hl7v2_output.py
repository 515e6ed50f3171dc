"""The HL7 v2 ORU^R01 of an alert event (`consumer.notify.hl7v2`, `interpret --as hl7v2`):
validated strictly by hl7apy, stable per event, text escaped and read back as written; and its
MLLP delivery against a real TCP listener of the test's own that enforces the framing."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from consumer.cli import main
from consumer.notify.events import AlertEvent
from consumer.notify.hl7v2 import TEXT_CHARS, control_id, deliver, oru
from consumer.notify.sending import Transient, Undelivered
from tests.conftest import DATA
from tests.mllp import ack, listener

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def event(**fields) -> AlertEvent:
    base = {
        "action": "trigger",
        "incident_key": "a" * 32,
        "event_id": "0123456789abcdef" * 2,
        "severity": "high",
        "category": "subtherapeutic_level",
        "summary": "Infliximab trough 2.1 ug/mL below target",
        "patient_id": "PT-7",
        "accession": "ACC-7",
        "collected_at": "2026-11-02T08:00:00+00:00",
    }
    return AlertEvent.model_validate({**base, **fields})


def strict(text: str):
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate()
    return message


def _sample_feed_as_hl7v2(capsys) -> list[tuple[str, dict]]:
    """Each message `interpret --as hl7v2` prints for the sample feed, with the event it is of."""
    main(["interpret", str(DATA / "sample-feed.jsonl")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    events = [e for line in lines for e in line.get("events", ())]
    main(["interpret", str(DATA / "sample-feed.jsonl"), "--as", "hl7v2"])
    messages = [m.strip().replace("\n", "\r") for m in capsys.readouterr().out.split("\n\n") if m.strip()]
    assert len(messages) == len(events) > 0
    return list(zip(messages, events, strict=True))


def test_every_event_of_the_sample_feed_is_one_strictly_valid_oru(capsys):
    for text, said in _sample_feed_as_hl7v2(capsys):
        message = strict(text)
        assert message.msh.msh_10.value == said["event_id"][:20]
        order = message.oru_r01_patient_result.oru_r01_order_observation
        assert order.obr.obr_25.value == ("F" if said["action"] == "trigger" else "C")


def test_text_is_escaped_and_reads_back_as_written_and_long_text_is_one_obx_per_line():
    summary = "Level 1|2 ^ ~ & \\ below " + "target " * 60
    text = oru(event(summary=summary, recommendation="Re-check & repeat"), NOW)
    strict(text)
    parsed = hl7.parse(text)
    pieces = [
        parsed.unescape(str(segment[5]))
        for segment in parsed.segments("OBX")
        if str(segment[3]).startswith("TDMSUMMARY")
    ]
    assert len(pieces) > 1 and all(len(str(s[5])) <= TEXT_CHARS for s in parsed.segments("OBX"))
    assert " ".join(pieces) == " ".join(summary.split())


def test_the_same_event_is_the_same_message_and_a_resolve_says_why():
    first, again = oru(event(), NOW), oru(event(), NOW)
    assert first == again and control_id(event()) == "0123456789abcdef0123"
    resolved = strict(oru(event(action="resolve", resolve_reason="corrected_into_range"), NOW))
    order = resolved.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.value == "C"
    assert "corrected_into_range" in resolved.to_er7()


def test_as_mdm_each_incident_is_one_document_first_written_then_edited(capsys, monkeypatch, clean_env):
    # What `notify` sends with TDM_NOTIFY_HL7_MESSAGE=MDM^T02, and `interpret --as hl7v2` prints
    # with the receiver's settings (it printed the default names whatever they were).
    monkeypatch.setenv("TDM_NOTIFY_HL7_MESSAGE", "MDM^T02")
    monkeypatch.setenv("TDM_HL7_SENDING_FACILITY", "PHARMACY")
    documents: dict[str, set[str]] = {}
    for text, said in _sample_feed_as_hl7v2(capsys):
        message = strict(text)
        trigger = "T02" if said["action"] == "trigger" else "T08"
        assert message.msh.msh_9.to_er7() == f"MDM^{trigger}^MDM_T02"
        assert message.evn.evn_1.value == trigger and message.msh.msh_4.to_er7() == "PHARMACY"
        assert (message.txa.txa_8.value != "") == (trigger == "T08")  # an edit says when
        assert (message.txa.txa_6.value != "") == (trigger == "T02")  # and only the first, written
        documents.setdefault(said["incident_key"], set()).add(message.txa.txa_12.to_er7())
    assert all(len(numbers) == 1 for numbers in documents.values())  # the same document, edited
    assert len({n for numbers in documents.values() for n in numbers}) == len(documents)


def test_a_resolved_incidents_document_says_why():
    from consumer.notify.hl7v2 import Hl7Options, outbound

    message = strict(
        outbound(
            event(action="resolve", resolve_reason="corrected_into_range"), NOW, Hl7Options(message="MDM^T02")
        )
    )
    assert message.msh.msh_9.to_er7() == "MDM^T08^MDM_T02"
    assert "Alert resolved: corrected_into_range" in message.to_er7()
    assert outbound(event(), NOW) == oru(event(), NOW)  # ORU^R01 unless asked


# -- MLLP against a real listener ---------------------------------------------------------


def test_an_accepted_message_is_acknowledged_aa():
    message = oru(event(), NOW)
    with listener(ack("AA")) as (port, received):
        assert deliver("127.0.0.1", port, message, timeout_s=5) == "AA"
    assert received == [message.encode()]


def test_a_refusal_is_final_and_carries_the_receivers_words():
    with listener(ack("AE", "unknown patient")) as (port, _), pytest.raises(Undelivered) as refused:
        deliver("127.0.0.1", port, oru(event(), NOW), timeout_s=5)
    assert (
        refused.value.permanent and "AE" in refused.value.reason and "unknown patient" in refused.value.reason
    )


@pytest.mark.parametrize(
    "answer",
    [lambda message: None, ack("AA", acked="SOMETHING-ELSE"), ack("ZZ")],
    ids=["no answer", "an ACK for another message", "an unknown code"],
)
def test_no_answer_or_a_wrong_one_is_retried(answer):
    with listener(answer) as (port, _), pytest.raises(Transient):
        deliver("127.0.0.1", port, oru(event(), NOW), timeout_s=2)


def test_nobody_listening_is_retried():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Transient):
        deliver("127.0.0.1", port, oru(event(), NOW), timeout_s=2)


def test_the_receiver_sends_the_message_its_settings_name(monkeypatch, clean_env):
    from consumer.notify.delivering import Receivers
    from consumer.settings import Settings

    monkeypatch.setenv("TDM_NOTIFY_HL7_HOST", "engine.example")
    monkeypatch.setenv("TDM_NOTIFY_HL7_MESSAGE", "MDM^T02")
    hl7v2 = Receivers.from_settings(Settings()).hl7v2
    assert hl7v2 is not None and hl7v2.options.message == "MDM^T02"
    monkeypatch.setenv("TDM_NOTIFY_HL7_MESSAGE", "MDM^T08")
    with pytest.raises(ValueError, match="ORU"):
        Settings()
