"""Budgets shared through Redis (`COURSE_LLM_REDIS_URL`): one counter per budget window.

With a database alone, every process's book re-reads each budget's spend from the rows every
second (`course_llm.db.spend.DatabaseSpend`). With Redis, each process adds the cost of every row
it records to one Redis counter per budget window (`push`, an INCRBYFLOAT), and a refresh reads
all the counters in one MGET: N processes cost Redis N small reads a second, and the database
none. A counter is keyed by its window (period start and end, and the match), hashed, so budgets
with the same window share it and no tenant id reaches a Redis key; it expires a day after its
window ends.

Seeding. A counter that does not exist yet (a new period, a new Redis) is seeded from the rows:
the first refresh that finds it missing reads the window's spend from the database and SETs it
only if still absent (NX), so racing processes agree on one value. A push adds only to a counter
that exists (a Lua script); a cost whose push found none, or found Redis away, waits in its
process (still counted there by the book) and is pushed by the next refresh, after the seed,
unless this process's own winning seed already holds its row. So a cost is never lost: at worst,
when another process's seed held it too, it counts twice in that window, which refuses early.

Rows that never pass a `Controls` (`track_llm_call`'s, or a replayed journal's) reach a counter
only through its seed. What the book is told is stored: the row ids whose push reached an
existing counter (they are in the total it reads next), plus those the seed found in the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import structlog

from course_llm.control.budgets import SpendSource, SpendWindow, period_window
from course_llm.control.sections import BudgetConfig
from course_llm.recording.records import CallRecord

__all__ = ["RedisSpend"]

log = structlog.get_logger()

#: Adds ARGV[1] to KEYS[1] only when the counter exists (it is seeded first; module docstring).
_ADD_IF_SEEDED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
end
return false
"""
#: Row ids remembered as pushed (the oldest are forgotten; the book drops its pending costs sooner).
_MAX_PUSHED = 100_000
#: Costs kept for the next refresh at most (Redis away for long): beyond, the oldest are dropped.
_MAX_WAITING = 100_000
#: Waiting costs pushed by one refresh at most (one round trip each).
_PUSHES_PER_REFRESH = 2_000


@dataclass(frozen=True, slots=True)
class _Push:
    """A row's cost still to add to the counters of `windows`."""

    windows: list[SpendWindow]
    cost: float
    row_id: UUID


class RedisSpend:
    """A budget book's spend source on Redis, seeded from `seed` (the database's)."""

    def __init__(
        self,
        redis_url: str,
        budgets: Mapping[str, BudgetConfig],
        seed: SpendSource,
        *,
        prefix: str = "course_llm:budget:",
        client: Any = None,
    ) -> None:
        import redis.asyncio

        self._redis: Any = client or redis.asyncio.Redis.from_url(redis_url)
        self._budgets = dict(budgets)
        self._seed = seed
        self._prefix = prefix
        self._add = self._redis.register_script(_ADD_IF_SEEDED)
        self._pushed: OrderedDict[UUID, None] = OrderedDict()
        self._waiting: deque[_Push] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Pushes that failed (Redis away): their costs stay in the pushing process's pending spend.
        self.push_failures = 0

    def key(self, window: SpendWindow) -> str:
        identity = [window.since.isoformat(), window.until.isoformat(), window.action, window.tenant_id]
        digest = hashlib.sha256(json.dumps([*identity, window.operation]).encode()).hexdigest()
        return self._prefix + digest[:32]

    # -- writes --------------------------------------------------------------------------------

    def push(self, record: CallRecord, tenant_id: str | None, operation: str | None) -> None:
        """Add a row's cost to the counter of every budget window it falls in (never waits)."""
        cost = record.cost_usd
        if cost is None or not cost > 0 or cost == float("inf"):
            return
        windows = self._windows_of(record.action, tenant_id, operation, record.created_at)
        if not windows:
            return
        item = _Push(windows, cost, record.id)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # a LiteLLM callback thread: the next refresh pushes it
            self._keep(item)
            return
        task = self._loop.create_task(self._push(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _windows_of(
        self, action: str, tenant_id: str | None, operation: str | None, at: datetime
    ) -> list[SpendWindow]:
        windows: dict[str, SpendWindow] = {}
        for config in self._budgets.values():
            if config.match.matches(action, tenant_id, operation):
                since, until = period_window(config.period, at)
                match = config.match
                window = SpendWindow(since, until, match.action, match.tenant_id, match.operation)
                windows.setdefault(self.key(window), window)
        return list(windows.values())

    async def _push(self, item: _Push) -> None:
        """Add the cost to each counter that exists; keep the rest for the next refresh."""
        left: list[SpendWindow] = []
        for window in item.windows:
            try:
                added = await self._add(keys=[self.key(window)], args=[repr(item.cost)])
            except Exception as exc:  # Redis away: the next refresh tries again
                self.push_failures += 1
                log.warning("budget_push_failed", error=type(exc).__name__, push_failures=self.push_failures)
                added = None
            if added is None:
                left.append(window)
        if left:
            self._keep(_Push(left, item.cost, item.row_id))
        else:
            self._pushed[item.row_id] = None
            while len(self._pushed) > _MAX_PUSHED:
                self._pushed.popitem(last=False)

    def _keep(self, item: _Push) -> None:
        self._waiting.append(item)  # deque.append is thread-safe
        if len(self._waiting) > _MAX_WAITING:
            self._waiting.popleft()
            log.error("budget_pushes_dropped", kept=_MAX_WAITING)

    # -- reads -----------------------------------------------------------------------------------

    async def __call__(
        self, windows: Sequence[SpendWindow], row_ids: Sequence[UUID], /
    ) -> tuple[list[float], set[UUID]]:
        """Each window's counter (seeded from the database when missing), and which of `row_ids`
        the counters hold. Ids are taken before the last read, so an id reported is in the figure."""
        self._loop = asyncio.get_running_loop()
        keys = [self.key(window) for window in windows]
        values = list(await self._redis.mget(keys)) if keys else []
        missing = [i for i, value in enumerate(values) if value is None]
        seeded: AbstractSet[UUID] = set()
        if missing:
            spends, in_seed = await self._seed([windows[i] for i in missing], row_ids)
            won = True
            for i, spend in zip(missing, spends, strict=True):
                expires = int((windows[i].until + timedelta(days=1)).timestamp())
                won = bool(await self._redis.set(keys[i], repr(float(spend)), nx=True, exat=expires)) and won
            # Only this process's own seed says which of its rows it holds; another one's may not.
            seeded = in_seed if won else set()
        # Costs whose push found no counter (or no Redis) go now; one the seed above holds goes
        # nowhere. One held by another process's seed counts twice: never missed, at worst early.
        # Taken one by one (a callback thread may append meanwhile), a bounded number per refresh
        # (a long outage leaves many), and put back if the refresh is cancelled (its timeout).
        for _ in range(min(len(self._waiting), _PUSHES_PER_REFRESH)):
            item = self._waiting.popleft()
            if item.row_id in seeded:
                self._pushed[item.row_id] = None
                continue
            try:
                await self._push(item)
            except BaseException:
                self._waiting.appendleft(item)
                raise
        pushed = {row_id for row_id in row_ids if row_id in self._pushed} | set(seeded)
        values = list(await self._redis.mget(keys)) if keys else []
        return [float(value or 0) for value in values], pushed

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._redis.aclose()
