"""Structured logging that never writes patient data.

JSON lines in production, a readable console in a terminal. A redaction processor drops
every field that could carry PHI before anything is rendered, so a careless
`log.info(..., patient_id=...)` cannot leak: it prints `[redacted]` instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, WrappedLogger

# Field names that identify a patient or carry message content. Matched case-insensitively.
PHI_FIELDS = frozenset(
    {
        "patient_id",
        "patient",
        "mrn",
        "name",
        "patient_name",
        "family",
        "given",
        "birth_date",
        "birthdate",
        "dob",
        "address",
        "phone",
        "ssn",
        "accession",
        "specimen_id",
        "value",
        "raw",
        "body",
        "payload",
        "message_bytes",
        "hl7",
        "fhir",
    }
)
REDACTED = "[redacted]"


def redact_phi(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace any PHI-bearing field's value with a marker."""
    for key in list(event_dict):
        if key.lower() in PHI_FIELDS:
            event_dict[key] = REDACTED
    return event_dict


# The client libraries' own loggers: kafka-python's, and librdkafka's as our adapter relays it.
CLIENT_LIBRARY_LOGGERS = ("kafka", "tdm_alerts.librdkafka")


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto", *, operator: bool = False
) -> None:
    """Set up structlog once for the process; `auto` means console on a TTY, JSON otherwise.

    `operator`: a command run at a terminal (`dlq`, `status`, `forget`). The client libraries'
    retries and warnings stay off it unless TDM_LOG_LEVEL=DEBUG: the command ends with one line
    saying what went wrong, which 17 lines of library chatter used to bury.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # kafka-python logs through the standard library: its lines go through the same renderer
    # (one JSON object per line), with the logger's name. They carry broker addresses and
    # error texts, never message content; the PHI redaction runs on them all the same.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                redact_phi,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    if operator and level != "DEBUG":
        # Filtered at our handler, not by the loggers' levels: kafka-python's records still reach
        # the handler that reads why a connection was refused (clients/kafka_python_failures.py).
        handler.addFilter(lambda record: not record.name.startswith(CLIENT_LIBRARY_LOGGERS))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
