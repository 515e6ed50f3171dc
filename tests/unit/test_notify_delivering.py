"""The notifier's delivery stage: events read tolerantly, each receiver on its own lane per
incident, retries on the loop's clock, offsets held at the oldest unsettled event, and an event
a receiver already has (or an older one of its incident) not sent to it again."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry

from consumer.clients.seam import Partition, Record
from consumer.dead_letters import ORIGIN_HEADER
from consumer.loop.waiting import NotYet
from consumer.notify import lanes
from consumer.notify.delivering import DeliveryStage, DeliveryTopology, Receivers, place_of
from consumer.notify.events import Unreadable, read_event
from consumer.notify.incidents import IncidentRecord, Incidents
from consumer.notify.metrics import NotifyMetrics
from consumer.notify.receivers import Alertmanager, PagerDuty, Webhook, opened
from consumer.notify.sending import Sender
from consumer.pipeline import Processed
from consumer.settings import Route
from tests.unit.test_notify import NOW, Clock, published_alert

pytestmark = pytest.mark.usefixtures("clean_env")
TP = Partition("lab.alerts", 0)


class DeadLetters:
    def __init__(self) -> None:
        self.sent: list[tuple[Record, str]] = []

    def send(self, record: Record, processed: Processed) -> None:
        assert processed.dead_letter is not None
        self.sent.append((record, processed.dead_letter.detail))


class Writes:
    """The delivery the incidents topic is written through: what it was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None]] = []

    def send(self, topic: str, key: bytes, value: bytes | None, headers: list, partition: int) -> None:
        self.sent.append((key, value))


class Receiving:
    """Receivers answering as scripted per receiver (the last answer repeats), and what they got."""

    def __init__(self, answers: dict[str, list[int]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, dict | list]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        name = "pagerduty" if "pagerduty" in host else "alertmanager" if host == "am" else "webhook"
        self.asked.append((name, json.loads(request.content)))
        script = self.answers[name]
        return httpx.Response(script.pop(0) if len(script) > 1 else script[0])

    def got(self, name: str) -> list[dict | list]:
        return [body for who, body in self.asked if who == name]


def _stage(answers: dict[str, list[int]], budget_s: float = 60.0, routes: dict[str, Route] | None = None):
    clock = Clock()
    receiving = Receiving(answers)
    sender = Sender(httpx.Client(transport=httpx.MockTransport(receiving)), budget_s, clock=clock)
    receivers = Receivers(
        Alertmanager("http://am:9093", 60) if "alertmanager" in answers else None,
        PagerDuty("https://events.pagerduty.com/v2/enqueue", "R" * 32) if "pagerduty" in answers else None,
        Webhook("https://hooks.example/tdm", b"secret") if "webhook" in answers else None,
        routes or {},
    )
    dead = DeadLetters()
    stage = DeliveryStage(
        receivers,
        sender,
        Incidents("lab.alerts.incidents", Writes()),  # type: ignore[arg-type]
        dead_letters=dead,  # type: ignore[arg-type]
        metrics=NotifyMetrics(CollectorRegistry()),
        clock=lambda: NOW,
    )
    return stage, receiving, dead, clock


def _record(offset: int, body: bytes | dict, headers: tuple = ()) -> Record:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Record("lab.alerts", 0, offset, b"k", value, headers, int(NOW.timestamp() * 1000))


def _event(patient: str = "PT-77", value: str = "1.1", **change: object) -> dict:
    return {**json.loads(published_alert(value, patient).model_dump_json()), **change}


def test_a_failing_webhook_never_delays_alertmanager_or_another_incident():
    """Issue 42: a webhook answering 503 for one event held the same partition's Alertmanager
    pages for minutes. Now Alertmanager takes every event at once, the webhook's other incidents
    go through, and only the same incident's later event waits behind the failing one."""
    stage, receiving, dead, clock = _stage({"alertmanager": [200], "webhook": [503, 202]})
    down, later, other = _event("PT-DOWN"), _event("PT-DOWN", "0.9", action="update"), _event("PT-UP")
    later["event_id"] = "e" * 32
    assert stage.process(_record(1, down)).outcome == "waiting"
    assert stage.process(_record(2, later)).outcome == "waiting"  # behind its incident's trigger
    assert stage.process(_record(3, other)).outcome == "delivered"
    assert len(receiving.got("alertmanager")) == 3  # none waited for the webhook
    assert [b["patient_id"] for b in receiving.got("webhook")] == ["PT-DOWN", "PT-UP"]  # type: ignore[index]
    assert stage.waiting_by_receiver() == {"webhook": 2}
    topology = DeliveryTopology(stage, None, stage.metrics, 60)  # type: ignore[arg-type]
    assert topology.offsets({TP: 4}) == {TP: 1}  # the oldest event not settled: read again after a restart

    assert not stage.retry_due()
    clock.now += 1.0
    assert stage.retry_due() and stage.retry()
    # The incident's two events, in order; nothing dead-lettered; the whole partition committable.
    assert [(b["patient_id"], b["action"]) for b in receiving.got("webhook")] == [  # type: ignore[index]
        ("PT-DOWN", "trigger"),
        ("PT-UP", "trigger"),
        ("PT-DOWN", "trigger"),
        ("PT-DOWN", "update"),
    ]
    assert not dead.sent and stage.waiting_by_receiver() == {}
    assert topology.offsets({}) == {TP: 4}


def test_an_event_a_receiver_keeps_failing_is_dead_lettered_at_the_budget_and_the_next_follows():
    stage, receiving, dead, clock = _stage({"pagerduty": [400], "webhook": [500]}, budget_s=20.0)
    first, second = _event(), _event(value="0.8", action="update", event_id="e" * 32)
    assert stage.process(_record(9, first)).outcome == "undelivered"  # PagerDuty refused it for good
    stage.process(_record(10, second))
    for _ in range(40):  # the loop's turns while the webhook is down
        clock.now += 0.5
        stage.retry()
    assert [why for _, why in dead.sent][:3] == [
        "pagerduty: HTTP 400: ",
        "pagerduty: HTTP 400: ",
        "webhook: HTTP 500 for 20 s",
    ]
    assert stage.waiting_by_receiver() == {"webhook": 1}  # the second now has its own budget
    asked = [t for t, _ in receiving.asked]
    assert asked.count("pagerduty") == 2  # a refusal is not asked again
    gaps_ok = asked.count("webhook") <= 1 + 20 / 0.5  # never faster than the floor
    assert gaps_ok


def test_an_event_older_than_what_a_receiver_has_is_not_sent_again_as_news():
    """Issue 42: a dead-lettered trigger replayed after its incident resolved reopened it in
    Alertmanager. The replay carries the trigger's first place; every receiver has later."""
    stage, receiving, _dead, _clock = _stage({"alertmanager": [200], "pagerduty": [202]})
    trigger = _event()
    resolve = {**trigger, "action": "resolve", "event_id": "f" * 32}
    stage.process(_record(5, trigger))
    stage.process(_record(6, resolve))
    assert stage.incidents.count() == 0
    replayed = _record(40, trigger, ((ORIGIN_HEADER, b"lab.alerts/0/5"),))
    assert place_of(replayed) == 5
    assert stage.process(replayed).outcome == "superseded"
    assert len(receiving.asked) == 4 and stage.incidents.count() == 0  # not reopened
    # A new event of the incident (a later place) is news again.
    again = {**trigger, "event_id": "a" * 32}
    assert stage.process(_record(41, again)).outcome == "delivered"
    assert stage.incidents.count() == 1


def test_a_replayed_event_a_receiver_never_took_is_delivered_to_it_alone():
    stage, receiving, _dead, _clock = _stage({"alertmanager": [200], "webhook": [400, 202]})
    trigger = _event()
    assert stage.process(_record(5, trigger)).outcome == "undelivered"  # webhook refused it
    replayed = _record(40, trigger, ((ORIGIN_HEADER, b"lab.alerts/0/5"),))
    assert stage.process(replayed).outcome == "delivered"
    assert [name for name, _ in receiving.asked] == ["alertmanager", "webhook", "webhook"]


def test_a_replay_header_from_another_topic_or_partition_orders_nothing():
    record = _record(40, _event(), ((ORIGIN_HEADER, b"other/0/5"),))
    assert place_of(record) == 40
    assert place_of(_record(40, _event(), ((ORIGIN_HEADER, b"lab.alerts/1/5"),))) == 40
    assert place_of(_record(40, _event(), ((ORIGIN_HEADER, b"garbage"),))) == 40


def test_the_incidents_remember_places_and_read_records_written_before_them():
    from consumer.notify.incidents import _read

    old = opened(read_event(json.dumps(_event()).encode()), None, NOW)
    record = _read(old.model_dump_json().encode())
    assert record.alertmanager == old and record.delivered == {}
    assert IncidentRecord(incident_key="k", delivered={"webhook": 7}).has("webhook", 7)
    assert not IncidentRecord(incident_key="k", delivered={"webhook": 7}).has("webhook", 8)
    assert not IncidentRecord(incident_key="k").has("webhook", 0)


def test_resolved_incidents_are_forgotten_after_the_memory_open_ones_never():
    from datetime import timedelta

    writes = Writes()
    incidents = Incidents("t", writes, timedelta(days=30))  # type: ignore[arg-type]
    event = read_event(json.dumps(_event()).encode())
    incidents.delivered(0, "resolved", "webhook", 3, NOW)
    incidents.shown(0, "open", opened(event, None, NOW), NOW)
    assert incidents.forget_old(NOW + timedelta(days=29)) == 0
    assert incidents.forget_old(NOW + timedelta(days=31)) == 1
    assert incidents.get(0, "resolved") is None and incidents.count() == 1
    assert writes.sent[-1] == (b"resolved", None)  # a tombstone


def test_the_partition_waits_once_the_events_held_in_memory_reach_the_cap(monkeypatch):
    monkeypatch.setattr(lanes, "MAX_WAITING_EVENTS", 2)
    monkeypatch.setattr("consumer.notify.delivering.MAX_WAITING_EVENTS", 2)
    stage, receiving, _dead, _clock = _stage({"webhook": [503]})
    stage.process(_record(1, _event("PT-1")))
    stage.process(_record(2, _event("PT-2")))
    asked = len(receiving.asked)
    with pytest.raises(NotYet) as later:
        stage.process(_record(3, _event("PT-3")))
    assert later.value.after_s >= 0.5 and len(receiving.asked) == asked  # not even tried


# -- events from a newer version ------------------------------------------------------------


def test_an_event_from_a_newer_version_reaches_every_receiver_with_its_fields_kept():
    """Issue 42: the strict model dead-lettered every event with one added field."""
    stage, receiving, dead, _clock = _stage({"alertmanager": [200], "pagerduty": [202], "webhook": [202]})
    newer = _event(
        alert_schema="tdm-alerts/alert@4",
        action="escalate",
        severity="urgent",
        category="unheard_of",
        follow_through={"due": "2026-12-08"},
    )
    assert stage.process(_record(1, newer)).outcome == "delivered"
    assert not dead.sent
    [am] = receiving.got("alertmanager")
    assert am[0]["labels"]["severity"] == "high" and am[0]["labels"]["category"] == "unheard_of"  # type: ignore[index]
    [pd] = receiving.got("pagerduty")
    assert pd["event_action"] == "trigger" and pd["payload"]["severity"] == "error"  # type: ignore[index,call-overload]
    [hook] = receiving.got("webhook")
    assert hook == newer  # passed on as published, the new fields included


def test_a_route_narrowed_by_category_still_takes_a_category_new_to_this_version():
    stage, _receiving, _dead, _clock = _stage(
        {"webhook": [202]}, routes={"webhook": Route(categories=frozenset({"review"}))}
    )
    assert stage.process(_record(1, _event(category="unheard_of"))).outcome == "delivered"
    assert stage.process(_record(2, _event(category="subtherapeutic_level"))).outcome == "unrouted"


@pytest.mark.parametrize(
    "value",
    [b"", b"\xff\xfe", b"[1, 2]", b'{"summary": "x"}', b'{"alert_schema": "other/thing@1"}'],
)
def test_what_cannot_be_an_alert_event_is_unreadable_and_dead_lettered_with_a_log_and_a_count(value):
    from structlog.testing import capture_logs

    with pytest.raises(Unreadable):
        read_event(value)
    stage, receiving, dead, _clock = _stage({"webhook": [202]})
    with capture_logs() as logs:
        assert stage.process(_record(1, value)).outcome == "unreadable"
    assert len(dead.sent) == 1 and not receiving.asked
    assert [entry["event"] for entry in logs] == ["alert event unreadable; dead-lettered"]
    counted = stage.metrics.registry.get_sample_value(
        "tdm_notify_deliveries_total", {"receiver": "none", "outcome": "unreadable"}
    )
    assert counted == 1.0


def test_an_unreadable_event_names_no_value_it_holds():
    with pytest.raises(Unreadable) as err:
        read_event(json.dumps({"patient_id": "PT-SECRET", "summary": 5}).encode())
    assert "PT-SECRET" not in err.value.why and "incident_key" in err.value.why


def _settle(stage: DeliveryStage, clock: Clock, seconds: float) -> None:
    """The loop's turns for `seconds`, retrying what is due."""
    for _ in range(int(seconds / 0.5)):
        clock.now += 0.5
        stage.retry()


def test_an_alertmanager_down_past_the_budget_still_gets_the_incident_through_the_re_sends():
    """Dead-lettered after the budget, the trigger still opens the incident: the re-sends show it
    once Alertmanager is back. A resolve dead-lettered so closes it: re-sends stop, and
    Alertmanager ends the alert at its last post's endsAt."""
    stage, _receiving, dead, clock = _stage({"alertmanager": [503]}, budget_s=20.0)
    trigger = _event()
    assert stage.process(_record(1, trigger)).outcome == "waiting"
    _settle(stage, clock, 21)
    assert [i.incident_key for i in stage.incidents.all()] == [trigger["incident_key"]]
    stage.process(_record(2, {**trigger, "action": "resolve", "event_id": "f" * 32}))
    _settle(stage, clock, 21)
    assert stage.incidents.all() == [] and len(dead.sent) == 2


def test_a_trigger_alertmanager_refuses_opens_no_incident_to_re_send():
    stage, _receiving, dead, _clock = _stage({"alertmanager": [400]})
    assert stage.process(_record(1, _event())).outcome == "undelivered"
    assert stage.incidents.all() == [] and [why for _, why in dead.sent] == ["alertmanager: HTTP 400: "]


def test_events_read_again_after_a_rewind_are_not_queued_twice():
    stage, _receiving, _dead, _clock = _stage({"webhook": [503]})
    first = _record(7, _event())
    stage.process(first)
    stage.lanes.read_to.clear()  # an aborted batch: its records come again
    assert stage.process(first).outcome == "waiting"
    assert stage.waiting_by_receiver() == {"webhook": 1}
    stage.lanes.revoke(TP)
    assert stage.waiting_by_receiver() == {} and not stage.lanes.held


def test_an_escalation_reaches_the_escalation_receiver_by_its_category_and_severity():
    """Issue 39: follow-up events are routed like any other; an escalation (category follow_up,
    critical) goes where TDM_NOTIFY_ROUTES sends follow-ups, and only there."""
    from datetime import timedelta

    from interpretation import LabResult, SourceRef, default_ruleset
    from interpretation.correlation import correlate_result
    from interpretation.follow_ups import fire_due
    from interpretation.patient_state import CorrelationRules

    rules = CorrelationRules(escalate_after_minutes=30)
    level = LabResult(patient_id="PT-E", specimen_id="S-E", code="39803-2", value="1.2", unit="ug/mL")
    done = correlate_result(None, level, SourceRef(), default_ruleset(), rules=rules, read_at=NOW)
    assert done is not None
    _, (escalated,) = fire_due(done.state, default_ruleset(), NOW + timedelta(minutes=31), rules)
    stage, receiving, _dead, _clock = _stage(
        {"alertmanager": [200], "webhook": [202]},
        routes={
            "webhook": Route(categories=frozenset({"follow_up"}), severities=frozenset({"critical"})),
            "alertmanager": Route(categories=frozenset({"subtherapeutic_level", "anti_drug_antibodies"})),
        },
    )
    page = json.loads(done.events[0].model_dump_json())
    assert stage.process(_record(1, page)).outcome == "delivered"
    assert stage.process(_record(2, json.loads(escalated.model_dump_json()))).outcome == "delivered"
    assert [b["category"] for b in receiving.got("webhook")] == ["follow_up"]  # type: ignore[index]
    assert len(receiving.got("alertmanager")) == 1  # the page only
