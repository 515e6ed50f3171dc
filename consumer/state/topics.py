"""The internal topics state needs: a repartition topic keyed by patient id, and a changelog.

Both have the same number of partitions: changelog partition N backs the patient states of
repartition partition N. They are created at start when the service may; otherwise the error
lists each with its partitions and cleanup policy, so an operator can create them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from consumer.clients.seam import Admin, Client, ClientError, Failure, TopicInfo, TopicSpec
from consumer.fatal import FatalError
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.state")
REPARTITION_RETENTION_MS = 7 * 24 * 3600 * 1000  # read within seconds; a week covers any outage
CREATE_WAIT_S = 10.0


@dataclass(frozen=True)
class InternalTopic:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.configs.items())
        return f"{self.name} ({self.partitions} partitions, {settings})"


@dataclass(frozen=True)
class StateTopics:
    """Where patient results are keyed by patient id, and where their state is logged."""

    patients: str  # the topic whose partitions own patients (the repartition topic, or the input)
    changelog: str
    repartition: bool  # False when the input is already keyed by patient id


def state_topics(settings: Settings) -> StateTopics:
    changelog = f"{settings.group_id}.patient-state-changelog"
    if settings.input_keyed_by_patient:
        return StateTopics(patients=settings.input_topics[0], changelog=changelog, repartition=False)
    return StateTopics(patients=f"{settings.group_id}.patient-results", changelog=changelog, repartition=True)


def ensure_state_topics(settings: Settings, client: Client) -> StateTopics:
    """Create the internal topics if missing (and allowed); check their partition counts agree."""
    topics = state_topics(settings)
    admin = client.admin()
    try:
        partitions = settings.state_partitions
        if not topics.repartition:
            keyed = admin.describe_topics([topics.patients])[topics.patients]
            if keyed.failure is not None:
                raise FatalError(f"input topic {topics.patients} cannot be described: {keyed.error}")
            partitions = keyed.partitions
        wanted = [InternalTopic(topics.changelog, partitions, {"cleanup.policy": "compact"})]
        if topics.repartition:
            wanted.append(
                InternalTopic(
                    topics.patients,
                    partitions,
                    {"cleanup.policy": "delete", "retention.ms": str(REPARTITION_RETENTION_MS)},
                )
            )
        found = admin.describe_topics([t.name for t in wanted])
        missing = [t for t in wanted if found[t.name].failure is not None]
        if missing and settings.create_internal_topics:
            try:
                admin.create_topics([TopicSpec(t.name, t.partitions, t.configs) for t in missing])
                log.info("internal topics created", topics=[t.describe() for t in missing])
            except ClientError as err:
                if err.failure not in (Failure.NOT_AUTHORISED_TOPIC, Failure.NOT_AUTHORISED_CLUSTER):
                    raise
                raise _create_them(missing, err.name) from None
        elif missing:
            raise _create_them(missing, "TDM_CREATE_INTERNAL_TOPICS is false")
        # Just created, by us or by another instance starting at the same time.
        found = _with_partitions(admin, [t.name for t in wanted], None if missing else found)
        counts = {t.name: found[t.name].partitions for t in wanted}
        if len(set(counts.values())) != 1 or partitions not in counts.values():
            raise FatalError(
                "internal topics must have the same number of partitions as each other and as "
                f"TDM_STATE_PARTITIONS (or the keyed input topic): found {counts}, expected {partitions}"
            )
    finally:
        admin.close()
    return topics


def _with_partitions(
    admin: Admin, names: list[str], found: Mapping[str, TopicInfo] | None
) -> Mapping[str, TopicInfo]:
    """The topics as described once they all have partitions: a broker can describe a topic that
    was just created with none yet (seen with librdkafka on Kafka 4.1). `found`, a description
    already in hand, is checked first instead of asking again."""
    deadline = time.monotonic() + CREATE_WAIT_S
    while True:
        found = found or admin.describe_topics(names)
        if (
            all(found[n].failure is None and found[n].partitions for n in names)
            or time.monotonic() > deadline
        ):
            return found
        found = None
        time.sleep(0.2)


def _create_them(missing: list[InternalTopic], why: str) -> FatalError:
    listed = "; ".join(t.describe() for t in missing)
    return FatalError(
        f"internal topics are missing and the service may not create them ({why}); create: {listed}"
    )
