"""Generated lab feeds whose expected alerts are known by construction, not by running the code."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Feed:
    messages: list[bytes]
    keys: list[bytes]
    expected: frozenset[str]  # accessions that must alert, once each


def canonical_feed(total: int, alerting: int, seed: int) -> Feed:
    """`total` canonical messages; `alerting` hold a final 2.0 ug/mL trough (below the 3 ug/mL
    maintenance target), the rest a therapeutic 5.0 ug/mL trough or an unrelated panel."""
    rng = random.Random(seed)
    alert_at = set(rng.sample(range(total), alerting))
    messages, keys, expected = [], [], set()
    for n in range(total):
        accession = f"ACC-{seed}-{n:06d}"
        if n in alert_at:
            results = [{"code": "39803-2", "value": "2.0", "unit": "ug/mL", "status": "final"}]
            expected.add(accession)
        elif n % 3 == 0:
            results = [{"code": "39803-2", "value": "5.0", "unit": "ug/mL", "status": "final"}]
        else:
            results = [
                {"code": "2345-7", "display": "Glucose", "value": str(70 + n % 50), "unit": "mg/dL"},
                {"code": "2160-0", "display": "Creatinine", "value": "0.9", "unit": "mg/dL"},
            ]
        patient = f"PT-{n % 4000:05d}"
        messages.append(
            json.dumps({"patient_id": patient, "accession": accession, "results": results}).encode()
        )
        keys.append(patient.encode())
    return Feed(messages, keys, frozenset(expected))
