"""Each Kafka client behind the seam against the real broker: what the layers above rely on."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from kafka.partitioner import murmur2

from consumer.clients import client_for
from consumer.clients.seam import Partition
from consumer.settings import Settings
from tests.conftest import KAFKA_CLIENT

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka_bootstrap, monkeypatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("TDM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TDM_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("TDM_KAFKA_CLIENT", KAFKA_CLIENT)
    monkeypatch.setenv("TDM_GROUP_ID", f"g-clients-{uuid.uuid4().hex[:6]}")
    return Settings()


@pytest.mark.input_partitions(6)
def test_a_key_lands_where_the_java_client_puts_it(settings, topics):
    """A patient's results, their forget command (sent by the CLI) and an upstream keyed producer
    must reach one partition: murmur2, as the Java client and kafka-python hash keys."""
    producer = client_for(settings).producer()
    keys = [f"PT-{n:04d}".encode() for n in range(60)]
    sent = [producer.send(topics["input"], key, b"{}", []) for key in keys]
    producer.flush(30)
    producer.close(10)
    reader = client_for(settings).reader("test")
    try:
        partitions = [Partition(topics["input"], p) for p in range(6)]
        reader.assign(partitions)
        for partition in partitions:
            reader.seek_to_beginning(partition)
        landed: dict[bytes, int] = {}
        for _ in range(100):
            for records in reader.poll(200, 500).values():
                landed.update({r.key: r.partition for r in records if r.key is not None})
            if len(landed) == len(keys):
                break
    finally:
        reader.close()
    assert all(s.offset(0) >= 0 for s in sent)
    # kafka-python's DefaultPartitioner: murmur2, sign bit cleared, modulo the partitions.
    assert landed == {key: (murmur2(key) & 0x7FFFFFFF) % 6 for key in keys}


def test_end_offsets_are_the_last_stable_offset_and_positions_pass_commit_markers(settings, topics):
    """The restore and the lag read end offsets under read_committed: an open transaction's
    records are not counted, and a reader's position reaches the end past the markers."""
    client = client_for(settings)
    transactional = client.transactional_producer(f"t-{uuid.uuid4().hex[:6]}")
    partition = Partition(topics["alerts"], 0)
    for _ in range(3):
        transactional.begin()
        transactional.send(partition.topic, b"k", b"v", [], partition=0)
        transactional.flush(30)
        transactional.commit()
    transactional.begin()
    transactional.send(partition.topic, b"k", b"open", [], partition=0)
    transactional.flush(30)
    reader = client.reader("test")
    try:
        assert reader.end_offsets([partition]) == {partition: 6}  # 3 records, 3 markers; not the open one
        reader.assign([partition])
        reader.seek_to_beginning(partition)
        read = []
        for _ in range(50):
            read += [r.value for r in reader.poll(200, 100).get(partition, [])]
            if reader.position(partition) >= 6:
                break
        assert read == [b"v", b"v", b"v"] and reader.position(partition) == 6
        transactional.commit()
        # The broker writes the commit marker after EndTxn answers; the LSO moves once it has.
        deadline = time.monotonic() + 10
        while reader.end_offsets([partition]) != {partition: 8} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.end_offsets([partition]) == {partition: 8}
    finally:
        reader.close()
        transactional.close(10)
