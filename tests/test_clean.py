"""Unit tests of course_llm.recording.clean: every value a client can cause becomes storable.

The database side (the cleaned rows really go into SQLite and PostgreSQL and read back through the
usage API) is in tests/test_clean_storage.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import OrderedDict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, get_type_hints

import pytest

from course_llm.recording.clean import (
    MAX_METADATA_BYTES,
    OUT_OF_RANGE_KEY,
    STRING_FIELDS,
    TRUNCATED_KEY,
    clean_record,
    clean_text,
    clean_value,
    metadata_size,
)
from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import decode, encode

NAN, INF = float("nan"), float("inf")


def record(**overrides: Any) -> CallRecord:
    values: dict[str, Any] = {
        "request_id": "0190c9e2-7d3a-7b1e-9c2d-1a2b3c4d5e6f",
        "attempt": 1,
        "action": "course_structuring",
        "strategy": "quality",
        "served_strategy": "default",
        "provider": "gemini",
        "model_id": "gemini-2.5-flash",
        "success": True,
        "source": "proxy",
        "created_at": datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
        "tokens_in": 120,
        "tokens_out": 30,
        "latency_ms": 812.5,
        "cost_usd": 0.0001,
        "tenant_id": "acme",
        "operation": "grade_essay",
        "end_user": "user-42",
        "metadata": {"tags": {"course": "bio101", "week": 3}, "essay_id": 42},
    }
    values.update(overrides)
    return CallRecord(**values)


def strings_in(value: Any) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def storable(value: Any) -> bool:
    """What both databases accept: strict JSON, no NUL, no surrogates, within the cap."""
    text = json.dumps(value, allow_nan=False)
    return (
        all("\x00" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s) for s in strings_in(value))
        and len(text) <= MAX_METADATA_BYTES
    )


# --- nothing to clean ---------------------------------------------------------------------------


def test_a_clean_record_is_left_as_it_is() -> None:
    metadata = {"tags": ["x"], "note": "Школа 🙂"}
    clean = record(error_message="upstream says 500", metadata=metadata)
    before = clean.as_dict()
    assert clean_record(clean) is clean
    assert clean.as_dict() == before
    assert clean.metadata is metadata  # not even copied


def test_string_fields_cover_every_str_column_of_call_record() -> None:
    hints = get_type_hints(CallRecord)
    str_fields = {f.name for f in dataclasses.fields(CallRecord) if hints[f.name] in (str, str | None)}
    assert set(STRING_FIELDS) == str_fields | {"source"}  # source: a Literal of strings


def test_a_record_is_cleaned_in_place_and_the_callers_metadata_dict_is_not_touched() -> None:
    metadata = {"score": NAN, "name": "a\x00b"}
    dirty = record(end_user="eve\x00", latency_ms=NAN, metadata=metadata)
    assert clean_record(dirty) is dirty
    assert (dirty.end_user, dirty.latency_ms, dirty.metadata) == ("eve", None, {"score": None, "name": "ab"})
    assert math.isnan(metadata["score"]) and metadata["name"] == "a\x00b"


def test_cleaning_twice_changes_nothing_more() -> None:
    dirty = record(end_user="eve\x00\ud800", metadata={"big": "é" * 50_000, "n": NAN, "k\x00": [INF]})
    once = clean_record(dirty).as_dict()
    assert clean_record(dirty).as_dict() == once


# --- text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("eve\x00x", "evex"),
        ("\x00\x00", ""),
        ("a\ud800b", "a\ufffdb"),
        ("tail\udfff", "tail\ufffd"),
        ("\ud83d\ude00 pair", "\U0001f600 pair"),  # two surrogates that form a pair: the character
        ("Школа\x00\udc00", "Школа\ufffd"),
        ("plain", "plain"),
    ],
)
def test_text_loses_nul_and_lone_surrogates(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean
    assert clean_record(record(end_user=raw)).end_user == clean


def test_every_string_field_is_cleaned() -> None:
    dirty = record(**{name: f"{name}\x00\ud800" for name in STRING_FIELDS})
    cleaned = clean_record(dirty)
    for name in STRING_FIELDS:
        assert getattr(cleaned, name) == f"{name}\ufffd"


def test_a_non_string_in_a_string_field_becomes_its_string() -> None:
    assert clean_record(record(tenant_id=42)).tenant_id == "42"


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_floats_become_null(value: float) -> None:
    cleaned = clean_record(record(latency_ms=value, cost_usd=value))
    assert (cleaned.latency_ms, cleaned.cost_usd) == (None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens_in", 10**20),
        ("tokens_out", 2**31),
        ("tokens_in", -1),
        ("status_code", 2**31),
        ("status_code", -(2**31) - 1),
    ],
)
def test_an_integer_outside_its_column_becomes_null_and_is_noted(field: str, value: int) -> None:
    cleaned = clean_record(record(**{field: value}))
    assert getattr(cleaned, field) is None
    assert cleaned.metadata[OUT_OF_RANGE_KEY] == {field: str(value)}
    assert cleaned.metadata["essay_id"] == 42  # the caller's metadata is kept beside the note


@pytest.mark.parametrize(
    ("field", "value"), [("tokens_in", 2**31 - 1), ("tokens_out", 0), ("status_code", 599)]
)
def test_an_integer_its_column_holds_is_kept(field: str, value: int) -> None:
    kept = record(**{field: value})
    assert getattr(clean_record(kept), field) == value


@pytest.mark.parametrize(("value", "stored"), [(10**6, 32767), (-(10**6), -32768), (32767, 32767)])
def test_attempt_is_clamped_to_its_smallint_column(value: int, stored: int) -> None:
    assert clean_record(record(attempt=value)).attempt == stored


# --- metadata values ----------------------------------------------------------------------------


def test_metadata_strings_and_keys_are_cleaned_at_any_depth() -> None:
    dirty = {"a\x00": {"b\ud800": ["c\x00", {"d": "\udc00"}]}, "tags": ("x\x00", "y")}
    assert clean_record(record(metadata=dirty)).metadata == {
        "a": {"b\ufffd": ["c", {"d": "\ufffd"}]},
        "tags": ["x", "y"],
    }


def test_metadata_non_finite_floats_become_null_at_any_depth() -> None:
    dirty = {"score": NAN, "deep": {"list": [INF, -INF, 1.5]}}
    assert clean_record(record(metadata=dirty)).metadata == {
        "score": None,
        "deep": {"list": [None, None, 1.5]},
    }


def test_anything_json_cannot_hold_becomes_a_string() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    when = datetime(2025, 1, 2, tzinfo=UTC)
    dirty = {"when": when, "price": Decimal("1.10"), "raw": b"\x00x", "broken": Broken(), (1, 2): "tuple key"}
    cleaned = clean_record(record(metadata=dirty)).metadata
    assert cleaned["when"] == str(when)
    assert cleaned["price"] == "1.10"
    assert cleaned["raw"] == str(b"\x00x")  # its repr: the NUL byte is spelled \x00, not kept
    assert cleaned["broken"] == "<unprintable Broken>"
    assert cleaned["(1, 2)"] == "tuple key"
    assert storable(cleaned)


def test_keys_that_are_not_strings_are_spelled_as_json_spells_them() -> None:
    dirty = {1: "a", 1.5: "b", False: "c", None: "d", "n": NAN}  # NaN forces the cleaning pass
    assert clean_record(record(metadata=dirty)).metadata == {
        "1": "a",
        "1.5": "b",
        "false": "c",
        "null": "d",
        "n": None,
    }


def test_a_circular_or_very_deep_metadata_is_cut_and_marked() -> None:
    circular: dict[str, Any] = {"name": "loop"}
    circular["self"] = circular
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    for dirty in (circular, {"deep": deep}):
        cleaned = clean_record(record(metadata=dirty)).metadata
        assert cleaned[TRUNCATED_KEY] is True
        assert storable(cleaned)


def test_integers_in_metadata_beyond_64_bits_become_text_and_past_the_decimal_limit_hex() -> None:
    metadata = {"edge": 2**63 - 1, "low": -(2**63), "big": 2**63, "neg": -(10**20), "giant": 1 << 20_000}
    cleaned = clean_record(record(metadata={**metadata, "n": NAN})).metadata
    assert (cleaned["edge"], cleaned["low"]) == (2**63 - 1, -(2**63))
    assert (cleaned["big"], cleaned["neg"]) == (str(2**63), str(-(10**20)))
    assert cleaned["giant"] == hex(1 << 20_000)
    assert storable(cleaned)


def test_a_long_digit_run_inside_text_is_not_mistaken_for_a_number() -> None:
    metadata = {"order": "1234567890123456789012", "n": 1}
    assert clean_record(record(metadata=dict(metadata))).metadata == metadata


def test_a_row_with_a_64_bit_edge_integer_survives_the_journal_line_exactly() -> None:
    row = clean_record(record(metadata={"edge": 2**63 - 1, "big": 2**64}))
    back = decode(encode(row))
    assert back is not None
    assert back.metadata == {"edge": 2**63 - 1, "big": str(2**64)}


def test_metadata_that_is_not_a_mapping_is_wrapped() -> None:
    assert clean_record(record(metadata=["a\x00"])).metadata == {"value": ["a"]}  # type: ignore[arg-type]


def test_clean_value_turns_any_value_into_strict_json() -> None:
    value = {"rows": [{"cost_usd": NAN, "name": "x\ud800"}], "total": INF}
    assert clean_value(value) == {"rows": [{"cost_usd": None, "name": "x\ufffd"}], "total": None}


# --- the cap ------------------------------------------------------------------------------------


def test_one_megabyte_of_metadata_is_cut_to_the_cap_and_marked() -> None:
    dirty = {"note": "short", "blob": "x" * 1_000_000, "after": "kept too"}
    cleaned = clean_record(record(metadata=dirty)).metadata
    assert metadata_size(cleaned) <= MAX_METADATA_BYTES
    assert cleaned[TRUNCATED_KEY] is True
    assert cleaned["note"] == "short"
    assert cleaned["after"] == "kept too"  # a small entry after the huge one is kept whole
    assert cleaned["blob"] == "x" * len(cleaned["blob"])
    assert metadata_size(cleaned) == MAX_METADATA_BYTES  # the cut string fills exactly what is left
    assert list(cleaned) == ["note", "blob", "after", TRUNCATED_KEY]


def test_entries_that_fit_are_kept_whole_and_in_order() -> None:
    dirty = OrderedDict((f"k{i}", "v" * 1000) for i in range(40))
    cleaned = clean_record(record(metadata=dict(dirty))).metadata
    whole = [k for k, v in cleaned.items() if v == "v" * 1000]
    assert whole == [f"k{i}" for i in range(16)]  # 16 x ~1 KB; the 17th is cut to what is left
    assert list(cleaned) == [*whole, "k16", TRUNCATED_KEY]
    assert 0 < len(cleaned["k16"]) < 1000
    assert metadata_size(cleaned) <= MAX_METADATA_BYTES


def test_metadata_at_the_cap_is_kept_and_one_byte_more_is_cut() -> None:
    base = {"blob": ""}
    filler = MAX_METADATA_BYTES - metadata_size(base)
    exact = {"blob": "x" * filler}
    assert metadata_size(exact) == MAX_METADATA_BYTES
    assert clean_record(record(metadata=exact)).metadata is exact
    over = clean_record(record(metadata={"blob": "x" * (filler + 1)})).metadata
    assert over[TRUNCATED_KEY] is True and metadata_size(over) <= MAX_METADATA_BYTES


def test_the_cap_counts_escaped_characters_as_json_writes_them() -> None:
    # One character, six bytes of JSON (\u00e9): a cap counting characters would let 6x through.
    cleaned = clean_record(record(metadata={"text": "é" * 10_000})).metadata
    assert metadata_size(cleaned) <= MAX_METADATA_BYTES
    assert cleaned[TRUNCATED_KEY] is True
    assert 2000 < len(cleaned["text"]) < 3000


def test_notes_about_refused_columns_survive_the_cap() -> None:
    cleaned = clean_record(record(tokens_in=10**20, metadata={"blob": "x" * 100_000})).metadata
    assert cleaned[OUT_OF_RANGE_KEY] == {"tokens_in": str(10**20)}
    assert cleaned[TRUNCATED_KEY] is True
    assert metadata_size(cleaned) <= MAX_METADATA_BYTES


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(10 if depth < 4 else 6)
    if pick == 0:
        return rng.choice([NAN, INF, -INF, 1.5, None, True, 10**25])
    if pick < 6:
        alphabet = ["a", "é", "\x00", "\ud800", "\udc00", "🙂", "\\", '"', "\n"]
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 5, 500, 9000])))
    if pick < 8:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    return {
        _random_value(rng, 99) if rng.random() < 0.9 else 7: _random_value(rng, depth + 1) for _ in range(5)
    }


@pytest.mark.parametrize("seed", range(40))
def test_random_poisoned_metadata_always_comes_out_storable(seed: int) -> None:
    rng = random.Random(seed)
    dirty = {f"key{i}": _random_value(rng) for i in range(rng.randrange(1, 12))}
    cleaned = clean_record(record(metadata=dirty)).metadata
    assert storable(cleaned)
    if TRUNCATED_KEY not in cleaned:
        assert cleaned == clean_value(dirty)  # nothing cut: every entry kept


def test_a_journal_line_holding_an_integer_beyond_64_bits_reads_back_as_that_integer() -> None:
    # Not cleaned: encode's fallback writes it (as an earlier release's journal would hold it).
    row = record(metadata={"n": 10**20, "m": -(2**63) - 1, "small": 7})
    back = decode(encode(row))
    assert back is not None
    assert back.metadata == {"n": 10**20, "m": -(2**63) - 1, "small": 7}
    assert all(type(value) is int for value in back.metadata.values())
