"""The HL7 v2 reader that splits what it reads (`decode_hl7v2(split=True)`, the covariates' fast
path) against python-hl7 parsing the whole message: over generated panels and mutations of them,
whenever python-hl7 reads the message, both give the same results, and a result it refuses
(a bad status, a bad date) is refused by both with the same reason and detail."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.formats import hl7v2
from consumer.formats.errors import DecodeError
from interpretation import default_ruleset

RULES = default_ruleset()
COVARIATES = RULES.recognition.covariates.every_code if RULES.recognition.covariates else frozenset()


def covariate(code: str, display: str | None) -> bool:
    return code in COVARIATES


def infliximab(code: str, display: str | None) -> bool:
    from interpretation.recognition import mentions_infliximab

    return mentions_infliximab(code, display, RULES.recognition)


TEXT = st.text(alphabet="ABCxyz019 .-/", max_size=8)
ESCAPED = st.sampled_from(["\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\X41\\", "\\H\\", "\\.br\\"])
PIECE = st.one_of(TEXT, ESCAPED.map(lambda e: f"a{e}b"))
CODES = st.sampled_from(["1751-7", "29463-7", "3141-9", "39803-2", "2345-7", "INXAB", "ALB", ""])
WHEN = st.sampled_from(
    ["20261104", "202611040830", "20261104083000", "20261104083000+0100", "2026110", "x", ""]
)
STATUS = st.sampled_from(["F", "C", "P", "X", "D", "", "Q", " F "])
VALUE_TYPE = st.sampled_from(["NM", "SN", "ST", "TX", "CWE", "", "XX"])
UNITS = st.sampled_from(["g/dL", "g/L", "kg", "lb", "[lb_av]", "", "mg/dL", "g/dL^grams per deciliter^UCUM"])


@st.composite
def obx(draw, n: int) -> str:
    code = draw(CODES)
    display = draw(st.one_of(st.just("Albumin"), st.just("Body weight"), PIECE))
    kind = draw(VALUE_TYPE)
    value = draw(st.one_of(st.sampled_from(["3.1", "42", "<2.0", ">^5", "^3.4", "3.1~3.2", "70.5"]), PIECE))
    coding = draw(
        st.sampled_from(
            [
                f"{code}^{display}^LN",
                f"LOCAL^{display}^L^{code}^{display}^LN",
                f"{code}",
                f"{code}~{code}",
                f"{code}&x^{display}",
            ]
        )
    )
    flags = draw(st.sampled_from(["", "L", "H~A", "N", "LL~VERYLONGFLAG"]))
    fields = ["OBX", str(n), kind, coding, "", value, draw(UNITS), draw(PIECE), flags, "", "", draw(STATUS)]
    fields += ["", "", draw(WHEN), draw(PIECE), "", "", "", "", "", draw(PIECE), "", draw(PIECE)]
    return "|".join(fields[: draw(st.integers(4, len(fields)))])


@st.composite
def panel(draw) -> bytes:
    version = draw(st.sampled_from(["2.5.1", "2.3", "3.0", ""]))
    kind = draw(st.sampled_from(["ORU^R01^ORU_R01", "ORU^R01", "ADT^A01"]))
    segments = [f"MSH|^~\\&|LIS|LAB|TDM|LAB|20261104090000||{kind}|M1|P|{version}"]
    for _ in range(draw(st.integers(1, 2))):
        ids = draw(
            st.sampled_from(["PT-1^^^LAB^MR", "X9^^^LAB^AN~PT-2^^^LAB^MR", "", "PT-3", "P\\T\\4^^^LAB^MR"])
        )
        segments.append(f"PID|1|{draw(PIECE)}|{ids}||NAME^GIVEN")
        if draw(st.booleans()):
            segments.append(f"ORC|RE|PL1|{draw(PIECE)}")
        for order in range(draw(st.integers(0, 2))):
            segments.append(f"OBR|{order + 1}|PL1|{draw(PIECE)}|PANEL^Chemistry^L|||{draw(WHEN)}")
            for n in range(draw(st.integers(1, 4))):
                segments.append(draw(obx(n + 1)))
                for _ in range(draw(st.integers(0, 2))):
                    segments.append(f"NTE|1|L|{draw(PIECE)}")
            if draw(st.booleans()):
                segments.append(f"SPM|1|{draw(PIECE)}^{draw(PIECE)}||SER|||||||||||||{draw(WHEN)}")
        if draw(st.booleans()):
            segments.append(draw(obx(9)))  # an OBX with no OBR before it
    return ("\r".join(segments) + "\r").encode()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(panel()))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.sampled_from([b"|", b"^", b"~", b"&", b"\\", b"\r", b"", b"X"]))
    return bytes(data)


def read(data: bytes, relevant, *, split: bool):
    try:
        return hl7v2.decode_hl7v2(data, relevant, split=split), None
    except DecodeError as err:
        return None, (err.reason, err.detail)


def whole(data: bytes, relevant):
    """python-hl7 given every segment and field, as before any trimming."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hl7v2, "_what_we_read", lambda text, _relevant: (text, None))
        return read(data, relevant, split=False)


@pytest.mark.parametrize("relevant", [covariate, infliximab], ids=["covariates", "infliximab"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(panel(), mutated()))
def test_the_split_reading_equals_python_hl7_reading_the_whole_message(relevant, data):
    expected, refused = whole(data, relevant)
    found, split_refused = read(data, relevant, split=True)
    if expected is not None:
        assert found == expected
    elif refused is not None and "not parseable" not in refused[1]:
        # python-hl7 read it and a result was refused: the split reading refuses it alike.
        assert split_refused == refused


def test_generated_panels_hold_covariates_the_reading_finds():
    """The strategy is worth its examples: albumin results with escapes, repetitions and the
    alternate coding occur and are read (not all refused)."""
    data = (
        b"MSH|^~\\&|LIS|LAB|TDM|LAB|20261104090000||ORU^R01|M1|P|2.5.1\r"
        b"PID|1||X9^^^LAB^AN~PT-2^^^LAB^MR\r"
        b"OBR|1|PL1|ACC\\T\\1|PANEL^Chemistry^L|||20261104083000+0100\r"
        b"OBX|1|NM|LOCAL^Alb^L^1751-7^Albumin^LN||3.1|g/dL|3.5-5\\T\\x|L~A|||F\r"
        b"NTE|1|L|haemolysed \\F\\ repeat\r"
    )
    found, _ = read(data, covariate, split=True)
    assert found == whole(data, covariate)[0]
    assert found is not None and len(found) == 1
    (result,) = found
    assert (result.patient_id, result.accession, result.code) == ("PT-2", "ACC&1", "1751-7")
    assert result.comments == ("haemolysed | repeat",) and result.abnormal_flags == ("L", "A")
