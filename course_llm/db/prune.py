"""Delete old attempt rows and keep their aggregates: `course-llm db prune --before 90d`.

The hourly and daily aggregates (`course_llm.db.aggregates`) keep counting pruned rows, so
summaries over a pruned range still answer from them. Rows are deleted
up to the start of the UTC day the cutoff falls in, so every pruned day is pruned whole, oldest
first, `BATCH` rows per transaction: a long prune never holds one huge transaction or lock, and
an interrupted one can simply be run again.

The cutoff is recorded first (`llm_usage_pruned`): the delete trigger takes deleted rows away
from the aggregates, except those older than the cutoff. A summary bound that falls inside a
pruned hour is read from that hour's aggregate as a whole (`course_llm.db.rollup`): before the
cutoff, summaries are exact to the hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from course_llm.db.aggregates import PRUNED
from course_llm.db.filtering import COLUMNS, TABLE, TimeBound
from course_llm.db.session import SessionFactory
from course_llm.errors import UsageQueryError

__all__ = ["PruneResult", "prune", "prune_cutoff"]

#: Rows deleted per transaction.
BATCH = 20_000


@dataclass(frozen=True, slots=True)
class PruneResult:
    """How many rows were deleted, all created before `before` (a UTC midnight)."""

    before: datetime
    deleted: int


def prune_cutoff(before: datetime) -> datetime:
    """The UTC midnight at or before `before`: rows older than it are pruned."""
    return before.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def _keep_counted_before(session_factory: SessionFactory, cutoff: datetime) -> None:
    """Record the cutoff first: the delete trigger then leaves older rows in the aggregates."""
    async with session_factory() as session, session.begin():
        current = await session.scalar(sa.select(PRUNED.c.pruned_before).where(PRUNED.c.id == 1))
        if current is None:
            await session.execute(sa.insert(PRUNED).values(id=1, pruned_before=cutoff))
        elif current < cutoff:  # a later prune with an earlier cutoff never uncounts pruned rows
            await session.execute(sa.update(PRUNED).where(PRUNED.c.id == 1).values(pruned_before=cutoff))


async def prune(session_factory: SessionFactory, before: datetime, batch: int = BATCH) -> PruneResult:
    """Delete every llm_calls row created before `prune_cutoff(before)`, `batch` rows at a time.

    `before` in the future is a `UsageQueryError`: it would delete today's rows, and the cutoff,
    which only ever moves forward, would then keep every later deletion counted.
    """
    if before > datetime.now(UTC):
        raise UsageQueryError(
            "before", f"{before.isoformat()} is in the future; give a time in the past (90d)"
        )
    cutoff = prune_cutoff(before)
    oldest = (
        sa.select(COLUMNS.id)
        .where(COLUMNS.created_at < sa.bindparam("cutoff", cutoff, TimeBound()))
        .order_by(COLUMNS.created_at)
        .limit(batch)
        .scalar_subquery()
    )
    statement = sa.delete(TABLE).where(COLUMNS.id.in_(oldest))
    await _keep_counted_before(session_factory, cutoff)
    deleted = 0
    while True:
        async with session_factory() as session, session.begin():
            result = await session.execute(statement)
        count = max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
        deleted += count
        if count < batch:
            return PruneResult(cutoff, deleted)
