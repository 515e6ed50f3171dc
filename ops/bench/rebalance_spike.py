"""Spike for issue #15 (branch only): rebalance time of three confluent-kafka consumers, classic
group protocol vs KIP-848 (`group.protocol=consumer`), through the seam's GroupConsumer.

    TDM_BOOTSTRAP_SERVERS=... python ops/bench/rebalance_spike.py

First run (session 5, Kafka 4.1.1, librdkafka 2.12.1, 12 partitions, loaded machine): classic
0.2-1.1 s for three simultaneous joins to balance and 3.0 s after one leaves; KIP-848 5.2 s and
4.9-5.0 s (its reconciliation follows the 5 s consumer heartbeat interval, a broker setting).
The real measure is with three service instances; this only checks the adapter and the knob.
"""

from __future__ import annotations

import os
import threading
import time

from kafka.admin import KafkaAdminClient, NewTopic

from consumer.clients import confluent
from consumer.settings import Settings


class _Quiet:
    def assigned(self, partitions: object) -> None: ...

    def revoked(self, partitions: object) -> None: ...

    def lost(self, partitions: object) -> None: ...


def trial(kip848: bool, topic: str, partitions: int) -> tuple[float, float]:
    os.environ["TDM_GROUP_ID"] = f"reb-{kip848}-{time.monotonic_ns()}"
    settings = Settings()
    consumers = [confluent.GroupConsumer(settings, kip848=kip848) for _ in range(3)]
    stop = threading.Event()

    def spin(consumer: confluent.GroupConsumer) -> None:
        while not stop.is_set():
            consumer.poll(100, 500)

    def run(group: list[confluent.GroupConsumer]) -> list[threading.Thread]:
        threads = [threading.Thread(target=spin, args=(c,)) for c in group]
        for thread in threads:
            thread.start()
        return threads

    began = time.monotonic()
    for consumer in consumers:
        consumer.subscribe([topic], None, _Quiet())
    threads = run(consumers)
    share = partitions // 3
    while any(len(c.assignment()) != share for c in consumers) and time.monotonic() - began < 90:
        time.sleep(0.05)
    joined = time.monotonic() - began
    stop.set()
    for thread in threads:
        thread.join()
    stop.clear()
    leaving = consumers.pop(1)
    threads = run(consumers)
    began = time.monotonic()
    leaving.close()
    while sum(len(c.assignment()) for c in consumers) != partitions and time.monotonic() - began < 90:
        time.sleep(0.05)
    left = time.monotonic() - began
    stop.set()
    for thread in threads:
        thread.join()
    for consumer in consumers:
        consumer.close()
    return joined, left


def main() -> None:
    bootstrap = os.environ["TDM_BOOTSTRAP_SERVERS"]
    topic = f"rebalance-{time.monotonic_ns()}"
    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic(topic, 12, 1)])
    for kip848 in (False, True, False, True):
        joined, left = trial(kip848, topic, 12)
        print(f"{'KIP-848' if kip848 else 'classic'}: three join {joined:.1f} s, one leaves {left:.1f} s")


if __name__ == "__main__":
    main()
