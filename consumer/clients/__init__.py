"""The Kafka client seam (`seam`) and its two implementations, chosen by TDM_KAFKA_CLIENT."""

from __future__ import annotations

from consumer.clients.seam import Client
from consumer.settings import Settings


def client_for(settings: Settings) -> Client:
    """The configured client; confluent-kafka is imported only when chosen (an optional extra)."""
    if settings.kafka_client == "confluent-kafka":
        from consumer.clients.confluent import ConfluentClient  # noqa: PLC0415 - an optional extra

        return ConfluentClient(settings)
    from consumer.clients.kafka_python import KafkaPythonClient  # noqa: PLC0415 - one client loaded

    return KafkaPythonClient(settings)
