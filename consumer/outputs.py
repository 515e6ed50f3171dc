"""The records the service publishes: alerts, dead letters, their headers and correlation id.

Every output goes into the open batch through the delivery, so it commits with the offsets of
the record it came from, or not at all.
"""

from __future__ import annotations

import re
import time
from typing import Any

from consumer.clients.seam import Record
from consumer.dead_letters import fit as fit_dead_letter
from consumer.delivery import Delivery
from consumer.pipeline import Processed
from interpretation import Alert, SourceRef

CORRELATION_HEADER = "tdm.correlation_id"
# An upstream correlation id is kept only in a shape that cannot spell a name or hold an
# identifier: a UUID or a W3C trace id (32 hex digits), and never digits alone (a 16-digit
# "trace id" was a national health number's shape, issue 28). Anything else is replaced.
_CORRELATION_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)
_DIGITS_ONLY = re.compile(r"[0-9-]+")


def source_of(record: Record) -> SourceRef:
    return SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)


def correlation_id(record: Record, *, internal: bool = False) -> str:
    """The id that ties a lab message to its alerts, dead letter and log lines.

    A `tdm.correlation_id` header set upstream is kept (if it is a plain token); otherwise the
    message's Kafka coordinates serve, which stay the same when the message is reprocessed. On
    the internal patient topic (`internal`) the header is the intake's own, written from the lab
    message (its upstream id or coordinates): it is carried through the hop as it is.
    """
    for key, value in record.headers:
        if key == CORRELATION_HEADER:
            text = value.decode(errors="replace") if value else ""
            if internal and text:
                return text
            if _CORRELATION_TEXT.fullmatch(text) and not _DIGITS_ONLY.fullmatch(text):
                return text
    return f"{record.topic}/{record.partition}/{record.offset}"


class Outputs:
    """Sends a record's alerts or dead letter to `alert_topic` / `dlq_topic`."""

    def __init__(
        self,
        delivery: Delivery[Any],
        alert_topic: str,
        dlq_topic: str,
        *,
        dead_letter_limit: int,
        internal_topic: str | None = None,
    ) -> None:
        self.delivery = delivery
        self.alert_topic = alert_topic
        self.dlq_topic = dlq_topic
        self.dead_letter_limit = dead_letter_limit  # the dead-letter topic's max.message.bytes
        self.internal_topic = internal_topic  # the patient topic the intake writes, if any

    def correlation_id(self, record: Record) -> str:
        return correlation_id(record, internal=record.topic == self.internal_topic)

    def send(self, record: Record, result: Processed) -> None:
        if result.dead_letter is None and not result.alerts:
            return  # the ~99% of records with no output: nothing to build
        correlation = (CORRELATION_HEADER, self.correlation_id(record).encode())
        if result.dead_letter is not None:
            headers = result.dead_letter.headers(
                record.topic, record.partition, record.offset, int(time.time() * 1000)
            )
            original = [h for h in record.headers if h[0] != CORRELATION_HEADER]
            body, all_headers = fit_dead_letter(
                record.value or b"", record.key, [*headers, correlation], original, self.dead_letter_limit
            )
            self.delivery.send(self.dlq_topic, record.key, body, all_headers)
            return
        for alert in result.alerts:
            self.send_alert(alert, correlation)

    def send_alert(self, alert: Alert, correlation: tuple[str, bytes]) -> None:
        """One event, with the correlation id of its cause (a record, or a tick of the clock)."""
        self.delivery.send(
            self.alert_topic,
            alert.patient_id.encode(),
            alert.model_dump_json().encode(),
            [
                ("tdm.alert_schema", alert.alert_schema.encode()),
                ("tdm.action", alert.action.value.encode()),
                ("tdm.incident_key", alert.incident_key.encode()),
                ("tdm.event_id", alert.event_id.encode()),
                correlation,
            ],
        )
