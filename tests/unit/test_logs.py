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


def test_an_operator_terminal_gets_no_client_library_lines_unless_debugging(capsys):
    import logging

    from consumer.clients.kafka_python_failures import WATCH
    from consumer.logs import configure_logging

    try:
        configure_logging("INFO", "json", operator=True)
        logging.getLogger("kafka.net.manager").error("Connection failed: KafkaConnectionError")
        logging.getLogger("tdm_alerts.librdkafka").warning("FAIL|rdkafka#consumer-1")
        assert capsys.readouterr().err == ""
        # ...while kafka-python's records still reach the handler that reads refusals from them.
        assert logging.getLogger("kafka").isEnabledFor(logging.WARNING)
        assert WATCH in logging.getLogger("kafka").handlers

        configure_logging("DEBUG", "json", operator=True)
        logging.getLogger("kafka.net.manager").error("Connection failed: KafkaConnectionError")
        assert "Connection failed" in capsys.readouterr().err
    finally:  # the handlers above write to this test's captured stderr, closed after it
        import structlog

        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
