"""An alert event as an HL7 v2.5.1 ORU^R01 for an EHR's interface engine, and its MLLP delivery.

What the HL7 v2 receiver will send for each event (issue 41), and what `tdm-alerts interpret
--as hl7v2` prints. The message carries the alert as text results under the original order:

    MSH  sending TDM-ALERTS; MSH-10 (the control id) the event id's first 20 characters, so a
         re-delivery is the same message and an interface engine can drop the duplicate
    PID  PID-3 the patient identifier the lab feed used
    OBR  OBR-3 the original accession (filler order number), OBR-4 TDMALERT, OBR-7 the draw
         time, OBR-25 F, or C for an update or resolve (a correction of the alert report)
    OBX  the summary (TX), the severity (CWE), the recommendation (TX) when there is one; text
         longer than 199 characters takes one OBX per line of it
    NTE  on a resolve, why it resolved

Text is escaped with python-hl7's escape (|, ^, ~, &, \\ become \\F\\, \\S\\, \\R\\, \\T\\, \\E\\).

MLLP (HL7's minimal lower layer protocol) frames a message as VT message FS CR; the receiver
answers with an ACK whose MSA-1 says what became of it: AA (or CA) accepted; AE, AR (CE, CR)
refused, which is final: the event is dead-lettered with the answer; no answer (a time-out, a
closed connection) or an ACK for another message is retried.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import hl7  # type: ignore[import-untyped]  # python-hl7 ships no type hints

from consumer.notify.events import AlertEvent
from consumer.notify.sending import Transient, Undelivered
from interpretation.alerts import Action

START, END = b"\x0b", b"\x1c\r"
CONTROL_ID_CHARS = 20  # MSH-10 is ST(20) in v2.5.1
TEXT_CHARS = 199  # an ST's length
_ESCAPER = hl7.Message(sequence=[], esc="\\", separators="\r|~^&")
ACCEPTED = frozenset({"AA", "CA"})
REFUSED = frozenset({"AE", "AR", "CE", "CR"})
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Hl7Options:
    """The hospital's names for the two ends (MSH-4, MSH-5, MSH-6) and the patient identifiers'
    assigning authority (PID-3.4)."""

    sending_facility: str = "TDM"
    receiving_application: str = "EHR"
    receiving_facility: str = "HOSPITAL"
    assigning_authority: str = ""


def control_id(event: AlertEvent) -> str:
    return event.event_id[:CONTROL_ID_CHARS]


def oru(event: AlertEvent, now: datetime, options: Hl7Options = Hl7Options()) -> str:
    """The ORU^R01 for one alert event, segments separated by CR."""
    extra: dict[str, Any] = dict(event.model_extra or {})
    status = "F" if event.act is Action.TRIGGER else "C"
    patient = _text(extra.get("patient_id"))
    authority = _text(options.assigning_authority)
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                "TDM-ALERTS",
                _text(options.sending_facility),
                _text(options.receiving_application),
                _text(options.receiving_facility),
                _dtm(now),
                "",
                "ORU^R01^ORU_R01",
                control_id(event),
                "P",
                "2.5.1",
            ]
        ),
        # PID-5 is required; the name is not ours to carry: HL7's null ("") says it is not sent.
        f'PID|1||{patient}^^^{authority}^MR||""' if authority else f'PID|1||{patient}^^^^MR||""',
        "|".join(
            [
                "OBR",
                "1",
                event.incident_key[:22],  # placer order number: the incident (EI.1 is ST(199); kept short)
                _text(extra.get("accession")),
                "TDMALERT^Infliximab TDM alert^L",
                "",
                "",
                _dtm_text(extra.get("collected_at")),
                *[""] * 16,
                "",  # OBR-24 diagnostic service section
                status,  # OBR-25 result status
            ]
        ),
    ]
    observations = [("TX", "TDMSUMMARY^Alert summary^L", piece) for piece in _pieces(event.summary)]
    level = event.level.value
    observations.append(("CWE", "TDMSEVERITY^Alert severity^L", f"{level}^{level}^L"))
    observations += [
        ("TX", "TDMRECOMMEND^Recommendation^L", piece) for piece in _pieces(event.recommendation or "")
    ]
    segments += [_obx(n, kind, code, value, status) for n, (kind, code, value) in enumerate(observations, 1)]
    if event.act is Action.RESOLVE:
        reason = extra.get("resolve_reason") or "resolved"
        segments.append(f"NTE|1|L|Alert resolved: {_text(reason)}")
    return "\r".join(segments)


def _obx(n: int, kind: str, code: str, value: str, status: str) -> str:
    return f"OBX|{n}|{kind}|{code}||{value}||||||{status}"


def _pieces(text: str) -> list[str]:
    """Text as escaped lines of at most TEXT_CHARS, split between words: a long summary is one OBX
    per line (an interface engine may read OBX-5 as ST, at most 199 characters)."""
    pieces: list[str] = []
    line = ""
    for word in text.split():
        escaped = _text(word)[:TEXT_CHARS]
        if line and len(line) + 1 + len(escaped) > TEXT_CHARS:
            pieces.append(line)
            line = escaped
        else:
            line = f"{line} {escaped}" if line else escaped
    return [*pieces, line] if line else pieces


def _text(value: object) -> str:
    """A value as HL7 text: one line, separators escaped."""
    if value is None:
        return ""
    return str(_ESCAPER.escape(" ".join(str(value).split())))


def _dtm(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _dtm_text(value: object) -> str:
    """An ISO time as HL7 DTM: with its offset as UTC, without one as the lab sent it."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return ""
    return _dtm(moment) if moment.tzinfo is not None else moment.strftime("%Y%m%d%H%M%S")


def framed(message: str) -> bytes:
    return START + message.encode() + END


def deliver(host: str, port: int, message: str, timeout_s: float, receiver: str = "hl7v2") -> str:
    """Send one message over MLLP and read its ACK; the acknowledgement code once accepted.

    Transient when there is no answer (or one for another message): the caller retries it as
    the HTTP receivers' failures. Undelivered (permanent) when the receiver refuses it, with its
    MSA-1 and its MSA-3 text, never the message.
    """
    sent_id = message.split("\r", 1)[0].split("|")[9]
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(framed(message))
            answer = _read_frame(connection)
    except OSError as err:  # refused, reset, a time-out
        raise Transient(None, type(err).__name__) from err
    code, acked_id, text = _msa(answer)
    if acked_id != sent_id:
        raise Transient(None, "the acknowledgement names another message")
    if code in ACCEPTED:
        return code
    if code in REFUSED:
        raise Undelivered(receiver, None, f"MSA-1 {code}: {text[:200]}", permanent=True)
    raise Transient(None, "the acknowledgement has no MSA-1 code we know")


def _read_frame(connection: socket.socket) -> bytes:
    data = b""
    while END not in data:
        chunk = connection.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed before the acknowledgement's end")
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise ConnectionResetError("an acknowledgement longer than any ACK")
    start = data.find(START)
    return data[start + 1 if start >= 0 else 0 : data.find(END)]


def _msa(answer: bytes) -> tuple[str, str, str]:
    """MSA-1 (the code), MSA-2 (the message it acknowledges) and MSA-3 (its text)."""
    text = answer.decode("utf-8", errors="replace").replace("\n", "\r")
    for segment in text.split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3] if len(segment) > 3 else "|")
            fields += [""] * (4 - len(fields))
            return fields[1].strip(), fields[2].strip(), fields[3].strip()
    return "", "", ""
