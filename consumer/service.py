"""`tdm-alerts run`: lab results in, alerts out.

Records are processed as they are polled and their outputs sent into an open batch, committed
with the consumed offsets or aborted and rewound (`consumer/loop/`). Which stage reads which
topic is decided here, once (`consumer/stages/topology.py`); the lifecycle is `lifecycle.py`'s.
"""

from __future__ import annotations

import re

from consumer.access import check_topic_access, dead_letter_limit, service_needs
from consumer.accounting import Accounting
from consumer.delivery import delivery_for
from consumer.lifecycle import Built, Lifecycle
from consumer.metrics import Metrics
from consumer.outputs import Outputs
from consumer.pipeline import Pipeline
from consumer.settings import Settings
from consumer.stages.topology import build_topology
from consumer.state.gate import RestoreGate
from consumer.state.manager import PatientStates
from consumer.state.topics import ensure_state_topics


class Service(Lifecycle):
    """Runs the pipeline over the input topics until asked to stop."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__(settings, metrics, delivery_for)
        self.pipeline = pipeline

    def build(self) -> Built:
        """Access checked, internal topics in place, the stages built for this mode."""
        s = self.settings
        self.backoff(lambda: check_topic_access(self.client, service_needs(s)), "admin")
        limit = self.backoff(lambda: dead_letter_limit(s, self.client), "admin")
        states = gate = None
        if s.patient_state:
            state_topics = self.backoff(lambda: ensure_state_topics(s, self.client), "admin")
            states = PatientStates(s, state_topics, self.pipeline.ruleset, self.delivery, self.metrics)
            states.on_restore_chunk = self.health.restored_chunk
            gate = RestoreGate(states, self.wait)
        internal = states.topics.patients if states is not None and states.topics.repartition else None
        outputs = Outputs(
            self.delivery, s.alert_topic, s.dlq_topic, dead_letter_limit=limit, internal_topic=internal
        )
        accounting = Accounting(self.metrics, outputs.correlation_id, internal, debug=s.log_level == "DEBUG")
        topology = build_topology(
            s, self.pipeline, self.delivery, outputs=outputs, accounting=accounting, states=states, gate=gate
        )
        topics, pattern = list(s.input_topics), s.input_pattern
        if states is None:
            return Built(topology, topics, pattern)
        extra = [states.topics.patients] if states.topics.repartition else []
        extra += [s.context_topic] if s.context_topic else []
        extra += [s.ack_topic] if s.ack_topic else []
        if pattern and extra:
            pattern = "|".join([f"(?:{pattern})", *(re.escape(t) for t in extra)])
        return Built(topology, topics + extra, pattern, states.refresh_gauges)
