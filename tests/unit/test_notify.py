"""The notifier's pure parts: each receiver's request, the routes, and the retry policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry

from consumer.loop.waiting import NotYet
from consumer.notify.delivering import DeliveryStage, Receivers
from consumer.notify.events import AlertEvent, read_event
from consumer.notify.metrics import NotifyMetrics
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
from consumer.notify.sending import (
    BACKOFF_MAX_S,
    WAIT_MAX_S,
    WAIT_MIN_S,
    Failing,
    Sender,
    Undelivered,
    backoff_s,
)
from consumer.pipeline import Pipeline
from consumer.settings import Settings
from interpretation import SourceRef
from interpretation.alerts import Alert
from tests.unit.helpers import RULES

pytestmark = pytest.mark.usefixtures("clean_env")
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def published_alert(value: str = "1.1", patient: str = "PT-77") -> Alert:
    """An alert as `run` publishes it for a low level of `patient`."""
    message = {
        "patient_id": patient,
        "accession": "ACC-1",
        "results": [{"code": "39803-2", "value": value, "unit": "ug/mL"}],
    }
    done = Pipeline(RULES, 4096).process(
        json.dumps(message).encode(), SourceRef(topic="lab.results", partition=0, offset=1)
    )
    [alert] = done.alerts
    return alert


def low_level_alert(value: str = "1.1", patient: str = "PT-77") -> AlertEvent:
    """The same, as the notifier reads it."""
    return read_event(published_alert(value, patient).model_dump_json().encode())


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
        "severity": event.severity,
        "category": event.category,
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
    resolved = json.loads(pd.event(event.model_copy(update={"action": "resolve"})).body)
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
    review = event.model_copy(update={"severity": "low"})
    assert receivers.for_event(review) == ["webhook"]  # review incidents: tickets, not the pager
    monkeypatch.setenv("TDM_NOTIFY_ROUTES", '{"pagerduty": {}}')
    with pytest.raises(ValueError, match="pagerduty, which is not configured"):
        Receivers.from_settings(Settings())
    monkeypatch.delenv("TDM_NOTIFY_ROUTES")
    monkeypatch.delenv("TDM_NOTIFY_WEBHOOK_SECRET_FILE")
    with pytest.raises(ValueError, match="TDM_NOTIFY_WEBHOOK_SECRET_FILE"):
        Receivers.from_settings(Settings())


ALONE = {
    "alertmanager": {"TDM_NOTIFY_ALERTMANAGER_URL": "http://am:9093"},
    "pagerduty": {"TDM_NOTIFY_PAGERDUTY_ROUTING_KEY_FILE": "{key}"},
    "webhook": {
        "TDM_NOTIFY_WEBHOOK_URL": "https://hooks.example/tdm",
        "TDM_NOTIFY_WEBHOOK_SECRET_FILE": "{key}",
    },
    "hl7v2": {"TDM_NOTIFY_HL7_HOST": "engine.example"},
    "fhir": {"TDM_NOTIFY_FHIR_URL": "https://fhir.example/r4"},
}


@pytest.mark.parametrize("name", sorted(ALONE))
def test_each_receiver_configured_alone_is_routed_to_and_delivered_through(name, monkeypatch, tmp_path):
    # A receiver missing from the names was refused as "no receiver" when alone (FHIR was) and
    # never routed to beside others.
    key = tmp_path / "key"
    key.write_text("R" * 32)
    for variable, value in ALONE[name].items():
        monkeypatch.setenv(variable, value.format(key=key))
    receivers = Receivers.from_settings(Settings())
    assert receivers.names() == [name]
    assert receivers.for_event(low_level_alert()) == [name]
    stage = DeliveryStage(
        receivers,
        Sender(httpx.Client(), 60.0),
        None,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        metrics=NotifyMetrics(CollectorRegistry()),
    )
    assert list(stage.notifiers) == [name]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sender(
    answers: list[httpx.Response], budget_s: float = 60.0, clock: Clock | None = None
) -> tuple[Sender, list[httpx.Request]]:
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    client = httpx.Client(transport=httpx.MockTransport(answer))
    return Sender(client, budget_s, clock=clock or Clock()), asked


def test_a_transient_failure_asks_to_wait_backing_off_and_honouring_retry_after():
    from consumer.notify.receivers import HttpRequest

    answers = [
        httpx.Response(503),
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={"Retry-After": "soon"}),  # neither seconds nor a date
        httpx.Response(202),
    ]
    sender, asked = _sender(answers)
    request, failing, waits = HttpRequest("webhook", "https://hooks.example/tdm", b"{}"), Failing(), []
    for _ in range(4):
        with pytest.raises(NotYet) as later:
            sender.send(request, failing)
        waits.append(later.value.after_s)
    assert sender.send(request, failing) == 202
    assert len(asked) == 5 and failing.attempts == 4
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 1.5  # exponential, jittered
    assert waits[2] == 7.0  # the receiver's own wait
    assert 4.0 <= waits[3] <= 4.5  # an unreadable Retry-After: the back-off decides


def test_back_off_is_capped_and_never_outlasts_the_budget():
    assert all(backoff_s(n, None) <= BACKOFF_MAX_S for n in (1, 10, 100, 10_000))
    assert backoff_s(3, 45) == 45  # the receiver's Retry-After is honoured beyond our own cap
    from consumer.notify.receivers import HttpRequest

    clock = Clock()
    sender, _ = _sender([httpx.Response(500)], budget_s=10.0, clock=clock)
    failing = Failing()
    with pytest.raises(NotYet):
        sender.send(HttpRequest("webhook", "https://hooks.example/tdm", b"{}"), failing)
    clock.now += 9.8
    with pytest.raises(NotYet) as later:
        sender.send(HttpRequest("webhook", "https://hooks.example/tdm", b"{}"), failing)
    assert later.value.after_s == pytest.approx(0.2)  # the last try comes as the budget ends


def test_a_retry_after_longer_than_the_budget_left_waits_until_the_budget_ends():
    from consumer.notify.receivers import HttpRequest

    clock = Clock()
    sender, asked = _sender([httpx.Response(429, headers={"Retry-After": "120"})], budget_s=60.0, clock=clock)
    request, failing = HttpRequest("pagerduty", "https://events.pagerduty.com/v2/enqueue", b"{}"), Failing()
    with pytest.raises(NotYet) as later:
        sender.send(request, failing)
    assert later.value.after_s == 60.0
    clock.now += 60.0
    with pytest.raises(Undelivered) as undelivered:
        sender.send(request, failing)
    assert "HTTP 429 for 60 s" in str(undelivered.value) and len(asked) == 2


def test_a_refusal_is_not_retried_and_a_receiver_down_past_the_budget_is_undelivered():
    from consumer.notify.receivers import HttpRequest

    request = HttpRequest("pagerduty", "https://events.pagerduty.com/v2/enqueue", b"{}")
    sender, asked = _sender([httpx.Response(400, text="Event object is invalid")])
    failing = Failing()
    with pytest.raises(Undelivered) as refused:
        sender.send(request, failing)
    assert refused.value.permanent and refused.value.status == 400 and len(asked) == 1
    assert failing.attempts == 0 and "Event object is invalid" in refused.value.reason

    clock = Clock()
    sender, asked = _sender([httpx.Response(500)], budget_s=30.0, clock=clock)
    failing = Failing()
    with pytest.raises(NotYet):
        sender.send(request, failing)
    clock.now += 30.0
    with pytest.raises(Undelivered) as down:
        sender.send(request, failing)
    assert not down.value.permanent and down.value.status == 500 and "for 30 s" in down.value.reason


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("0", WAIT_MIN_S),  # now: asked again at once, 932 times in 15 s
        ("Wed, 21 Oct 2015 07:28:00 GMT", WAIT_MIN_S),  # a date in the past
        ("86400000", WAIT_MAX_S),  # absurd: capped, the budget bounds it further
        ("-5", None),  # not a number of seconds or a date: our own back-off
        ("nan", None),
    ],
)
def test_every_wait_has_a_floor_and_a_cap_whatever_the_receiver_says(retry_after, expected):
    from consumer.notify.receivers import HttpRequest

    clock = Clock()
    sender, _ = _sender([httpx.Response(429, headers={"Retry-After": retry_after})], 10_000.0, clock)
    with pytest.raises(NotYet) as later:
        sender.send(HttpRequest("webhook", "https://hooks.example/tdm", b"{}"), Failing())
    if expected is None:
        assert WAIT_MIN_S <= later.value.after_s <= 1.0
    else:
        assert later.value.after_s == expected


@pytest.mark.parametrize("wait", [-3.0, 0.0, float("nan"), float("inf"), 1e12])
def test_backoff_stays_within_floor_and_cap(wait):
    assert WAIT_MIN_S <= backoff_s(1, wait) <= WAIT_MAX_S
