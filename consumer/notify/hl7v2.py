"""An alert event as an HL7 v2.5.1 message for an EHR's interface engine, and its MLLP delivery.

What the HL7 v2 receiver will send for each event (issue 41), and what `tdm-alerts interpret
--as hl7v2` prints: an ORU^R01 (the default), or an MDM document (TDM_NOTIFY_HL7_MESSAGE=MDM^T02)
for sites that file such notes as documents. The ORU carries the alert as text results under the
original order:

    MSH  sending TDM-ALERTS; MSH-10 (the control id) the event id's first 20 characters, so a
         re-delivery is the same message and an interface engine can drop the duplicate
    PID  PID-3 the patient identifier the lab feed used
    OBR  OBR-3 the original accession (filler order number), OBR-4 TDMALERT, OBR-7 the draw
         time, OBR-25 F, or C for an update or resolve (a correction of the alert report)
    OBX  the summary (TX), the severity (CWE), the recommendation (TX) when there is one; text
         longer than 199 characters takes one OBX per line of it
    NTE  on a resolve, why it resolved

The MDM is one document per incident: MDM^T02 (original document notification and content) for
its first event, MDM^T08 (edit notification and content) for each later one, the same document
(TXA-12 unique document number, from the incident key) replaced by its latest content:

    MSH, PID  as above; EVN  the event type and when it was recorded; PV1  patient class U
    TXA  type CN (a consultation note), content TX, TXA-4 the draw time, TXA-6 when written
         (T02), TXA-8 when edited (T08), TXA-12 the document, TXA-15 the original accession,
         TXA-17 DO (documented), TXA-19 AV (available for patient care)
    OBX, NTE  as above

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
from typing import TYPE_CHECKING, Any, Literal

import hl7  # type: ignore[import-untyped]  # python-hl7 ships no type hints

from consumer.notify.events import AlertEvent
from consumer.notify.sending import Transient, Undelivered
from interpretation.alerts import Action

if TYPE_CHECKING:
    from consumer.settings import Settings

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
    message: Literal["ORU^R01", "MDM^T02"] = "ORU^R01"


def options_from(settings: Settings) -> Hl7Options:
    return Hl7Options(
        settings.hl7_sending_facility,
        settings.hl7_receiving_application,
        settings.hl7_receiving_facility,
        settings.hl7_assigning_authority,
        settings.notify_hl7_message,
    )


def control_id(event: AlertEvent) -> str:
    return event.event_id[:CONTROL_ID_CHARS]


def outbound(event: AlertEvent, now: datetime, options: Hl7Options = Hl7Options()) -> str:
    """The message the options name for one alert event."""
    return mdm(event, now, options) if options.message == "MDM^T02" else oru(event, now, options)


def oru(event: AlertEvent, now: datetime, options: Hl7Options = Hl7Options()) -> str:
    """The ORU^R01 for one alert event, segments separated by CR."""
    extra: dict[str, Any] = dict(event.model_extra or {})
    status = _status(event)
    segments = [
        _msh("ORU^R01^ORU_R01", event, now, options),
        _pid(extra, options),
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
    segments += _observations(event, status)
    if event.act is Action.RESOLVE:
        segments.append(f"NTE|1|L|{_resolved(extra)}")
    return "\r".join(segments)


def mdm(event: AlertEvent, now: datetime, options: Hl7Options = Hl7Options()) -> str:
    """The MDM for one alert event: T02 for an incident's first, T08 (an edit of the same
    document) for the rest; segments separated by CR."""
    extra: dict[str, Any] = dict(event.model_extra or {})
    first = event.act is Action.TRIGGER
    trigger = "T02" if first else "T08"
    status = _status(event)
    document = [
        "TXA",
        "1",
        "CN",  # TXA-2 document type (table 0270): a consultation note
        "TX",  # TXA-3 content presentation
        _dtm_text(extra.get("collected_at")),  # TXA-4 activity: the draw
        "",
        _dtm(now) if first else "",  # TXA-6 origination (an edit does not know the first's)
        "",
        "" if first else _dtm(now),  # TXA-8 edit
        *[""] * 3,
        f"{event.incident_key[:22]}^TDM-ALERTS",  # TXA-12 unique document number
        "",
        "",
        _text(extra.get("accession")),  # TXA-15 filler order number: the original accession
        "",
        "DO",  # TXA-17 completion status: documented
        "",
        "AV",  # TXA-19 availability: available for patient care
    ]
    segments = [
        _msh(f"MDM^{trigger}^MDM_T02", event, now, options),
        f"EVN|{trigger}|{_dtm(now)}",
        _pid(extra, options),
        "PV1|1|U",  # PV1-2 patient class, required: unknown to us
        "|".join(document),
        *_observations(event, status),
    ]
    if event.act is Action.RESOLVE:
        segments.append(f"NTE|1|L|{_resolved(extra)}")
    return "\r".join(segments)


def _msh(kind: str, event: AlertEvent, now: datetime, options: Hl7Options) -> str:
    return "|".join(
        [
            "MSH",
            "^~\\&",
            "TDM-ALERTS",
            _text(options.sending_facility),
            _text(options.receiving_application),
            _text(options.receiving_facility),
            _dtm(now),
            "",
            kind,
            control_id(event),
            "P",
            "2.5.1",
        ]
    )


def _pid(extra: dict[str, Any], options: Hl7Options) -> str:
    patient = _text(extra.get("patient_id"))
    authority = _text(options.assigning_authority)
    # PID-5 is required; the name is not ours to carry: HL7's null ("") says it is not sent.
    return f'PID|1||{patient}^^^{authority}^MR||""' if authority else f'PID|1||{patient}^^^^MR||""'


def _status(event: AlertEvent) -> str:
    """F, or C for an update or resolve (a correction of the alert report)."""
    return "F" if event.act is Action.TRIGGER else "C"


def _observations(event: AlertEvent, status: str) -> list[str]:
    observations = [("TX", "TDMSUMMARY^Alert summary^L", piece) for piece in _pieces(event.summary)]
    level = event.level.value
    observations.append(("CWE", "TDMSEVERITY^Alert severity^L", f"{level}^{level}^L"))
    observations += [
        ("TX", "TDMRECOMMEND^Recommendation^L", piece) for piece in _pieces(event.recommendation or "")
    ]
    return [_obx(n, kind, code, value, status) for n, (kind, code, value) in enumerate(observations, 1)]


def _resolved(extra: dict[str, Any]) -> str:
    return f"Alert resolved: {_text(extra.get('resolve_reason') or 'resolved')}"


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
