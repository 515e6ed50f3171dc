"""`tdm-alerts interpret`: lab messages from a file or stdin read as the service reads them,
correlated per patient in memory, without Kafka; one JSON line per recognised result."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumer.cli.arguments import Commands, aware_time
from consumer.cli.rules import load_ruleset
from consumer.formats import Format
from consumer.formats.errors import DecodeError
from consumer.formats.treatment import context_in_file
from consumer.message_files import messages_in
from consumer.notify.events import AlertEvent, read_event
from consumer.notify.fhir import FhirOptions, options_from, transaction
from consumer.notify.hl7v2 import Hl7Options, outbound
from consumer.notify.hl7v2 import options_from as hl7_options_from
from consumer.pipeline import Pipeline, Processed
from consumer.settings import Settings
from interpretation import (
    Alert,
    AntibodyInterpretation,
    DrugLevelInterpretation,
    Goal,
    Interpretation,
    Phase,
    Route,
    SourceRef,
    TreatmentContext,
)
from interpretation.correlation import correlate_result, record_treatment
from interpretation.engine import report_order
from interpretation.follow_ups import fire_due
from interpretation.lab_result import LabResult, as_utc
from interpretation.patient_state import CorrelationRules, PatientState
from interpretation.ruleset import RuleSet
from interpretation.treatment import TreatmentRecord


def interpretation_line(item: Interpretation, source: SourceRef) -> dict[str, Any]:
    """The `interpret` output contract: one flat JSON object per recognised result."""
    r = item.result
    target = item.target if isinstance(item, DrugLevelInterpretation) else None
    decided_by = item.decided_by if isinstance(item, AntibodyInterpretation) else None
    return {
        "analyte": item.analyte.value,
        "finding": item.finding.value,
        "alert": item.alert,
        "value": float(item.value) if item.value is not None else None,
        "comparator": item.comparator.value if item.comparator else None,
        "unit": item.unit,
        "patient_id": r.patient_id,
        "accession": r.accession,
        "specimen_id": r.specimen_id,
        "status": r.status.value,
        "rule_id": item.rule_id,
        "ruleset_version": item.ruleset_version,
        "reason": item.reason,
        "pattern": item.pattern.value if item.pattern else None,
        "decided_by": decided_by.value if decided_by else None,
        "target": target.describe_range() if target else None,
        "context": item.context.model_dump(mode="json", exclude_none=True),
        "recommendation": item.recommendation,
        "citations": [c.id for c in item.citations],
        "source": source.model_dump(exclude_none=True),
    }


def cmd_interpret(args: argparse.Namespace) -> int:
    override = TreatmentContext(phase=args.phase, week=args.week, route=args.route, goal=args.goal)
    # A history file's albumin and weight results are always read: its cost is no concern here.
    pipeline = Pipeline(load_ruleset(args.ruleset), args.max_message_bytes, override, lab_covariates=True)
    fmt = Format(args.format)
    show = _shows(args.output)
    if args.file == "-":
        name, data = "-", sys.stdin.buffer.read()
    else:
        name, data = str(args.file), Path(args.file).read_bytes()
    failures = 0
    # The same correlation the service runs, over the file in order, with patients kept in memory.
    patients: dict[str, PatientState] = {}
    # The service's correlation settings (TDM_PAIR_WINDOW_HOURS and the rest), read the same way.
    rules = Settings().correlation_rules()
    # With --now, the file is a timeline: each result read at its draw time, the follow-ups due
    # before it fired first, and those due by --now fired at the end (README 'Follow-ups').
    clock = _Clock(args.now) if args.now is not None and not args.no_state else None
    for source, raw in messages_in(data, name, fmt):
        message: bytes | None = raw
        if not args.no_state:
            try:
                message = _read_context(raw, pipeline, patients)
            except DecodeError as err:
                failures += 1
                where = f"{name}:{source.line}" if source.line else f"{name}: message {source.message}"
                print(f"{where}: treatment-context record: {err.reason.value}: {err.detail}", file=sys.stderr)
                continue
        if message is None:  # only treatment-context records
            continue
        result = pipeline.process(message, source, fmt)
        if result.dead_letter is not None:
            failures += 1
            dl = result.dead_letter
            where = f"{name}:{source.line}" if source.line else f"{name}: message {source.message}"
            print(f"{where}: {dl.reason.value} ({dl.stage.value}): {dl.detail}", file=sys.stderr)
            continue
        patients_now = None if args.no_state else patients
        for line in _lines(
            result, source, pipeline, patients=patients_now, rules=rules, override=override, clock=clock
        ):
            show(line)
    if clock is not None:
        for line in clock.fire(patients, pipeline.ruleset, rules, clock.now):
            show(line)
    return 1 if failures else 0


def _show_lines(line: dict[str, Any]) -> None:
    if "events" in line:
        line = {**line, "events": [event_line(e) for e in line["events"]]}
    print(json.dumps(line, default=str), flush=True)


def _shows(output: str) -> Callable[[dict[str, Any]], None]:
    """How each line is printed: as it is, or as what the FHIR or HL7 v2 receiver would send
    (with the settings those receivers read)."""
    if output == "fhir":
        return _show_fhir(options_from(Settings()))
    if output == "hl7v2":
        return _show_hl7v2(hl7_options_from(Settings()))
    return _show_lines


def _show_fhir(options: FhirOptions) -> Callable[[dict[str, Any]], None]:
    """One transaction Bundle per event, exactly as the FHIR receiver would send it: built from
    the event as published and read back as the notifier reads it. A bundle's times of sending
    (authoredOn) are the event's draw or fire time here, so the output is the same every run."""

    def show(line: dict[str, Any]) -> None:
        for event in line.get("events", ()):
            print(json.dumps(transaction(_as_published(event), _event_time(event), options)), flush=True)

    return show


def _show_hl7v2(options: Hl7Options) -> Callable[[dict[str, Any]], None]:
    """One message per event (an ORU^R01, or the MDM TDM_NOTIFY_HL7_MESSAGE names), as the HL7 v2
    receiver would send it, in an HL7 batch file's layout: segments on lines of their own, a
    blank line between messages."""

    def show(line: dict[str, Any]) -> None:
        for event in line.get("events", ()):
            message = outbound(_as_published(event), _event_time(event), options)
            print(message.replace("\r", "\n") + "\n", flush=True)

    return show


def _as_published(event: Alert) -> AlertEvent:
    """The event as the notifier reads it from the alert topic."""
    return read_event(event.model_dump_json().encode())


def _event_time(event: Alert) -> datetime:
    """When the output says it was sent: the event's draw or fire time, so a file gives the
    same output every run."""
    when = event.follow_up.fired_at if event.follow_up is not None else event.collected_at
    return as_utc(when) if when is not None else datetime(1970, 1, 1, tzinfo=UTC)


class _Clock:
    """The service's clock replayed over a file: a result is read at its draw time (never after
    --now), and the follow-ups due by then fire before it, as the service's ticks would."""

    def __init__(self, now: datetime) -> None:
        self.now = as_utc(now)

    def read_at(self, result: LabResult) -> datetime:
        drawn = result.collected_at
        return self.now if drawn is None else min(drawn, self.now)

    def fire(
        self, patients: dict[str, PatientState], ruleset: RuleSet, rules: CorrelationRules, by: datetime
    ) -> list[dict[str, Any]]:
        """One line per follow-up event due by `by`, soonest first, each fired at its due time
        (a running service's tick is at most a second late)."""
        fired: list[tuple[datetime, str, Alert]] = []
        for patient_id, before in list(patients.items()):
            state = before
            while (due := state.next_due()) is not None and due <= by:
                state, events = fire_due(state, ruleset, due, rules)
                fired.extend((due, patient_id, e) for e in events)
            patients[patient_id] = state
        fired.sort(key=lambda f: (f[0], f[1]))
        return [
            {"tick": due.isoformat(), "patient_id": patient_id, "events": [event]}
            for due, patient_id, event in fired
        ]


def _lines(
    result: Processed,
    source: SourceRef,
    pipeline: Pipeline,
    *,
    patients: dict[str, PatientState] | None,
    rules: CorrelationRules,
    override: TreatmentContext,
    clock: _Clock | None = None,
) -> list[dict[str, Any]]:
    """One line per result of a message, in the message's order; with `patients`, each read
    with its patient's state, in the order the service reads them (`report_order`). With a
    `clock`, the follow-up events due before a result come first, on lines of their own."""
    if patients is None:
        return [interpretation_line(item, source) for item in result.interpretations]
    for covariate in result.covariates:
        if covariate.reading.record is not None:
            _record(patients, covariate.patient_id, covariate.reading.record, replace=False)
    ticks: list[dict[str, Any]] = []
    lines: dict[int, dict[str, Any]] = {}
    for item in report_order(result.interpretations):
        line = interpretation_line(item, source)
        patient = item.result.patient_id
        read_at = None
        if clock is not None:
            read_at = clock.read_at(item.result)
            ticks += clock.fire(patients, pipeline.ruleset, rules, read_at)
        done = correlate_result(
            patients.get(patient),
            item.result,
            source,
            pipeline.ruleset,
            rules=rules,
            override=override,
            read_at=read_at,
        )
        if done is not None:
            patients[patient] = done.state
            # The line states the reading its events were decided on: the patient's record
            # applied (a subcutaneous patient's level against the subcutaneous target).
            line = interpretation_line(done.interpretation, source)
            line["events"] = list(done.events)  # shown as the output asks (`_show_lines`, `_show_fhir`)
        lines[id(item)] = line
    return [*ticks, *(lines[id(item)] for item in result.interpretations)]


def _read_context(message: bytes, pipeline: Pipeline, patients: dict[str, PatientState]) -> bytes | None:
    """The treatment-context records in `message` (README 'Forecast') applied to their patients'
    records, as the service's context stage applies them; returns what is left for the lab
    pipeline (None: nothing). DecodeError for a record that cannot be read."""
    updates, left = context_in_file(message, pipeline.ruleset.recognition)
    for update in updates:
        _record(patients, update.patient_id, update.record, replace=update.replace)
    return left


def _record(
    patients: dict[str, PatientState], patient_id: str, update: TreatmentRecord | None, *, replace: bool
) -> None:
    state = record_treatment(patients.get(patient_id), patient_id, update, replace=replace)
    if state is None:
        patients.pop(patient_id, None)
    else:
        patients[patient_id] = state


def event_line(event: Alert) -> dict[str, Any]:
    """What `interpret` shows of an alert event: the lifecycle fields (the rest is in the line)."""
    return {
        "action": event.action.value,
        "incident_key": event.incident_key,
        "event_id": event.event_id,
        "severity": event.severity.value,
        "category": event.category.value,
        "pattern": event.pattern.value if event.pattern else None,
        "resolve_reason": event.resolve_reason,
        "previous_levels": [float(p.value) for p in event.previous_levels],
        "recommendation": event.recommendation,
        "forecast": event.forecast.model_dump(mode="json") if event.forecast is not None else None,
        "follow_up": event.follow_up.model_dump(mode="json") if event.follow_up is not None else None,
    }


def add_interpret(commands: Commands) -> None:
    interp = commands.add_parser(
        "interpret",
        help="interpret lab messages from a file or stdin, without Kafka",
        description="Prints one JSON line per infliximab or antibody result. Context options "
        "override what the messages say, for the whole input.",
    )
    interp.add_argument(
        "file",
        nargs="?",
        default="-",
        help="HL7 v2 message or batch, FHIR JSON, canonical JSON, or JSON Lines (- = stdin)",
    )
    interp.add_argument(
        "--format", choices=[f.value for f in Format], default="auto", help="input format (default: detect)"
    )
    interp.add_argument("--phase", choices=[p.value for p in Phase], help="treatment phase of every result")
    interp.add_argument("--week", type=int, help="weeks since the start of induction")
    interp.add_argument("--route", choices=[r.value for r in Route], help="intravenous or subcutaneous")
    interp.add_argument("--goal", choices=[g.value for g in Goal], help="the treatment goal to judge against")
    interp.add_argument("--ruleset", type=Path, help="rule file (default: $TDM_RULESET or the packaged one)")
    interp.add_argument(
        "--max-message-bytes",
        type=int,
        default=Settings.model_fields["max_message_bytes"].default,
        help="larger messages are refused, as the service refuses them (default: %(default)s)",
    )
    interp.add_argument(
        "--no-state",
        action="store_true",
        help="read each message alone (by default results are correlated per patient, as the service does)",
    )
    interp.add_argument(
        "--now",
        type=aware_time,
        metavar="TIME",
        help="replay follow-ups up to TIME (ISO 8601 with its UTC offset): each result is read at its "
        "draw time, and the follow-ups due by then, and by TIME at the end, fire on lines of their own",
    )
    interp.add_argument(
        "--as",
        dest="output",
        choices=["lines", "fhir", "hl7v2"],
        default="lines",
        help="lines: one JSON line per result (default); fhir: one FHIR R4 transaction Bundle per alert "
        "event (TDM_FHIR_PATIENT_SYSTEM, TDM_FHIR_RECIPIENT); hl7v2: one ORU^R01 per alert event",
    )
    interp.set_defaults(handler=cmd_interpret)
