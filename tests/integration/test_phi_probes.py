"""PHI probes: identifiers planted where a status, version, resource type, unit, value, JSON key
or correlation id belongs, in all three formats, through `run` at DEBUG and through `interpret`.

Dead letters keep the original bytes (that is their purpose), so the scan covers every log
line, every header of every record the service wrote, and every alert, but not dead-letter
bodies. None may hold a planted identifier.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, produce, read_topic

pytestmark = pytest.mark.integration

NAME, MRN, BIRTH = "Quixotina Plantedname", "PLANTMRN7730419", "1931-07-04"
PLANTED = re.compile(r"Quixotina|Plantedname|PLANTMRN|7730419|1931-07-04", re.I)


def _hl7(msh12: str = "2.5.1", obx11: str = "F", unit: str = "U/mL", value: str = "80") -> bytes:
    segments = [
        f"MSH|^~\\&|LIS|HOSP|TDM|HOSP|20261102083000||ORU^R01^ORU_R01|M1|P|{msh12}",
        "PID|1||PT-PROBE-1^^^HOSP^MR",
        "OBR|1|PL-1|ACC-PROBE-1|INXAB^Infliximab Ab^L|||20261102080500",
        f"OBX|1|NM|INXAB^Infliximab Ab^L||{value}|{unit}|<50|H|||{obx11}",
    ]
    return "\r".join(segments).encode()


def _canonical(result: dict[str, object], **extra: object) -> bytes:
    return json.dumps(
        {"patient_id": "PT-PROBE-2", "accession": "ACC-PROBE-2", "results": [result], **extra}
    ).encode()


def _fhir(**fields: object) -> bytes:
    observation: dict[str, object] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "39803-2"}]},
        "subject": {"identifier": {"value": "PT-PROBE-3"}},
        "valueQuantity": {"value": 1.5, "unit": "ug/mL"},
    }
    observation.update(fields)
    return json.dumps(observation).encode()


PROBES: list[bytes] = [
    _canonical({"code": "39803-2", "value": "2", "unit": "ug/mL", "status": NAME}),  # status
    _canonical({"code": "39803-2", "value": "2", "unit": "ug/mL"}, context={MRN: 1}),  # JSON key
    _canonical({"code": "39803-2", "value": "2", "unit": "ug/mL"}, context={"phase": BIRTH}),
    _canonical({"code": "INXAB", "value": "80", "unit": NAME, "abnormal_flags": ["H"]}),  # unit, alerts
    _canonical({"code": "39803-2", "value": NAME, "unit": "ug/mL"}),  # value
    _canonical({"code": "INXAB", "value": f"{NAME} {BIRTH}", "unit": "U/mL"}),
    _hl7(msh12=MRN),  # MSH-12
    _hl7(obx11=NAME[:9]),  # OBX-11
    _hl7(unit=NAME),  # OBX-6 on an alerting antibody result
    _hl7(value=MRN),
    _fhir(resourceType=NAME),  # resourceType
    _fhir(status=MRN),  # status
    _fhir(valueQuantity={"value": 1.5, "unit": NAME}),  # unit of a level
    _fhir(**{BIRTH: NAME}),  # a JSON key
    _fhir(valueQuantity={"value": MRN, "unit": "ug/mL"}),  # a value of the wrong type
]
CORRELATION_PROBES = [f"{NAME}-{BIRTH}", MRN, "7730419"]


def test_planted_identifiers_never_reach_logs_headers_or_alerts(kafka_bootstrap, topics, start_service):
    keys = [f"probe-{i}".encode() for i in range(len(PROBES))]
    produce(kafka_bootstrap, topics["input"], PROBES, keys)
    _produce_with_correlation(kafka_bootstrap, topics["input"])
    service = start_service(TDM_LOG_LEVEL="DEBUG")
    # Events, read clinically per patient: the canonical antibody result flagged H (trigger) and
    # its re-report on the same accession whose text cannot be read (update: still open); the HL7
    # antibody result flagged H with a name for a unit (trigger) and its re-report with an MRN
    # for a value, still flagged H (update); the FHIR 1.5 ug/mL level with an extra key (trigger);
    # the canonical 2 ug/mL level whose context has an unknown key, an MRN (trigger: unknown
    # fields are ignored at every level since issue 28, and the key is never repeated).
    # The final results whose values are a name or an MRN cannot be read: each opens a review
    # (issue 23), whose summary says why without repeating the value. The probes sit on three
    # partitions, so a re-report can be read before its original: then the review it opened is
    # resolved when the readable original arrives, and the original triggers. Replayed through
    # correlation in every order, the probes give 8 to 10 events.
    alerts = read_topic(kafka_bootstrap, topics["alerts"], expected=8, timeout_s=60)
    dead = read_topic(kafka_bootstrap, topics["dlq"], expected=1, timeout_s=30)
    assert service.stop() == 0
    categories = [json.loads(a.value)["category"] for a in alerts]
    assert 8 <= len(alerts) <= 10, service.log_text()[-3000:]
    assert {"review", "anti_drug_antibodies", "subtherapeutic_level"} == set(categories)
    assert dead, "the probes include undecodable messages"
    for record in [*alerts, *dead]:
        for key, value in record.headers:
            assert not PLANTED.search(value.decode(errors="replace")), (key, value)
    for record in alerts:
        assert not PLANTED.search(record.value.decode()), record.value
    log = service.log_text()
    assert log.count("\n") > 10
    leaked = [line for line in log.splitlines() if PLANTED.search(line)]
    assert not leaked, leaked[:5]


def _produce_with_correlation(bootstrap: str, topic: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for n, correlation in enumerate(CORRELATION_PROBES):
        producer.send(
            topic,
            key=f"corr-{n}".encode(),
            value=b"not a lab message",
            headers=[("tdm.correlation_id", correlation.encode())],
        )
    producer.flush()
    producer.close()


def test_interpret_never_prints_a_planted_identifier(tmp_path):
    feed = tmp_path / "probes.jsonl"
    lines = [p.decode() for p in PROBES if p.startswith(b"{")]  # the JSON probes, as JSON Lines
    feed.write_text("\n".join(json.dumps(json.loads(line)) for line in lines) + "\n")
    hl7 = tmp_path / "probes.hl7"
    hl7.write_bytes(b"\r\n".join(p for p in PROBES if p.startswith(b"MSH")))
    for path in (feed, hl7):
        done = subprocess.run(
            [sys.executable, "-m", "consumer", "interpret", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1  # some probes are unreadable by design
        assert done.stderr.strip(), "the unreadable probes must be reported"
        leaked = [line for line in (done.stdout + done.stderr).splitlines() if PLANTED.search(line)]
        assert not leaked, leaked[:5]


def test_the_probe_scan_finds_what_it_looks_for():
    assert PLANTED.search(f'{{"unit": "{NAME}"}}')
    assert all(PLANTED.search(p.decode()) for p in PROBES)
