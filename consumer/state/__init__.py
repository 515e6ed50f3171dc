"""Patient state on Kafka: a local store per partition, backed by a compacted changelog.

The Kafka Streams / Quix Streams model: results are repartitioned by patient id; each
partition's state lives in a local SQLite file and in a compacted changelog topic written in
the same transaction as the alerts and the consumed offsets; a partition's state is restored
from its changelog when the partition is assigned. What to remember and what to say is decided
in `interpretation.correlation`; this package only keeps it.
"""
