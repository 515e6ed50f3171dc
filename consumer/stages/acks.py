"""The acknowledgement stage: `tdm-alerts ack` (or a hospital system) says someone acted on an
incident; the record reaches the patient's state, where the incident is.

With the repartition hop the record is forwarded to the patient topic (keyed by patient), as a
treatment-context record is; with the input keyed by patient the ack topic is co-partitioned
with it and the acknowledgement is applied at once. What it does is `interpretation.acknowledgement`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from consumer.clients.seam import Record
from consumer.dead_letters import DeadLetter, Reason, Stage
from consumer.delivery import Delivery
from consumer.patient_topic import ack_record
from consumer.pipeline import Outcome, Processed
from consumer.stages.patient import acknowledged
from consumer.state.manager import PatientStates
from interpretation.acknowledgement import Acknowledgement, read_acknowledgement

# What an acknowledgement record may say besides the acknowledgement itself: a free-text note
# for the people reading the topic, never kept in the state, an event or a log line.
NOTE_FIELDS = frozenset({"note"})


def acknowledgement_in(record: Record) -> Acknowledgement:
    """The record's acknowledgement; ValueError with a reason a person can act on.

    The patient is the record's key (as every patient-keyed topic has it) unless the value names
    it; the time is the record's own unless the value gives one; the id the record's position
    unless the value gives one (the CLI does: a resend is then recognised).
    """
    try:
        data = json.loads(record.value or b"")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("an acknowledgement is a JSON object")
    for name in NOTE_FIELDS:
        data.pop(name, None)
    key = record.key.decode(errors="replace") if record.key else None
    if key and data.get("patient_id") not in (None, key):
        raise ValueError("patient_id differs from the record's key (the key routes it to the patient)")
    data.setdefault("patient_id", key)
    if record.timestamp_ms is not None:
        data.setdefault("at", datetime.fromtimestamp(record.timestamp_ms / 1000, UTC).isoformat())
    data.setdefault("ack_id", f"{record.topic}/{record.partition}/{record.offset}")
    return read_acknowledgement(data)


class AcknowledgementStage:
    def __init__(self, states: PatientStates, delivery: Delivery[Any], patient_topic: str | None) -> None:
        self.states = states
        self.delivery = delivery
        self.patient_topic = patient_topic  # forwarded there; None: applied here (keyed input)

    def process(self, record: Record) -> Processed:
        try:
            ack = acknowledgement_in(record)
        except ValueError as err:
            dead = DeadLetter(Reason.INVALID, Stage.DECODE, f"acknowledgement: {err}"[:500])
            return Processed(Outcome.DEAD_LETTERED, dead_letter=dead)
        if self.patient_topic is not None:
            value, headers = ack_record(ack)
            self.delivery.send(self.patient_topic, ack.patient_id.encode(), value, headers)
            return Processed(Outcome.INTERPRETED)
        return acknowledged(self.states, record.partition, ack)
