"""The baselines and peers `make bench` compares tdm-alerts with, each run as its own process.

    python ops/bench/loops.py NAME --bootstrap B --topic T --sink S --group G --expect N

NAME is one of:
  kafka-python          bare consume-then-produce loop: every record is forwarded to the sink
                        (the most kafka-python can move here), offsets committed per batch
  kafka-python-consume  the same without producing: the consumer alone
  confluent             the bare loop with confluent-kafka (librdkafka), what a user could pick instead
  quix                  a Quix Streams application running our decoders and interpretation core
                        (filter, interpret, publish alerts and dead letters), exactly once
  bridge                the bare paging bridge a README field mapping leads to: kafka-python
                        reads alert events and POSTs each to the URL in --sink (httpx), offsets
                        committed after each batch's posts; no retry, routing or signature

Prints one JSON object: when the first record arrived, when the last was committed, CPU
seconds and peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_RECORDS = 500  # the service's TDM_BATCH_MAX_RECORDS default: same batch size everywhere


def usage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # Not ru_maxrss: Linux carries it across exec, so it would include the parent at fork time.
    peak = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": int(peak.group(1)) / 1024 if peak else 0.0}


def kafka_python(args: argparse.Namespace, forward: str) -> dict[str, float]:
    """The bare kafka-python loop; each record forwarded to the sink topic ("kafka"), POSTed to
    the sink URL ("http", the bare paging bridge), or not at all ("none")."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=POLL_RECORDS,
    )
    send: Callable[[Any], object] = lambda record: None  # noqa: E731
    flush: Callable[[], object] = lambda: None  # noqa: E731
    if forward == "kafka":
        producer = KafkaProducer(
            bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        send = lambda r: producer.send(args.sink, key=r.key, value=r.value)  # noqa: E731
        flush = producer.flush
    elif forward == "http":
        import httpx

        client = httpx.Client(timeout=10)
        headers = {"Content-Type": "application/json"}
        send = lambda r: client.post(args.sink, content=r.value, headers=headers)  # noqa: E731
    seen, first = 0, 0.0
    while seen < args.expect:
        batch = consumer.poll(timeout_ms=100)
        if not batch:
            continue
        first = first or time.time()
        for records in batch.values():
            for r in records:
                send(r)
        flush()
        consumer.commit({tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in batch.items()})
        seen += sum(len(rs) for rs in batch.values())
    done = time.time()
    if forward == "kafka":
        producer.close()
    consumer.close()
    return {"first_at": first, "done_at": done, "messages": seen, **usage()}


def confluent(args: argparse.Namespace) -> dict[str, float]:
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    consumer.subscribe([args.topic])
    seen, first = 0, 0.0
    while seen < args.expect:
        batch = [m for m in consumer.consume(num_messages=POLL_RECORDS, timeout=0.1) if m.error() is None]
        if not batch:
            continue
        first = first or time.time()
        for m in batch:
            producer.produce(args.sink, key=m.key(), value=m.value())
            producer.poll(0)
        producer.flush()
        consumer.commit(asynchronous=False)
        seen += len(batch)
    done = time.time()
    consumer.close()
    return {"first_at": first, "done_at": done, "messages": seen, **usage()}


def quix(args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from quixstreams import Application

    from consumer.pipeline import Pipeline
    from interpretation import SourceRef, default_ruleset

    pipeline = Pipeline(default_ruleset(), 1_048_576)
    state = {"seen": 0, "first": 0.0}

    def processed(topic: str, partition: int, offset: int) -> None:
        state["first"] = state["first"] or time.time()
        state["seen"] += 1
        if state["seen"] >= args.expect:
            app.stop()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=0.1,  # as tdm-alerts' TDM_COMMIT_INTERVAL_MS
        auto_create_topics=False,
        use_changelog_topics=False,
        on_message_processed=processed,
        consumer_extra_config={"max.poll.interval.ms": 300000},
        loglevel="WARNING",
    )
    source = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    alerts = app.topic(args.sink, value_serializer="bytes", key_serializer="bytes")
    dead = app.topic(args.dlq, value_serializer="bytes", key_serializer="bytes")

    def outputs(value: bytes, key: bytes, timestamp: int, headers: object) -> list[tuple[str, bytes, bytes]]:
        done = pipeline.process(value, SourceRef(topic=args.topic))
        if done.dead_letter is not None:
            return [("dlq", key, value)]
        return [("alert", a.patient_id.encode(), a.model_dump_json().encode()) for a in done.alerts]

    sdf = app.dataframe(source).apply(outputs, expand=True, metadata=True)
    sdf.filter(lambda o: o[0] == "alert").apply(lambda o: o[2]).to_topic(alerts)
    sdf.filter(lambda o: o[0] == "dlq").apply(lambda o: o[2]).to_topic(dead)
    app.run()
    return {"first_at": state["first"], "done_at": time.time(), "messages": state["seen"], **usage()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "name", choices=["kafka-python", "kafka-python-consume", "confluent", "quix", "bridge"]
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--dlq", default="")
    parser.add_argument("--group", required=True)
    parser.add_argument("--expect", type=int, required=True)
    args = parser.parse_args()
    if args.name == "kafka-python":
        result = kafka_python(args, forward="kafka")
    elif args.name == "kafka-python-consume":
        result = kafka_python(args, forward="none")
    elif args.name == "bridge":
        result = kafka_python(args, forward="http")
    elif args.name == "confluent":
        result = confluent(args)
    else:
        result = quix(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
