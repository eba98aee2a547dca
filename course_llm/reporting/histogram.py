"""Latency histograms: the buckets the usage aggregates count latencies in, and percentiles from them.

The hourly and daily aggregates (`course_llm.db.aggregates`) keep, per group, how many attempts'
latencies fell in each of `BUCKETS` buckets. A percentile read from those counts is within 5 %
or 2 ms of the exact one (the contract in docs/architecture.md, "Usage aggregates"):

- buckets 0-9 are 4 ms wide, [0, 4) … [36, 40): a value read as its bucket's middle is at most
  2 ms off;
- buckets 10-110 grow by `RATIO` (1.1) from 40 ms, [40·1.1^(k-10), 40·1.1^(k-9)): a value read as
  the bucket's geometric middle is off by at most √1.1 - 1 = 4.9 %;
- bucket 111 holds everything from `TOP_MS` (606,347 ms, about 10 minutes) up, read as
  `TOP_MS`. So are NaN and +Infinity a plain SQL row may hold; negative latencies (plain SQL
  too) count in bucket 0, read as 2 ms. Outside [0, TOP_MS) there is no error bound.

The databases compute a latency's bucket with `bucket_sql` (the same comparisons in PostgreSQL
and SQLite); `bucket_of` is its Python twin.
A continuous percentile (PostgreSQL's `percentile_cont`) interpolates between the two values
around its position; `percentile` does the same between those values' bucket estimates, so its
error is the interpolation of their errors: within each one's bound when both lie on the same
side of 40 ms, and at most 2 ms + 4.9 % in the rare case of two neighbouring values on either
side of it (a percentile halfway between 0 and 1,000 ms, with no latency in between).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["BOUNDS", "BUCKETS", "RATIO", "TOP_MS", "bucket_of", "bucket_sql", "percentile"]

#: Width of the linear buckets, and how many there are: [0, 4), [4, 8), … [36, 40).
LINEAR_STEP_MS = 4.0
LINEAR_BUCKETS = 10
LOG_START_MS = LINEAR_STEP_MS * LINEAR_BUCKETS
#: Each logarithmic bucket's upper bound is its lower bound times this.
RATIO = 1.1
LOG_BUCKETS = 101
#: The last bucket's lower bound: LOG_START_MS · RATIO^LOG_BUCKETS ≈ 606,347 ms.
TOP_MS = LOG_START_MS * RATIO**LOG_BUCKETS
BUCKETS = LINEAR_BUCKETS + LOG_BUCKETS + 1
#: BOUNDS[i - 1] is bucket i's lower bound (bucket 0 has none): a latency's bucket is how many
#: bounds it reaches.
BOUNDS: tuple[float, ...] = (
    *(LINEAR_STEP_MS * i for i in range(1, LINEAR_BUCKETS)),
    *(LOG_START_MS * RATIO**k for k in range(LOG_BUCKETS)),
    TOP_MS,
)


def bucket_of(latency_ms: float) -> int:
    """The bucket a latency counts in: bucket 0 below 4 ms (negatives too), the last from `TOP_MS` up.

    NaN compares below no bound, so it lands in the last bucket, as in `bucket_sql` on PostgreSQL.
    """
    return bisect.bisect_right(BOUNDS, latency_ms)


def bucket_sql(latency: str) -> str:
    """SQL for `bucket_of(<latency>)`, the same in PostgreSQL and SQLite (NULL for a NULL latency).

    A binary search over `BOUNDS` written out as nested CASEs (7 comparisons a row), so both
    databases compare against the very same constants and need no math functions (SQLite's `ln`
    is a compile-time option). PostgreSQL's NaN is below no bound, so it lands in the last bucket.
    """

    def search(low: int, high: int) -> str:
        if low == high:
            return str(low)
        middle = (low + high + 1) // 2
        bound = BOUNDS[middle - 1]
        return (
            f"CASE WHEN {latency} < {bound!r} THEN {search(low, middle - 1)} ELSE {search(middle, high)} END"
        )

    return f"CASE WHEN {latency} IS NULL THEN NULL ELSE {search(0, BUCKETS - 1)} END"


def _estimate(bucket: int) -> float:
    """The value a latency in `bucket` is read as: the middle that bounds the error."""
    if bucket < LINEAR_BUCKETS:
        return (bucket + 0.5) * LINEAR_STEP_MS
    if bucket >= BUCKETS - 1:
        return TOP_MS
    return float(LOG_START_MS * RATIO ** (bucket - LINEAR_BUCKETS + 0.5))


def percentile(counts: Sequence[int], fraction: float) -> float | None:
    """The continuous percentile `fraction` (0-1) of the latencies counted in `counts`; None if none."""
    total = sum(counts)
    if total <= 0:
        return None
    position = fraction * (total - 1)
    lower_rank = math.floor(position)
    upper_rank = min(lower_rank + 1, total - 1)
    lower = upper = None
    seen = 0
    for bucket, count in enumerate(counts):
        if count <= 0:
            continue
        seen += count
        if lower is None and seen > lower_rank:
            lower = _estimate(bucket)
        if seen > upper_rank:
            upper = _estimate(bucket)
            break
    assert lower is not None and upper is not None  # ranks are below the total
    return lower + (position - lower_rank) * (upper - lower)
