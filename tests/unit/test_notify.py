"""The notifier's pure parts: each receiver's request, the routes, and the retry policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from consumer.notify.delivering import Receivers
from consumer.notify.receivers import (
    PAGERDUTY_SUMMARY_MAX,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Alertmanager,
    PagerDuty,
    Webhook,
    opened,
    sign,
)
from consumer.notify.sending import Sender, Undelivered
from consumer.pipeline import Pipeline
from consumer.settings import Settings
from interpretation import SourceRef
from interpretation.alerts import Action, Alert, Severity
from tests.unit.helpers import RULES

pytestmark = pytest.mark.usefixtures("clean_env")
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def low_level_alert(value: str = "1.1") -> Alert:
    message = {
        "patient_id": "PT-77",
        "accession": "ACC-1",
        "results": [{"code": "39803-2", "value": value, "unit": "ug/mL"}],
    }
    done = Pipeline(RULES, 4096).process(
        json.dumps(message).encode(), SourceRef(topic="lab.results", partition=0, offset=1)
    )
    [alert] = done.alerts
    return alert


def test_alertmanager_gets_one_alert_per_incident_active_until_a_few_resends_ahead():
    event = low_level_alert()
    am = Alertmanager("http://am:9093/", resend_s=60, generator_url="http://tdm.example/incidents")
    incident = opened(event, None, NOW)
    request = am.post([incident], [], NOW)
    assert request.url == "http://am:9093/api/v2/alerts"
    [alert] = json.loads(request.body)
    assert alert["labels"] == {
        "alertname": "InfliximabTDM",
        "incident": event.incident_key,
        "severity": "critical" if event.severity is Severity.CRITICAL else event.severity.value,
        "category": event.category.value,
        "service": "tdm-alerts",
    }
    assert alert["annotations"]["summary"] == event.summary
    assert alert["startsAt"] == "2026-12-01T08:00:00Z"
    assert alert["endsAt"] == "2026-12-01T08:04:00Z"  # four re-sends ahead: missed re-sends do not resolve it
    assert alert["generatorURL"] == "http://tdm.example/incidents"
    assert event.patient_id not in request.body.decode()  # labels and annotations only


def test_an_update_keeps_the_incidents_start_and_a_resolve_ends_it_now():
    first = opened(low_level_alert(), None, NOW)
    later = NOW + timedelta(hours=2)
    again = opened(low_level_alert("0.9"), first, later)
    assert again.starts_at == NOW and again.labels == first.labels
    [ended] = json.loads(Alertmanager("http://am:9093", 60).post([], [again], later).body)
    assert ended["endsAt"] == "2026-12-01T10:00:00Z"


def test_pagerduty_events_follow_the_events_api_v2():
    event = low_level_alert()
    pd = PagerDuty("https://events.pagerduty.com/v2/enqueue", "R0UTINGKEY0123456789012345678901")
    body = json.loads(pd.event(event).body)
    assert body["routing_key"] == "R0UTINGKEY0123456789012345678901"
    assert body["event_action"] == "trigger" and body["dedup_key"] == event.incident_key
    payload = body["payload"]
    assert payload["source"] == "tdm-alerts" and payload["severity"] in {
        "critical",
        "error",
        "warning",
        "info",
    }
    assert 0 < len(payload["summary"]) <= PAGERDUTY_SUMMARY_MAX
    assert event.patient_id not in json.dumps(body)  # PagerDuty is a third party
    resolved = json.loads(pd.event(event.model_copy(update={"action": Action.RESOLVE})).body)
    assert resolved == {
        "routing_key": body["routing_key"],
        "event_action": "resolve",
        "dedup_key": event.incident_key,
    }


def test_a_webhook_request_is_signed_and_a_tampered_body_does_not_verify():
    event = low_level_alert()
    body = event.model_dump_json().encode()
    request = Webhook("https://hooks.example/tdm", b"shared-secret").event(body, event, NOW)
    headers = request.headers
    assert headers["Idempotency-Key"] == event.event_id and request.body == body
    timestamp = headers[TIMESTAMP_HEADER]
    assert headers[SIGNATURE_HEADER] == "v1=" + sign(b"shared-secret", timestamp, body)
    assert headers[SIGNATURE_HEADER] != "v1=" + sign(b"shared-secret", timestamp, body + b" ")
    assert headers[SIGNATURE_HEADER] != "v1=" + sign(b"shared-secret", str(int(timestamp) - 600), body)


def test_routes_send_each_event_to_its_receivers_and_name_a_receiver_not_configured(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("TDM_NOTIFY_ALERTMANAGER_URL", "http://am:9093")
    monkeypatch.setenv("TDM_NOTIFY_WEBHOOK_URL", "https://hooks.example/tdm")
    monkeypatch.setenv("TDM_NOTIFY_WEBHOOK_SECRET_FILE", str(secret))
    monkeypatch.setenv("TDM_NOTIFY_ROUTES", '{"alertmanager": {"severities": ["critical", "high"]}}')
    receivers = Receivers.from_settings(Settings())
    event = low_level_alert()
    assert receivers.for_event(event) == ["alertmanager", "webhook"]
    review = event.model_copy(update={"severity": Severity.LOW})
    assert receivers.for_event(review) == ["webhook"]  # review incidents: tickets, not the pager
    monkeypatch.setenv("TDM_NOTIFY_ROUTES", '{"pagerduty": {}}')
    with pytest.raises(ValueError, match="pagerduty, which is not configured"):
        Receivers.from_settings(Settings())
    monkeypatch.delenv("TDM_NOTIFY_ROUTES")
    monkeypatch.delenv("TDM_NOTIFY_WEBHOOK_SECRET_FILE")
    with pytest.raises(ValueError, match="TDM_NOTIFY_WEBHOOK_SECRET_FILE"):
        Receivers.from_settings(Settings())


def _sender(answers: list[httpx.Response], waits: list[float], budget_s: float = 60.0) -> tuple[Sender, list]:
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    client = httpx.Client(transport=httpx.MockTransport(answer))
    return Sender(client, budget_s, sleep=waits.append), asked


def test_transient_failures_are_retried_honouring_retry_after():
    from consumer.notify.receivers import HttpRequest

    waits: list[float] = []
    answers = [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(202)]
    sender, asked = _sender(answers, waits)
    assert sender.send(HttpRequest("webhook", "https://hooks.example/tdm", b"{}")) == 202
    assert len(asked) == 3
    assert 0 < waits[0] <= 1.5 and waits[1] == 7.0  # jittered back-off, then the receiver's own wait


def test_a_refusal_is_not_retried_and_a_receiver_down_past_the_budget_is_undelivered():
    from consumer.notify.receivers import HttpRequest

    request = HttpRequest("pagerduty", "https://events.pagerduty.com/v2/enqueue", b"{}")
    waits: list[float] = []
    sender, asked = _sender([httpx.Response(400, text="Event object is invalid")], waits)
    with pytest.raises(Undelivered) as refused:
        sender.send(request)
    assert refused.value.permanent and refused.value.status == 400 and len(asked) == 1 and not waits
    assert "Event object is invalid" in refused.value.reason

    sender, asked = _sender([httpx.Response(500)], [], budget_s=0.0)
    with pytest.raises(Undelivered) as down:
        sender.send(request)
    assert not down.value.permanent and down.value.status == 500
