"""Request-level reporting without a database: one line per request, and request-id prefixes.

llm_calls holds one row per *attempt*; a user thinks in *requests* (what their code asked for,
however many retries and fallback hops it took). This module turns the attempts of one request
into its line (`request_line`), pure and tested on its own; `course_llm.db.requests` reads the
rows and calls it.

A request's line:

- `success`: whether any attempt succeeded (each request has at most one successful attempt);
  the request-level error rate is failed requests / requests, where the attempt-level one
  (`error_rate` of a summary) is failed attempts / attempts;
- `model_id`, `provider`, `served_strategy`: of the attempt that served it, or of the last
  attempt when none did;
- `latency_ms`: the wall time from the first attempt's start to the end of the last attempt
  (its start plus its latency), so the waits between attempts (backoff) are included. Summing
  the attempts' latencies would leave them out;
- `cost_usd`, `tokens_in`, `tokens_out`: summed over the attempts whose figure is known (None
  when no attempt's is);
- `status_code`, `error_class`, `error_message`: of the last failed attempt (None when none
  failed);
- attribution (`action`, `strategy`, `tenant_id`, `operation`, `end_user`, `source`,
  `metadata`): of the first attempt, which every attempt of a request shares.

Request ids are printed in full everywhere and accepted by any unique prefix of at least
`MIN_PREFIX` characters (docs/architecture.md, "Newcomer experience").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "MIN_PREFIX",
    "REQUEST_FIELDS",
    "RequestsPage",
    "ambiguous_prefix_message",
    "like_prefix",
    "request_line",
]

#: The shortest request-id prefix accepted where an id is taken.
MIN_PREFIX = 8

#: The keys of a request line, in display order.
REQUEST_FIELDS: tuple[str, ...] = (
    "request_id",
    "started_at",
    "finished_at",
    "latency_ms",
    "attempts",
    "success",
    "action",
    "strategy",
    "served_strategy",
    "provider",
    "model_id",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "status_code",
    "error_class",
    "error_message",
    "tenant_id",
    "operation",
    "end_user",
    "source",
    "metadata",
)

_LIKE_SPECIAL = ("\\", "%", "_")


def like_prefix(prefix: str) -> str:
    """A `LIKE … ESCAPE '\\'` pattern matching the strings that start with `prefix`, literally."""
    for special in _LIKE_SPECIAL:  # the escape character first, so its own escapes stay single
        prefix = prefix.replace(special, "\\" + special)
    return prefix + "%"


def ambiguous_prefix_message(prefix: str, found: int, shown: int) -> str:
    """The error for a prefix that starts `found` stored ids (`found > shown` means "more than")."""
    count = f"more than {shown}" if found > shown else str(found)
    return f"{prefix!r} is the start of {count} request ids; give more characters"


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _total(attempts: Sequence[Mapping[str, Any]], key: str) -> Any:
    values = [a.get(key) for a in attempts if _known(a.get(key))]
    return sum(values) if values else None


def _span(attempts: Sequence[Mapping[str, Any]]) -> tuple[datetime | None, datetime | None]:
    """When the first attempt started and the last one ended (its start plus its latency)."""
    starts: list[tuple[datetime, float]] = []
    for attempt in attempts:
        start, took = _time(attempt.get("created_at")), attempt.get("latency_ms")
        if start is not None:
            starts.append((start, float(took) if isinstance(took, int | float) and _known(took) else 0.0))
    if not starts:
        return None, None
    ends = [start + timedelta(milliseconds=took) for start, took in starts]
    return min(start for start, _ in starts), max(ends)


def request_line(attempts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The line of one request from its attempt rows (dicts with the llm_calls columns).

    The attempts may come in any order; they are taken in attempt order. A missing column reads
    as unknown (None), so a line never fails to build. Raises ValueError for an empty list (a
    request has at least one attempt).
    """
    if not attempts:
        raise ValueError("a request has at least one attempt")
    ordered = sorted(attempts, key=lambda a: (a.get("attempt") or 0, str(a.get("created_at"))))
    first, last = ordered[0], ordered[-1]
    served = next((a for a in ordered if a.get("success")), last)
    failures = [a for a in ordered if not a.get("success")]
    failed = failures[-1] if failures and not served.get("success") else {}
    started, finished = _span(ordered)
    line = {
        "request_id": first.get("request_id"),
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if finished else None,
        "latency_ms": (finished - started) / timedelta(milliseconds=1) if started and finished else None,
        "attempts": len(ordered),
        "success": bool(served.get("success")),
        **{key: first.get(key) for key in ("action", "strategy")},
        **{key: served.get(key) for key in ("served_strategy", "provider", "model_id")},
        **{key: _total(ordered, key) for key in ("tokens_in", "tokens_out", "cost_usd")},
        **{key: failed.get(key) for key in ("status_code", "error_class", "error_message")},
        **{key: first.get(key) for key in ("tenant_id", "operation", "end_user", "source", "metadata")},
    }
    return {key: line[key] for key in REQUEST_FIELDS}


@dataclass(frozen=True, slots=True)
class RequestsPage:
    """One page of request lines, newest first, with request-level totals: `GET /usage/requests`.

    `total` counts the matching requests and `failed` those whose final outcome was a failure,
    over every page.
    """

    data: list[dict[str, Any]]
    total: int
    failed: int
    page: int
    page_size: int

    @property
    def total_pages(self) -> int:
        """How many pages `total` requests fill (0 when none matches)."""
        return math.ceil(self.total / self.page_size)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "total": self.total,
            "page": self.page,
            "page_size": self.page_size,
            "total_pages": self.total_pages,
            "totals": {
                "requests": self.total,
                "failed_requests": self.failed,
                "error_rate": self.failed / self.total if self.total else 0.0,
            },
        }
