"""The rollup plan: which parts (raw rows, hourly or daily aggregates) a summary's range is read from.

A pure function, checked on random ranges in several time zones: every instant of the range is
read from exactly one part, day and hour parts are aligned to UTC days and hours, and raw rows
are read only within one partial hour.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from course_llm.db.rollup import plan

START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize("seed", range(300))
def test_the_plan_reads_every_instant_of_the_range_from_exactly_one_part(seed: int) -> None:
    rng = random.Random(seed)
    offset = timezone(timedelta(minutes=rng.choice([0, 330, -240])))  # bounds in any time zone

    def moment() -> datetime | None:
        minutes = rng.choice([rng.randint(0, 5 * 1440), rng.randint(0, 5) * 1440, rng.randint(0, 120) * 60])
        return rng.choice(
            [None, (START + timedelta(minutes=minutes, seconds=rng.choice([0, 7]))).astimezone(offset)]
        )

    since, until = moment(), moment()
    if since is not None and until is not None and since > until:
        since, until = until, since
    by_hour = rng.random() < 0.3
    parts = plan(since, until, by_hour=by_hour)
    for part in parts:
        assert part.since is None or part.since.tzinfo is not None
        if part.source == "day":
            assert not by_hour
            assert all(
                t is None or (t.astimezone(UTC).hour, t.minute, t.second) == (0, 0, 0)
                for t in (part.since, part.until)
            )
        if part.source == "hour":
            assert all(
                t is None or (t.astimezone(UTC).minute, t.second, t.microsecond) == (0, 0, 0)
                for t in (part.since, part.until)
            )
        if part.source == "raw":  # raw rows only within one partial hour
            assert part.since is not None and part.until is not None
            assert part.until - part.since <= timedelta(hours=1)
    probes = [START + timedelta(minutes=rng.randint(-3000, 10000), seconds=rng.random()) for _ in range(300)]
    probes += [t for t in (since, until) if t is not None]
    for probe in probes:
        inside = (since is None or probe >= since) and (until is None or probe < until)
        covering = [
            p for p in parts if (p.since is None or probe >= p.since) and (p.until is None or probe < p.until)
        ]
        assert len(covering) == (1 if inside else 0), (since, until, probe, parts)
