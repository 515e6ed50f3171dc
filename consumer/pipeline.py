"""One message from bytes to outcome: decode, interpret, build alerts. No I/O.

The service and `tdm-alerts interpret` both call `Pipeline.process`, so what a clinician
sees offline is exactly what the service would publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from consumer.dead_letters import DeadLetter, Reason, Stage
from consumer.formats import DecodeError, decode
from interpretation import (
    Alert,
    Interpretation,
    RuleSet,
    SourceRef,
    TreatmentContext,
    alert_for,
    interpret_all,
)


class Outcome(StrEnum):
    """What became of a message; the `outcome` label of tdm_messages_consumed_total."""

    ALERTED = "alerted"
    INTERPRETED = "interpreted"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class Processed:
    outcome: Outcome
    interpretations: list[Interpretation] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letter: DeadLetter | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Pipeline:
    ruleset: RuleSet
    max_message_bytes: int
    context_override: TreatmentContext = field(default_factory=TreatmentContext)

    def process(self, data: bytes | None, source: SourceRef) -> Processed:
        """Never raises: every failure becomes a dead letter with a reason."""
        began = time.perf_counter()
        if not data:
            return _dead(Reason.EMPTY, Stage.INTAKE, "message has no value", began)
        if len(data) > self.max_message_bytes:
            detail = f"message is {len(data)} bytes; the limit is {self.max_message_bytes}"
            return _dead(Reason.TOO_LARGE, Stage.INTAKE, detail, began)
        try:
            results = decode(data)
        except DecodeError as err:
            return _dead(err.reason, Stage.DECODE, err.detail, began)
        except Exception as err:
            return _dead(Reason.PROCESSING_ERROR, Stage.DECODE, type(err).__name__, began)
        try:
            interpretations = interpret_all(results, self.ruleset, self.context_override)
            alerts = [a for i in interpretations if (a := alert_for(i, source)) is not None]
        except Exception as err:
            return _dead(Reason.PROCESSING_ERROR, Stage.INTERPRET, type(err).__name__, began)
        if alerts:
            outcome = Outcome.ALERTED
        elif interpretations:
            outcome = Outcome.INTERPRETED
        else:
            outcome = Outcome.SKIPPED
        return Processed(outcome, interpretations, alerts, None, time.perf_counter() - began)


def _dead(reason: Reason, stage: Stage, detail: str, began: float) -> Processed:
    return Processed(
        Outcome.DEAD_LETTERED,
        dead_letter=DeadLetter(reason, stage, detail),
        seconds=time.perf_counter() - began,
    )
