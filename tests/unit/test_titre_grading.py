"""Issue 23, class 6: antibodies graded by titre where the assay defines a high titre.

The packaged assay defines none (no cited high-titre level was found for it), so its antibodies
with a low level stay `critical`; a rule set that names an assay's high titre, with a citation,
makes a low titre with a low level `high`, with the AGA technical review's advice.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from interpretation import AntibodyFinding, SourceRef, interpret_all
from interpretation.alerts import Severity
from interpretation.correlation import correlate_result
from interpretation.findings import Pattern, Titre
from interpretation.pk.forecast import Antibodies
from interpretation.pk.next_trough import _antibodies
from interpretation.ruleset import AntibodyAssay, parse_ruleset
from tests.unit.helpers import RULES, ati, level

HERE = SourceRef(topic="lab.results", partition=0, offset=0)
DRAWN = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def graded_rules(high: str = "200"):
    """The default rule set with its assay's high titre set (a test citation, not a clinical one)."""
    data = json.loads(json.dumps(RULES.model_dump(mode="json")))
    data["antibody_assays"][0].update(high_titre_at_or_above=high, high_titre_citation="tdm-alerts-safety")
    return parse_ruleset(json.dumps(data), "graded rule set")


def pair(level_value: str, antibody_value: str, rules):
    return interpret_all(
        [
            level(level_value, specimen_id="S1", collected_at=DRAWN),
            ati(antibody_value, specimen_id="S1", collected_at=DRAWN),
        ],
        rules,
    )


@pytest.mark.parametrize(
    ("antibodies", "titre", "pattern"),
    [
        ("60", Titre.LOW, Pattern.LOW_LEVEL_WITH_LOW_TITRE_ANTIBODIES),
        ("199", Titre.LOW, Pattern.LOW_LEVEL_WITH_LOW_TITRE_ANTIBODIES),
        ("200", Titre.HIGH, Pattern.IMMUNOGENIC_FAILURE),
        (">150", None, Pattern.IMMUNOGENIC_FAILURE),  # may be high: read as the failure
    ],
)
def test_a_low_level_with_antibodies_is_graded_by_the_assays_high_titre(antibodies, titre, pattern):
    lvl, ab = pair("1.2", antibodies, graded_rules())
    assert ab.finding is AntibodyFinding.ANTIBODIES_DETECTED and ab.titre is titre
    assert lvl.pattern is ab.pattern is pattern
    if titre is not None:
        assert f"{titre.value} titre" in ab.reason
        assert "tdm-alerts-safety" in {c.id for c in ab.citations}


def test_without_a_cited_high_titre_antibodies_with_a_low_level_stay_the_failure():
    lvl, ab = pair("1.2", "60", RULES)
    assert ab.titre is None and lvl.pattern is Pattern.IMMUNOGENIC_FAILURE
    assert "titre" not in ab.reason


def test_a_low_titre_pages_high_with_the_technical_reviews_advice_across_messages():
    rules = graded_rules()
    first = correlate_result(None, level("1.2", specimen_id="S1", collected_at=DRAWN), HERE, rules)
    assert first is not None
    later = correlate_result(first.state, ati("60", specimen_id="S1", collected_at=DRAWN), HERE, rules)
    assert later is not None
    severities = {e.severity for e in later.events}
    assert severities == {Severity.HIGH}
    advice = " ".join(e.recommendation or "" for e in later.events)
    assert "transient" in advice and "immunomodulator" in advice
    assert any(c.id == "aga-technical-review-2017" for e in later.events for c in e.citations)
    # The same history with a high titre is critical.
    high = correlate_result(first.state, ati("450", specimen_id="S1", collected_at=DRAWN), HERE, rules)
    assert high is not None and Severity.CRITICAL in {e.severity for e in high.events}


def test_only_a_high_titre_refuses_the_forecast():
    rules = graded_rules()
    for value, expected in (
        ("60", Antibodies.POSITIVE),
        ("450", Antibodies.HIGH_TITRE),
        ("10", Antibodies.NEGATIVE),
    ):
        done = correlate_result(None, ati(value, collected_at=DRAWN), HERE, rules)
        assert done is not None
        assert _antibodies(done.state) is expected, value
    ungraded = correlate_result(None, ati("450", collected_at=DRAWN), HERE, RULES)
    assert ungraded is not None and _antibodies(ungraded.state) is Antibodies.POSITIVE


def test_a_high_titre_needs_its_citation_and_must_be_above_the_positive_cut_off():
    assay = RULES.antibody_assays[0].model_dump()
    with pytest.raises(ValidationError, match="go together"):
        AntibodyAssay.model_validate({**assay, "high_titre_at_or_above": "200"})
    with pytest.raises(ValidationError, match="above positive"):
        AntibodyAssay.model_validate(
            {**assay, "high_titre_at_or_above": "50", "high_titre_citation": "cited"}
        )
