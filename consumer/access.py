"""Before consuming: can this principal read the input topics and write the output topics,
and how large a dead letter may be?

Without this check a missing ACL shows up late and vaguely: no READ on the input topic leaves
the service idle with no partitions; no WRITE on the alert topic makes it look missing. The
broker's answer to DescribeTopics says per topic whether it exists and what we may do with it.
"""

from __future__ import annotations

import structlog

from consumer.clients.seam import Client, Failure
from consumer.fatal import FatalError
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.access")
# A topic's max.message.bytes when nobody set it (Kafka's default since 2.x).
KAFKA_MAX_MESSAGE_BYTES = 1_048_588


# (topic, operation, the setting that names it)
Need = tuple[str, str, str]


def service_needs(settings: Settings) -> list[Need]:
    """`tdm-alerts run`: read the input topics, write the alert and dead-letter topics."""
    wanted = [
        (t, "READ", "TDM_INPUT_TOPICS") for t in ([] if settings.input_pattern else settings.input_topics)
    ]
    if settings.ack_topic:
        wanted.append((settings.ack_topic, "READ", "TDM_ACK_TOPIC"))
    return [
        *wanted,
        (settings.alert_topic, "WRITE", "TDM_ALERT_TOPIC"),
        (settings.dlq_topic, "WRITE", "TDM_DLQ_TOPIC"),
    ]


def notifier_needs(settings: Settings) -> list[Need]:
    """`tdm-alerts notify`: read the alerts, write its dead letters, read and write its incidents."""
    return [
        (settings.alert_topic, "READ", "TDM_ALERT_TOPIC"),
        (settings.notify_dlq_topic, "WRITE", "TDM_NOTIFY_DLQ_TOPIC"),
        (settings.notify_incidents_topic, "READ", "TDM_NOTIFY_INCIDENTS_TOPIC"),
        (settings.notify_incidents_topic, "WRITE", "TDM_NOTIFY_INCIDENTS_TOPIC"),
    ]


def check_topic_access(client: Client, wanted: list[Need]) -> None:
    """Raise FatalError naming each topic we may not use and the ACL or topic that is missing."""
    # Per topic, every operation wanted on it: one line says all that is missing there.
    by_topic: dict[tuple[str, str], list[str]] = {}
    for topic, operation, setting in wanted:
        by_topic.setdefault((topic, setting), []).append(operation)
    admin = client.admin()
    try:
        described = admin.describe_topics(list(dict.fromkeys(t for t, _ in by_topic)))
    finally:
        admin.close()
    problems: list[str] = []
    for (topic, setting), operations in by_topic.items():
        found = described[topic]
        missing = [op for op in operations if op not in (found.operations or {op})]
        ops = " and ".join(missing or operations)
        grant = f"grant {ops} on Topic:{topic} to this process's principal (README 'Security')"
        if found.failure is Failure.MISSING_TOPIC:
            if operations == ["READ"]:
                log.warning("input topic does not exist yet; waiting for it", topic=topic)
                continue
            problems.append(f"topic {topic} ({setting}) does not exist: create it (README 'Topics')")
        elif found.failure is Failure.NOT_AUTHORISED_TOPIC:
            # Kafka answers "not authorised" for a topic we may not describe whether or not it exists.
            problems.append(
                f"not authorised to use topic {topic} ({setting}): {grant}; "
                "if it is granted, check that the topic exists"
            )
        elif found.failure is not None:
            problems.append(f"topic {topic} ({setting}): {found.error}")
        elif missing:
            problems.append(f"not authorised to {ops} topic {topic} ({setting}): {grant}")
    if problems:
        raise FatalError("; ".join(problems))


def dead_letter_limit(settings: Settings, client: Client) -> int:
    """The largest dead letter the dead-letter topic and our producer take, in bytes."""
    admin = client.admin()
    try:
        topic_limit = admin.max_message_bytes(settings.dlq_topic)
    finally:
        admin.close()
    if topic_limit is None:
        log.warning(
            "the dead-letter topic's max.message.bytes could not be read (DESCRIBE_CONFIGS); "
            "assuming Kafka's default",
            topic=settings.dlq_topic,
            assumed=KAFKA_MAX_MESSAGE_BYTES,
        )
        topic_limit = KAFKA_MAX_MESSAGE_BYTES
    return min(topic_limit, settings.producer_max_request_bytes)
