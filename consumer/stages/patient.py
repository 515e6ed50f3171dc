"""The patient stage: each record of the patient topic read once, with the patient's state.

A forget command removes the patient's state; a treatment record is kept with it; a lab result
is interpreted and correlated with the patient's history (`interpretation.correlation`), and
its events are the alerts published. What the topic carries is in `consumer/patient_topic.py`.
"""

from __future__ import annotations

import time

from consumer.clients.seam import ClientError, Record
from consumer.dead_letters import DeadLetter, Reason, Stage
from consumer.fatal import FatalError
from consumer.patient_topic import Forget, TreatmentUpdate, read
from consumer.pipeline import AckResult, Outcome, Processed
from consumer.state.manager import PatientStates
from interpretation.acknowledgement import Acknowledgement, AckOutcome


class PatientStage:
    def __init__(self, states: PatientStates) -> None:
        self.states = states

    def process(self, record: Record) -> Processed:
        """A record the stage cannot handle is dead-lettered, as the intake does with a result it
        cannot interpret: raised, it would stop the loop on the same record after every restart
        (a bug in correlation, a record from another version). A record's state is written only
        once it is correlated, so a failed one leaves no partial write. Kafka's errors and a
        store that cannot be used still stop the loop."""
        began = time.perf_counter()
        states, partition = self.states, record.partition
        try:
            found = read(record)
            if isinstance(found, Forget):
                states.forget(partition, found.patient_id)
                return Processed(Outcome.SKIPPED)
            if isinstance(found, Acknowledgement):
                return acknowledged(states, partition, found)
            if isinstance(found, TreatmentUpdate):
                patient_id = record.key.decode() if record.key else ""
                states.record_treatment(partition, patient_id, found.record, replace=found.replace)
                done = None
            else:
                # The forwarded record keeps the lab message's timestamp (the intake copies it).
                done = states.correlate(partition, found.result, found.source, arrived_ms=record.timestamp_ms)
        except (ClientError, FatalError):  # Kafka's or the disk's: not this record's fault
            raise
        except Exception as err:
            failed = DeadLetter(Reason.PROCESSING_ERROR, Stage.INTERPRET, type(err).__name__)
            return Processed(Outcome.DEAD_LETTERED, dead_letter=failed, maybe_relevant=True)
        took = time.perf_counter() - began
        if done is None:  # a treatment record kept, or a result not about infliximab
            return Processed(Outcome.INTERPRETED, seconds=took, interpret_seconds=took)
        return Processed(
            Outcome.ALERTED if done.events else Outcome.INTERPRETED,
            (done.interpretation,),
            done.events,
            seconds=took,
            interpret_seconds=took,
        )


def acknowledged(states: PatientStates, partition: int, ack: Acknowledgement) -> Processed:
    """An acknowledgement applied to its patient's incident; one for an incident the patient does
    not have open changes nothing and is dead-lettered with that reason (the operator's answer)."""
    began = time.perf_counter()
    events, outcome, opened_at = states.acknowledge(partition, ack)
    waited = (ack.at - opened_at).total_seconds() if opened_at is not None else None
    result = AckResult(outcome, ack.decision, ack.by, waited)
    took = time.perf_counter() - began
    if outcome is AckOutcome.UNKNOWN_INCIDENT:
        detail = "acknowledgement for an incident this patient does not have open; nothing was changed"
        return Processed(
            Outcome.DEAD_LETTERED,
            dead_letter=DeadLetter(Reason.UNKNOWN_INCIDENT, Stage.INTERPRET, detail),
            acknowledged=result,
            seconds=took,
        )
    return Processed(
        Outcome.ALERTED if events else Outcome.INTERPRETED,
        alerts=events,
        acknowledged=result,
        seconds=took,
        interpret_seconds=took,
    )
