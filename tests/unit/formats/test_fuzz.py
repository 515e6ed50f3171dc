"""Mutated HL7 v2 and FHIR thrown at the pipeline: every input ends as an interpretation, a skip
or a dead letter with a decoder's reason; nothing escapes and nothing is a processing error
(which would mean a decoder met input it did not anticipate).
"""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.dead_letters import Reason
from consumer.pipeline import Outcome, Pipeline
from interpretation import SourceRef, default_ruleset

from .conftest import DATA

PIPE = Pipeline(default_ruleset(), max_message_bytes=1 << 16)
HERE = SourceRef(topic="lab.results", partition=0, offset=0)
HL7 = [p.read_bytes() for p in sorted((DATA / "hl7").glob("*.hl7"))]
FHIR = [json.loads(p.read_text()) for p in sorted((DATA / "fhir").glob("*.json"))]
HL7_BYTES = st.sampled_from(list(b"|^~\\&\r\n\x0b\x1c0123456789.<>-+ ABCDEFHMNOPRSTXZ"))


def assert_handled(data: bytes) -> None:
    done = PIPE.process(data, HERE)
    assert done.outcome in set(Outcome)
    if done.outcome is Outcome.DEAD_LETTERED:
        assert done.dead_letter.reason is not Reason.PROCESSING_ERROR, done.dead_letter.detail
    else:
        assert done.dead_letter is None


@st.composite
def mutated_hl7(draw):
    data = bytearray(draw(st.sampled_from(HL7)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["insert", "delete", "replace", "cut", "repeat"])):
            case "insert":
                data[at:at] = bytes(draw(st.lists(HL7_BYTES, min_size=1, max_size=4)))
            case "delete":
                del data[at : at + draw(st.integers(1, 20))]
            case "replace" if at < len(data):
                data[at] = draw(HL7_BYTES)
            case "cut":
                del data[at:]
            case "repeat":
                data[at:at] = data[max(0, at - 40) : at]
    return bytes(data)


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


@st.composite
def mutated_fhir(draw):
    document = json.loads(json.dumps(draw(st.sampled_from(FHIR))))
    for _ in range(draw(st.integers(1, 5))):
        path = draw(st.sampled_from(list(paths(document))))
        if not path:
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            parent[path[-1]] = draw(JSON_VALUES)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    return json.dumps(document).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_hl7())
def test_mutated_hl7_is_always_handled(data):
    assert_handled(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_fhir())
def test_mutated_fhir_is_always_handled(data):
    assert_handled(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400).map(lambda tail: b"MSH|^~\\&|" + tail))
def test_arbitrary_bytes_after_an_hl7_header_are_handled(data):
    assert_handled(data)


def _decode_both(data: bytes, monkeypatch_context):
    from consumer.formats import hl7v2
    from consumer.formats.errors import DecodeError

    relevant = PIPE.relevant
    try:
        with monkeypatch_context() as patch:
            patch.setattr(hl7v2, "_what_we_read", lambda text, _relevant: (text, None))
            whole = hl7v2.decode_hl7v2(data, relevant)
    except DecodeError:
        return None, None
    return whole, hl7v2.decode_hl7v2(data, relevant)


BROKEN_HL7 = [p.read_bytes() for p in sorted((DATA / "broken").glob("*.hl7"))]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(st.one_of(mutated_hl7(), st.sampled_from(HL7 + BROKEN_HL7)))
def test_reading_only_our_segments_finds_exactly_what_reading_them_all_finds(data):
    """The decoder hands python-hl7 only the segments it reads: whenever the whole message
    decodes, the trimmed one gives the same results (it may also read a message whose
    unreadable parts are other analytes')."""
    import pytest

    whole, trimmed = _decode_both(data, pytest.MonkeyPatch.context)
    if whole is not None:
        assert trimmed == whole
