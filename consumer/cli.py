"""Command line: `tdm-alerts run | interpret | rules`.

Exit codes: 0 success; 1 some input could not be interpreted (`interpret`) or a fatal
service error; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import structlog
from pydantic import ValidationError

from consumer.clients import client_for
from consumer.clients.seam import ClientError
from consumer.connecting import connect_once
from consumer.dead_letter_reader import DeadLetterView, Position, dead_letters, new_reader
from consumer.dead_letters import Reason
from consumer.fatal import FatalError
from consumer.formats import Format
from consumer.formats.errors import DecodeError
from consumer.formats.treatment import context_in_file
from consumer.group_status import group_status
from consumer.health import Watchdog
from consumer.lifecycle import Lifecycle
from consumer.logs import configure_logging
from consumer.message_files import messages_in
from consumer.metrics import Metrics, MetricsServer
from consumer.notify.metrics import NotifyMetrics
from consumer.notify.service import Notifier
from consumer.patient_topic import forget_record
from consumer.pipeline import Pipeline, Processed
from consumer.replay import ReplayRequest, replay
from consumer.service import Service
from consumer.settings import Settings, describe_settings_error
from consumer.state.topics import state_topics
from interpretation import (
    Alert,
    AntibodyInterpretation,
    DrugLevelInterpretation,
    Goal,
    Interpretation,
    Phase,
    Route,
    RuleSet,
    RuleSetError,
    SourceRef,
    TreatmentContext,
    default_ruleset,
    parse_ruleset,
)
from interpretation.correlation import correlate_result, record_treatment
from interpretation.patient_state import CorrelationRules, PatientState
from interpretation.ruleset import PACKAGED_RULESETS, packaged_ruleset
from interpretation.treatment import TreatmentRecord

VERSION = "0.1.0"
SINCE_HELP = "only dead letters written at or after this ISO 8601 time with a UTC offset (2026-11-27T08:00Z)"
log = structlog.get_logger("tdm_alerts")


def load_ruleset(path: Path | None) -> RuleSet:
    """The rule set in `path`, else in $TDM_RULESET, else the packaged default.

    A bare name of a packaged rule set (`reactive`) selects that one.
    """
    if path is None and (from_env := os.environ.get("TDM_RULESET")):
        path = Path(from_env)
    if path is None:
        return default_ruleset()
    if str(path) in PACKAGED_RULESETS:
        return packaged_ruleset(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RuleSetError(f"cannot read rule file {path}: {err.strerror}") from err
    return parse_ruleset(text, str(path))


# -- run ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    ruleset = load_ruleset(settings.ruleset)
    metrics = Metrics()
    metrics.ruleset.info({"version": ruleset.version})
    pipeline = Pipeline(
        ruleset,
        settings.max_message_bytes,
        topic_formats=settings.topic_formats,
        lab_covariates=settings.lab_covariates and settings.patient_state,
    )
    return _serve(settings, Service(settings, pipeline, metrics), metrics, ruleset=ruleset.version)


def cmd_notify(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = NotifyMetrics()
    try:
        notifier = Notifier(settings, metrics)
    except ValueError as err:  # a receiver or route that cannot work
        print(f"tdm-alerts: invalid configuration: {err}", file=sys.stderr)
        return 2
    return _serve(settings, notifier, metrics, receivers=notifier.receivers.names())


def _serve(settings: Settings, process: Lifecycle, metrics: Metrics, **about: object) -> int:
    """Run `process` with its metrics and probes served, a watchdog, and SIGTERM/SIGINT handled."""
    metrics.build.info({"version": VERSION})
    server = MetricsServer(
        settings.metrics_host,
        settings.metrics_port,
        metrics.registry,
        process.is_ready,
        alive=process.health.alive,
        detail=process.readiness_detail,
    )
    server.start()

    def stalled(reason: str) -> None:
        # The loop is wedged (kafka-python K3): nothing in this process can unwedge it, so exit
        # for the orchestrator to start a fresh one. The open batch is aborted (or, at least
        # once, never committed) and its records processed again.
        log.error("stalled; exiting so that a fresh instance takes over", reason=reason)
        logging.shutdown()
        os._exit(1)

    watchdog = Watchdog(process.health, stalled).start()
    log.info(
        "starting",
        version=VERSION,
        metrics_port=server.port,
        bootstrap=settings.bootstrap_servers,
        kafka_client=settings.kafka_client,
        group_protocol=settings.group_protocol,
        **about,
    )

    def stop(signum: int, _frame: object) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        process.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        process.run()
    except FatalError as err:
        log.error("fatal", error=str(err))
        return 1
    finally:
        watchdog.stop()
        server.stop()
    return 0


# -- interpret ------------------------------------------------------------------------------


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


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def cmd_interpret(args: argparse.Namespace) -> int:
    override = TreatmentContext(phase=args.phase, week=args.week, route=args.route, goal=args.goal)
    # A history file's albumin and weight results are always read: its cost is no concern here.
    pipeline = Pipeline(load_ruleset(args.ruleset), args.max_message_bytes, override, lab_covariates=True)
    fmt = Format(args.format)
    if args.file == "-":
        name, data = "-", sys.stdin.buffer.read()
    else:
        name, data = str(args.file), Path(args.file).read_bytes()
    failures = 0
    # The same correlation the service runs, over the file in order, with patients kept in memory.
    patients: dict[str, PatientState] = {}
    # The service's correlation settings (TDM_PAIR_WINDOW_HOURS and the rest), read the same way.
    rules = Settings().correlation_rules()
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
        for line in _lines(result, source, pipeline, patients=patients_now, rules=rules, override=override):
            print(json.dumps(line, default=str), flush=True)
    return 1 if failures else 0


def _lines(
    result: Processed,
    source: SourceRef,
    pipeline: Pipeline,
    *,
    patients: dict[str, PatientState] | None,
    rules: CorrelationRules,
    override: TreatmentContext,
) -> list[dict[str, Any]]:
    """One line per result of a message; with `patients`, each read with its patient's state."""
    lines = []
    if patients is not None:
        for covariate in result.covariates:
            if covariate.reading.record is not None:
                _record(patients, covariate.patient_id, covariate.reading.record, replace=False)
    for item in result.interpretations:
        line = interpretation_line(item, source)
        if patients is not None:
            patient = item.result.patient_id
            done = correlate_result(
                patients.get(patient), item.result, source, pipeline.ruleset, rules=rules, override=override
            )
            if done is not None:
                patients[patient] = done.state
                line["events"] = [event_line(e) for e in done.events]
        lines.append(line)
    return lines


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
    }


def cmd_forget(args: argparse.Namespace) -> int:
    """Ask the instance that owns the patient to delete its state (and tombstone the changelog)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    topics = state_topics(settings)
    # Keyed by patient like their results, so it reaches the partition (and instance) holding them.
    producer = connect_once(client_for(settings).producer, settings)
    try:
        value, headers = forget_record()
        sent = producer.send(topics.patients, args.patient_id.encode(), value, headers)
        producer.flush(30)
        sent.offset(30)
    finally:
        producer.close(10)
    print(f"forget request sent to {topics.patients}; the owning instance removes the state when it reads it")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    request = ReplayRequest(
        reasons=frozenset(Reason(r) for r in args.reason or ()),
        to_topic=args.to,
        since_ms=int(args.since.timestamp() * 1000) if args.since else None,
        limit=args.limit,
        dry_run=args.dry_run,
        at=args.at,
    )
    report = replay(settings, request)
    print(report.describe())
    return 1 if report.failed else 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    reasons = set(args.reason or ())
    consumer = new_reader(settings, "dlq-list")
    shown = 0
    try:
        since_ms = int(args.since.timestamp() * 1000) if args.since else None
        for record in dead_letters(consumer, settings.dlq_topic, since_ms):
            view = DeadLetterView.of(record)
            if reasons and view.reason not in reasons:
                continue
            print(view.line())
            shown += 1
            if args.limit is not None and shown >= args.limit:
                break
    finally:
        consumer.close()
    print(f"{shown} dead letter(s) on {settings.dlq_topic}", file=sys.stderr)
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    consumer = new_reader(settings, "dlq-show")
    try:
        record = next(dead_letters(consumer, settings.dlq_topic, at=args.position), None)
    finally:
        consumer.close()
    if record is None:  # an aborted record or a transaction marker sits at that offset
        raise FatalError(f"no committed dead letter at {args.position.partition}:{args.position.offset}")
    print(DeadLetterView.of(record).describe(header_names=args.body))
    if args.body:
        # Asked for explicitly: the lab message as it arrived, patient data included.
        sys.stdout.write("\n")
        sys.stdout.buffer.write(record.value or b"")
        sys.stdout.write("\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    print(group_status(settings).render())
    return 0


def aware_time(text: str) -> datetime:
    """An ISO 8601 time with its UTC offset: a bare time would silently mean this machine's zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add one, for example {text}+00:00 or {text}Z"
        )
    return moment


def position(text: str) -> Position:
    try:
        return Position.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def settings_help() -> str:
    """Every TDM_* setting with its default, for `run --help` (the README says what each does)."""
    lines = ["settings (environment variables; the README's Settings table explains each):"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=False)
        if info.default_factory:
            shown = "(this host's name)"
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, list):
            shown = ",".join(str(v) for v in default)
        else:
            shown = "(unset)" if default in (None, {}) else str(default)
        lines.append(f"  TDM_{name.upper():<32} {shown}")
    return "\n".join(lines)


# -- rules and schema -----------------------------------------------------------------------


def cmd_rules_check(args: argparse.Namespace) -> int:
    ruleset = load_ruleset(args.file)  # raises RuleSetError with every problem listed
    print(
        f"{args.file}: valid rule set {ruleset.version} ({len(ruleset.drug_level_targets)} targets, "
        f"{len(ruleset.antibody_assays)} antibody assays, {len(ruleset.citations)} citations)"
    )
    return 0


def cmd_rules_show(args: argparse.Namespace) -> int:
    ruleset = load_ruleset(args.ruleset)
    print(f"Rule set {ruleset.version}: {ruleset.description}")
    print(f"Context when the message says nothing: {ruleset.defaults.describe_set_fields()}\n")
    rows = [("#", "rule", "applies to", "target", "citation")]
    for n, t in enumerate(ruleset.drug_level_targets, start=1):
        rows.append((str(n), t.id, t.when.describe(), t.describe_range(), t.citation))
    for a in ruleset.antibody_assays:
        rows.append(
            (
                "ATI",
                a.id,
                f"codes {', '.join(a.codes)}",
                f"positive >= {a.positive_at_or_above} {a.unit}",
                a.citation,
            )
        )
    ceiling = ruleset.plausibility
    rows.append(
        (
            "-",
            "plausibility",
            "any drug level",
            f"uninterpretable > {ceiling.max_drug_level_ug_per_ml} ug/mL",
            ceiling.citation,
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    loq = ruleset.assay_limits
    rows_note = f"uninterpretable > {ceiling.max_drug_level_ug_per_ml} ug/mL"
    print("\nDrug-level targets are tried in order; the first whose context matches applies.")
    print(
        "With no target for the context, a level below the lowest target that could apply is low;\n"
        "a level reported as text ('Undetectable', '<LOQ') reads as "
        f"< {loq.limit_of_quantitation_ug_per_ml} ug/mL [{loq.citation}]. "
        f"Implausible: {rows_note} [{ceiling.citation}]."
    )
    print(
        "Antibodies: every piece of evidence is read (a named lab's assay cut-off, the lab's reference\n"
        "interval, its abnormal flag, a configured cut-off, its words); when they disagree: detected.\n"
    )
    print("Citations:")
    for c in ruleset.citations:
        print(f"  [{c.id}] {c.reference()}\n      Used for: {c.claim}")
    return 0


def cmd_alert_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Alert.model_json_schema(mode="serialization"), indent=2, sort_keys=True))
    return 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdm-alerts", description="Infliximab TDM alerting on a Kafka lab-result feed."
    )
    parser.add_argument("--version", action="version", version=f"tdm-alerts {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(commands)
    _add_interpret(commands)
    _add_rules(commands)
    _add_dlq(commands)
    forget = commands.add_parser(
        "forget",
        help="remove a patient's remembered state (data-protection request; settings: TDM_* env)",
    )
    forget.add_argument("patient_id", type=_non_empty, help="the patient id as the lab feed sends it")
    forget.set_defaults(handler=cmd_forget)
    schema = commands.add_parser("alert-schema", help="print the JSON schema of published alerts")
    schema.set_defaults(handler=cmd_alert_schema)
    return parser


# argparse names the type of add_subparsers() privately; it is the documented return value.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # noqa: SLF001


def _add_service_commands(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        help="consume lab results and publish alerts (settings: TDM_* env)",
        description="Consume lab results from Kafka and publish infliximab alerts until SIGTERM.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(handler=cmd_run)
    notify = commands.add_parser(
        "notify",
        help="deliver alert events to Alertmanager, PagerDuty and signed webhooks (settings: TDM_* env)",
        description="Consume the alert topic in its own group and deliver each event to the receivers "
        "configured by TDM_NOTIFY_*, at least once, until SIGTERM (README 'Paging').",
    )
    notify.set_defaults(handler=cmd_notify)
    status = commands.add_parser(
        "status",
        help="the consumer group: members, assignment, committed offsets and lag (settings: TDM_* env)",
    )
    status.set_defaults(handler=cmd_status)


def _add_interpret(commands: Commands) -> None:
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
    interp.set_defaults(handler=cmd_interpret)


def _add_rules(commands: Commands) -> None:
    rules = commands.add_parser("rules", help="check or show interpretation rule sets")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_commands.add_parser("check", help="validate a rule file and explain its errors")
    check.add_argument("file", type=Path, help="the rule set JSON file to validate")
    check.set_defaults(handler=cmd_rules_check)
    show = rules_commands.add_parser("show", help="print the active rules with their citations")
    show.add_argument(
        "--ruleset", type=Path, default=None, help="rule file (default: $TDM_RULESET or packaged)"
    )
    show.set_defaults(handler=cmd_rules_show)


def _add_dlq(commands: Commands) -> None:
    dlq = commands.add_parser("dlq", help="work with the dead-letter topic")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    again = dlq_commands.add_parser(
        "replay",
        help="re-submit dead letters to their source topic (settings: TDM_* env)",
        description="Reads the dead-letter topic from the start (or --since) up to its end when the "
        "command starts, and produces each dead letter's original key, value and headers to the "
        "topic it came from. A replayed result the patient's state already holds publishes nothing new.",
    )
    again.add_argument(
        "--reason", action="append", choices=[r.value for r in Reason], help="only this reason (repeatable)"
    )
    again.add_argument("--to", metavar="TOPIC", help="produce here instead of each message's source topic")
    again.add_argument("--since", type=aware_time, help=SINCE_HELP)
    again.add_argument("--at", type=position, metavar="PARTITION:OFFSET", help="only this one dead letter")
    again.add_argument("--limit", type=_positive, help="stop after this many re-submissions")
    again.add_argument("--dry-run", action="store_true", help="count what would be replayed; produce nothing")
    again.set_defaults(handler=cmd_dlq_replay)
    listing = dlq_commands.add_parser(
        "list",
        help="one line per dead letter: position, time, reason, source, error (never the message)",
    )
    listing.add_argument(
        "--reason", action="append", choices=[r.value for r in Reason], help="only this reason (repeatable)"
    )
    listing.add_argument("--since", type=aware_time, help=SINCE_HELP)
    listing.add_argument("--limit", type=_positive, help="stop after this many lines")
    listing.set_defaults(handler=cmd_dlq_list)
    show_one = dlq_commands.add_parser(
        "show", help="one dead letter's headers and reason; its message only with --body"
    )
    show_one.add_argument(
        "position", type=position, metavar="PARTITION:OFFSET", help="as `dlq list` prints it"
    )
    show_one.add_argument(
        "--body", action="store_true", help="also print the message as it arrived (it holds patient data)"
    )
    show_one.set_defaults(handler=cmd_dlq_show)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except RuleSetError as err:
        print(f"tdm-alerts: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"tdm-alerts: invalid configuration:\n{describe_settings_error(err)}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"tdm-alerts: {err.filename}: no such file", file=sys.stderr)
        return 2
    except FatalError as err:  # operator commands: a clear line, no traceback
        print(f"tdm-alerts: {err}", file=sys.stderr)
        return 1
    except ClientError as err:  # one the command could not name more closely
        print(f"tdm-alerts: Kafka refused ({err.failure.value}): {err.name}{_OPERATOR_HINT}", file=sys.stderr)
        return 1


_OPERATOR_HINT = "; README 'Operator access' lists the ACLs each command needs"


if __name__ == "__main__":
    sys.exit(main())
