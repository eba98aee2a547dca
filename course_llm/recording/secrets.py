"""Secrets stay out: mask credentials in every text course_llm stores or logs.

Upstream error text, LiteLLM's log lines and our own log events can all carry a credential: an
upstream that echoes the key it was sent, a URL with `?key=…`, a database URL with its password.
docs/architecture.md ("Untrusted clients") wants them masked wherever a value would be stored or
logged. Two nets, in this order:

1. **Configured secrets**: the values this process was given (each registry model's API key, the
   proxy's master key, the database password). They are registered once at start into a
   process-wide set (`register_secrets(secret_values_from(settings, registry))`; the proxy
   callback reads its LiteLLM config, `secret_values_from_proxy_config`) and masked whatever
   their shape: one `in` check per secret.
2. **Key-shaped patterns**: what looks like a credential although no one configured it here
   (`sk-…`, `AIza…`, `gsk_…`, `tgp_v1_…`, 32+ hex digits, `Bearer …`, `Authorization: …`,
   `x-api-key`/`key=`/`token=`/`password=` parameters, the password of `scheme://user:pw@host`).
   Each shape is a regex that starts with a literal and runs only when an `in` check finds that
   literal: one alternation of all shapes cost 1.3 ms on a 2,000-character message (the regex
   engine tries every branch at every position), this ~30 µs (about 60 µs when it masks).

Where they apply: `redact()` (course_llm/recording/records.py) runs both on every error message a
row takes, so rows, the journal, the CSV export and the client's "all models failed" answer are
clean; `mask_record` runs the configured set over a whole row; course_llm/recording/log_masking.py
applies `mask_secrets` to LiteLLM's, uvicorn's and structlog's log lines.

Kept apart from what they are not: uuids with dashes and `router-<32 hex>` ids are not hex keys
(a hex run that touches a `-` or `_` is left alone); model names and request ids are not masked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from course_llm.recording.records import CallRecord
    from course_llm.routing.registry import Registry
    from course_llm.settings import Settings

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "clear_secrets",
    "mask_configured",
    "mask_deep",
    "mask_patterns",
    "mask_record",
    "mask_secrets",
    "register_secret",
    "register_secrets",
    "registered_secrets",
    "secret_values_from",
    "secret_values_from_proxy_config",
]

MASK = "[REDACTED]"
#: Configured values shorter than this are not masked: a 4-character "key" (tests use `x`) would
#: turn every occurrence of those letters in a message into the mask. Real keys are 20+ characters.
MIN_SECRET_LENGTH = 8

#: Characters of a credential value after `key=`, `Authorization:` … (stops at quotes, brackets).
_VALUE = r"[^\s\"'`&,;<>()\[\]{}]"
#: What precedes a parameter name: `x-api-key`, `api_key`, `access_token` (a separator) …
_NAME_SEPARATORS = frozenset("_-")
#: Characters that make a hex run part of a longer token (a uuid's dashes, `router-<hex>`).
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True, slots=True)
class _Shape:
    """One key shape, matched on the ASCII-lowercased text; its `v` group (else the whole match)
    is masked. The regex runs only when `anchor` is in the text (`in` is many times faster than a
    regex scan). `starts_word`: the match must not continue a word (`task-…` is not `sk-…`);
    `whole_token`: nor touch a token character on either side."""

    anchor: str
    pattern: re.Pattern[str]
    starts_word: bool = True
    whole_token: bool = False


def _shape(anchor: str, pattern: str, *, starts_word: bool = True, whole_token: bool = False) -> _Shape:
    return _Shape(anchor, re.compile(pattern), starts_word, whole_token)


_SHAPES = (
    # scheme://user:password@host: the password only.
    _shape("://", r"://[^\s:/@\"'<>]*:(?P<v>[^\s@/\"'<>]+)@", starts_word=False),
    _shape(
        "authorization",
        r"authorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|digest|token|apikey)\s+)?(?P<v>"
        + _VALUE
        + r"{4,})",
    ),
    _shape("bearer", r"bearer\s+(?P<v>[a-z0-9._~+/=\-]{8,})"),
    # x-api-key, x-goog-api-key, api_key, apikey, key=, access_token, client_secret, password …
    *(
        _shape(anchor, name + r"[\"']?\s*[=:]\s*[\"']?(?P<v>" + _VALUE + r"{6,})")
        for anchor, name in (
            ("key", "key"),
            ("token", "token"),
            ("secret", "secret"),
            ("passw", "passw(?:or)?d"),
            ("pwd", "pwd"),
        )
    ),
    _shape("sk-", r"sk-[a-z0-9_\-]{8,}"),  # OpenAI, Anthropic (sk-ant-…), DeepSeek
    _shape("aiza", r"aiza[0-9a-z_\-]{20,}"),  # Google
    _shape("gsk_", r"gsk_[a-z0-9]{16,}"),  # Groq
    _shape("tgp_v1_", r"tgp_v1_[a-z0-9_\-]{16,}"),  # Together
)
#: Azure-style keys: a bare run of 32+ hex digits. No literal to look for, so a byte-level test
#: (hex digits → "x", everything else → " ", then `"x" * 32 in …`) decides whether to scan.
_HEX = _shape("", r"[0-9a-f]{32,}", whole_token=True)
_HEX_RUN = b"x" * 32
_HEX_BYTES = bytes(ord("x") if chr(b) in "0123456789abcdef" else ord(" ") for b in range(256))
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


#: The registered values, longest first (a secret that contains another is masked whole).
_secrets: tuple[str, ...] = ()


def _starts_word(low: str, start: int, shape: _Shape) -> bool:
    if not shape.starts_word or start == 0:
        return True
    before = low[start - 1]
    if shape.whole_token:
        return before not in _TOKEN_CHARS
    # a parameter name may follow a separator or "api" (apikey); any shape may follow a non-word
    return not before.isalnum() or before in _NAME_SEPARATORS or low.endswith("api", 0, start)


def _spans(low: str) -> list[tuple[int, int]]:
    """(start, end) of every value to mask in `low`, sorted, overlapping ones kept apart."""
    spans: list[tuple[int, int]] = []
    shapes = [shape for shape in _SHAPES if shape.anchor in low]
    if _HEX_RUN in low.encode("utf-8", "replace").translate(_HEX_BYTES):
        shapes.append(_HEX)
    for shape in shapes:
        for match in shape.pattern.finditer(low):
            if not _starts_word(low, match.start(), shape):
                continue
            if shape.whole_token and match.end() < len(low) and low[match.end()] in _TOKEN_CHARS:
                continue
            spans.append(match.span("v") if "v" in shape.pattern.groupindex else match.span())
    spans.sort()
    return spans


def mask_patterns(text: str) -> str:
    """`text` with every key-shaped value masked (see the module docstring for the shapes)."""
    low = text.lower()
    if len(low) != len(text):  # a character whose lowercase is longer: keep offsets aligned
        low = text.translate(_ASCII_LOWER)
    spans = _spans(low)
    if not spans:
        return text
    pieces: list[str] = []
    done = 0
    for start, end in spans:
        if start < done:  # overlaps the span masked last (`Authorization: Bearer …`): widen it
            done = max(done, end)
            continue
        pieces.append(text[done:start])
        pieces.append(MASK)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def mask_configured(text: str) -> str:
    """`text` with every registered secret value masked (no patterns: cheap enough for any value)."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_secrets(text: str) -> str:
    """`text` with registered secrets and key-shaped patterns masked."""
    return mask_patterns(mask_configured(text))


# --- the process-wide set ------------------------------------------------------------------------


def register_secret(value: str | None) -> None:
    """Mask `value` (and its URL-encoded spelling) from now on, in this process."""
    register_secrets([value])


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask every value of `values` from now on; empty and too-short values are skipped."""
    global _secrets
    known = set(_secrets)
    for value in values:
        if not value or len(value.strip()) < MIN_SECRET_LENGTH:
            continue
        known.add(value.strip())
        known.add(quote(value.strip(), safe=""))
    _secrets = tuple(sorted(known, key=len, reverse=True))


def registered_secrets() -> frozenset[str]:
    """The values masked in this process, URL-encoded spellings included."""
    return frozenset(_secrets)


def clear_secrets() -> None:
    """Forget every registered value (tests)."""
    global _secrets
    _secrets = ()


def database_password(url: str) -> str | None:
    """The password inside a database URL, decoded (`postgresql://u:p%40ss@h/db` → `p@ss`)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def secret_values_from(
    settings: Settings | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> set[str]:
    """The values to mask: each registry model's key, the master key, the database and Redis passwords."""
    env = os.environ if environ is None else environ
    values: set[str] = set()
    if registry is not None:
        values.update(env.get(model.key_env, "") for model in registry.models.values())
    if settings is not None:
        if settings.master_key is not None:
            values.add(settings.master_key.get_secret_value())
        values.add(database_password(settings.database_url) or "")
        if settings.redis_url is not None:
            values.add(urlsplit(settings.redis_url.get_secret_value()).password or "")
    values.add(env.get("LITELLM_MASTER_KEY", ""))
    values.discard("")
    return values


#: Parameters of a LiteLLM deployment (or general_settings) that hold a credential.
_CREDENTIAL_KEY = re.compile(r"(?i)(key|token|secret|password)$")


def secret_values_from_proxy_config(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> set[str]:
    """The credentials a LiteLLM proxy config uses: each deployment's `api_key` (an
    `os.environ/NAME` reference is resolved) and `general_settings.master_key`."""
    env = os.environ if environ is None else environ
    candidates: list[tuple[str, Any]] = []
    model_list = config.get("model_list")
    for deployment in model_list if isinstance(model_list, list) else []:
        params = deployment.get("litellm_params") if isinstance(deployment, Mapping) else None
        if isinstance(params, Mapping):
            candidates.extend((str(k), v) for k, v in params.items())
    general = config.get("general_settings")
    if isinstance(general, Mapping):
        candidates.extend((str(k), v) for k, v in general.items())
    values: set[str] = set()
    for name, value in candidates:
        if not _CREDENTIAL_KEY.search(name) or not isinstance(value, str):
            continue
        if value.startswith("os.environ/"):
            value = env.get(value.removeprefix("os.environ/"), "")
        values.add(value)
    values.discard("")
    return values


# --- rows ----------------------------------------------------------------------------------------


#: Deeper containers are left as they are: `clean_record` replaces them with a marker anyway.
_MAX_DEPTH = 64


def mask_deep(value: Any, mask: Callable[[str], str], depth: int = 0) -> Any:
    """`value` with `mask` applied to every string in it, keys included; the very same object
    when nothing changed (so a clean value is neither copied nor compared)."""
    if isinstance(value, str):
        return mask(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        items = [
            (mask(k) if isinstance(k, str) else k, mask_deep(v, mask, depth + 1)) for k, v in value.items()
        ]
        changed = any(
            new[0] is not old[0] or new[1] is not old[1]
            for new, old in zip(items, value.items(), strict=True)
        )
        return dict(items) if changed else value
    if isinstance(value, list | tuple):
        masked = [mask_deep(v, mask, depth + 1) for v in value]
        return masked if any(new is not old for new, old in zip(masked, value, strict=True)) else value
    return value


def mask_record(record: CallRecord) -> CallRecord:
    """Mask the registered secrets in every text column and in metadata (in place; returned).

    Only the configured values: the patterns already ran on `error_message` (`redact()`), the one
    column that holds upstream text; client text such as metadata is masked only where it holds
    one of our own secrets. Metadata is replaced by a masked copy only when it held one. Call it
    before `clean_record`, which then caps what this may have lengthened.
    """
    if not _secrets:
        return record
    from course_llm.recording.clean import STRING_FIELDS  # records imports this module: not at top

    texts: list[str] = []
    for name in STRING_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str):
            texts.append(value)
    _collect_strings(record.metadata, texts, 0)
    # One `in` per secret over every string of the row at once: the common row holds none.
    blob = "\n".join(texts)
    if not any(secret in blob for secret in _secrets):
        return record
    for name in STRING_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str):
            setattr(record, name, mask_configured(value))
    record.metadata = mask_deep(record.metadata, mask_configured)
    return record


def _collect_strings(value: Any, into: list[str], depth: int) -> None:
    """Append every string in `value` (keys included, down to `_MAX_DEPTH`) to `into`."""
    if isinstance(value, str):
        into.append(value)
    elif depth < _MAX_DEPTH and isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                into.append(key)
            _collect_strings(item, into, depth + 1)
    elif depth < _MAX_DEPTH and isinstance(value, list | tuple):
        for item in value:
            _collect_strings(item, into, depth + 1)
