"""`tdm-alerts run | notify | status | forget`: the long-running processes, served with metrics,
probes and a watchdog, and the operator verbs that talk to their consumer group."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import structlog

from consumer.cli.arguments import Commands, non_empty
from consumer.cli.rules import load_ruleset
from consumer.clients import client_for
from consumer.connecting import connect_once
from consumer.fatal import FatalError
from consumer.group_status import group_status
from consumer.health import Watchdog
from consumer.lifecycle import Lifecycle
from consumer.logs import configure_logging
from consumer.metrics import Metrics, MetricsServer
from consumer.notify.metrics import NotifyMetrics
from consumer.notify.service import Notifier
from consumer.patient_topic import forget_record
from consumer.pipeline import Pipeline
from consumer.service import Service
from consumer.settings import Settings
from consumer.state.topics import state_topics
from consumer.stop_signals import on_stop_signal

VERSION = "0.1.0"
log = structlog.get_logger("tdm_alerts")


def cmd_run(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    ruleset = load_ruleset(settings.ruleset)
    metrics = Metrics()
    metrics.ruleset.info({"version": ruleset.version})
    pipeline = Pipeline(
        ruleset,
        settings.max_message_bytes,
        topic_formats=settings.topic_formats,
        lab_covariates=settings.lab_covariates and settings.patient_state,
    )
    return _serve(settings, Service(settings, pipeline, metrics), metrics, ruleset=ruleset.version)


def cmd_notify(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = NotifyMetrics()
    try:
        notifier = Notifier(settings, metrics)
    except ValueError as err:  # a receiver or route that cannot work
        print(f"tdm-alerts: invalid configuration: {err}", file=sys.stderr)
        return 2
    return _serve(settings, notifier, metrics, receivers=notifier.receivers.names())


def _serve(settings: Settings, process: Lifecycle, metrics: Metrics, **about: object) -> int:
    """Run `process` with its metrics and probes served, a watchdog, and SIGTERM/SIGINT handled."""
    metrics.build.info({"version": VERSION})
    server = MetricsServer(
        settings.metrics_host,
        settings.metrics_port,
        metrics.registry,
        process.is_ready,
        alive=process.health.alive,
        detail=process.readiness_detail,
    )
    server.start()

    def stalled(reason: str) -> None:
        # The loop is wedged (kafka-python K3): nothing in this process can unwedge it, so exit
        # for the orchestrator to start a fresh one. The open batch is aborted (or, at least
        # once, never committed) and its records processed again.
        log.error("stalled; exiting so that a fresh instance takes over", reason=reason)
        logging.shutdown()
        os._exit(1)

    watchdog = Watchdog(process.health, stalled).start()
    log.info(
        "starting",
        version=VERSION,
        metrics_port=server.port,
        bootstrap=settings.bootstrap_servers,
        kafka_client=settings.kafka_client,
        group_protocol=settings.group_protocol,
        **about,
    )

    def stop(name: str) -> None:
        log.info("stop requested", signal=name)
        process.request_stop()

    on_stop_signal(stop)
    try:
        process.run()
    except FatalError as err:
        log.error("fatal", error=str(err))
        return 1
    finally:
        watchdog.stop()
        server.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    print(group_status(settings).render())
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Ask the instance that owns the patient to delete its state (and tombstone the changelog)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, operator=True)
    topics = state_topics(settings)
    # Keyed by patient like their results, so it reaches the partition (and instance) holding them.
    producer = connect_once(client_for(settings).producer, settings)
    try:
        value, headers = forget_record()
        sent = producer.send(topics.patients, args.patient_id.encode(), value, headers)
        producer.flush(30)
        sent.offset(30)
    finally:
        producer.close(10)
    print(f"forget request sent to {topics.patients}; the owning instance removes the state when it reads it")
    return 0


def settings_help() -> str:
    """Every TDM_* setting with its default, for `run --help` (the README says what each does)."""
    lines = ["settings (environment variables; the README's Settings table explains each):"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=False)
        if info.default_factory:
            shown = "(this host's name)"
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, list):
            shown = ",".join(str(v) for v in default)
        else:
            shown = "(unset)" if default in (None, {}) else str(default)
        lines.append(f"  TDM_{name.upper():<32} {shown}")
    return "\n".join(lines)


def add_service_commands(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        help="consume lab results and publish alerts (settings: TDM_* env)",
        description="Consume lab results from Kafka and publish infliximab alerts until SIGTERM.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(handler=cmd_run)
    notify = commands.add_parser(
        "notify",
        help="deliver alert events to Alertmanager, PagerDuty and signed webhooks (settings: TDM_* env)",
        description="Consume the alert topic in its own group and deliver each event to the receivers "
        "configured by TDM_NOTIFY_*, at least once, until SIGTERM (README 'Paging').",
    )
    notify.set_defaults(handler=cmd_notify)
    status = commands.add_parser(
        "status",
        help="the consumer group: members, assignment, committed offsets and lag (settings: TDM_* env)",
    )
    status.set_defaults(handler=cmd_status)
    forget = commands.add_parser(
        "forget",
        help="remove a patient's remembered state (data-protection request; settings: TDM_* env)",
    )
    forget.add_argument("patient_id", type=non_empty, help="the patient id as the lab feed sends it")
    forget.set_defaults(handler=cmd_forget)
