import json
from decimal import Decimal

import pytest

from interpretation import RuleSetError, default_ruleset, parse_ruleset
from tests.conftest import REPO

GUIDANCE = REPO.parent / "shared" / "clinical-guidance.txt"


def test_default_rule_set_holds_every_threshold_of_the_guidance():
    targets = {t.id: (t.low, t.high) for t in default_ruleset().drug_level_targets}
    assert targets["ifx-maintenance-iv"] == (Decimal(3), Decimal(7))
    expected_lows = {
        "ifx-induction-week-6": "4.5",
        "ifx-induction-week-14": "4.0",
        "ifx-sc-mucosal-healing": "17.5",
        "ifx-sc-transmural-healing": "30.3",
        "ifx-goal-biochemical-remission": "2.2",
        "ifx-goal-endoscopic-remission": "9.7",
        "ifx-goal-histologic-remission": "9.8",
    }
    for rule_id, low in expected_lows.items():
        assert targets[rule_id][0] == Decimal(low), rule_id


@pytest.mark.skipif(not GUIDANCE.exists(), reason="shared/ is not beside this checkout")
def test_every_guidance_number_used_appears_in_the_guidance_text():
    # A number beyond the clinical guidance (ulcerative colitis' 7.5 / 10.5, issue 23) must be
    # stated in its citation's claim, and that citation must carry a DOI or PMID to check it by.
    text = GUIDANCE.read_text()
    rules = default_ruleset()
    for target in rules.drug_level_targets:
        cited = rules.citation(target.citation)
        for bound in (target.low, target.high):
            if bound is not None:
                in_guidance = str(bound) in text or f"{bound}-" in text or f"-{bound}" in text
                in_claim = str(bound) in cited.claim and (cited.doi or cited.pmid)
                assert in_guidance or in_claim, target.id


def _rules(**changes):
    data = json.loads(default_ruleset().model_dump_json())
    data.update(changes)
    return json.dumps(data)


def test_round_trips_through_json():
    assert parse_ruleset(default_ruleset().model_dump_json()) == default_ruleset()


def test_unknown_citation_is_reported_by_name():
    data = json.loads(_rules())
    data["drug_level_targets"][0]["citation"] = "no-such-paper"
    with pytest.raises(RuleSetError, match="no-such-paper"):
        parse_ruleset(json.dumps(data), "custom.json")


def test_inverted_range_is_refused():
    data = json.loads(_rules())
    data["drug_level_targets"][-1].update(low="7", high="3")
    with pytest.raises(RuleSetError, match="low 7 above high 3"):
        parse_ruleset(json.dumps(data))


def test_duplicate_rule_ids_are_refused():
    data = json.loads(_rules())
    data["drug_level_targets"][1]["id"] = data["drug_level_targets"][0]["id"]
    with pytest.raises(RuleSetError, match="unique"):
        parse_ruleset(json.dumps(data))


def test_not_json_is_a_clear_error():
    with pytest.raises(RuleSetError, match=r"custom\.json is not JSON"):
        parse_ruleset("{not json", "custom.json")


def test_the_consensus_rule_set_reads_induction_by_the_consensus_table():
    from decimal import Decimal

    from interpretation import TreatmentContext, interpret
    from interpretation.ruleset import packaged_ruleset
    from tests.unit.helpers import level

    consensus = packaged_ruleset("consensus")
    week2 = interpret(level("15"), consensus, TreatmentContext(phase="induction", week=2))
    assert week2 is not None and week2.alert and week2.target is not None
    assert week2.target.low == Decimal("20")
    assert [c.id for c in week2.citations][:1] == ["papamichael-2019-table"]
    week14 = interpret(level("3.5"), consensus, TreatmentContext(phase="induction", week=14))
    assert week14 is not None and not week14.alert
    healing = interpret(level("5"), consensus, TreatmentContext(phase="maintenance", goal="mucosal_healing"))
    assert healing is not None and healing.alert  # >= 7 for mucosal healing
