"""The service's lifecycle: connect, check access, build the topology, run the loop, stop.

Records are processed as they are polled and their outputs sent into an open batch, committed
with the consumed offsets or aborted and rewound (`consumer/loop/`). Which stage reads which
topic is decided here, once (`consumer/stages/topology.py`).
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from consumer.access import check_topic_access, dead_letter_limit
from consumer.accounting import Accounting
from consumer.clients import client_for
from consumer.clients.seam import ClientError, GroupConsumer
from consumer.connecting import StopRequested, check_tls_material, fatal_message, with_backoff
from consumer.delivery import Delivery, delivery_for, is_fatal
from consumer.end_offsets import EndOffsets
from consumer.fatal import FatalError
from consumer.health import Health
from consumer.loop.batch import Batches
from consumer.loop.lag import LagMeter
from consumer.loop.loop import Loop
from consumer.loop.pacing import Pacing
from consumer.loop.rebalance import RebalanceListener
from consumer.metrics import Metrics
from consumer.outputs import Outputs
from consumer.pipeline import Pipeline, Processed
from consumer.settings import Settings
from consumer.stages.topology import TdmTopology, build_topology
from consumer.state.gate import RestoreGate
from consumer.state.manager import PatientStates
from consumer.state.topics import ensure_state_topics

log = structlog.get_logger("tdm_alerts.service")
T = TypeVar("T")

# Ready only if the loop turned this recently: a loop stuck on a frozen broker (a commit's
# flush waits up to 30 s) reported ready for 33 s (issue 28). A turn takes milliseconds, a commit
# well under a second, and a long restore beats at every chunk.
READY_TURN_S = 10.0
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (Python's default is 700)


class Service:
    """Runs the pipeline over the input topics until asked to stop."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: Metrics) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.client = client_for(settings)
        self.delivery: Delivery[Any] = delivery_for(settings, self.client)
        self.health = Health(settings.liveness_timeout_s, settings.stall_timeout_s)
        self._stop = threading.Event()
        self._consuming = False
        self._consumer: GroupConsumer | None = None
        self._batches: Batches[Processed] | None = None
        self._end_offsets = EndOffsets(self.client)
        metrics.ready.set_function(lambda: float(self.is_ready()))

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, then return from `run` (SIGTERM, SIGINT)."""
        self._stop.set()

    def is_ready(self) -> bool:
        """Consuming as a member of the group, and the loop turned recently (a hung loop is not ready).

        An extra instance the group gave no partitions is ready: it is healthy and takes over
        partitions as soon as another member leaves, so it must not page as not ready.
        """
        fresh = self.health.since_beat() < min(READY_TURN_S, self.settings.liveness_timeout_s)
        consumer = self._consumer
        return (
            self._consuming
            and not self._stop.is_set()
            and fresh
            and consumer is not None
            and consumer.in_group()
        )

    def run(self) -> None:
        check_tls_material(self.settings)
        try:
            consumer = self._backoff(self.client.group_consumer, "consumer")
            self._backoff(self.delivery.connect, "producer")
        except StopRequested:
            log.info("stopped before the brokers answered")
            return
        except ClientError as err:
            if is_fatal(err):
                raise FatalError(fatal_message(err, self.settings)) from err
            raise
        self._consumer = consumer
        topology: TdmTopology | None = None
        try:
            topology = self._topology()
            loop = self._loop(consumer, topology)
            self._consuming = True
            self.health.started()
            _settle_garbage_collector()
            loop.run()
        except StopRequested:
            log.info("stopped before the brokers answered")
        finally:
            self._consuming = False
            self.health.stopped()
            if self._batches is not None and self._batches.open is not None:
                self._batches.abort("stopping")
            if topology is not None:
                topology.close()
            self.delivery.close()
            self._end_offsets.close()
            consumer.close()
            log.info("stopped")

    def _backoff(self, make: Callable[[], T], what: str) -> T:
        return with_backoff(make, what, self.settings.retry_backoff_max_s, self._stop.is_set)

    def _loop(self, consumer: GroupConsumer, topology: TdmTopology) -> Loop:
        """The loop's parts around the topology, and the subscription that starts the group's work."""
        pacing = Pacing.from_settings(self.settings)
        batches = self._batches = Batches(
            self.settings,
            self.delivery,
            topology,
            metrics=self.metrics,
            health=self.health,
            committed=pacing.committed,
            wait=self._stop.wait,
        )
        states = topology.states
        lag = LagMeter(
            self._end_offsets,
            self.metrics,
            self.health,
            held=topology.holds,
            every_refresh=states.refresh_gauges if states is not None else lambda: None,
        )
        self._subscribe(consumer, topology, RebalanceListener(lambda: self._consumer, batches, topology, lag))
        return Loop(consumer, topology, batches, pacing=pacing, lag=lag, health=self.health, stop=self._stop)

    def _topology(self) -> TdmTopology:
        """Access checked, internal topics in place, the stages built for this mode."""
        s = self.settings
        self._backoff(lambda: check_topic_access(s, self.client), "admin")
        limit = self._backoff(lambda: dead_letter_limit(s, self.client), "admin")
        states = gate = None
        if s.patient_state:
            state_topics = self._backoff(lambda: ensure_state_topics(s, self.client), "admin")
            states = PatientStates(s, state_topics, self.pipeline.ruleset, self.delivery, self.metrics)
            states.on_restore_chunk = self.health.restored_chunk
            gate = RestoreGate(states, self._stop.wait)
        internal = states.topics.patients if states is not None and states.topics.repartition else None
        outputs = Outputs(
            self.delivery, s.alert_topic, s.dlq_topic, dead_letter_limit=limit, internal_topic=internal
        )
        accounting = Accounting(self.metrics, outputs.correlation_id, internal, debug=s.log_level == "DEBUG")
        return build_topology(
            s, self.pipeline, self.delivery, outputs=outputs, accounting=accounting, states=states, gate=gate
        )

    def _subscribe(self, consumer: GroupConsumer, topology: TdmTopology, listener: RebalanceListener) -> None:
        s = self.settings
        topics, pattern = list(s.input_topics), s.input_pattern
        if (states := topology.states) is not None:
            extra = [states.topics.patients] if states.topics.repartition else []
            extra += [s.context_topic] if s.context_topic else []
            topics += extra
            if pattern and extra:
                pattern = "|".join([f"(?:{pattern})", *(re.escape(t) for t in extra)])
        consumer.subscribe(topics, pattern, listener)
        log.info(
            "consuming",
            client=self.client.name,
            topics=s.input_topics if not s.input_pattern else None,
            pattern=s.input_pattern,
            group=s.group_id,
            delivery=s.delivery,
        )


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector's full passes off the alert path.

    A full pass walks every tracked object: over the ~60,000 the service holds once set up (the
    libraries, the rule set, the clients) it took 44-60 ms when traced, and unfrozen such passes
    recur while it runs, each a pause on the alert path. What exists once the service is set
    up lives as long as the process, so it is frozen out of every pass (`gc.freeze`), and young
    passes run less often: the loop makes few reference cycles (a record's objects are freed by
    reference counting).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
