"""clean_record: make any row a client (or an upstream) can cause storable in SQLite and PostgreSQL.

Proxy clients are untrusted (docs/architecture.md, "Untrusted clients"), and what they send ends up
in a row: `user` becomes `end_user`, `metadata` becomes the JSON column. Left as they come, such
values either break a database or poison the reading side:

- a NUL character: PostgreSQL refuses it in text and in JSONB, so the row is set aside and the
  client's spend never reaches the table;
- a lone surrogate (`"\\ud800"` in a JSON body): neither database driver can encode it as UTF-8;
- NaN and ±Infinity: not JSON; PostgreSQL refuses them in JSONB, SQLite stores them, and then every
  response that includes the row fails to render;
- an integer a column cannot hold (an upstream reporting 10**20 tokens): an overflow error;
- a megabyte of metadata: stored as is, in every row of every attempt.

`clean_record` cleans the record in place and returns it, so both `clean_record(record)` and
`record = clean_record(record)` work. A record that needs nothing (the common case) costs a few
microseconds and is not touched; metadata that needs cleaning is replaced by a cleaned copy, so a
dict the caller still holds is never changed. It never raises for a value a client can choose.

Integer policy. `attempt` is NOT NULL, so it is clamped to its SMALLINT column (the 32,768th
attempt of one request stays "a late attempt"; only the order among such attempts is lost).
`tokens_in`, `tokens_out` and `status_code` become null when outside their column (and token
counts when negative): a clamped count would be a plausible-looking lie (2.1 billion tokens) that
inflates every sum, whereas null is the column's own "unknown". The value that was refused is kept
as a string under `metadata.course_llm_out_of_range`, so the anomaly stays visible. An integer
inside metadata beyond the signed 64-bit range is kept as its text.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping
from typing import Any

from course_llm.recording.records import CallRecord

__all__ = [
    "LONG_NUMBER",
    "MAX_METADATA_BYTES",
    "OUT_OF_RANGE_KEY",
    "TRUNCATED_KEY",
    "clean_record",
    "clean_text",
    "clean_value",
    "metadata_size",
]

#: Cap on the metadata column, measured as `json.dumps(metadata)` with its defaults: that is the
#: text SQLite stores, and the longest spelling of the value (escaped non-ASCII, spaced
#: separators), so no other encoding of it (compact, UTF-8, JSONB) is larger.
MAX_METADATA_BYTES = 16 * 1024
#: Set to true in metadata that was cut to fit the cap (or nested too deep to keep whole).
TRUNCATED_KEY = "course_llm_truncated"
#: Column values refused by the integer policy, as strings, keyed by column name.
OUT_OF_RANGE_KEY = "course_llm_out_of_range"
#: Containers nested deeper than this are replaced by a marker string (and the cut is marked):
#: it bounds the recursion here and in every JSON reader downstream.
MAX_DEPTH = 64
_TOO_DEEP = "[nested too deep]"

_INT32 = (-(2**31), 2**31 - 1)
_SMALLINT = (-(2**15), 2**15 - 1)
#: Integers in metadata are kept as numbers inside the signed 64-bit range, the range every
#: reader of the row agrees on (the journal's encoder, PostgreSQL's bigint, JavaScript's BigInt);
#: beyond it they are kept as text, in decimal, or in hex beyond Python's 4,300-digit int→str limit.
_INT64 = (-(2**63), 2**63 - 1)
_MAX_DECIMAL_BITS = 14_000
#: A run of digits long enough to be an integer beyond the 64-bit range (2**63 has 19 digits).
LONG_NUMBER = r"[0-9]{19}"
_LONG_NUMBER = re.compile(LONG_NUMBER)

_SURROGATE = re.compile("[\ud800-\udfff]")
#: json.dumps with non-default arguments builds a new encoder per call; this one is built once.
#: Without ensure_ascii, surrogates stay visible as themselves (escaped, a lone surrogate and an
#: emoji's pair would look the same) and NUL is still spelled as an escape.
_strict_json = json.JSONEncoder(allow_nan=False, ensure_ascii=False).encode
#: The most JSON characters one character can take under ensure_ascii (an astral one: two \\uXXXX).
_MAX_ESCAPE = 12
#: Every str field of CallRecord (checked against the dataclass by tests/test_clean.py).
STRING_FIELDS = (
    "request_id",
    "action",
    "strategy",
    "served_strategy",
    "provider",
    "model_id",
    "source",
    "error_class",
    "error_message",
    "tenant_id",
    "operation",
    "end_user",
    "system_prompt_hash",
    "user_prompt_hash",
    "response_preview",
)
_string_values = operator.attrgetter(*STRING_FIELDS)
_FLOAT_FIELDS = ("latency_ms", "cost_usd")
#: Nullable integer columns and the range kept; outside it the value becomes null (see above).
_NULLABLE_INT_FIELDS = (
    ("tokens_in", (0, _INT32[1])),
    ("tokens_out", (0, _INT32[1])),
    ("status_code", _INT32),
)


# --- text -------------------------------------------------------------------------------------


def _dirty(text: str) -> bool:
    # isascii() is a flag lookup, so ASCII text (nearly every value) costs one scan for NUL.
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


def clean_text(text: str) -> str:
    """`text` without NUL characters, lone surrogates replaced by U+FFFD.

    Two adjacent surrogates that form a valid pair become the character they encode.
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii() and _SURROGATE.search(text) is not None:
        # UTF-16 with surrogatepass writes each code point as one 16-bit unit; decoding pairs the
        # valid surrogates and replaces the lone ones.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


# --- JSON values ------------------------------------------------------------------------------


def _int_text(number: int) -> str:
    """An integer as a string: decimal, or hex past Python's limit on decimal conversion."""
    return str(number) if number.bit_length() <= _MAX_DECIMAL_BITS else hex(number)


def _describe(value: Any) -> str:
    """A string for a value JSON cannot hold; never raises."""
    try:
        return str(value)
    except Exception:  # a broken __str__ must not cost the row
        return f"<unprintable {type(value).__name__}>"


def _key(key: Any) -> str:
    """An object key as json.dumps would write it (so both paths of `clean_value` agree)."""
    if isinstance(key, str):
        return clean_text(key)
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, float):
        return json.dumps(float(key))
    if isinstance(key, int):
        return _int_text(int(key))
    return clean_text(_describe(key))


class _Walk:
    """One pass over a value; remembers whether anything had to be cut (depth)."""

    __slots__ = ("cut",)

    def __init__(self) -> None:
        self.cut = False

    def value(self, value: Any, depth: int) -> Any:
        if value is None or value is True or value is False:
            return value
        if isinstance(value, str):
            return clean_text(str(value))
        if isinstance(value, int):
            number = int(value)
            return number if _in(number, _INT64) else _int_text(number)
        if isinstance(value, float):
            real = float(value)
            return real if math.isfinite(real) else None
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            if depth >= MAX_DEPTH:
                self.cut = True
                return _TOO_DEEP
            if isinstance(value, Mapping):
                return {_key(k): self.value(v, depth + 1) for k, v in value.items()}
            return [self.value(v, depth + 1) for v in value]
        return clean_text(_describe(value))


def clean_value(value: Any) -> Any:
    """`value` as plain JSON data both databases accept (no size cap): strings cleaned, NaN and
    ±Infinity → None, mappings → dicts with string keys, sequences and sets → lists, anything
    else → its string. Also used to render rows other writers stored (see proxy/usage_api.py)."""
    return _Walk().value(value, 0)


def metadata_size(value: Any) -> int:
    """The size the metadata cap applies to (see `MAX_METADATA_BYTES`)."""
    return len(json.dumps(value))


# --- the cap ----------------------------------------------------------------------------------

_MARKER_COST = len(json.dumps(TRUNCATED_KEY)) + len(": ") + len(json.dumps(True))
_SEP = len(", ")


def _cut_text(text: str, budget: int) -> str | None:
    """The longest non-empty prefix of `text` whose JSON fits `budget`, or None."""
    low, high = 0, min(len(text), budget - 2)  # every character costs at least one byte
    while low < high:  # the largest n with json.dumps(text[:n]) within budget
        middle = (low + high + 1) // 2
        if len(json.dumps(text[:middle])) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low] if low else None


_NOTHING: Any = object()


def _shrink(value: Any, budget: int) -> Any:
    """`value` cut to fit `budget` bytes of JSON, or _NOTHING when no useful part of it fits.

    An empty string, list or object is not a useful part: it would only look like the value.
    """
    if isinstance(value, str):
        cut = _cut_text(value, budget)
        return _NOTHING if cut is None else cut
    if isinstance(value, dict):
        kept = _fit_items(value, budget, reserve=0)
        return kept if kept else _NOTHING
    if isinstance(value, list):
        items: list[Any] = []
        used = 2
        for item in value:
            separator = _SEP if items else 0
            cost = len(json.dumps(item))
            if used + separator + cost > budget:
                item = _shrink(item, budget - used - separator)
                if item is _NOTHING:
                    break  # a list keeps its prefix: a reader may rely on positions
                cost = len(json.dumps(item))
            items.append(item)
            used += separator + cost
        return items if items else _NOTHING
    return value if len(json.dumps(value)) <= budget else _NOTHING


def _fit_items(mapping: dict[str, Any], budget: int, *, reserve: int) -> dict[str, Any]:
    """The entries of `mapping` that fit `budget - reserve` bytes of JSON, in their order.

    First every entry that fits whole is kept, in order; then what room is left goes to cutting
    the others (`_shrink`). So one huge value cannot push out the small ones after it (the tags).
    """
    used = 2 + reserve  # the braces, plus room the caller keeps for its own entry
    count = 1 if reserve else 0  # entries so far: each one after the first costs a separator
    sizes: dict[str, tuple[int, int]] = {}
    kept: dict[str, Any] = {}
    for key, value in mapping.items():
        if key == TRUNCATED_KEY:
            continue  # set by the caller of the top level
        key_cost = len(json.dumps(key)) + len(": ")
        value_cost = len(json.dumps(value))
        sizes[key] = (key_cost, value_cost)
        cost = key_cost + value_cost + (_SEP if count else 0)
        if used + cost <= budget:
            kept[key] = value
            used += cost
            count += 1
    for key, (key_cost, _) in sizes.items():
        if key in kept:
            continue
        room = budget - used - key_cost - (_SEP if count else 0)
        cut = _shrink(mapping[key], room) if room > 0 else _NOTHING
        if cut is not _NOTHING:
            kept[key] = cut
            used += budget - used - room + len(json.dumps(cut))
            count += 1
    return {key: kept[key] for key in sizes if key in kept}


def _capped(metadata: dict[str, Any], cut: bool) -> dict[str, Any]:
    if not cut and metadata_size(metadata) <= MAX_METADATA_BYTES:
        return metadata
    kept = _fit_items(metadata, MAX_METADATA_BYTES, reserve=_MARKER_COST)
    kept[TRUNCATED_KEY] = True
    if metadata_size(kept) > MAX_METADATA_BYTES:  # pragma: no cover - the arithmetic above is exact
        return {TRUNCATED_KEY: True}
    return kept


def _storable_as_is(metadata: dict[str, Any]) -> bool:
    """The fast path: one encoding proves most metadata clean (no walk, no copy)."""
    if not metadata:
        return True
    try:
        text = _strict_json(metadata)
    except (TypeError, ValueError, RecursionError):
        return False  # not JSON as it stands: NaN, an object, a circular or too deep container
    if "\\u0000" in text or _LONG_NUMBER.search(text) is not None:
        return False  # a NUL, or maybe an integer beyond 64 bits: the walk decides
    if text.isascii():
        return len(text) <= MAX_METADATA_BYTES
    if _SURROGATE.search(text) is not None:
        return False
    # Short enough that even fully escaped it fits; else measured as SQLite stores it.
    return len(text) * _MAX_ESCAPE <= MAX_METADATA_BYTES or metadata_size(metadata) <= MAX_METADATA_BYTES


def clean_metadata(metadata: Any, notes: dict[str, str] | None = None) -> Any:
    """Metadata both databases accept, capped at `MAX_METADATA_BYTES`; the same object when clean.

    `notes` (refused column values) are stored under `OUT_OF_RANGE_KEY`, ahead of everything else
    so the cap keeps them.
    """
    if not notes and isinstance(metadata, dict) and _storable_as_is(metadata):
        return metadata
    walk = _Walk()
    cleaned = walk.value(metadata, 0)
    if not isinstance(cleaned, dict):
        cleaned = {"value": cleaned}
    if notes:
        cleaned = {OUT_OF_RANGE_KEY: notes, **cleaned}
    return _capped(cleaned, walk.cut)


# --- the record -------------------------------------------------------------------------------


def _in(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def clean_record(record: CallRecord) -> CallRecord:
    """Make `record` acceptable to SQLite and PostgreSQL, in place (see the module docstring).

    Returns `record` itself. Its metadata dict is replaced, never modified, when it needs cleaning.
    """
    changes: dict[str, Any] = {}
    texts = [value for value in _string_values(record) if value is not None]
    try:
        # One scan of all the text columns at once decides the common case (nothing to clean).
        dirty = _dirty("".join(texts))
    except TypeError:  # a value that is not text
        dirty = True
    for name in STRING_FIELDS if dirty else ():
        value = getattr(record, name)
        if value is None:
            continue
        if type(value) is not str:
            changes[name] = clean_text(_describe(value))
        elif _dirty(value):
            changes[name] = clean_text(value)
    for name in _FLOAT_FIELDS:
        value = getattr(record, name)
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            changes[name] = None
    notes: dict[str, str] = {}
    for name, bounds in _NULLABLE_INT_FIELDS:
        value = getattr(record, name)
        if value is not None and not (isinstance(value, int) and _in(value, bounds)):
            changes[name] = None
            notes[name] = _int_text(value) if isinstance(value, int) else clean_text(_describe(value))
    attempt = record.attempt
    if isinstance(attempt, int) and not _in(attempt, _SMALLINT):
        changes["attempt"] = min(max(attempt, _SMALLINT[0]), _SMALLINT[1])
    metadata = clean_metadata(record.metadata, notes)
    if metadata is not record.metadata:
        changes["metadata"] = metadata
    for name, value in changes.items():
        setattr(record, name, value)
    return record
