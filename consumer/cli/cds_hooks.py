"""`tdm-alerts cds-hooks`: the CDS Hooks service (README "Into the chart"), until SIGTERM."""

from __future__ import annotations

import argparse
import sys
import threading

import structlog

from consumer.cds_auth import TokenCheck
from consumer.cds_hooks import CdsHooksServer, OpenIncidents, follow_alerts
from consumer.cli.arguments import Commands
from consumer.cli.rules import load_ruleset
from consumer.clients import client_for
from consumer.connecting import connect_once
from consumer.logs import configure_logging
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.cds_hooks")


def cmd_cds_hooks(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    auth = None
    if settings.cds_hooks_issuers:
        if settings.cds_hooks_url is None:
            print(
                "tdm-alerts: TDM_CDS_HOOKS_ISSUERS needs TDM_CDS_HOOKS_URL (tokens name it as aud)",
                file=sys.stderr,
            )
            return 2
        auth = TokenCheck(settings.cds_hooks_issuers, settings.cds_hooks_url)
    elif not settings.cds_hooks_allow_unauthenticated:
        print(
            "tdm-alerts: set TDM_CDS_HOOKS_ISSUERS (the EHR's issuer and its JWKS URL) and "
            "TDM_CDS_HOOKS_URL: the cards carry patient data (TDM_CDS_HOOKS_ALLOW_UNAUTHENTICATED=true "
            "only where nothing but the EHR can reach the service)",
            file=sys.stderr,
        )
        return 2
    client = client_for(settings)
    reader = connect_once(lambda: client.reader("cds-hooks"), settings)
    producer = connect_once(client.producer, settings) if settings.ack_topic else None
    incidents = OpenIncidents()
    caught_up, stop = threading.Event(), threading.Event()
    server = CdsHooksServer(
        settings.cds_hooks_host,
        settings.cds_hooks_port,
        incidents=incidents,
        recognition=load_ruleset(None).recognition,
        patient_system=settings.fhir_patient_system,
        ack_topic=settings.ack_topic,
        producer=producer,
        auth=auth,
        ready=caught_up.is_set,
    )
    failed = threading.Event()

    def follow() -> None:
        # Cards from an alert topic no longer followed would go stale while /healthz said ready:
        # the process stops instead, and its orchestrator starts it again.
        try:
            follow_alerts(reader, settings.alert_topic, incidents, caught_up, stop)
        except Exception as err:
            log.error("the alert topic is no longer followed; stopping", error=type(err).__name__)
            failed.set()
            stop.set()

    following = threading.Thread(target=follow, name="cds-alerts", daemon=True)
    following.start()
    log.info("cds hooks service listening", port=server.port, alert_topic=settings.alert_topic)
    try:
        server.serve_until_stopped(stop, "cds-http")
    finally:
        following.join(timeout=5)
        reader.close()
        if producer is not None:
            producer.close(10)
    log.info("cds hooks service stopped")
    return 1 if failed.is_set() else 0


def add_cds_hooks(commands: Commands) -> None:
    cds = commands.add_parser(
        "cds-hooks",
        help="a CDS Hooks service: the patient's open findings as cards (settings: TDM_* env)",
        description="GET /cds-services; POST patient-view and order-sign hooks and their feedback "
        "(README 'Into the chart'); the open incidents are read from TDM_ALERT_TOPIC; until SIGTERM.",
    )
    cds.set_defaults(handler=cmd_cds_hooks)
