"""A generated lab feed for benchmarks: HL7 v2 ORU^R01 panels, FHIR Observations and Bundles,
canonical JSON; about 1% carry an infliximab level or antibody result, the rest do not.

Deterministic for a seed, invented identifiers only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

# (LOINC, display, unit, low, high) for the analytes that fill real panels.
ROUTINE = [
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 60, 180),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 130, 148),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.2, 5.4),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 95, 110),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 10, 60),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 70),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.0, 5.2),
    ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 0.2, 80),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 9, 17),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3, 14),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 120, 450),
]
LEVEL = ("39803-2", "Infliximab [Mass/volume] in Serum or Plasma", "ug/mL")
ANTIBODY = ("INXAB", "Infliximab Ab", "U/mL")


@dataclass(frozen=True)
class Message:
    value: bytes
    key: bytes
    fmt: str  # hl7v2 | fhir | canonical
    relevant: bool


def _number(rng: random.Random, low: float, high: float) -> str:
    return f"{rng.uniform(low, high):.1f}"


def _observations(
    rng: random.Random, relevant: bool, low_share: float | None = None
) -> list[tuple[str, str, str, str, str]]:
    """(code, display, value, unit, system) rows for one report; with `low_share`, that share of
    levels is below the 3 ug/mL target (an alert each), the rest in range."""
    rows = [
        (c, d, _number(rng, lo, hi), u, "LN") for c, d, u, lo, hi in rng.sample(ROUTINE, rng.randint(3, 10))
    ]
    if relevant:
        at = rng.randrange(len(rows) + 1)  # drawn first: the default feed stays the same across sessions
        if low_share is None:
            level = _number(rng, 0.5, 12)
        else:
            level = _number(rng, 0.5, 2.8) if rng.random() < low_share else _number(rng, 3.5, 6.5)
        rows.insert(at, (LEVEL[0], LEVEL[1], level, LEVEL[2], "LN"))
        if rng.random() < 0.5:
            rows.append((ANTIBODY[0], ANTIBODY[1], str(rng.choice([10, 30, 80, 180, 400])), ANTIBODY[2], "L"))
    return rows


def _hl7(n: int, patient: str, rows, rng: random.Random) -> bytes:
    stamp = f"202611{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}00"
    segments = [
        f"MSH|^~\\&|LIS|BENCHLAB|TDM|BENCHLAB|{stamp}||ORU^R01^ORU_R01|B{n:08d}|P|2.5.1",
        f"PID|1||{patient}^^^BENCHLAB^MR||BENCH^PATIENT||19700101|U",
        f"ORC|RE|PL{n:08d}|ACC{n:08d}",
        f"OBR|1|PL{n:08d}|ACC{n:08d}|PANEL^Chemistry panel^L|||{stamp}",
    ]
    for i, (code, display, value, unit, system) in enumerate(rows, start=1):
        segments.append(f"OBX|{i}|NM|{code}^{display}^{system}||{value}|{unit}|||||F|||{stamp}")
    segments.append(f"SPM|1|S{n:08d}||SER|||||||||||||{stamp}")
    return ("\r".join(segments) + "\r").encode()


def _fhir(n: int, patient: str, rows) -> bytes:
    def observation(i: int, row: tuple[str, str, str, str, str]) -> dict[str, object]:
        code, display, value, unit, system = row
        return {
            "resourceType": "Observation",
            "id": f"o{n}-{i}",
            "status": "final",
            "code": {
                "coding": [
                    {
                        "system": "http://loinc.org" if system == "LN" else "urn:local",
                        "code": code,
                        "display": display,
                    }
                ]
            },
            "subject": {"reference": f"Patient/p{n}"},
            "effectiveDateTime": "2026-11-02T08:05:00Z",
            "valueQuantity": {
                "value": float(value),
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
        }

    if len(rows) == 1:
        single = observation(0, rows[0])
        single["subject"] = {"reference": f"Patient/p{n}", "identifier": {"value": patient}}
        return json.dumps(single).encode()
    entries = [
        {
            "fullUrl": f"Patient/p{n}",
            "resource": {"resourceType": "Patient", "id": f"p{n}", "identifier": [{"value": patient}]},
        }
    ]
    entries += [
        {"fullUrl": f"Observation/o{n}-{i}", "resource": observation(i, row)} for i, row in enumerate(rows)
    ]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def _canonical(n: int, patient: str, rows) -> bytes:
    return json.dumps(
        {
            "patient_id": patient,
            "accession": f"ACC{n:08d}",
            "collected_at": "2026-11-02T08:05:00Z",
            "results": [
                {"code": c, "display": d, "value": v, "unit": u, "status": "final"} for c, d, v, u, _ in rows
            ],
        }
    ).encode()


def generate(
    count: int, seed: int = 20261124, relevant_share: float = 0.01, low_share: float | None = None
) -> Iterator[Message]:
    """`count` messages; `relevant_share` of them hold infliximab results (see `_observations`)."""
    rng = random.Random(seed)
    for n in range(count):
        relevant = rng.random() < relevant_share
        patient = f"BENCH-PT-{rng.randrange(50_000):05d}"
        roll = rng.random()
        if roll < 0.40:
            rows = _observations(rng, relevant, low_share)
            yield Message(_hl7(n, patient, rows, rng), patient.encode(), "hl7v2", relevant)
        elif roll < 0.75:
            rows = _observations(rng, relevant, low_share)
            if not relevant and rng.random() < 0.6:
                rows = rows[:1]  # most FHIR traffic is single Observations
            yield Message(_fhir(n, patient, rows), patient.encode(), "fhir", relevant)
        else:
            rows = _observations(rng, relevant, low_share)
            yield Message(_canonical(n, patient, rows), patient.encode(), "canonical", relevant)
