"""`tdm-alerts ack`: someone acted on an incident; the decision goes on record.

Writes one acknowledgement to TDM_ACK_TOPIC, keyed by the patient (the incident's `patient_id`),
so it reaches the instance that holds the patient's incidents. The service applies it (an
update of the incident carrying its audit trail) or, for an incident the patient does not have
open, dead-letters it with reason `unknown_incident` and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import uuid
from datetime import UTC, datetime

import structlog

from consumer.ack_server import AckServer
from consumer.cli.arguments import Commands, non_empty
from consumer.clients import client_for
from consumer.connecting import connect_once
from consumer.fatal import FatalError
from consumer.logs import configure_logging
from consumer.settings import Settings
from interpretation.alerts import Decision

log = structlog.get_logger("tdm_alerts.ack_server")
_KEY = re.compile(r"[0-9a-f]{32}")
_ROLE = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def incident(text: str) -> str:
    if not _KEY.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an incident key (32 hex digits, as the alert has it)"
        )
    return text


def role(text: str) -> str:
    if not _ROLE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a role: lower case, digits, - or _, e.g. pharmacist (a role, never a name)"
        )
    return text


def cmd_ack(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    if not settings.ack_topic:
        raise FatalError("TDM_ACK_TOPIC is not set: the service reads acknowledgements from that topic")
    ack_id = uuid.uuid4().hex
    value = {
        "ack_id": ack_id,
        "incident_key": args.incident,
        "patient_id": args.patient,
        "decision": args.decision,
        "by": args.by,
        "at": datetime.now(UTC).isoformat(),
        "via": "cli",
    }
    if args.note:
        value["note"] = args.note  # for the people reading the topic; the service keeps none of it
    producer = connect_once(client_for(settings).producer, settings)
    try:
        sent = producer.send(settings.ack_topic, args.patient.encode(), json.dumps(value).encode(), [])
        producer.flush(30)
        sent.offset(30)
    finally:
        producer.close(10)
    print(
        f"acknowledgement {ack_id} sent to {settings.ack_topic}; the service records it on the incident, "
        "or dead-letters it (reason unknown_incident) if the patient has no such incident open"
    )
    return 0


def cmd_ack_server(args: argparse.Namespace) -> int:
    """Serve signed acknowledgements until SIGTERM (README 'Follow-ups')."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.ack_topic:
        raise FatalError("TDM_ACK_TOPIC is not set: the acknowledgements are written to that topic")
    if settings.ack_secret is None:
        raise FatalError("TDM_ACK_SECRET (or TDM_ACK_SECRET_FILE) is not set: requests are verified with it")
    producer = connect_once(client_for(settings).producer, settings)
    server = AckServer(
        settings.ack_server_host,
        settings.ack_server_port,
        secret=settings.ack_secret.get_secret_value().encode(),
        max_age_s=settings.ack_max_age_s,
        topic=settings.ack_topic,
        producer=producer,
    )
    log.info("acknowledgement server listening", port=server.port, topic=settings.ack_topic)
    try:
        server.serve_until_stopped(threading.Event(), "ack-http")
    finally:
        producer.close(10)
    log.info("acknowledgement server stopped")
    return 0


def add_ack(commands: Commands) -> None:
    ack = commands.add_parser(
        "ack",
        help="acknowledge an incident with the decision taken (settings: TDM_* env)",
        description="Stops the incident's escalation and puts the decision on record (README 'Follow-ups').",
    )
    ack.add_argument("incident", type=incident, help="the incident key, as the alert event has it")
    ack.add_argument("--patient", required=True, type=non_empty, help="the alert event's patient_id")
    ack.add_argument(
        "--decision", required=True, choices=[d.value for d in Decision], help="what was decided"
    )
    ack.add_argument("--by", required=True, type=role, help="a role, never a name (e.g. pharmacist)")
    ack.add_argument("--note", help="free text for the people reading the acknowledgement topic")
    ack.set_defaults(handler=cmd_ack)
    server = commands.add_parser(
        "ack-server",
        help="accept signed acknowledgements over HTTP and write them to TDM_ACK_TOPIC (settings: TDM_* env)",
        description="POST /acknowledgements, signed with TDM_ACK_SECRET as the outgoing webhook signs "
        "(README 'Follow-ups'); until SIGTERM.",
    )
    server.set_defaults(handler=cmd_ack_server)
