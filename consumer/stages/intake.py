"""The intake: lab messages from the input topics, in one of three modes chosen at start.

- `Intake` (no patient state): each message is read alone and its alerts published.
- `ForwardingIntake` (the repartition hop, the default): the infliximab results are only picked
  out and sent to the patient topic keyed by patient; the patient stage interprets them there,
  with the patient's state. Albumin and weight results (with TDM_LAB_COVARIATES) go there too,
  as updates of the patient's treatment record.
- `KeyedIntake` (input already keyed by patient): results are interpreted and read with the
  patient's state in one step. A result it cannot interpret is dead-lettered before any state
  is written: a failure partway through a message's results would leave the first result's
  state written and its alert lost.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from consumer.clients.seam import Record
from consumer.delivery import Delivery
from consumer.outputs import CORRELATION_HEADER, correlation_id, source_of
from consumer.patient_topic import is_forget, result_value, treatment_record
from consumer.pipeline import Pipeline, Processed
from consumer.stages.patient import PatientStage
from consumer.state.manager import PatientStates
from interpretation.engine import levels_last, report_order


class Intake:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def process(self, record: Record) -> Processed:
        # The source is built only for a record with something to report (~4 us).
        fmt = self.pipeline.format_for(record.topic)
        return self.pipeline.process(record.value, partial(source_of, record), fmt)


class ForwardingIntake:
    def __init__(self, pipeline: Pipeline, delivery: Delivery[Any], patient_topic: str) -> None:
        self.pipeline = pipeline
        self.delivery = delivery
        self.patient_topic = patient_topic

    def process(self, record: Record) -> Processed:
        fmt = self.pipeline.format_for(record.topic)
        result = self.pipeline.process(record.value, partial(source_of, record), fmt, interpret=False)
        for covariate in result.covariates:
            if covariate.reading.record is not None:  # to the patient's record, as the context topic's are
                value, headers = treatment_record(covariate.reading.record, replace=False)
                self.delivery.send(self.patient_topic, covariate.patient_id.encode(), value, headers)
        if result.results:
            source = source_of(record)
            correlation = [(CORRELATION_HEADER, correlation_id(record).encode())]
            for found in levels_last(result.results, self.pipeline.ruleset):
                self.delivery.send(
                    self.patient_topic,
                    found.patient_id.encode(),
                    result_value(found, source),
                    correlation,
                    # The lab message's time travels with it, so end-to-end latency still
                    # measures lab message to alert (Kafka Streams propagates it the same way).
                    timestamp_ms=record.timestamp_ms,
                )
        return result


class KeyedIntake:
    def __init__(self, pipeline: Pipeline, states: PatientStates, patients: PatientStage) -> None:
        self.pipeline = pipeline
        self.states = states
        self.patients = patients  # the input is the patient topic: `forget` arrives here too

    def process(self, record: Record) -> Processed:
        if is_forget(record):
            return self.patients.process(record)
        fmt = self.pipeline.format_for(record.topic)
        result = self.pipeline.process(record.value, partial(source_of, record), fmt)
        for covariate in result.covariates:
            if covariate.reading.record is not None:
                self.states.record_treatment(
                    record.partition, covariate.patient_id, covariate.reading.record, replace=False
                )
        if not result.interpretations:
            return result
        # Read again with the patient's state: that reading is the one counted, as on the hop.
        source = source_of(record)
        read = [
            done
            for item in report_order(result.interpretations)
            if (
                done := self.states.correlate(
                    record.partition, item.result, source, arrived_ms=record.timestamp_ms
                )
            )
            is not None
        ]
        return result._replace(
            interpretations=[done.interpretation for done in read],
            alerts=[event for done in read for event in done.events],
        )
