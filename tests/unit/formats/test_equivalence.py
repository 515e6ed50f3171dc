"""`tdm-alerts interpret` gives the same findings for HL7 v2 and FHIR as for equivalent canonical JSON.

Each file in tests/data/equivalent/ is written by hand from the facts of the HL7 or FHIR
fixture of the same name; only the position in the file (`source`) may differ.
"""

import json

import pytest

from consumer.cli import main

from .conftest import DATA

PAIRS = sorted(
    (original, equivalent)
    for equivalent in (DATA / "equivalent").glob("*.jsonl")
    for original in [*DATA.glob(f"hl7/{equivalent.stem}.hl7"), *DATA.glob(f"fhir/{equivalent.stem}.json")]
)


def findings(capsys, path):
    """Each line without its position, and its events by what they do (ids hash the raw report)."""
    assert main(["interpret", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [{k: v for k, v in json.loads(line).items() if k != "source"} for line in out.splitlines()]
    for line in lines:
        line["events"] = [(e["action"], e["severity"], e["category"], e["pattern"]) for e in line["events"]]
    return lines


def test_every_equivalent_has_its_original():
    assert len(PAIRS) == len(list((DATA / "equivalent").glob("*.jsonl"))) == 10


@pytest.mark.parametrize(("original", "equivalent"), PAIRS, ids=[o.name for o, _ in PAIRS])
def test_same_findings_as_canonical(original, equivalent, capsys):
    expected = findings(capsys, equivalent)
    assert findings(capsys, original) == expected


def test_equivalents_are_not_all_empty(capsys):
    seen = {f["finding"] for _, equivalent in PAIRS for f in findings(capsys, equivalent)}
    assert {"subtherapeutic", "antibodies_detected"} <= seen
