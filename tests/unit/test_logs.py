from structlog.testing import capture_logs

from consumer.logs import REDACTED, redact_phi


def test_phi_fields_are_redacted_whatever_their_case():
    event = redact_phi(None, "info", {"event": "x", "patient_id": "MRN1", "Accession": "A1", "offset": 3})
    assert event == {"event": "x", "patient_id": REDACTED, "Accession": REDACTED, "offset": 3}


def test_capture_logs_sees_structured_events():
    import structlog

    with capture_logs() as logs:
        structlog.get_logger().info("alert published", dedup_key="abc")
    assert logs == [{"event": "alert published", "dedup_key": "abc", "log_level": "info"}]
