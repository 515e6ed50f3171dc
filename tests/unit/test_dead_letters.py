"""A dead letter always fits its topic: the partition behind it must never stop (issue 28)."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from consumer.dead_letters import BODY_HEADER, HEADER_PREFIX, RECORD_OVERHEAD_BYTES, fit, header_bytes

OURS = [(HEADER_PREFIX + "reason", b"too_large"), (HEADER_PREFIX + "stage", b"intake")]


def _size(key: bytes | None, body: bytes, headers: list[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(body) + header_bytes(headers) + RECORD_OVERHEAD_BYTES


def test_a_message_that_fits_is_kept_whole_with_its_digest():
    value = b"MSH|^~\\&|LAB" * 10
    body, headers = fit(value, b"k", OURS, [("sender.trace", b"x")], 1_048_588)
    found = dict(headers)
    assert body == value
    assert found[BODY_HEADER] == b"whole"
    assert found[HEADER_PREFIX + "body.bytes"] == str(len(value)).encode()
    assert found[HEADER_PREFIX + "body.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert found["sender.trace"] == b"x"


def test_a_message_larger_than_the_topic_takes_is_cut_to_fit_and_says_so():
    value = bytes(range(256)) * 40_000  # 10 MB
    limit = 1_048_588
    body, headers = fit(value, b"k", OURS, [], limit)
    found = dict(headers)
    assert found[BODY_HEADER] == b"cut"
    assert value.startswith(body) and len(body) > limit // 2
    assert _size(b"k", body, headers) <= limit
    assert found[HEADER_PREFIX + "body.bytes"] == b"10240000"
    assert found[HEADER_PREFIX + "body.sha256"] == hashlib.sha256(value).hexdigest().encode()


def test_sender_headers_too_large_to_fit_are_left_out_not_the_reason():
    value = b"x" * 100
    original = [("huge", b"h" * 2_000_000)]
    body, headers = fit(value, None, OURS, original, 1_048_588)
    found = dict(headers)
    assert "huge" not in found
    assert found[HEADER_PREFIX + "headers"] == b"left_out"
    assert found[HEADER_PREFIX + "reason"] == b"too_large"
    assert body == value


@given(
    size=st.integers(0, 3_000_000),
    limit=st.integers(5_000, 2_000_000),
    sender=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=3_000)), max_size=5),
)
def test_whatever_the_sizes_the_dead_letter_fits_and_keeps_its_reason(size, limit, sender):
    value = b"v" * size
    original = [(k, v) for k, v in sender]
    body, headers = fit(value, b"key", OURS, original, limit)
    found = dict(headers)
    assert _size(b"key", body, headers) <= limit
    assert found[HEADER_PREFIX + "reason"] == b"too_large"
    assert (found[BODY_HEADER] == b"whole") == (body == value)
    assert value.startswith(body)
