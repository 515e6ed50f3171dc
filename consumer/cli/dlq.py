"""`tdm-alerts dlq list | show | replay`: the dead-letter topic, for an operator."""

from __future__ import annotations

import argparse
import sys

from consumer.cli.arguments import Commands, aware_time, positive
from consumer.dead_letter_reader import DeadLetterView, Position, dead_letters, new_reader
from consumer.dead_letters import Reason
from consumer.fatal import FatalError
from consumer.logs import configure_logging
from consumer.replay import ReplayRequest, replay
from consumer.settings import Settings

SINCE_HELP = "only dead letters written at or after this ISO 8601 time with a UTC offset (2026-11-27T08:00Z)"


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


def position(text: str) -> Position:
    try:
        return Position.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_dlq(commands: Commands) -> None:
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
    again.add_argument("--limit", type=positive, help="stop after this many re-submissions")
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
    listing.add_argument("--limit", type=positive, help="stop after this many lines")
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
