"""The treatment-context stage: a patient's treatment records (route, phase, doses), kept with
their state next to their results.

With the repartition hop a record is forwarded to the patient topic, so it reaches the
partition that holds the patient; with the input keyed by patient the context topic is
co-partitioned with it and the record is kept at once.
"""

from __future__ import annotations

from typing import Any

from consumer.clients.seam import Record
from consumer.dead_letters import DeadLetter, Stage
from consumer.delivery import Delivery
from consumer.formats import DecodeError
from consumer.formats.treatment import decode_treatment
from consumer.patient_topic import treatment_record
from consumer.pipeline import Outcome, Processed
from consumer.state.manager import PatientStates
from interpretation.ruleset import Recognition


class TreatmentContextStage:
    def __init__(
        self,
        recognition: Recognition,
        states: PatientStates,
        delivery: Delivery[Any],
        patient_topic: str | None,
    ) -> None:
        self.recognition = recognition
        self.states = states
        self.delivery = delivery
        self.patient_topic = patient_topic  # forwarded there; None: kept here (keyed input)

    def process(self, record: Record) -> Processed:
        try:
            update = decode_treatment(record.key, record.value, self.recognition)
        except DecodeError as err:
            return Processed(
                Outcome.DEAD_LETTERED, dead_letter=DeadLetter(err.reason, Stage.DECODE, err.detail)
            )
        if update is None:
            return Processed(Outcome.SKIPPED)
        if self.patient_topic is not None:
            value, headers = treatment_record(update.record, update.replace)
            self.delivery.send(self.patient_topic, update.patient_id.encode(), value, headers)
        else:
            self.states.record_treatment(
                record.partition, update.patient_id, update.record, replace=update.replace
            )
        return Processed(Outcome.INTERPRETED)
