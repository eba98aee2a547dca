"""The hourly and daily aggregates equal the raw rows, whatever wrote the rows and whatever was pruned.

Each comparison is `tests.aggregates_check.assert_aggregates_equal_raw`: one summary from the
aggregates and from the raw rows, counts, tokens and rates equal, cost equal to float rounding,
p50/p95 within 5 % or 2 ms (docs/architecture.md, "Usage aggregates").
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from course_llm.db import (
    LLMCall,
    create_session_factory,
    dispose_session_factory,
    insert_records,
    upgrade_database,
)
from course_llm.db.aggregates import BUCKET_COLUMNS, HOURLY
from course_llm.db.filtering import TABLE, conditions
from course_llm.db.paging import list_calls
from course_llm.db.prune import prune
from course_llm.db.usage import summarize
from course_llm.db.writes import insert_rows
from course_llm.errors import UsageQueryError
from course_llm.recording.records import CallRecord
from course_llm.reporting.histogram import TOP_MS, bucket_of
from course_llm.reporting.usage import UsageFilters
from tests.aggregates_check import (
    GROUPINGS,
    START,
    assert_aggregates_equal_raw,
    random_filters,
    random_records,
)
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_admin, _postgres_unreachable

Factory = async_sessionmaker[AsyncSession]


async def test_aggregates_equal_the_raw_rows_after_random_inserts(session_factory: Factory) -> None:
    rng = random.Random(11)
    records = random_records(rng, 900)
    await insert_records(session_factory, records[:450])  # binary COPY on PostgreSQL
    await insert_rows(session_factory, records[450:])  # row INSERTs
    for grouping in GROUPINGS:
        await assert_aggregates_equal_raw(session_factory, UsageFilters(), grouping)
    for _ in range(40):
        await assert_aggregates_equal_raw(session_factory, random_filters(rng), rng.choice(GROUPINGS))


async def test_a_replayed_batch_is_counted_once(session_factory: Factory) -> None:
    records = random_records(random.Random(5), 300)
    await insert_records(session_factory, records)
    # A replay after a crash writes rows the database already has, through either write path.
    assert await insert_records(session_factory, records[::2]) == 0
    assert await insert_rows(session_factory, records[1::2]) == 0
    totals = (await summarize(session_factory, UsageFilters(), [])).totals
    assert totals["calls"] == 300
    for grouping in GROUPINGS:
        await assert_aggregates_equal_raw(session_factory, UsageFilters(), grouping)


def _plain_sql_values(record: CallRecord, dialect: str) -> dict[str, Any]:
    values = record.as_dict()
    values["metadata"] = "{}"
    if dialect == "sqlite":  # what another program writes into SQLite: text, as SQLAlchemy would
        values["id"] = record.id.hex
        values["created_at"] = f"{record.created_at:%Y-%m-%d %H:%M:%S.%f}"
    return values


async def _insert_plain_sql(factory: Factory, records: list[CallRecord]) -> None:
    columns = list(records[0].as_dict())
    statement = sa.text(
        f"INSERT INTO llm_calls ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    )
    async with factory() as session, session.begin():
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            statement = statement.bindparams(sa.bindparam("metadata", type_=sa.String()))
            statement = sa.text(str(statement).replace(":metadata", "CAST(:metadata AS jsonb)"))
        await session.execute(statement, [_plain_sql_values(record, dialect) for record in records])


async def test_rows_inserted_by_plain_sql_are_counted_at_once(session_factory: Factory) -> None:
    rng = random.Random(23)
    await insert_records(session_factory, random_records(rng, 200))
    await _insert_plain_sql(session_factory, random_records(rng, 200))
    for grouping in GROUPINGS:
        await assert_aggregates_equal_raw(session_factory, UsageFilters(), grouping)
    for _ in range(15):
        await assert_aggregates_equal_raw(session_factory, random_filters(rng), rng.choice(GROUPINGS))


async def test_rows_updated_or_deleted_by_plain_sql_are_recounted(session_factory: Factory) -> None:
    rng = random.Random(29)
    await insert_records(session_factory, random_records(rng, 500))
    statements = [
        "DELETE FROM llm_calls WHERE tenant_id = 'acme'",  # a tenant's rows erased on request
        "UPDATE llm_calls SET action = 'text_processing', latency_ms = latency_ms * 3, cost_usd = 0.5"
        " WHERE model_id = 'pro'",
        "UPDATE llm_calls SET success = NOT success, tokens_in = NULL WHERE attempt = 2",
    ]
    for statement in statements:
        async with session_factory() as session, session.begin():
            await session.execute(sa.text(statement))
        for grouping in GROUPINGS:
            await assert_aggregates_equal_raw(session_factory, UsageFilters(), grouping)
        for _ in range(5):
            await assert_aggregates_equal_raw(session_factory, random_filters(rng), rng.choice(GROUPINGS))
    async with session_factory() as session, session.begin():
        await session.execute(sa.text("DELETE FROM llm_calls"))
    empty = await summarize(session_factory, UsageFilters(), ["action"])
    assert (empty.groups, empty.totals["calls"]) == ([], 0)  # groups of zeros are no groups


async def test_non_finite_values_from_plain_sql_read_as_null_on_both_paths(session_factory: Factory) -> None:
    record = random_records(random.Random(2), 1)[0]
    poisoned = dataclasses.replace(record, latency_ms=float("inf"), cost_usd=float("inf"), success=True)
    await _insert_plain_sql(session_factory, [poisoned, dataclasses.replace(poisoned, id=uuid.uuid4())])
    got = (await summarize(session_factory, UsageFilters(), ["action"])).totals
    exact = (await summarize(session_factory, UsageFilters(), ["action"], exact=True)).totals
    assert got["calls"] == exact["calls"] == 2
    assert got["cost_usd"] is None and exact["cost_usd"] is None
    assert got["p50_latency_ms"] == TOP_MS  # the last bucket, read as its lower bound


async def test_concurrent_writers_count_every_row_without_deadlock(session_factory: Factory) -> None:
    """Writers upsert the same aggregate rows; in key order they wait for each other, never deadlock."""
    rng = random.Random(8)
    batches = [random_records(rng, 400, days=0.2) for _ in range(6)]
    for batch, number in zip(batches, range(6), strict=True):
        for index, record in enumerate(batch):
            batch[index] = dataclasses.replace(record, request_id=f"w{number}-{index}")
    await asyncio.gather(*(insert_records(session_factory, batch) for batch in batches))
    assert (await summarize(session_factory, UsageFilters(), [])).totals["calls"] == 2400
    for grouping in GROUPINGS:
        await assert_aggregates_equal_raw(session_factory, UsageFilters(), grouping)


async def test_prune_deletes_old_rows_and_summaries_keep_counting_them(session_factory: Factory) -> None:
    rng = random.Random(31)
    records = random_records(rng, 600, days=6)
    await insert_records(session_factory, records)
    whole = UsageFilters(since=START - timedelta(days=1), until=START + timedelta(days=7))
    before = {tuple(g): await summarize(session_factory, whole, g) for g in map(tuple, GROUPINGS)}
    cutoff = START + timedelta(days=3, hours=5)  # pruned up to the start of that UTC day

    result = await prune(session_factory, cutoff, batch=50)

    day = START + timedelta(days=3)
    assert result.before == day
    assert result.deleted == sum(1 for r in records if r.created_at < day)
    exact_after = await summarize(session_factory, whole, [], exact=True)
    assert exact_after.totals["calls"] == len(records) - result.deleted  # the raw rows are gone
    for grouping, summary in before.items():
        after = await summarize(session_factory, whole, list(grouping))
        assert after == summary, grouping  # the aggregates still count them
    # Deleting by hand after the prune: rows before the cutoff stay counted, newer ones do not.
    async with session_factory() as session, session.begin():
        await session.execute(sa.delete(TABLE).where(TABLE.c.action == "video_analysis"))
    after_delete = await summarize(session_factory, whole, ["action"])
    pruned_videos = sum(1 for r in records if r.action == "video_analysis" and r.created_at < day)
    video = [g for g in after_delete.groups if g["action"] == "video_analysis"]
    assert [g["calls"] for g in video] == [pruned_videos]
    for _ in range(15):  # after the cutoff the raw rows are still there to compare with
        filters = dataclasses.replace(
            random_filters(rng, days=6), since=day + timedelta(minutes=rng.randint(0, 4000))
        )
        if filters.until is None or filters.until > filters.since:  # type: ignore[operator]
            await assert_aggregates_equal_raw(session_factory, filters, rng.choice(GROUPINGS))


async def test_a_page_total_counts_the_stored_rows_before_and_after_a_prune(session_factory: Factory) -> None:
    rng = random.Random(41)
    await insert_records(session_factory, random_records(rng, 500, days=4))
    await _insert_plain_sql(session_factory, random_records(rng, 100, days=4))

    async def assert_totals_counted() -> None:
        for _ in range(20):
            filters = random_filters(rng, days=4)
            async with session_factory() as session:
                statement = sa.select(sa.func.count()).select_from(TABLE).where(*conditions(filters))
                counted = await session.scalar(statement)
            assert (await list_calls(session_factory, filters)).total == counted, filters

    await assert_totals_counted()
    await prune(session_factory, START + timedelta(days=2))
    await assert_totals_counted()


async def test_rows_older_than_the_cutoff_that_arrive_later_are_counted_updated_and_paged(
    session_factory: Factory,
) -> None:
    """A late replay (or plain SQL) stores rows older than the prune cutoff after the prune."""
    rng = random.Random(47)
    early = random_records(rng, 100, days=4)
    await insert_records(session_factory, early)
    await prune(session_factory, START + timedelta(days=2))
    late = random_records(random.Random(48), 40, days=1)  # all before the cutoff
    await insert_records(session_factory, late)
    async with session_factory() as session, session.begin():
        await session.execute(sa.text("UPDATE llm_calls SET tokens_in = 7, cost_usd = 0.25"))
    async with session_factory() as session:
        stored = await session.scalar(sa.select(sa.func.count()).select_from(TABLE))
    assert (await list_calls(session_factory, UsageFilters())).total == stored
    assert (await list_calls(session_factory, UsageFilters(until=START + timedelta(days=1)))).total == 40
    after_cutoff = UsageFilters(since=START + timedelta(days=2))
    for grouping in GROUPINGS:
        await assert_aggregates_equal_raw(session_factory, after_cutoff, grouping)
    # The first day holds its pruned rows (in the aggregates only) and the late ones (in both).
    first_day = UsageFilters(since=START, until=START + timedelta(days=1))
    pruned = sum(1 for r in early if r.created_at < START + timedelta(days=1))
    assert (await summarize(session_factory, first_day, [])).totals["calls"] == pruned + 40


async def test_a_cost_set_to_infinity_and_back_is_counted_again(session_factory: Factory) -> None:
    records = [dataclasses.replace(r, cost_usd=0.25) for r in random_records(random.Random(6), 20, days=0.01)]
    await insert_records(session_factory, records)
    postgresql = session_factory.kw["bind"].dialect.name == "postgresql"
    poisoned = str(records[0].id) if postgresql else records[0].id.hex
    for cost in ("'Infinity'" if postgresql else "9e999", "0.5"):
        async with session_factory() as session, session.begin():
            await session.execute(
                sa.text(f"UPDATE llm_calls SET cost_usd = {cost} WHERE id = :id"), {"id": poisoned}
            )
        await assert_aggregates_equal_raw(session_factory, UsageFilters(), ["action"])
    totals = (await summarize(session_factory, UsageFilters(), [])).totals
    assert totals["cost_usd"] == pytest.approx(19 * 0.25 + 0.5)


async def test_prune_refuses_a_time_in_the_future(session_factory: Factory) -> None:
    await insert_records(session_factory, random_records(random.Random(3), 5))
    with pytest.raises(UsageQueryError, match="in the future"):
        await prune(session_factory, datetime.now(UTC) + timedelta(days=2))
    assert (await summarize(session_factory, UsageFilters(), [], exact=True)).totals["calls"] == 5


async def test_a_bound_inside_a_pruned_hour_reads_that_whole_hour(session_factory: Factory) -> None:
    base = random_records(random.Random(4), 1)[0]
    records = [
        dataclasses.replace(base, id=uuid.uuid4(), created_at=START + timedelta(minutes=minute))
        for minute in (5, 50, 24 * 60 + 30)
    ]
    await insert_records(session_factory, records)
    await prune(session_factory, START + timedelta(days=1))
    half_hour_in = UsageFilters(since=START + timedelta(minutes=30))
    # Rows at 00:05 and 00:50 are pruned: the bound at 00:30 is read as 00:00 (exact to the hour).
    assert (await summarize(session_factory, half_hour_in, [])).totals["calls"] == 3


async def test_the_trigger_counts_each_latency_in_the_bucket_bucket_of_names(
    session_factory: Factory,
) -> None:
    latencies = [0.0, 3.99, 4.0, 39.999, 40.0, 44.0, 44.00000000000001, 123.4, 5_000.0, TOP_MS, 1e9, -5.0]
    base = random_records(random.Random(1), 1)[0]
    records = [dataclasses.replace(base, id=uuid.uuid4(), latency_ms=value) for value in latencies]
    await insert_records(session_factory, records)
    async with session_factory() as session:
        row = (await session.execute(sa.select(*(HOURLY.c[b] for b in BUCKET_COLUMNS)))).one()
    counted = {index: count for index, count in enumerate(row) if count}
    assert counted == dict(Counter(bucket_of(value) for value in latencies))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def blank_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (to migrate step by step), dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'first_schema.db'}"
        return
    name = f"course_llm_upgrade_{secrets.token_hex(4)}"
    try:
        asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        _postgres_unreachable(f"PostgreSQL not reachable: {exc}")
    try:
        yield (
            make_url(POSTGRES_ADMIN_URL)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        asyncio.run(_postgres_admin(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_an_upgrade_from_the_first_schema_builds_the_aggregates_of_the_rows_there(
    blank_database_url: str,
) -> None:
    upgrade_database(blank_database_url, "0001")
    rng = random.Random(17)
    records = random_records(rng, 500)

    async def seed() -> None:
        # llm_calls as 0001 created it: the columns later revisions added (0003) are not there yet.
        added = {"system_prompt_hash", "user_prompt_hash", "response_preview"}
        columns = [c for c in LLMCall.__table__.columns if c.name not in added]
        table = sa.table("llm_calls", *(sa.column(c.name, c.type) for c in columns))
        rows = [{c.name: record.as_dict()[c.name] for c in columns} for record in records]
        factory = create_session_factory(blank_database_url)
        try:
            async with factory() as session, session.begin():
                await session.execute(sa.insert(table), rows)
        finally:
            await dispose_session_factory(factory)

    async def compare() -> None:
        factory = create_session_factory(blank_database_url)
        try:
            assert (await summarize(factory, UsageFilters(), [])).totals["calls"] == 500
            for grouping in GROUPINGS:
                await assert_aggregates_equal_raw(factory, UsageFilters(), grouping)
            for _ in range(10):
                await assert_aggregates_equal_raw(factory, random_filters(rng), rng.choice(GROUPINGS))
        finally:
            await dispose_session_factory(factory)

    asyncio.run(seed())
    upgrade_database(blank_database_url)
    asyncio.run(compare())
