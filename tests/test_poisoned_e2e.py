"""End to end: poisoned request bodies through the real proxy end as clean rows, and every usage
endpoint still answers (docs/architecture.md, "Untrusted clients" and "Durability").

A client can put a NUL character, a lone surrogate, NaN or ±Infinity, or a 300 KB string into
`user` and `metadata`. PostgreSQL refuses NUL and NaN outright, neither driver can encode a lone
surrogate, and SQLite stores NaN only to fail every page that shows the row afterwards. So the
proxy cleans each row before storing it (course_llm/recording/clean.py): this module sends such
bodies as raw JSON text (the openai client cannot spell NaN or a lone surrogate), finds each row
by the request id the proxy returned, and checks it is there exactly once, with the cleaned values,
on SQLite and on PostgreSQL. A lone surrogate never gets that far: LiteLLM refuses the body with a
400 and there is no row. One proxy per database serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from course_llm.db import LLMCall, create_session_factory, dispose_session_factory
from course_llm.recording.clean import MAX_METADATA_BYTES, TRUNCATED_KEY, metadata_size
from course_llm.recording.journal import rejected_path
from tests.fake_upstream import FakeUpstream
from tests.proxy_process import ProxyProcess
from tests.test_metrics import sample
from tests.test_proxy_e2e import (  # noqa: F401 (db_url, proxy and upstream are fixtures)
    KEY,
    REQUEST_ID,
    db_url,
    proxy,
    proxy_env,
    rows_of,
    upstream,
)

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {KEY}"}
#: Over the 16 KB cap many times; not one repeated character, so a prefix is told from a copy.
BLOB = "".join(f"{i:06d}," for i in range(300 * 1024 // 7))
#: A lone high surrogate, as the JSON escape: LiteLLM's body parser refuses it (the test says why).
LONE_SURROGATE = r'"user": "\ud800lone"'


@dataclass(frozen=True)
class Poison:
    """One poisoned chat request: the raw JSON it adds to a normal body, and the row it must leave."""

    name: str
    #: Top-level members, as JSON text, added after `model` and `messages`.
    members: str
    check: Callable[[LLMCall], None]


def _nul_in_user(row: LLMCall) -> None:
    assert row.end_user == "evex"
    assert row.metadata_ == {}


def _nul_tenant_and_nan(row: LLMCall) -> None:
    assert row.tenant_id == "acme"
    assert row.metadata_ == {"score": None}


def _infinities(row: LLMCall) -> None:
    assert row.metadata_ == {"score": None, "neg": None}


def _over_the_cap(row: LLMCall) -> None:
    assert row.operation == "op"
    assert row.metadata_[TRUNCATED_KEY] is True
    assert set(row.metadata_) == {"blob", TRUNCATED_KEY}
    kept = row.metadata_["blob"]
    assert 1000 < len(kept) < len(BLOB) and BLOB.startswith(kept)  # cut to fit, not dropped
    assert metadata_size(row.metadata_) <= MAX_METADATA_BYTES


def _nul_in_a_key(row: LLMCall) -> None:
    assert row.operation == "keyed"
    assert row.metadata_ == {"key": "v"}


POISONS = [
    Poison("nul_in_user", r'"user": "eve\u0000x"', _nul_in_user),
    Poison(
        "nul_in_tenant_and_nan_in_metadata",
        r'"metadata": {"tenant_id": "acme\u0000", "score": NaN}',
        _nul_tenant_and_nan,
    ),
    Poison("infinities_in_metadata", '"metadata": {"score": Infinity, "neg": -Infinity}', _infinities),
    Poison(
        "metadata_over_the_cap",
        '"metadata": {"operation": "op", "blob": ' + json.dumps(BLOB) + "}",
        _over_the_cap,
    ),
    Poison("nul_in_a_metadata_key", r'"metadata": {"operation": "keyed", "ke\u0000y": "v"}', _nul_in_a_key),
]


def raw_body(members: str) -> bytes:
    """A normal chat request to a model that answers, with `members` (raw JSON text) added."""
    messages = json.dumps([{"role": "user", "content": "Summarise cell biology."}])
    return f'{{"model": "text_processing", "messages": {messages}, {members}}}'.encode()


@dataclass(frozen=True)
class Sent:
    response: httpx.Response
    #: Requests the fake upstream received while the proxy handled this one.
    upstream_calls: int


@pytest.fixture(scope="module")
def sent(proxy: ProxyProcess, upstream: FakeUpstream) -> Iterator[dict[str, Sent]]:  # noqa: F811
    """Every poison (and the lone surrogate) sent once to this database's proxy, by name."""
    upstream.reset()
    bodies = {poison.name: poison.members for poison in POISONS}
    # Last, a clean request: once its row is in, a row of any request before it would be too.
    bodies |= {"lone_surrogate": LONE_SURROGATE, "control": '"user": "control"'}
    results: dict[str, Sent] = {}
    with httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=60) as http:
        for name, members in bodies.items():
            before = len(upstream.requests())
            response = http.post(
                "/v1/chat/completions",
                content=raw_body(members),
                headers={"Content-Type": "application/json"},
            )
            results[name] = Sent(response, len(upstream.requests()) - before)
    yield results


def answered(sent: Sent, proxy: ProxyProcess) -> str:  # noqa: F811
    """The request id of a 200 answer (the proxy's log on anything else)."""
    response = sent.response
    assert response.status_code == 200, f"{response.status_code} {response.text[:500]}\n{proxy.log()[-3000:]}"
    assert response.json()["choices"][0]["message"]["content"]
    assert sent.upstream_calls == 1
    return response.headers[REQUEST_ID]


async def answered_ids(sent: dict[str, Sent], proxy: ProxyProcess, db_url: str) -> dict[str, str]:  # noqa: F811
    """Poison name → request id of every answered poison, once each has its one row."""
    ids = {poison.name: answered(sent[poison.name], proxy) for poison in POISONS}
    found = await asyncio.gather(*(rows_of(db_url, request_id, 1) for request_id in ids.values()))
    assert [len(rows) for rows in found] == [1] * len(ids), proxy.log()[-3000:]
    return ids


async def scalar(db_url: str, statement: sa.Select[Any]) -> Any:  # noqa: F811
    factory = create_session_factory(db_url)
    try:
        async with factory() as session:
            return await session.scalar(statement)
    finally:
        await dispose_session_factory(factory)


@pytest.mark.parametrize("poison", POISONS, ids=[poison.name for poison in POISONS])
async def test_a_poisoned_body_is_answered_and_stored_once_with_cleaned_values(
    proxy: ProxyProcess,  # noqa: F811
    db_url: str,  # noqa: F811
    sent: dict[str, Sent],
    poison: Poison,
) -> None:
    request_id = answered(sent[poison.name], proxy)
    rows = await rows_of(db_url, request_id, 1)
    assert len(rows) == 1, f"{len(rows)} rows for {request_id}\n{proxy.log()[-3000:]}"
    [row] = rows
    assert (row.request_id, row.action, row.model_id, row.success, row.attempt) == (
        request_id,
        "text_processing",
        "deepseek-chat",
        True,
        1,
    )
    poison.check(row)


async def test_metadata_over_the_cap_is_stored_as_at_most_16_kb_of_json(
    proxy: ProxyProcess,  # noqa: F811
    db_url: str,  # noqa: F811
    sent: dict[str, Sent],
) -> None:
    request_id = answered(sent["metadata_over_the_cap"], proxy)
    assert len(await rows_of(db_url, request_id, 1)) == 1
    # The column as the database holds it: JSON text on SQLite, JSONB rendered as text on PostgreSQL.
    text = await scalar(
        db_url,
        sa.select(sa.cast(sa.column("metadata"), sa.Text))
        .select_from(sa.table("llm_calls"))
        .where(sa.column("request_id") == request_id),
    )
    assert 10_000 < len(text.encode()) <= MAX_METADATA_BYTES
    assert json.loads(text)[TRUNCATED_KEY] is True


async def test_a_lone_surrogate_escape_is_refused_with_a_400_that_says_why_and_leaves_no_row(
    proxy: ProxyProcess,  # noqa: F811
    db_url: str,  # noqa: F811
    sent: dict[str, Sent],
) -> None:
    # LiteLLM's body parser refuses it before any hook runs: json.loads accepts the escape, but
    # the parsed body cannot be encoded as UTF-8 (litellm/proxy/common_utils/http_parsing_utils.py).
    refused = sent["lone_surrogate"]
    assert refused.response.status_code == 400, refused.response.text[:500]
    error = refused.response.json()["error"]
    assert error["message"].startswith("Invalid JSON payload: no low surrogate in string")
    assert (error["param"], error["type"]) == ("request_body", "invalid_request_error")
    assert refused.upstream_calls == 0
    assert REQUEST_ID not in refused.response.headers
    assert len(await rows_of(db_url, answered(sent["control"], proxy), 1)) == 1
    lone = await scalar(
        db_url, sa.select(sa.func.count()).select_from(LLMCall).where(LLMCall.end_user.like("%lone%"))
    )
    assert lone == 0


async def test_every_usage_endpoint_answers_200_after_the_poisoned_requests(
    proxy: ProxyProcess,  # noqa: F811
    db_url: str,  # noqa: F811
    sent: dict[str, Sent],
) -> None:
    ids = await answered_ids(sent, proxy, db_url)
    async with httpx.AsyncClient(base_url=proxy.base_url, headers=AUTH, timeout=30) as http:
        calls = await http.get("/usage/calls", params={"page_size": "200"})
        assert calls.status_code == 200, calls.text[:500]
        listed = {row["request_id"]: row for row in calls.json()["data"]}
        assert set(ids.values()) <= set(listed)
        assert listed[ids["nul_in_user"]]["end_user"] == "evex"
        assert listed[ids["infinities_in_metadata"]]["metadata"] == {"score": None, "neg": None}
        assert listed[ids["nul_in_a_metadata_key"]]["metadata"] == {"key": "v"}

        summary = await http.get("/usage/summary", params={"group_by": "tenant_id,model_id"})
        assert summary.status_code == 200, summary.text[:500]
        groups = {(group["tenant_id"], group["model_id"]) for group in summary.json()["groups"]}
        assert ("acme", "deepseek-chat") in groups

        for name, request_id in ids.items():
            detail = await http.get(f"/usage/requests/{request_id}")
            assert detail.status_code == 200, (name, detail.text[:500])
            [attempt] = detail.json()["attempts"]
            assert attempt["request_id"] == request_id
        nan = (await http.get(f"/usage/requests/{ids['nul_in_tenant_and_nan_in_metadata']}")).json()
        assert (nan["attempts"][0]["tenant_id"], nan["attempts"][0]["metadata"]) == ("acme", {"score": None})

        metrics = await http.get("/metrics")
        assert metrics.status_code == 200, metrics.text[:500]
        assert "course_llm_calls_total" in metrics.text

        dashboard = await http.get("/dashboard")
        assert dashboard.status_code == 200
        assert dashboard.headers["content-type"].startswith("text/html")


async def test_no_poisoned_row_is_set_aside_as_rejected(
    proxy: ProxyProcess,  # noqa: F811
    db_url: str,  # noqa: F811
    sent: dict[str, Sent],
) -> None:
    await answered_ids(sent, proxy, db_url)
    metrics = httpx.get(f"{proxy.base_url}/metrics", headers=AUTH, timeout=30)
    assert sample(metrics.text, "course_llm_rows_rejected_total") == 0, metrics.text
    journal = proxy_env(db_url, proxy.log_path.parent)["COURSE_LLM_SPOOL_PATH"]
    rejected = rejected_path(Path(journal))
    assert not rejected.exists() or rejected.read_text() == "", rejected.read_text()[:2000]
