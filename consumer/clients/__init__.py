"""The Kafka client seam (`seam`) and its two implementations, chosen by TDM_KAFKA_CLIENT."""

from __future__ import annotations

from consumer.clients.seam import Client
from consumer.fatal import FatalError
from consumer.settings import Settings


def client_for(settings: Settings) -> Client:
    """The configured client; confluent-kafka is imported only when chosen (an optional extra)."""
    if settings.kafka_client == "confluent-kafka":
        try:
            from consumer.clients.confluent import ConfluentClient  # noqa: PLC0415 - an optional extra
        except ImportError as err:
            raise FatalError(
                "TDM_KAFKA_CLIENT=confluent-kafka needs the confluent-kafka package: "
                "pip install 'tdm-alerts[confluent]'"
            ) from err

        return ConfluentClient(settings)
    from consumer.clients.kafka_python import KafkaPythonClient  # noqa: PLC0415 - one client loaded

    return KafkaPythonClient(settings)
