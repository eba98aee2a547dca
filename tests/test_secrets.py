"""Secret masking (course_llm/recording/secrets.py and log_masking.py): the key shapes, the
configured values, and where they apply (rows, LiteLLM's log records, structlog events)."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from course_llm.recording.log_masking import SecretMaskingFilter, install_log_masking
from course_llm.recording.records import CallRecord, new_id, redact
from course_llm.recording.rows import record_from_failure
from course_llm.recording.secrets import (
    MASK,
    clear_secrets,
    mask_record,
    mask_secrets,
    register_secret,
    register_secrets,
    registered_secrets,
    secret_values_from,
    secret_values_from_proxy_config,
)
from course_llm.routing.registry import load_registry
from course_llm.settings import Settings

ROOT = Path(__file__).parent.parent
AZURE_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_registered_secrets() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


# --- key shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx.", "sk-proj-abcdefghijklmnop", ""),
        ("invalid x-api-key sk-ant-api03-AbCdEf0123456789xyz", "sk-ant-api03-AbCdEf0123", ""),
        ("models/x:generateContent?key=AIzaSyA1234567890abcdefghijklmnopq", "AIzaSyA1234567890abc", "?key="),
        ("groq says gsk_abcdefghijklmnopqrstuvwxyz0123456789 is revoked", "gsk_abcdefghijklmnop", ""),
        ("together: tgp_v1_AbCdEfGhIjKlMnOpQrStUvWxYz012345 invalid", "tgp_v1_AbCdEfGhIjKl", ""),
        (f"Access denied: {AZURE_KEY} is not a valid key", AZURE_KEY, "denied: "),
        (f"subscription key '{AZURE_KEY.upper()}'", AZURE_KEY.upper(), "key '"),
        ("sent Authorization: Bearer abc.def.ghi-jkl_123", "abc.def.ghi", "Bearer "),
        ("headers {'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA", "Basic "),
        ("authorization=Token 9f8e7d6c5b4a", "9f8e7d6c5b4a", "Token "),
        ("request had x-api-key: abcdef123456", "abcdef123456", "x-api-key: "),
        ("x-goog-api-key=abcdef123456 refused", "abcdef123456", "x-goog-api-key="),
        ("{'api_key': 'abcdefgh12'}", "abcdefgh12", "'api_key': '"),
        ("https://host/v1?token=abcdefgh1234&x=1", "abcdefgh1234", "?token="),
        ("client_secret=ABCDEFGH99 and password: hunter22", "hunter22", "password: "),
        ("cannot connect to postgresql+asyncpg://app:s3cr%40t!x@db:5432/prod", "s3cr%40t!x", "app:"),
        ("redis://:topsecretpw@cache:6379/0", "topsecretpw", "redis://:"),
    ],
)
def test_each_key_shape_is_masked_and_its_label_kept(text: str, secret: str, kept: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert f"{kept}{MASK}" in masked, masked


def test_only_the_password_of_a_url_is_masked() -> None:
    assert mask_secrets("postgresql://app:pw-1234@db:5432/prod") == f"postgresql://app:{MASK}@db:5432/prod"


ORDINARY = [
    "the upstream answered 503 Service Unavailable; retry later",
    "model gemini-2.5-flash, claude-sonnet-4-5, gpt-4o-mini, deepseek-chat, gemini/gemini-2.5-pro",
    "all models failed for video_analysis/quality: #1 gemini-2.5-pro (quality): 429 RateLimitError",
    "max_tokens=4096 is too large; monkey=bananas; task-abcdefghijkl; risk-assessment-framework",
    "KeyError: 'messages' and a key: x and token counts: 512",
    "http://127.0.0.1:4000/v1/chat/completions and https://user@host/path and http://host:8080/a@b",
    "2025-03-01T12:00:00+00:00 took 1234.5 ms, cost 0.000123 USD",
    "sha in git: 4b825dc642cb6eb9a060e54bf8d69288fbee4904-dirty",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_secrets(text) == text


@pytest.mark.parametrize(
    "identifier",
    [
        str(new_id()),  # our request and row ids: uuid7
        str(uuid.uuid4()),
        f"router-{uuid.uuid4().hex}",  # a facade router's id in metadata
        f"chatcmpl-{uuid.uuid4().hex[:24]}",
        f"litellm_call_id={uuid.uuid4()}",
        f"course_llm_router_{uuid.uuid4().hex}",
    ],
)
def test_ids_are_not_mistaken_for_hex_keys(identifier: str) -> None:
    text = f"request {identifier} failed"
    assert mask_secrets(text) == text


def test_a_bare_32_hex_run_is_a_key_but_a_shorter_one_is_not() -> None:
    assert mask_secrets(f"key {AZURE_KEY}.") == f"key {MASK}."
    assert mask_secrets(f"commit {AZURE_KEY[:31]}") == f"commit {AZURE_KEY[:31]}"


def test_text_with_wide_lowercase_characters_still_masks_at_the_right_place() -> None:
    # "İ".lower() is two characters: the masking must not shift its cut.
    text = "İstanbul İ sk-proj-abcdefghijklmnopqrstuvwx end"
    assert mask_secrets(text) == f"İstanbul İ {MASK} end"


# --- configured secrets --------------------------------------------------------------------------


def test_a_registered_value_of_no_known_shape_is_masked_everywhere() -> None:
    secret = "Zq7pL2-course-credential"
    assert mask_secrets(f"echo {secret}!") == f"echo {secret}!"
    register_secret(secret)
    assert mask_secrets(f"echo {secret}! and again:{secret}") == f"echo {MASK}! and again:{MASK}"


def test_a_registered_value_is_also_masked_url_encoded() -> None:
    register_secret("p@ss word/1234")
    assert mask_secrets("url ?pw=p%40ss%20word%2F1234 done") == f"url ?pw={MASK} done"


def test_a_registered_value_containing_another_is_masked_whole() -> None:
    register_secrets(["abcdefgh", "abcdefgh-longer-secret"])
    assert mask_secrets("x abcdefgh-longer-secret y") == f"x {MASK} y"


def test_short_and_empty_values_are_not_registered() -> None:
    register_secrets(["x", "", None, "1234567"])
    assert registered_secrets() == frozenset()
    assert mask_secrets("x marks 1234567") == "x marks 1234567"


def test_secret_values_come_from_the_registry_keys_the_master_key_and_the_database_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = load_registry(ROOT / "config" / "models.yaml")
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master-000000")
    settings = Settings(database_url="postgresql://app:db%2Fpass-123@db:5432/prod")
    environ = {
        "GEMINI_API_KEY": "gemini-key-1234",
        "ANTHROPIC_API_KEY": "anthropic-key-1234",
        "OPENAI_API_KEY": "openai-key-1234",
        "DEEPSEEK_API_KEY": "",
        "UNRELATED_VAR": "not-a-secret-value",
    }
    assert secret_values_from(settings, registry, environ) == {
        "gemini-key-1234",
        "anthropic-key-1234",
        "openai-key-1234",
        "sk-master-000000",
        "db/pass-123",
    }


def test_secret_values_of_a_proxy_config_resolve_environment_references() -> None:
    config = {
        "model_list": [
            {
                "litellm_params": {
                    "model": "openai/x",
                    "api_key": "os.environ/E2E_KEY",
                    "api_base": "http://h",
                }
            },
            {"litellm_params": {"model": "azure/y", "api_key": "literal-key-5678"}},
            {"litellm_params": {"model": "z", "api_key": "os.environ/MISSING"}},
            "not a deployment",
        ],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY", "custom_auth": "m.f"},
    }
    environ = {"E2E_KEY": "env-key-12345678", "LITELLM_MASTER_KEY": "sk-proxy-master"}
    assert secret_values_from_proxy_config(config, environ) == {
        "env-key-12345678",
        "literal-key-5678",
        "sk-proxy-master",
    }


# --- rows ----------------------------------------------------------------------------------------


def test_redact_masks_a_registered_key_before_cutting_the_message() -> None:
    register_secret("Zq7pL2-course-credential")
    # The key straddles the cut: masking after the cut would leave its head in the row.
    message = "x" * 90 + "Zq7pL2-course-credential" + "y" * 100
    redacted = redact(message, limit=100)
    assert "Zq7pL2" not in redacted and len(redacted) <= 100


def test_a_failure_row_never_holds_the_key_the_upstream_echoed() -> None:
    register_secret("Zq7pL2-course-credential")
    error = RuntimeError("401 Incorrect API key provided: Zq7pL2-course-credential")
    record = record_from_failure({"model": "m", "metadata": {}}, error, source="proxy")
    assert record.error_message == f"401 Incorrect API key provided: {MASK}"


def _record(**values: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "request_id": "r",
        "attempt": 1,
        "action": "a",
        "strategy": "s",
        "served_strategy": "s",
        "provider": "p",
        "model_id": "m",
        "success": False,
        "source": "proxy",
    }
    return CallRecord(**(fields | values))


def test_mask_record_masks_registered_values_in_every_text_column_and_in_metadata() -> None:
    register_secret("sk-master-000000")
    metadata = {"note": "key is sk-master-000000", "nested": [{"k": "sk-master-000000"}], "n": 1}
    record = mask_record(
        _record(tenant_id="sk-master-000000", end_user="u sk-master-000000", metadata=metadata)
    )
    assert (record.tenant_id, record.end_user) == (MASK, f"u {MASK}")
    assert record.metadata == {"note": f"key is {MASK}", "nested": [{"k": MASK}], "n": 1}
    assert metadata["note"] == "key is sk-master-000000"  # the caller's dict is not changed


def test_mask_record_leaves_a_clean_record_and_its_metadata_object_alone() -> None:
    register_secret("sk-master-000000")
    metadata = {"tags": ["a"], "router": f"router-{uuid.uuid4().hex}"}
    record = _record(metadata=metadata)
    assert mask_record(record).metadata is metadata


def test_mask_record_survives_what_a_client_can_send() -> None:
    register_secret("sk-master-000000")
    deep: Any = "sk-master-000000"
    for _ in range(10_000):  # deeper than the recursion limit: left for clean_record to cut
        deep = [deep]
    record = _record(tenant_id=12345, metadata={"deep": deep, "top": "sk-master-000000"})
    mask_record(record)
    assert record.metadata["top"] == MASK and record.tenant_id == 12345


# --- logs ----------------------------------------------------------------------------------------


@pytest.fixture
def litellm_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """LiteLLM's proxy logger with the filter and a handler writing into a buffer."""
    logger = logging.getLogger("course_llm.tests.litellm_like")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.addFilter(masking := SecretMaskingFilter())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, buffer
    logger.removeHandler(handler)
    logger.removeFilter(masking)


def test_the_log_filter_masks_message_arguments_and_traceback(
    litellm_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = litellm_log
    register_secret("Zq7pL2-course-credential")
    logger.error("calling %s with key=%s", "https://x/?key=AIzaSyA1234567890abcdefghijklmnopq", AZURE_KEY)
    try:
        raise ValueError("upstream said: bad key Zq7pL2-course-credential")
    except ValueError:
        logger.exception("call failed: %s", {"Authorization": "Bearer sk-abcdefghijklmnop"})
    text = buffer.getvalue()
    for secret in ("AIzaSyA123", AZURE_KEY, "Zq7pL2-course-credential", "sk-abcdefghijklmnop"):
        assert secret not in text
    assert "ValueError: upstream said: bad key [REDACTED]" in text  # the traceback is still there
    assert text.count(MASK) >= 4


def test_the_log_filter_keeps_argument_types_that_formatters_rely_on(
    litellm_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = litellm_log
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/health?key=abcdefgh1234", "1.1", 200)
    assert buffer.getvalue() == f'INFO 127.0.0.1:5000 - "GET /health?key={MASK} HTTP/1.1" 200\n'


def test_install_log_masking_filters_litellm_loggers_once_and_masks_structlog_output() -> None:
    saved = structlog.get_config()
    try:
        install_log_masking()
        install_log_masking()
        for name in ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router", "uvicorn.error"):
            assert sum(isinstance(f, SecretMaskingFilter) for f in logging.getLogger(name).filters) == 1
        out = io.StringIO()
        processors = structlog.get_config()["processors"]
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(out))
        register_secret("Zq7pL2-course-credential")
        log = structlog.get_logger()
        log.error("llm_call_failed", error="echo Zq7pL2-course-credential", url="postgresql://u:pw-1234@h/db")
        try:
            raise RuntimeError("key=abcdefgh1234")
        except RuntimeError:
            log.exception("llm_call_dropped", request_id=str(new_id()))
        text = out.getvalue()
        assert "Zq7pL2" not in text and "pw-1234" not in text and "abcdefgh1234" not in text
        assert "RuntimeError" in text and "llm_call_dropped" in text
        assert processors.index(processors[-1]) == len(processors) - 1  # the renderer stays last
    finally:
        structlog.configure(**saved)
