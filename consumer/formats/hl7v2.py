"""HL7 v2 ORU^R01 lab results (versions 2.3 to 2.5.1), parsed with python-hl7.

python-hl7 splits a message into segments, fields, repetitions, components and
subcomponents using the separators the message itself declares in MSH-1/MSH-2, and undoes
HL7 escape sequences; it validates nothing against a message profile. That is what a feed
reader wants: real lab feeds bend the standard, and hl7apy's profile validation costs
several times more per message while rejecting results we can still read safely. Which
fields matter, and what counts as broken, is decided here.

Where things come from (first non-empty wins):
    patient_id   PID-3 (the MR identifier if one is marked, else the first), PID-2
    accession    filler order number OBR-3 / ORC-3, else placer order number OBR-2 / ORC-2
    specimen_id  SPM-2 (placer, else filler specimen identifier)
    collected_at SPM-17, OBR-7, OBX-14
    result_id    OBX-21 (observation instance identifier, v2.5)
    code         OBX-3 identifier, or its alternate identifier when only that one is relevant
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import hl7  # type: ignore[import-untyped]  # python-hl7 ships no type hints

from consumer.dead_letters import Reason
from consumer.formats.errors import DecodeError, Relevance, lab_result, truncated
from interpretation import LabResult, ResultStatus
from interpretation.lab_result import COMMENT_MAX_CHARS

# python-hl7 logs the raw field or segment (patient data) when it meets a bad escape or a
# stray segment; we report those ourselves, without content, so its loggers stay silent.
# They are named after their source files, not their modules.
for _module in (hl7.util, hl7.containers):
    logging.getLogger(_module.__file__).disabled = True

_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})
# MLLP wraps each message in VT ... FS CR; those bytes are never HL7 content.
_UNFRAME = str.maketrans({"\x0b": None, "\x1c": "\r"})
MAX_VALUE_CHARS = 200
MAX_RANGE_CHARS = 100
MAX_FLAG_CHARS = 10
MAX_COMMENTS = 20

# HL7 table 0085, observation result status.
_STATUS = {
    "F": ResultStatus.FINAL,
    "U": ResultStatus.FINAL,  # changed to final without retransmitting the result
    "C": ResultStatus.CORRECTED,
    "P": ResultStatus.PRELIMINARY,
    "R": ResultStatus.PRELIMINARY,  # entered, not verified
    "S": ResultStatus.PRELIMINARY,  # partial
    "I": ResultStatus.PRELIMINARY,  # in process
    "O": ResultStatus.PRELIMINARY,  # order detail only, no result
    "X": ResultStatus.CANCELLED,  # results cannot be obtained
    "N": ResultStatus.CANCELLED,  # not asked
    "D": ResultStatus.ENTERED_IN_ERROR,  # delete the result
    "W": ResultStatus.ENTERED_IN_ERROR,  # posted to the wrong patient
}
# HL7 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]; python-hl7 alone reads any digits.
_DTM = re.compile(r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?)?)?(?:[+-]\d{4})?")
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
_TEXT_TYPES = frozenset({"ST", "TX", "FT"})


def split_messages(text: str) -> list[str]:
    """The messages in `text` (one, a batch file, or MLLP frames), each with CR-separated segments.

    Segment separators may be CR, LF or CRLF; batch header and trailer segments are dropped.
    """
    text = text.translate(_UNFRAME).replace("\r\n", "\r").replace("\n", "\r")
    messages: list[list[str]] = []
    for raw in text.split("\r"):
        segment = raw.strip()
        if not segment or segment[:3] in _BATCH_SEGMENTS:
            continue
        if segment.startswith("MSH"):
            messages.append([segment])
        elif messages:
            messages[-1].append(segment)
        else:
            raise DecodeError(Reason.UNDECODABLE, "a segment comes before the first MSH header")
    return ["\r".join(segments) for segments in messages]


def decode_hl7v2(data: bytes, relevant: Relevance, *, split: bool = False) -> list[LabResult]:
    """The relevant results of every ORU^R01 message in `data`; other message types give none.

    With `split`, what the reader reads is split by the message's own separators as it reads it
    (`_SplitReader`) instead of parsed whole by python-hl7 first: the same results (a property
    test holds them equal) at a fraction of the cost, for the forecast's covariates, read from
    nearly half the feed. A message whose separators are not four distinct characters is parsed
    by python-hl7 either way.
    """
    messages = split_messages(hl7_text(data))
    if not messages:
        raise DecodeError(Reason.UNDECODABLE, "no MSH segment: not an HL7 v2 message")
    results: list[LabResult] = []
    for number, text in enumerate(messages, start=1):
        read, separators = _what_we_read(text, relevant)
        if split and separators is not None:
            results.extend(_SplitReader(read, separators, number, relevant).results())
            continue
        try:
            message = hl7.parse(read)
        # python-hl7 reads untrusted bytes and raises what its slicing hits (IndexError,
        # ValueError, its own ParseException); each means the same: not parseable.
        except Exception as err:
            raise DecodeError(
                Reason.UNDECODABLE, f"message {number}: not parseable as HL7 v2 ({type(err).__name__})"
            ) from err
        results.extend(_Reader(message, number, relevant).results())
    return results


# The segments the reader looks at; python-hl7 parses every field of what it is given, and a
# lab message is mostly other segments and other analytes' OBX (parsing them was ~60% of a
# relevant message's cost).
_READ_SEGMENTS = frozenset({"MSH", "PID", "ORC", "OBR", "SPM"})
_NEW_GROUP = frozenset({"PID", "ORC", "OBR"})  # after these, an NTE belongs to no observation
# The last field the reader reads in each segment, and the OBX fields before that it never
# reads: python-hl7 splits every field down to subcomponents, and names, addresses, observers
# and equipment were most of what it split. MSH counts its field separator as MSH-1, so MSH-12
# (the version) is the 12th piece of the split, numbered 11 here like the others' fields.
_LAST_FIELD_READ = {"MSH": 11, "PID": 3, "ORC": 3, "OBR": 7, "SPM": 17, "OBX": 23, "NTE": 3}
_OBX_UNREAD = (4, 9, 10, 12, 13, 16, 17, 18, 19, 20, 22)


class _Separators(NamedTuple):
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


def _what_we_read(text: str, relevant: Relevance) -> tuple[str, _Separators | None]:
    """The message without what the reader would pass over: other analytes' OBX (and their NTE
    comments), segment kinds it never reads, and the fields it never reads in the segments it
    does; and the separators it declares. python-hl7 still parses all it reads.

    Whether an OBX may be ours is decided on OBX-3 split by the message's own separators; when
    OBX-3 holds an escape, a repetition or a subcomponent, the OBX is kept (the reader decides).
    """
    segments = text.split("\r")
    msh = segments[0]
    if len(msh) < 8 or msh[3] in msh[4:8] or len(set(msh[4:8])) < 4:
        # No four distinct encoding characters in MSH-2 ("MSH||..."): the separators are not
        # known here, so python-hl7 reads (or refuses) it whole, as without the trimming.
        return text, None
    separators = _Separators(*msh[3:8])
    field, component, repetition, escape, subcomponent = separators
    kept = [_first_fields(msh, field, _LAST_FIELD_READ["MSH"])]  # the header, whatever python-hl7 makes of it
    keep_notes = False
    for segment in segments[1:]:
        # The segment's name as the reader sees it: the whole first field ("OBX5" is no OBX).
        # Split no further than OBX-3 until an OBX is known to be kept: most are not.
        head = segment.split(field, 4)
        kind = head[0]
        if kind == "OBX":
            obx3 = head[3] if len(head) > 3 else ""
            keep_notes = (
                escape in obx3
                or repetition in obx3
                or subcomponent in obx3
                or _may_be_ours(obx3.split(component), relevant)
            )
            if keep_notes:
                fields = segment.split(field, _LAST_FIELD_READ["OBX"] + 1)[: _LAST_FIELD_READ["OBX"] + 1]
                for unread in _OBX_UNREAD:
                    if unread < len(fields):
                        fields[unread] = ""
                kept.append(field.join(fields))
        elif kind == "NTE":
            if keep_notes:
                kept.append(_first_fields(segment, field, _LAST_FIELD_READ["NTE"]))
        elif kind in _READ_SEGMENTS:
            kept.append(_first_fields(segment, field, _LAST_FIELD_READ[kind]))
            keep_notes = keep_notes and kind not in _NEW_GROUP  # as the reader attaches NTEs
    return "\r".join(kept), separators


def _first_fields(segment: str, separator: str, last: int) -> str:
    """The segment up to field `last`: a field separator never occurs escaped inside a field."""
    return separator.join(segment.split(separator, last + 1)[: last + 1])


def _may_be_ours(components: list[str], relevant: Relevance) -> bool:
    """`_Reader._code` on plain components: the first coding, else the alternate one."""
    for start in (0, 3):
        code = components[start].strip() if start < len(components) else ""
        display = components[start + 1].strip() if start + 1 < len(components) else ""
        if (code or display) and relevant(code, display or None):
            return True
    return False


def hl7_text(data: bytes) -> str:
    """The message text: UTF-8, else ISO 8859-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # HL7 v2 feeds that are not UTF-8 are nearly always ISO 8859-1 (MSH-18 "8859/1"),
        # which decodes any byte; binary garbage is refused at intake before this point.
        return data.decode("latin-1")


def _at(node: Any, index: int) -> Any:
    """One level down a python-hl7 container, which collapses to a str when it has no separators."""
    if isinstance(node, str):
        return node if index == 0 else ""
    return node[index] if index < len(node) else ""


@dataclass
class _Observation:
    segment: hl7.Segment
    notes: list[str] = field(default_factory=list)


@dataclass
class _Order:
    patient_id: str | None
    orc: hl7.Segment | None
    obr: hl7.Segment | None
    spm: hl7.Segment | None = None
    observations: list[_Observation] = field(default_factory=list)


class _Reader:
    """Reads one parsed message; `where` names positions only, never values (they may be PHI)."""

    def __init__(self, message: hl7.Message, number: int, relevant: Relevance) -> None:
        self.message = message
        self.number = number
        self.relevant = relevant
        self.escape = str(message.esc) if getattr(message, "esc", None) else "\\"

    def results(self) -> list[LabResult]:
        msh = self.message[0]
        if self.part(msh, 9) != "ORU":
            return []  # ADT, ACK and the like carry no lab results
        version = self.part(msh, 12)
        if not version.startswith("2."):
            raise DecodeError(
                Reason.UNSUPPORTED_FORMAT,
                f"message {self.number}: HL7 version (MSH-12) is not 2.x",
            )
        return [
            result
            for order in self._orders()
            for observation in order.observations
            if (result := self._result(order, observation)) is not None
        ]

    # -- structure -----------------------------------------------------------------------

    def _orders(self) -> list[_Order]:
        """OBX (with their NTEs) grouped under the OBR before them, with that OBR's ORC and SPM."""
        orders: list[_Order] = []
        patient_id: str | None = None
        orc: hl7.Segment | None = None
        current: _Order | None = None
        last: _Observation | None = None
        for segment in self.message[1:]:
            kind = str(segment[0])
            if kind == "PID":
                patient_id, orc, current, last = self._patient_id(segment), None, None, None
            elif kind == "ORC":
                orc, current, last = segment, None, None
            elif kind == "OBR":
                current, last = _Order(patient_id, orc, segment), None
                orders.append(current)
            elif kind == "OBX":
                if current is None:  # tolerated: an OBX with no OBR before it
                    current = _Order(patient_id, orc, None)
                    orders.append(current)
                last = _Observation(segment)
                current.observations.append(last)
            elif kind == "NTE" and last is not None:
                last.notes.append(self.text(segment, 3, whole=True))
            elif kind == "SPM" and current is not None:
                current.spm = segment
        return orders

    def _patient_id(self, pid: hl7.Segment) -> str | None:
        count = self.repetitions(pid, 3)
        ids = [(self.text(pid, 3, rep=r), self.part(pid, 3, rep=r, comp=4)) for r in range(count)]
        ids = [(value, kind) for value, kind in ids if value]
        for value, kind in ids:
            if kind == "MR":
                return value
        if ids:
            return ids[0][0]
        return self.text(pid, 2) or None

    # -- one observation -----------------------------------------------------------------

    def _result(self, order: _Order, observation: _Observation) -> LabResult | None:
        obx = observation.segment
        code, display, system = self._code(obx)
        if code is None:
            return None
        where = f"message {self.number}, OBX {self.part(obx, 1) or '?'}"
        if not order.patient_id:
            raise DecodeError(Reason.INVALID, f"{where}: no patient identifier in PID-3")
        status_code = self.part(obx, 11)
        if (status := _STATUS.get(status_code)) is None:
            shown = "is not an HL7 result status (table 0085)" if status_code else "is missing"
            raise DecodeError(Reason.INVALID, f"{where}: result status (OBX-11) {shown}")
        obr, orc, spm = order.obr, order.orc, order.spm
        return lab_result(
            where,
            patient_id=order.patient_id,
            accession=self._first((obr, 3), (orc, 3), (obr, 2), (orc, 2)),
            specimen_id=(self.text(spm, 2) or self.text(spm, 2, comp=1)) if spm else None,
            result_id=self.text(obx, 21) or None,
            collected_at=self._collected(where, (spm, 17), (obr, 7), (obx, 14)),
            code=code,
            code_system=system or None,
            display=display or None,
            value=self._value(obx),
            unit=self.text(obx, 6) or self.text(obx, 6, comp=1) or None,
            reference_range=truncated(self.text(obx, 7, whole=True), MAX_RANGE_CHARS) or None,
            abnormal_flags=self._flags(obx),
            status=status,
            # OBX-23 performing organisation name (v2.5), else OBX-15 producer's id (v2.3).
            performing_lab=truncated(self.text(obx, 23) or self.text(obx, 15), 200) or None,
            comments=tuple(truncated(n, COMMENT_MAX_CHARS) for n in observation.notes[:MAX_COMMENTS] if n),
        )

    def _code(self, obx: hl7.Segment) -> tuple[str | None, str, str]:
        """OBX-3 as (code, display, system), trying the alternate coding when the first is not ours."""
        for start in (0, 3):
            code = self.text(obx, 3, comp=start)
            display = self.text(obx, 3, comp=start + 1)
            if (code or display) and self.relevant(code, display or None):
                return code, display, self.text(obx, 3, comp=start + 2)
        return None, "", ""

    def _value(self, obx: hl7.Segment) -> str | None:
        kind = self.part(obx, 2)
        if kind == "SN":
            comparator, first, separator, second = (self.text(obx, 5, comp=c) for c in range(4))
            if separator or second:  # a range or a ratio ("1-3", "1:128"); left for the engine to refuse
                return f"{comparator}{first}{separator}{second}" or None
            return f"{comparator}{first}" or None
        if kind in _CODED_TYPES:
            return self.text(obx, 5, comp=1) or self.text(obx, 5) or None
        if kind in _TEXT_TYPES:
            return truncated(self.text(obx, 5, whole=True), MAX_VALUE_CHARS) or None
        return truncated(self.text(obx, 5), MAX_VALUE_CHARS) or None

    def _flags(self, obx: hl7.Segment) -> tuple[str, ...]:
        found = (self.text(obx, 8, rep=r) for r in range(self.repetitions(obx, 8)))
        return tuple(f for f in found if f and len(f) <= MAX_FLAG_CHARS)

    def _collected(self, where: str, *places: tuple[hl7.Segment | None, int]) -> datetime | None:
        for segment, index in places:
            if segment is None or not (text := self.part(segment, index)):
                continue
            try:
                if not _DTM.fullmatch(text):
                    raise ValueError("not an HL7 DTM")
                moment: datetime = hl7.parse_datetime(text)
                offset = moment.utcoffset()
                # python-hl7's own offset class becomes a plain timezone, so the time serialises as ISO.
                return moment.replace(tzinfo=timezone(offset)) if offset is not None else moment
            except (ValueError, TypeError, OverflowError) as err:
                name = f"{segment[0]}-{index}"
                raise DecodeError(Reason.INVALID, f"{where}: {name} is not an HL7 date/time") from err
        return None

    def _first(self, *places: tuple[hl7.Segment | None, int]) -> str | None:
        for segment, index in places:
            if segment is not None and (text := self.text(segment, index)):
                return text
        return None

    # -- field access --------------------------------------------------------------------

    def repetitions(self, segment: hl7.Segment, index: int) -> int:
        """How many repetitions the field has (1 when it is empty or absent)."""
        node = segment[index] if index < len(segment) else ""
        return 1 if isinstance(node, str) else len(node)

    def part(self, segment: hl7.Segment, index: int, rep: int = 0, comp: int = 0) -> str:
        """One component's raw text, first subcomponent only, whitespace stripped."""
        node = segment[index] if index < len(segment) else ""
        return str(_at(_at(_at(node, rep), comp), 0)).strip()

    def text(self, segment: hl7.Segment, index: int, rep: int = 0, comp: int = 0, whole: bool = False) -> str:
        """A component (or with `whole`, the field's first repetition) with HL7 escapes undone."""
        if whole:
            node = segment[index] if index < len(segment) else ""
            raw = str(_at(node, rep)).strip()
        else:
            raw = self.part(segment, index, rep, comp)
        return str(self.message.unescape(raw)).strip() if self.escape in raw else raw


class _SplitReader(_Reader):
    """`_Reader` over a message split by its own separators as it is read, not parsed first.

    python-hl7 splits a segment into fields, a field into repetitions, a repetition into
    components and a component into subcomponents, by the separators MSH declares, and leaves
    escapes for `unescape`: `str.split` at each level as a value is read gives the same pieces
    (MSH counts its field separator as MSH-1, so its pieces after the name move up one).
    python-hl7 still undoes escapes and reads date/times.
    """

    def __init__(self, text: str, separators: _Separators, number: int, relevant: Relevance) -> None:
        segments: list[Any] = [segment.split(separators.field) for segment in text.split("\r")]
        segments[0].insert(1, separators.field)
        self.message = segments
        self.number = number
        self.relevant = relevant
        self.escape = separators.escape
        self.separators = separators
        self._unescaper: hl7.Message | None = None

    def repetitions(self, segment: list[str], index: int) -> int:
        return len(segment[index].split(self.separators.repetition)) if index < len(segment) else 1

    def part(self, segment: list[str], index: int, rep: int = 0, comp: int = 0) -> str:
        if index >= len(segment):
            return ""
        pieces = segment[index].split(self.separators.repetition)
        if rep >= len(pieces):
            return ""
        pieces = pieces[rep].split(self.separators.component)
        if comp >= len(pieces):
            return ""
        return pieces[comp].split(self.separators.subcomponent, 1)[0].strip()

    def text(self, segment: list[str], index: int, rep: int = 0, comp: int = 0, whole: bool = False) -> str:
        if whole:
            pieces = segment[index].split(self.separators.repetition) if index < len(segment) else []
            raw = pieces[rep].strip() if rep < len(pieces) else ""
        else:
            raw = self.part(segment, index, rep, comp)
        if self.escape not in raw:
            return raw
        if self._unescaper is None:
            s = self.separators
            order = f"\r{s.field}{s.repetition}{s.component}{s.subcomponent}"  # python-hl7's
            self._unescaper = hl7.Message(sequence=[], esc=s.escape, separators=order)
        return str(self._unescaper.unescape(raw)).strip()
