from interpretation import Category, Severity, SourceRef, alert_for, interpret_all
from tests.unit.helpers import RULES, ati, level, read

HERE = SourceRef(topic="lab.results", partition=0, offset=7)


def test_no_alert_for_a_therapeutic_level():
    assert alert_for(read(level("5")), HERE) is None


def test_alert_carries_what_the_recipient_needs():
    alert = alert_for(read(level("2.0")), HERE)
    assert alert is not None
    assert (alert.category, alert.severity) == (Category.SUBTHERAPEUTIC_LEVEL, Severity.HIGH)
    assert (alert.patient_id, alert.accession, alert.source) == ("PT-1", "ACC-1", HERE)
    assert alert.target.low == 3 and alert.target.high == 7
    assert "PT-1" not in alert.summary and "ACC-1" not in alert.summary
    assert alert.citations


def test_immunogenic_failure_is_critical():
    alerts = [alert_for(i, HERE) for i in interpret_all([level("1.0"), ati("180")], RULES)]
    assert {(a.category, a.severity) for a in alerts} == {
        (Category.SUBTHERAPEUTIC_LEVEL, Severity.CRITICAL),
        (Category.ANTI_DRUG_ANTIBODIES, Severity.CRITICAL),
    }


def test_event_id_is_stable_across_deliveries_and_the_incident_key_across_corrections():
    first = alert_for(read(level("2.0")), HERE)
    redelivered = alert_for(read(level("2.0")), SourceRef(topic="lab.results", partition=2, offset=99))
    corrected = alert_for(read(level("1.5", status="corrected")), HERE)
    assert first is not None and redelivered is not None and corrected is not None
    assert first.event_id == redelivered.event_id
    # A correction is news (a new event) about the same incident (the same paging incident).
    assert corrected.event_id != first.event_id
    assert corrected.incident_key == first.incident_key
    assert first.alert_schema == "tdm-alerts/alert@3" and first.action == "trigger"
