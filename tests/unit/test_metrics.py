"""The per-message histograms, observed a batch at a time, read as prometheus_client's do."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from consumer import metrics
from consumer.metrics import BatchHistogram


def _series(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("tdm_x_seconds_"))
    return {name: float(value) for name, value in pairs if "_created" not in name}


@pytest.mark.parametrize("buckets", [metrics._MESSAGE_BUCKETS, metrics._END_TO_END_BUCKETS])
def test_a_batch_histogram_is_exposed_as_one_observe_per_value(buckets):
    values = [0.00005, 0.00007, 0.0001, 0.0009, 0.001, 0.01, 0.3, 0.5, 2.0, 60.0, 901.0, 0.0]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("tdm_x_seconds", "x", buckets=buckets, registry=theirs)
    for value in values:
        reference.observe(value)
    batched = BatchHistogram("tdm_x_seconds", "x", buckets, ours)
    batched.observe_all(values[:4])
    batched.observe_all(iter(values[4:-1]))
    batched.observe(values[-1])
    expected, found = _series(theirs), _series(ours)
    assert found.keys() == expected.keys()  # same series, same le labels
    for name, value in expected.items():
        assert found[name] == pytest.approx(value), name  # the sum only differs in rounding


def test_le_is_inclusive():
    registry = CollectorRegistry()
    BatchHistogram("tdm_x_seconds", "x", (0.0001, 0.001), registry).observe_all([0.0001, 0.0001, 0.002])
    assert _series(registry)['tdm_x_seconds_bucket{le="0.0001"}'] == 2
    assert _series(registry)['tdm_x_seconds_bucket{le="+Inf"}'] == 3
