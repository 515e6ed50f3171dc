"""The admin client on confluent-kafka: topics, their configuration, consumer groups."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from consumer.clients.librdkafka import (
    CALL_TIMEOUT_S,
    Errors,
    call,
    check_reachable,
    client_error,
    client_options,
    failure_of,
    ours,
)
from consumer.clients.seam import Failure, GroupInfo, Member, Partition, TopicInfo, TopicSpec
from consumer.settings import Settings

# librdkafka's group states in the words the Kafka protocol (and kafka-python) use.
_GROUP_STATES = {
    "STABLE": "Stable",
    "PREPARING_REBALANCING": "PreparingRebalance",
    "COMPLETING_REBALANCING": "CompletingRebalance",
    "EMPTY": "Empty",
    "DEAD": "Dead",
}


class Admin:
    def __init__(self, settings: Settings) -> None:
        self._errors = Errors()
        options = client_options(settings, self._errors, "admin")
        self._admin = call(lambda: AdminClient(options), "connect")
        check_reachable(self._admin, self._errors, settings, "connect")

    def describe_topics(self, topics: Collection[str]) -> Mapping[str, TopicInfo]:
        futures = call(
            lambda: self._admin.describe_topics(
                TopicCollection(list(topics)),
                request_timeout=CALL_TIMEOUT_S,
                include_authorized_operations=True,
            ),
            "describe topics",
        )
        info: dict[str, TopicInfo] = {}
        for topic, future in futures.items():
            try:
                described = future.result()
            except KafkaException as err:
                error: KafkaError = err.args[0]
                if not failure_of(error).fatal and failure_of(error) is not Failure.MISSING_TOPIC:
                    raise client_error(error, "describe topics") from err
                info[topic] = TopicInfo(0, failure_of(error), error.name())
                continue
            operations = described.authorized_operations
            info[topic] = TopicInfo(
                len(described.partitions),
                operations=None if operations is None else frozenset(op.name for op in operations),
            )
        return info

    def create_topics(self, specs: Collection[TopicSpec]) -> None:
        topics = [NewTopic(t.name, num_partitions=t.partitions, config=dict(t.config)) for t in specs]
        futures = call(
            lambda: self._admin.create_topics(topics, request_timeout=CALL_TIMEOUT_S), "create topics"
        )
        for future in futures.values():
            try:
                future.result()
            except KafkaException as err:
                if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another instance won the race
                    raise client_error(err.args[0], "create topics") from err

    def max_message_bytes(self, topic: str) -> int | None:
        wanted = ConfigResource(ResourceType.TOPIC, topic)
        futures = call(
            lambda: self._admin.describe_configs([wanted], request_timeout=CALL_TIMEOUT_S), "describe configs"
        )
        try:
            found = next(iter(futures.values())).result()
        except KafkaException as err:
            error: KafkaError = err.args[0]
            if not failure_of(error).fatal and failure_of(error) is not Failure.MISSING_TOPIC:
                raise client_error(error, "describe configs") from err
            return None  # not authorised to describe it, or gone: the caller assumes Kafka's default
        entry = found.get("max.message.bytes")
        return int(entry.value) if entry is not None and entry.value else None

    def describe_group(self, group_id: str) -> GroupInfo:
        future = call(
            lambda: self._admin.describe_consumer_groups([group_id], request_timeout=CALL_TIMEOUT_S)[
                group_id
            ],
            "describe group",
        )
        try:
            described = future.result()
        except KafkaException as err:
            if err.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:  # Kafka 4, of a group never used
                return GroupInfo("Dead", ())
            raise client_error(err.args[0], "describe group") from err
        members = tuple(
            Member(
                member_id=m.member_id,
                host=str(m.host).lstrip("/"),
                partitions=tuple(
                    sorted(ours(tp) for tp in (m.assignment.topic_partitions if m.assignment else []))
                ),
            )
            for m in described.members
        )
        state = described.state.name
        return GroupInfo(_GROUP_STATES.get(state, state.title()), members)

    def group_offsets(self, group_id: str) -> Mapping[Partition, int]:
        future = call(
            lambda: self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group_id)], request_timeout=CALL_TIMEOUT_S
            )[group_id],
            "group offsets",
        )
        found = call(future.result, "group offsets")
        return {ours(tp): int(tp.offset) for tp in found.topic_partitions or [] if tp.offset >= 0}

    def close(self) -> None:
        """Nothing to release: librdkafka's admin client closes when it is collected."""
