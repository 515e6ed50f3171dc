"""Which stage reads which topic, settled once from the settings.

- No patient state (`TDM_PATIENT_STATE=false`): the input topics go to `Intake`; nothing else
  is read.
- The repartition hop (the default): the input topics go to `ForwardingIntake`, the patient
  topic to `PatientStage`, the treatment-context topic to `TreatmentContextStage`, which
  forwards each record to the patient topic.
- Input keyed by patient (`TDM_INPUT_KEYED_BY_PATIENT`): the input is the patient topic and
  goes to `KeyedIntake`; the context topic, co-partitioned with it, to `TreatmentContextStage`,
  which keeps each record at once.

Every stage's alerts and dead letters are published the same way (`consumer/outputs.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from consumer.accounting import Accounting
from consumer.clients.seam import GroupConsumer, Partition, Record
from consumer.delivery import Delivery
from consumer.loop.topology import Stage
from consumer.outputs import CORRELATION_HEADER, Outputs
from consumer.pipeline import Pipeline, Processed
from consumer.settings import Settings
from consumer.stages.acks import AcknowledgementStage
from consumer.stages.context import TreatmentContextStage
from consumer.stages.intake import ForwardingIntake, Intake, KeyedIntake
from consumer.stages.patient import PatientStage
from consumer.state.gate import RestoreGate
from consumer.state.manager import PatientStates
from interpretation import Alert


class Publishing:
    """A stage whose alerts and dead letters go out as it reads each record."""

    def __init__(self, stage: Stage[Processed], outputs: Outputs) -> None:
        self.stage = stage
        self.outputs = outputs

    def process(self, record: Record) -> Processed:
        result = self.stage.process(record)
        self.outputs.send(record, result)
        return result


class TdmTopology:
    """The stages by topic, and the patient states' part in the batch and the assignment."""

    def __init__(
        self,
        stages: Mapping[str, Stage[Processed]],
        default: Stage[Processed],
        accounting: Accounting,
        *,
        states: PatientStates | None = None,
        gate: RestoreGate | None = None,
        outputs: Outputs | None = None,
    ) -> None:
        self.stages = dict(stages)
        self.default = default  # the input topics, named or matching TDM_INPUT_PATTERN
        self.accounting = accounting
        self.states = states
        self.gate = gate
        self.outputs = outputs  # where a tick's events go
        self._expiry_due = self._follow_ups_due = False
        self._fired: list[tuple[int, Alert]] = []  # the open batch's follow-up events

    def stage_for(self, topic: str) -> Stage[Processed]:
        return self.stages.get(topic, self.default)

    def assigned(self, partitions: Collection[Partition], consumer: GroupConsumer) -> None:
        if self.gate is not None:
            self.gate.assigned(partitions, consumer)

    def revoked(self, partitions: Collection[Partition]) -> None:
        if self.gate is not None:
            self.gate.revoked(partitions)

    def chores_due(self) -> bool:
        return self.gate is not None and self.gate.due()

    def chores(self, consumer: GroupConsumer) -> None:
        if self.gate is not None:
            self.gate.restore(consumer)

    def punctuate_due(self) -> bool:
        if (states := self.states) is None:
            return False
        now = states.clock()
        self._expiry_due = states.expiry_due(now)
        self._follow_ups_due = states.follow_ups_due(now)
        return self._expiry_due or self._follow_ups_due

    def punctuate(self) -> bool:
        """The patients' expiry and their follow-ups, on the loop's clock: they run on an idle
        topic too (issue 39). A fired follow-up's event commits with its patient's state."""
        if (states := self.states) is None or self.outputs is None:
            return False
        now = states.clock()
        expired = states.expire(now) if self._expiry_due else 0
        fired = states.fire_due(now) if self._follow_ups_due else []
        for partition, alert in fired:
            # The cause is the clock: no record's correlation id, one of its own per event.
            cause = f"tick/{partition}/{alert.event_id}".encode()
            self.outputs.send_alert(alert, (CORRELATION_HEADER, cause))
        self._fired.extend(fired)
        return expired > 0 or bool(fired)

    def offsets(self, read: Mapping[Partition, int]) -> Mapping[Partition, int]:
        return read

    def admit(
        self, consumer: GroupConsumer, polled: Mapping[Partition, Sequence[Record]]
    ) -> Mapping[Partition, Sequence[Record]]:
        return polled if self.gate is None else self.gate.admit(consumer, polled)

    def holds(self, partition: Partition) -> bool:
        return self.gate is not None and self.gate.holds(partition)

    def batch_opened(self) -> None:
        pass

    def batch_committed(self, processed: Sequence[tuple[Record, Processed]], seconds: float) -> None:
        if self.states is not None:
            self.states.committed()
        self.accounting.committed(processed, seconds)
        if self._fired:
            self.accounting.ticked(self._fired)
            self._fired = []

    def batch_discarded(self) -> None:
        self._fired = []  # never published: fired again by whoever owns the partition next
        if self.states is not None:
            self.states.discarded()

    def close(self) -> None:
        if self.states is not None:
            self.states.close()


def build_topology(
    settings: Settings,
    pipeline: Pipeline,
    delivery: Delivery[Any],
    *,
    outputs: Outputs,
    accounting: Accounting,
    states: PatientStates | None,
    gate: RestoreGate | None,
) -> TdmTopology:
    def publishing(stage: Stage[Processed]) -> Stage[Processed]:
        return Publishing(stage, outputs)

    if states is None:
        return TdmTopology({}, publishing(Intake(pipeline)), accounting)
    recognition = pipeline.ruleset.recognition
    patients = PatientStage(states)
    stages: dict[str, Stage[Processed]] = {}
    if states.topics.repartition:
        intake: Stage[Processed] = ForwardingIntake(pipeline, delivery, states.topics.patients)
        stages[states.topics.patients] = publishing(patients)
        forward_to: str | None = states.topics.patients
    else:
        intake = KeyedIntake(pipeline, states, patients)
        forward_to = None
    if settings.context_topic:
        context = TreatmentContextStage(recognition, states, delivery, forward_to)
        stages[settings.context_topic] = publishing(context)
    if settings.ack_topic:
        stages[settings.ack_topic] = publishing(AcknowledgementStage(states, delivery, forward_to))
    return TdmTopology(stages, publishing(intake), accounting, states=states, gate=gate, outputs=outputs)
