from __future__ import annotations

import orjson
import pytest

from detector.errors import BadEvent
from detector.sinks.kafka import dead_letter_value


def test_utf8_original_is_kept_as_text() -> None:
    value = dead_letter_value(b"nope", BadEvent("invalid_json", "unexpected character"))
    assert value == b'{"reason":"invalid_json","detail":"unexpected character","original":"nope"}'


def test_non_ascii_utf8_original_round_trips() -> None:
    raw = '{"user_id": "zoë ☃"}'.encode()
    value = dead_letter_value(raw, BadEvent("missing_field", "required field 'ts' is missing"))
    assert orjson.loads(value) == {
        "reason": "missing_field",
        "detail": "required field 'ts' is missing",
        "original": '{"user_id": "zoë ☃"}',
    }


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b'{"a": "\xe9"}', b"\xc3"])
def test_non_utf8_original_is_kept_as_hex(raw: bytes) -> None:
    value = dead_letter_value(raw, BadEvent("invalid_json", "bad bytes"))
    body = orjson.loads(value)
    assert body == {"reason": "invalid_json", "detail": "bad bytes", "original_hex": raw.hex()}
    assert bytes.fromhex(body["original_hex"]) == raw


def test_non_utf8_exact_bytes() -> None:
    value = dead_letter_value(b"\xff\x00", BadEvent("invalid_json", "x"))
    assert value == b'{"reason":"invalid_json","detail":"x","original_hex":"ff00"}'


def test_empty_original() -> None:
    value = dead_letter_value(b"", BadEvent("invalid_json", "empty"))
    assert orjson.loads(value) == {"reason": "invalid_json", "detail": "empty", "original": ""}


def test_control_characters_stay_valid_json() -> None:
    raw = b'{"a":"\x00\n\x1f"}'
    body = orjson.loads(dead_letter_value(raw, BadEvent("invalid_json", "control")))
    assert body["original"].encode() == raw
