import pytest

from interpretation import Analyte
from interpretation.recognition import recognise as recognise_result
from tests.unit.helpers import RULES

R = RULES.recognition
IFX, ATI = Analyte.INFLIXIMAB, Analyte.ANTI_INFLIXIMAB_ANTIBODY


def recognise(code, display, recognition, unit=None):
    """The analyte, for results whose evidence agrees (these tests assert no conflict)."""
    found = recognise_result(code, display, recognition, unit)
    if found is None:
        return None
    assert found.conflict is None, found.conflict
    return found.analyte


@pytest.mark.parametrize(
    ("code", "analyte"), [("39803-2", IFX), ("86896-8", IFX), ("INFX", IFX), ("INXAB", ATI)]
)
def test_codes(code, analyte):
    assert recognise(code, None, R) is analyte


@pytest.mark.parametrize(
    ("display", "analyte"),
    [
        ("Infliximab level", IFX),
        ("inFLIXimab [Mass/volume] in Serum or Plasma", IFX),
        ("inFLIXimab Ab [Units/volume] in Serum by Immunoassay", ATI),
        ("Anti-infliximab antibodies", ATI),
        ("Infliximab-dyyb trough", IFX),
        ("infliximab-abda level", IFX),
        ("Infliximab-axxq", IFX),
        ("CT-P13 trough", IFX),
        ("Remicade level", IFX),
        ("ATI (infliximab)", ATI),
        ("Infliximab (anti-TNF) trough", IFX),
        ("Adalimumab level", None),
        ("Adalimumab Ab", None),
        ("Anti-adalimumab antibodies", None),
        ("Vedolizumab trough", None),
        ("Glucose", None),
        ("", None),
    ],
)
def test_display_name_fallback(display, analyte):
    assert recognise("LOCAL-999", display, R) is analyte


def test_a_known_code_decides_but_a_disagreeing_name_is_a_conflict():
    found = recognise_result("INXAB", "Infliximab level", R)
    assert found is not None
    assert found.analyte is ATI
    assert "display name says a drug level" in (found.conflict or "")
