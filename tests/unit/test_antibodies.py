import pytest

from interpretation import AntibodyFinding, DecidedBy, ResultStatus
from tests.unit.helpers import ati, read

POS, NEG, UNINT = (
    AntibodyFinding.ANTIBODIES_DETECTED,
    AntibodyFinding.ANTIBODIES_NOT_DETECTED,
    AntibodyFinding.UNINTERPRETABLE,
)


@pytest.mark.parametrize(
    ("value", "finding"),
    [("49.9", NEG), ("50", POS), ("<50", NEG), (">=50", POS), ("180", POS), ("<100", None)],
)
def test_reference_lab_cutoff_of_50_u_per_ml(value, finding):
    got = read(ati(value))
    if finding is None:  # "<100" straddles the cut-off and nothing else is reported
        assert got.finding is UNINT
    else:
        assert (got.finding, got.decided_by, got.rule_id) == (
            finding,
            DecidedBy.ASSAY_CUTOFF,
            "ati-reference-lab-inxab",
        )
        assert got.alert == (finding is POS)


def test_cutoff_only_applies_to_its_own_unit():
    got = read(ati("60", unit="ng/mL", reference_range="<10"))
    assert (got.finding, got.decided_by) == (POS, DecidedBy.REFERENCE_RANGE)


@pytest.mark.parametrize(
    ("value", "reference_range", "finding"),
    [
        ("12", "<10", POS),
        ("9.9", "<10", NEG),
        ("10", "<10", POS),
        ("49", "0-49", NEG),
        ("50", "0-49", POS),
        ("49", "<=49", NEG),
        ("49.5", "<= 49", POS),
    ],
)
def test_reference_range_decides_for_other_assays(value, reference_range, finding):
    got = read(
        ati(
            value,
            unit="AU/mL",
            code="LOCAL-ATI",
            display="Infliximab antibodies",
            reference_range=reference_range,
        )
    )
    assert (got.finding, got.decided_by) == (finding, DecidedBy.REFERENCE_RANGE)


def test_flag_decides_when_no_number_settles_it():
    got = read(ati("<100", abnormal_flags=("H",)))
    assert (got.finding, got.decided_by) == (POS, DecidedBy.ABNORMAL_FLAG)


def test_the_labs_own_flag_outranks_a_cutoff_that_names_no_lab_and_disagreement_reads_detected():
    # 10 U/mL is below the configured 50, but the reporting lab flags it high: its own assay
    # may have a lower cut-off. A silent "not detected" here is the dangerous error.
    got = read(ati("10", abnormal_flags=("H",)))
    assert (got.finding, got.decided_by) == (POS, DecidedBy.ABNORMAL_FLAG)
    assert got.alert
    assert "disagrees" in got.reason and "assay cutoff" in got.reason


@pytest.mark.parametrize(
    ("text", "finding"),
    [
        ("Positive", POS),
        ("DETECTED", POS),
        ("Not detected", NEG),
        ("Negative", NEG),
        ("none detected", NEG),
        ("Inconclusive", UNINT),
        ("TNP", UNINT),
    ],
)
def test_qualitative_text(text, finding):
    got = read(ati(text, unit=None))
    assert got.finding is finding
    if finding is not UNINT:
        assert got.decided_by is DecidedBy.QUALITATIVE_TEXT


def test_withdrawn_and_preliminary_results_do_not_page():
    assert read(ati("180", status=ResultStatus.CANCELLED)).finding is UNINT
    prelim = read(ati("180", status=ResultStatus.PRELIMINARY))
    assert prelim.finding is POS and not prelim.alert


def test_detected_antibodies_recommend_considering_a_switch():
    got = read(ati("180"))
    assert "switching" in got.recommendation
    assert {"mayo-infxr", "bsg-2019"} <= {c.id for c in got.citations}


# -- titres (issue 23, class 4) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reference_range", "finding"),
    [
        ("1:40", "<1:10", AntibodyFinding.ANTIBODIES_DETECTED),
        ("1:10", "<1:10", AntibodyFinding.ANTIBODIES_DETECTED),
        ("1:5", "<1:10", AntibodyFinding.ANTIBODIES_NOT_DETECTED),
        ("<1:10", "<1:10", AntibodyFinding.ANTIBODIES_NOT_DETECTED),
        (">1:80", "<=1:20", AntibodyFinding.ANTIBODIES_DETECTED),
        ("1:40", None, AntibodyFinding.UNINTERPRETABLE),  # no cut-off known: never guessed
    ],
)
def test_a_titre_is_read_against_the_labs_titre_cutoff_without_a_flag(value, reference_range, finding):
    got = read(ati(value, unit=None, reference_range=reference_range))
    assert got.finding is finding
    assert got.alert is (finding is AntibodyFinding.ANTIBODIES_DETECTED)


def test_no_drug_activity_is_not_no_antibodies_and_the_neutralising_titre_decides():
    said = "Drug activity: Not Detected"
    got = read(ati(said, unit=None, comments=("Neutralizing antibody titer: 1:40",), reference_range="<1:10"))
    assert got.finding is AntibodyFinding.ANTIBODIES_DETECTED and got.alert
    # Without a titre the words about drug activity say nothing of antibodies.
    assert read(ati(said, unit=None)).finding is AntibodyFinding.UNINTERPRETABLE


def test_a_titre_is_never_read_against_a_range_of_units_nor_a_number_against_a_titre_range():
    assert read(ati("1:40", unit=None, reference_range="<50")).finding is AntibodyFinding.UNINTERPRETABLE
    assert read(ati("40", unit="AU/mL", reference_range="<1:10")).finding is AntibodyFinding.UNINTERPRETABLE
