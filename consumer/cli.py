"""Command line: `tdm-alerts run | interpret | rules`.

Exit codes: 0 success; 1 some input could not be interpreted (`interpret`) or a fatal
service error; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import structlog
from pydantic import ValidationError

from consumer.logs import configure_logging
from consumer.metrics import Metrics, MetricsServer
from consumer.pipeline import Pipeline
from consumer.service import FatalError, Service
from consumer.settings import Settings
from interpretation import (
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

VERSION = "0.1.0"
log = structlog.get_logger("tdm_alerts")


def load_ruleset(path: Path | None) -> RuleSet:
    """The rule set in `path`, or the packaged default when no path is given."""
    if path is None:
        return default_ruleset()
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
    metrics.build.info({"version": VERSION})
    service = Service(settings, Pipeline(ruleset, settings.max_message_bytes), metrics)
    server = MetricsServer(settings.metrics_host, settings.metrics_port, metrics.registry, service.is_ready)
    server.start()
    log.info(
        "starting",
        version=VERSION,
        ruleset=ruleset.version,
        metrics_port=server.port,
        bootstrap=settings.bootstrap_servers,
    )

    def stop(signum: int, _frame: object) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        service.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        service.run()
    except FatalError as err:
        log.error("fatal", error=str(err))
        return 1
    finally:
        server.stop()
    return 0


# -- interpret ------------------------------------------------------------------------------


def read_messages(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Messages from a file: one JSON message per line (blank lines skipped), with line numbers."""
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line.rstrip(b"\r\n")


def interpretation_line(item: Interpretation, source: SourceRef) -> dict[str, Any]:
    """The `interpret` output contract: one flat JSON object per recognised result."""
    r = item.result
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
        "decided_by": getattr(item, "decided_by", None),
        "target": getattr(item, "target", None) and item.target.describe_range(),  # type: ignore[union-attr]
        "context": item.context.model_dump(mode="json", exclude_none=True),
        "recommendation": item.recommendation,
        "citations": [c.id for c in item.citations],
        "source": source.model_dump(exclude_none=True),
    }


def cmd_interpret(args: argparse.Namespace) -> int:
    override = TreatmentContext(phase=args.phase, week=args.week, route=args.route, goal=args.goal)
    pipeline = Pipeline(load_ruleset(args.ruleset), args.max_message_bytes, override)
    name = "-" if args.file == "-" else str(args.file)
    stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    failures = 0
    with stream:
        for line_no, data in read_messages(stream):
            source = SourceRef(file=name, line=line_no)
            result = pipeline.process(data, source)
            if result.dead_letter is not None:
                failures += 1
                dl = result.dead_letter
                print(f"{name}:{line_no}: {dl.reason.value} ({dl.stage.value}): {dl.detail}", file=sys.stderr)
                continue
            for item in result.interpretations:
                print(json.dumps(interpretation_line(item, source), default=str), flush=True)
    return 1 if failures else 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdm-alerts", description="Infliximab TDM alerting on a Kafka lab-result feed."
    )
    parser.add_argument("--version", action="version", version=f"tdm-alerts {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="consume lab results and publish alerts (settings: TDM_* env)")
    run.set_defaults(handler=cmd_run)

    interp = commands.add_parser(
        "interpret",
        help="interpret lab messages from a file or stdin, without Kafka",
        description="Prints one JSON line per infliximab or antibody result. Context options "
        "override what the messages say, for the whole input.",
    )
    interp.add_argument("file", nargs="?", default="-", help="message file, one message per line (- = stdin)")
    interp.add_argument("--phase", choices=[p.value for p in Phase])
    interp.add_argument("--week", type=int, help="weeks since the start of induction")
    interp.add_argument("--route", choices=[r.value for r in Route])
    interp.add_argument("--goal", choices=[g.value for g in Goal])
    interp.add_argument("--ruleset", type=Path, help="rule file (default: the packaged rule set)")
    interp.add_argument(
        "--max-message-bytes", type=int, default=Settings.model_fields["max_message_bytes"].default
    )
    interp.set_defaults(handler=cmd_interpret)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except RuleSetError as err:
        print(f"tdm-alerts: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"tdm-alerts: invalid configuration:\n{err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"tdm-alerts: {err.filename}: no such file", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
