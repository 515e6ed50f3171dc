"""`tdm-alerts notify` to an interface engine over MLLP (the `hl7v2` receiver), on the real broker,
against a real TCP listener that enforces the framing: an incident's trigger and resolve arrive
as strictly valid ORU^R01 messages in order, a listener that closes without answering is asked
again, and a refusal (AE) is dead-lettered with the engine's words."""

from __future__ import annotations

import json

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from tests.conftest import read_topic
from tests.integration.test_exactly_once import SERVICE, wait_until
from tests.integration.test_notify import _notifier, _notify_settings, _send
from tests.mllp import ack, listener

pytestmark = pytest.mark.integration


def test_an_incident_reaches_the_interface_engine_in_order_and_a_refusal_is_dead_lettered(
    kafka_bootstrap, topics, service_env, start_service, tmp_path
):
    answers = iter([None])  # the first connection gets no answer: the notifier asks again
    accept, refuse = ack("AA"), ack("AE", "order not found")

    def engine(message: bytes) -> bytes | None:
        if (scripted := next(answers, "done")) != "done":
            return scripted
        # The resolve (a correction, OBR-25 C) is refused; the trigger accepted.
        return refuse(message) if b"Alert resolved" in message else accept(message)

    with listener(engine) as (port, received):
        hl7 = _notify_settings(
            kafka_bootstrap, topics, TDM_NOTIFY_HL7_HOST="127.0.0.1", TDM_NOTIFY_HL7_PORT=str(port)
        )
        service = start_service(**SERVICE)
        notifier = _notifier(service_env, tmp_path, "notifier", **hl7)
        _send(kafka_bootstrap, topics["input"], "1.2")
        wait_until(lambda: len(received) >= 2, timeout_s=90)  # unanswered once, then accepted
        _send(kafka_bootstrap, topics["input"], "5.0", status="corrected")
        [dead] = read_topic(kafka_bootstrap, hl7["TDM_NOTIFY_DLQ_TOPIC"], expected=1, timeout_s=90)
        assert notifier.alive(), notifier.log_text()[-2000:]
        assert notifier.stop() == 0 and service.stop() == 0
    messages = [m.decode() for m in received]
    assert len(messages) == 3
    parsed = [parse_message(m, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True) for m in messages]
    assert all(p.validate() for p in parsed)
    controls = [p.msh.msh_10.value for p in parsed]
    assert controls[0] == controls[1] != controls[2]  # the retry is the same message id
    statuses = [p.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.value for p in parsed]
    assert statuses == ["F", "F", "C"]
    patients = {p.oru_r01_patient_result.oru_r01_patient.pid.pid_3.cx_1.value for p in parsed}
    assert patients == {"PT-PAGE"}  # the EHR matches the patient by PID-3
    headers = dict(dead.headers)
    assert headers["tdm.dlq.reason"] == b"undelivered"
    assert b"hl7v2: MSA-1 AE: order not found" in headers["tdm.dlq.error"]
    assert json.loads(dead.value)["action"] == "resolve"
    assert notifier.log_text().count('"delivery failed; retrying"') >= 1
