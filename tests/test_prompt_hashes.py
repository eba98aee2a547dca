"""Prompt hashes and the opt-in response preview (course_llm/recording/prompts.py, migration 0003).

Each hash is checked against `hashlib.sha256` of the text the module docstring documents (the
system / user messages' text pieces joined with a newline), through the pure row builders, the
facade (offline mock, both databases) and the real `serve` process called with the openai client.
The preview is off unless `COURSE_LLM_RESPONSE_PREVIEW_CHARS` says otherwise, cut to that many
characters, and masked. Migration 0003 keeps the rows it finds, and old journal lines still decode.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alembic import command
from course_llm import Settings, create_model_router
from course_llm.db import (
    LLMCall,
    create_session_factory,
    dispose_session_factory,
    fetch_request,
    upgrade_database,
)
from course_llm.db.aggregates import HOURLY
from course_llm.db.migrate import alembic_config
from course_llm.recording import prompts
from course_llm.recording.clean import clean_record
from course_llm.recording.prompts import (
    message_text,
    prompt_hashes,
    response_preview,
    set_preview_chars,
    stream_text,
    text_hash,
)
from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import decode, encode
from course_llm.recording.rows import (
    StreamEnd,
    record_from_deployment_success,
    record_from_failure,
    record_from_stream,
    record_from_success,
)
from course_llm.recording.secrets import MASK, clear_secrets, mask_record, register_secret
from course_llm.routing.facade import ModelRouter
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess, free_port, serve_argv
from tests.test_aggregates import blank_database_url  # noqa: F401 (a fixture)
from tests.test_proxy_e2e import (  # noqa: F401 (db_url and upstream are fixtures)
    REQUEST_ID,
    client,
    db_url,
    e2e_registry,
    proxy_env,
    rows_of,
    upstream,
)

Factory = async_sessionmaker[AsyncSession]

SYSTEM = "You are a biology tutor."
USER = "Summarise photosynthesis in two lines."
#: A value registered as a secret in the masking tests (longer than MIN_SECRET_LENGTH).
SECRET = "course-secret-0123456789"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(autouse=True)
def _preview_off() -> Iterator[None]:
    """The preview length is process-wide: each test starts and ends with previews off."""
    set_preview_chars(0)
    yield
    set_preview_chars(0)
    clear_secrets()


# --- the documented text and its hash --------------------------------------------------------------


def test_the_hashed_text_joins_every_message_of_the_role_with_a_newline() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "An answer that is not hashed"},
        {"role": "system", "content": [{"type": "text", "text": "Cite sources."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "part one"},
                {"type": "image_url", "image_url": {"url": "https://example.org/cell.png"}},
                {"type": "text", "text": " part two "},
            ],
        },
    ]

    assert message_text(messages, "system") == "Be brief.\nCite sources."
    assert message_text(messages, "user") == "First question\npart one\n part two "
    assert prompt_hashes(messages) == (
        sha("Be brief.\nCite sources."),
        sha("First question\npart one\n part two "),
    )


def test_nothing_but_the_join_is_normalised() -> None:
    spaced = prompt_hashes([{"role": "user", "content": " Hello "}])[1]
    assert spaced == sha(" Hello ")
    assert spaced != prompt_hashes([{"role": "user", "content": "Hello"}])[1]
    assert prompt_hashes([{"role": "user", "content": "Héllo ✓"}])[1] == sha("Héllo ✓")


@pytest.mark.parametrize(
    "messages",
    [
        None,
        "not a list",
        [],
        [{"role": "assistant", "content": "only an answer"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": None}, "junk", 42],
    ],
)
def test_a_request_without_system_or_user_text_has_null_hashes(messages: Any) -> None:
    assert prompt_hashes(messages) == (None, None)


def test_a_lone_surrogate_in_client_text_is_hashed_not_refused() -> None:
    text = "broken \ud800 text"
    assert text_hash(text) == hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# --- the preview -----------------------------------------------------------------------------------


def test_the_preview_is_off_by_default_and_cut_to_the_length_set() -> None:
    answer = "Photosynthesis turns light into chemical energy."
    assert prompts.preview_chars() == 0
    assert response_preview(answer) is None

    set_preview_chars(14)
    assert response_preview(answer) == answer[:14]
    assert response_preview("short") == "short"
    assert response_preview(None) is None


def test_a_negative_preview_length_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        set_preview_chars(-1)
    with pytest.raises(ValueError):
        Settings(response_preview_chars=-1)
    assert Settings().response_preview_chars == 0


def test_a_secret_in_the_answer_is_masked_before_the_cut() -> None:
    register_secret(SECRET)
    answer = f"Your key is {SECRET} and more text after it."
    # The cut falls inside the secret: a cut first would keep its head.
    preview = response_preview(answer, len("Your key is ") + 6)
    assert preview is not None and SECRET[:6] not in preview
    assert response_preview(answer, 200) == f"Your key is {MASK} and more text after it."
    # A key shape nobody registered is masked as well (an answer is upstream text).
    assert "sk-abcdefghijklmnop" not in (response_preview("leaked sk-abcdefghijklmnop", 100) or "")


def test_the_preview_is_cleaned_like_every_text_column() -> None:
    set_preview_chars(50)
    record = record_from_deployment_success(_request(), _response("bad\x00 answer"), source="sdk")
    assert clean_record(mask_record(record)).response_preview == "bad answer"


def test_stream_text_joins_the_first_choices_deltas() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Light "}}]},
        {"choices": []},
        {"choices": [{"index": 0, "delta": {"content": "energy"}, "finish_reason": "stop"}]},
    ]
    assert stream_text(chunks) == "Light energy"
    assert stream_text([]) is None


# --- the row builders (the SDK callback's and the proxy's pure half) -------------------------------


def _messages() -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]


def _request(**extra: Any) -> dict[str, Any]:
    return {
        "messages": _messages(),
        "metadata": {"course_llm_request_id": "req-1", "model_group": "text_processing/default"},
        "model_info": {"id": "text_processing/default/deepseek-chat"},
        **extra,
    }


def _response(content: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def test_every_row_builder_hashes_the_requests_prompts() -> None:
    expected = (sha(SYSTEM), sha(USER))
    success = record_from_deployment_success(_request(), _response("ok"), source="sdk")
    failure = record_from_failure(_request(), RuntimeError("boom"), source="sdk")
    stream = record_from_stream(_request(stream=True), StreamEnd("complete", {}), source="proxy")
    background = record_from_success(
        {"messages": _messages(), "litellm_params": {"metadata": {"course_llm_request_id": "req-1"}}},
        _response("ok"),
        None,
        None,
        source="sdk",
    )
    for record in (success, failure, stream, background):
        assert (record.system_prompt_hash, record.user_prompt_hash) == expected


def test_the_background_success_event_finds_the_prompt_in_the_standard_logging_object() -> None:
    kwargs = {"standard_logging_object": {"messages": [{"role": "user", "content": USER}]}}
    record = record_from_success(kwargs, _response("ok"), None, None, source="proxy")
    assert (record.system_prompt_hash, record.user_prompt_hash) == (None, sha(USER))


def test_only_answers_get_a_preview() -> None:
    set_preview_chars(5)
    assert record_from_deployment_success(
        _request(), _response("Chlorophyll"), source="sdk"
    ).response_preview == ("Chlor")
    assert record_from_success({}, _response("Chlorophyll"), None, None, source="sdk").response_preview == (
        "Chlor"
    )
    assert record_from_failure(_request(), RuntimeError("boom"), source="sdk").response_preview is None
    tool_call = record_from_deployment_success(_request(), _response(None), source="sdk")
    assert tool_call.response_preview is None
    streamed = record_from_stream(
        _request(stream=True), StreamEnd("incomplete", {}, text="Chlorophyll"), source="proxy"
    )
    assert streamed.response_preview == "Chlor"  # what was received, even of a cut stream


# --- the journal -----------------------------------------------------------------------------------


def test_a_journal_line_from_before_the_new_columns_still_decodes() -> None:
    record = CallRecord(
        request_id="r-old",
        attempt=1,
        action="text_processing",
        strategy="default",
        served_strategy="default",
        provider="deepseek",
        model_id="deepseek-chat",
        success=True,
        source="sdk",
    )
    old = record.to_json()
    for key in ("system_prompt_hash", "user_prompt_hash", "response_preview"):
        del old[key]
    decoded = decode(json.dumps(old).encode() + b"\n")
    assert decoded == record

    record.system_prompt_hash, record.response_preview = sha(SYSTEM), "The cell"
    assert decode(encode(record)) == record


# --- the facade (offline mock), both databases -----------------------------------------------------


@pytest.fixture
async def facade(database_url: str, session_factory: Factory, tmp_path: Path) -> AsyncIterator[ModelRouter]:
    settings = Settings(
        database_url=database_url, mock=True, spool_path=tmp_path / "journal", response_preview_chars=40
    )
    async with create_model_router(settings, session_factory) as router:
        yield router


async def test_a_facade_call_records_the_hashes_and_the_preview(
    facade: ModelRouter, session_factory: Factory
) -> None:
    response = await facade.complete("text_processing", USER, system_prompt=SYSTEM)
    await facade.flush()

    [row] = await fetch_request(session_factory, response.request_id)
    assert (row.system_prompt_hash, row.user_prompt_hash) == (sha(SYSTEM), sha(USER))
    assert len(response.content) > 40
    assert row.response_preview == response.content[:40]


async def test_failed_facade_attempts_carry_the_hashes_but_no_preview(
    facade: ModelRouter, session_factory: Factory
) -> None:
    prompt = "outline [mock-fail deepseek-chat=503]"
    response = await facade.complete("text_processing", prompt)
    await facade.flush()

    rows = await fetch_request(session_factory, response.request_id)
    assert [row.success for row in rows] == [False, False, True]
    assert {(row.system_prompt_hash, row.user_prompt_hash) for row in rows} == {(None, sha(prompt))}
    assert [row.response_preview is None for row in rows] == [True, True, False]


async def test_a_secret_the_answer_repeats_is_masked_in_the_stored_preview(
    facade: ModelRouter, session_factory: Factory
) -> None:
    register_secret(SECRET)
    # The mock answers with the prompt's last line in it.
    response = await facade.complete("text_processing", f"{SECRET}", strategy="default")
    await facade.flush()

    assert SECRET in response.content  # the caller's answer is not the row
    [row] = await fetch_request(session_factory, response.request_id)
    assert row.response_preview is not None and SECRET not in row.response_preview


async def test_without_the_setting_no_preview_is_stored(
    database_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    set_preview_chars(99)  # a previous router's setting does not outlive a new router's
    settings = Settings(database_url=database_url, mock=True, spool_path=tmp_path / "journal")
    async with create_model_router(settings, session_factory) as router:
        response = await router.complete("text_processing", USER)
        await router.flush()
    [row] = await fetch_request(session_factory, response.request_id)
    assert row.response_preview is None
    assert row.user_prompt_hash == sha(USER)


# --- the migration ---------------------------------------------------------------------------------

#: llm_calls' columns at revision 0002, to seed a database migrated that far.
_OLD_COLUMNS = [
    c
    for c in CallRecord.__dataclass_fields__
    if c not in {"system_prompt_hash", "user_prompt_hash", "response_preview"}
]


def test_upgrading_from_0002_keeps_the_rows_and_a_downgrade_keeps_them_too(
    blank_database_url: str,  # noqa: F811 (the imported fixture)
) -> None:
    upgrade_database(blank_database_url, "0002")
    columns = LLMCall.__table__.columns
    table = sa.table("llm_calls", *(sa.column(c.name, c.type) for c in columns if c.name in _OLD_COLUMNS))

    def old_rows(numbers: range) -> list[dict[str, Any]]:
        records = [
            CallRecord(
                request_id=f"r-{n}",
                attempt=1,
                action="text_processing",
                strategy="default",
                served_strategy="default",
                provider="deepseek",
                model_id="deepseek-chat",
                success=True,
                source="proxy",
                tokens_in=n,
            )
            for n in numbers
        ]
        return [{name: value for name, value in r.as_dict().items() if name in _OLD_COLUMNS} for r in records]

    async def run(work: Any) -> Any:
        factory = create_session_factory(blank_database_url)
        try:
            async with factory() as session, session.begin():
                return await work(session)
        finally:
            await dispose_session_factory(factory)

    async def seed(session: AsyncSession, numbers: range) -> None:
        await session.execute(sa.insert(table), old_rows(numbers))

    async def read(session: AsyncSession) -> list[tuple[Any, ...]]:
        columns = "request_id, tokens_in, system_prompt_hash, user_prompt_hash, response_preview"
        result = await session.execute(sa.text(f"SELECT {columns} FROM llm_calls ORDER BY request_id"))
        return [tuple(row) for row in result]

    async def count(session: AsyncSession) -> int:
        return int(await session.scalar(sa.text("SELECT count(*) FROM llm_calls")) or 0)

    async def hourly_calls(session: AsyncSession) -> int:
        return int(await session.scalar(sa.text(f"SELECT sum(calls) FROM {HOURLY.name}")) or 0)

    asyncio.run(run(lambda session: seed(session, range(5))))
    upgrade_database(blank_database_url)
    assert asyncio.run(run(read)) == [(f"r-{n}", n, None, None, None) for n in range(5)]

    counted = asyncio.run(run(hourly_calls))
    command.downgrade(alembic_config(blank_database_url), "0002")
    assert asyncio.run(run(count)) == 5
    # The aggregates' trigger survived the downgrade: a new row is still counted.
    asyncio.run(run(lambda session: seed(session, range(5, 6))))
    assert asyncio.run(run(hourly_calls)) > counted > 0


# --- the real proxy ---------------------------------------------------------------------------------

PREVIEW = 12


@pytest.fixture(scope="module")
def preview_proxy(
    upstream: FakeUpstream,  # noqa: F811 (the imported fixture)
    db_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("preview-proxy")
    registry = e2e_registry(upstream, tmp / "models.yaml")
    port = free_port()
    env = {**proxy_env(db_url, tmp), "COURSE_LLM_RESPONSE_PREVIEW_CHARS": str(PREVIEW)}
    process = ProxyProcess(
        serve_argv("--registry", str(registry), "--port", str(port)), env, port, tmp / "proxy.log"
    ).start()
    yield process
    process.stop()


@pytest.mark.e2e
async def test_a_proxy_call_records_the_hashes_and_the_preview(
    preview_proxy: ProxyProcess,
    db_url: str,  # noqa: F811
) -> None:
    raw = await client(preview_proxy).chat.completions.with_raw_response.create(
        model="text_processing",
        messages=[
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Summarise"}, {"type": "text", "text": "cells"}],
            },
        ],
    )
    answer = raw.parse().choices[0].message.content
    [row] = await rows_of(db_url, raw.headers[REQUEST_ID], 1)
    assert (row.system_prompt_hash, row.user_prompt_hash) == (sha(SYSTEM), sha("Summarise\ncells"))
    assert answer and len(answer) > PREVIEW
    assert row.response_preview == answer[:PREVIEW]


@pytest.mark.e2e
async def test_a_streamed_proxy_call_records_the_hashes(
    preview_proxy: ProxyProcess,
    db_url: str,  # noqa: F811
) -> None:
    raw = await client(preview_proxy).chat.completions.with_raw_response.create(
        model="text_processing", messages=[{"role": "user", "content": USER}], stream=True
    )
    stream = raw.parse()
    async for _ in stream:
        pass
    [row] = await rows_of(db_url, raw.headers[REQUEST_ID], 1)
    assert row.stream is True
    assert (row.system_prompt_hash, row.user_prompt_hash) == (None, sha(USER))
