"""The usage HTTP API: `GET /usage/calls`, `/usage/summary`, `/usage/requests`, `/usage/tags`, exports.

Beyond docs/architecture.md's contract routes:

- `GET /usage/calls?cursor=` pages by keyset (`course_llm.reporting.paging`): every page answers
  `next_cursor`; a cursor page counts nothing (`total` null), so page 100,000 costs what page 1 does.

- `GET /usage/requests?…filters…&page=&page_size=`: one line per request (not per attempt),
  newest first, paginated like `/usage/calls`, with `totals` {requests, failed_requests,
  error_rate} over every page: the request-level error rate (`course_llm.reporting.requests`).
- `GET /usage/requests/{request_id}` also answers `request`, the request's line (total latency
  with the backoff between attempts included); the id may be any unique prefix of at least 8
  characters (the answer's `request_id` is then the full id). An ambiguous or short prefix is a 400.
- `GET /usage/tags?…filters…`: attempts, failures, tokens and cost per tag (`key=value`).
- `GET /usage/export.csv?…filters…`: every matching attempt as CSV, oldest first, streamed, with
  the CLI export's columns and its OWASP formula neutralisation. `view=requests` (the dashboard's
  requests view) exports what that view lists instead: the attempts, matching the other filters,
  of the requests `/usage/requests` matches, where `status` is a request's final outcome. With
  `status=error`, a request a fallback rescued is not listed, so its failed attempt is not exported.

A FastAPI router that `course-llm serve` mounts on LiteLLM's proxy app (and the dashboard reads):

    app.include_router(create_usage_router(lambda: session_factory, lambda: master_key))

Responses follow docs/architecture.md, "Usage reporting". Every route answers only to
`Authorization: Bearer <master key>` and fails closed: a wrong or missing key is 401, and a proxy
with no key configured serves no usage data at all (503), since the data shows spend and traffic.
Errors are JSON `{"error": "..."}`: 400 for a bad filter (`"status: 'ok' is not one of: …"`),
404 for an unknown request id, 503 when the database cannot be read.

Responses never fail to render: a row another path wrote (plain SQL) may hold a value JSON cannot
carry (NaN, ±Infinity), and Starlette's JSONResponse refuses those, which would turn one bad row
into a 500 for every page that includes it. `db/usage.py` already reads such values as None;
`plain_json` is the second line, cleaning the body (`recording.clean.clean_value`) only when rendering
it failed.

Query parameters are read as strings and validated by `course_llm.reporting.usage`, the same parser as the
CLI's, so both reject the same values with the same messages. An unknown or repeated parameter is
a 400 rather than silently ignored: `?model=x` (for `model_id`) must not return every row.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from course_llm.db import SessionFactory, is_database_error
from course_llm.db.requests import list_requests, tag_breakdown
from course_llm.db.usage import (
    count_matching,
    iter_calls,
    list_calls,
    list_calls_after,
    request_attempts,
    summarize,
)
from course_llm.errors import UsageQueryError
from course_llm.recording.clean import clean_value
from course_llm.reporting.paging import parse_cursor
from course_llm.reporting.requests import request_line
from course_llm.reporting.usage import (
    FILTER_NAMES,
    UsageFilters,
    csv_header,
    csv_line,
    filters_from,
    parse_group_by,
    parse_page,
)

__all__ = ["create_usage_router"]

log = structlog.get_logger()

#: Requests read per statement when the export gathers the ids the requests view lists.
_ID_PAGE = 1000

#: Sent with every 401, as RFC 6750 asks, so clients know which credentials to offer.
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

Answer = Callable[[SessionFactory, dict[str, str]], Awaitable[Response | dict[str, Any]]]


def plain_json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON response of `content`; values JSON cannot carry become null, strings are cleaned."""
    try:
        return JSONResponse(content, status_code=status_code, headers=headers)
    except (ValueError, UnicodeEncodeError):  # NaN/±Infinity, a lone surrogate (see above)
        log.warning("usage_response_cleaned", reason="a stored value JSON cannot carry")
        return JSONResponse(clean_value(content), status_code=status_code, headers=headers)


def plain_error(status_code: int, message: str, **headers: str) -> JSONResponse:
    return plain_json({"error": message}, status_code=status_code, headers=headers or None)


def key_refusal(request: Request, master_key: str | None) -> JSONResponse | None:
    """The response refusing `request`, or None when it carries the master key."""
    if not master_key:
        return plain_error(
            503, "the usage API is disabled: no master key is configured (set LITELLM_MASTER_KEY)"
        )
    header = request.headers.get("authorization")
    if not header:
        return plain_error(401, "missing Authorization header; send 'Bearer <master key>'", **_CHALLENGE)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.strip().encode("utf-8"), master_key.encode("utf-8")
    ):
        return plain_error(401, "invalid master key", **_CHALLENGE)
    return None


def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters as one string each; unknown or repeated names are a `UsageQueryError`."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise UsageQueryError(name, f"unknown parameter; valid parameters: {', '.join(allowed)}")
        if name in params:
            raise UsageQueryError(name, "given more than once")
        if "\x00" in value:
            # No stored value holds one (they are cleaned), and PostgreSQL refuses it in a query.
            raise UsageQueryError(name, "contains a NUL character")
        params[name] = value
    return params


def _filters(params: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in params.items() if name in FILTER_NAMES}


def create_usage_router(
    get_session_factory: Callable[[], SessionFactory | None], get_master_key: Callable[[], str | None]
) -> APIRouter:
    """The `/usage/...` routes, reading through `get_session_factory()` behind `get_master_key()`.

    Both getters are called per request, so the proxy may open its database and read its key after
    the router is mounted (and a rotated key takes effect at once).
    """
    router = APIRouter(tags=["usage"])

    async def serve(request: Request, allowed: tuple[str, ...], answer: Answer) -> Response:
        refusal = key_refusal(request, get_master_key())
        if refusal is not None:
            return refusal
        try:
            params = _query(request, allowed)
            factory = get_session_factory()
            if factory is None:
                return plain_error(
                    503, "the usage API has no database: the proxy's call logging is not set up"
                )
            body = await answer(factory, params)
        except UsageQueryError as exc:
            return plain_error(400, str(exc))
        except Exception as exc:
            if not is_database_error(exc):
                raise
            log.warning("usage_query_failed", path=request.url.path, error=type(exc).__name__)
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return plain_error(503, f"database error: {first_line}")
        return body if isinstance(body, Response) else plain_json(body)

    @router.get("/usage/calls")
    async def usage_calls(request: Request) -> Response:
        """Matching llm_calls rows, newest first, one page at a time, by `page` or by `cursor`.

        `page` (OFFSET) counts: `total` and `total_pages`. `cursor` (keyset, the `next_cursor` of
        the previous page; empty for the newest rows) stays fast at any depth and counts nothing:
        `total`, `page` and `total_pages` are null. Both hand out `next_cursor`, null on the last page.
        """

        async def answer(factory: SessionFactory, params: dict[str, str]) -> dict[str, Any]:
            filters = filters_from(_filters(params))
            if "cursor" in params and "page" in params:
                raise UsageQueryError("cursor", "give page or cursor, not both")
            page, page_size = parse_page(params.get("page"), params.get("page_size"))
            if "cursor" in params:
                cursor = parse_cursor(params["cursor"])
                return (await list_calls_after(factory, filters, cursor, page_size)).as_dict()
            return (await list_calls(factory, filters, page, page_size)).as_dict()

        return await serve(request, (*FILTER_NAMES, "page", "page_size", "cursor"), answer)

    @router.get("/usage/summary")
    async def usage_summary(request: Request) -> Response:
        """Calls, failures, tokens, cost, latency percentiles and fallback rate per group and in total."""

        async def answer(factory: SessionFactory, params: dict[str, str]) -> dict[str, Any]:
            filters = filters_from(_filters(params))
            group_by = parse_group_by(params.get("group_by"))
            return (await summarize(factory, filters, group_by)).as_dict()

        return await serve(request, (*FILTER_NAMES, "group_by"), answer)

    @router.get("/usage/requests")
    async def usage_requests(request: Request) -> Response:
        """Matching requests (one line each), newest first, one page at a time."""

        async def answer(factory: SessionFactory, params: dict[str, str]) -> dict[str, Any]:
            filters = filters_from(_filters(params))
            page, page_size = parse_page(params.get("page"), params.get("page_size"))
            return (await list_requests(factory, filters, page, page_size)).as_dict()

        return await serve(request, (*FILTER_NAMES, "page", "page_size"), answer)

    @router.get("/usage/requests/{request_id}")
    async def usage_request(request: Request, request_id: str) -> Response:
        """Every attempt of one request, in the order they were made, and the request's line."""

        async def answer(factory: SessionFactory, params: dict[str, str]) -> Response | dict[str, Any]:
            # An id with a NUL was never stored (and PostgreSQL refuses it in a query).
            attempts = [] if "\x00" in request_id else await request_attempts(factory, request_id)
            if not attempts:
                return plain_error(404, f"no calls recorded for request {request_id!r}")
            line = request_line(attempts)
            return {"request_id": line["request_id"], "attempts": attempts, "request": line}

        return await serve(request, (), answer)

    @router.get("/usage/tags")
    async def usage_tags(request: Request) -> Response:
        """Attempts, failures, tokens and cost per tag (`key=value`), costliest first."""

        async def answer(factory: SessionFactory, params: dict[str, str]) -> dict[str, Any]:
            return {"groups": await tag_breakdown(factory, filters_from(_filters(params)))}

        return await serve(request, FILTER_NAMES, answer)

    @router.get("/usage/export.csv")
    async def usage_export(request: Request) -> Response:
        """Every matching attempt as CSV, oldest first (the columns of `course-llm export`)."""

        async def answer(factory: SessionFactory, params: dict[str, str]) -> Response:
            filters = filters_from(_filters(params))
            view = params.get("view", "attempts")
            if view not in ("attempts", "requests"):
                raise UsageQueryError("view", f"{view!r} is not one of: attempts, requests")
            # Without a status filter, the requests view lists exactly the requests with a
            # matching attempt, so the plain export already matches it.
            request_ids = None
            if view == "requests" and filters.status is not None:
                request_ids = await _matching_request_ids(factory, filters)
                filters = dataclasses.replace(filters, status=None)
            # Counting first turns a bad prefix or an unreachable database into a JSON error
            # while the status line can still say so; once streaming, the status is sent.
            await count_matching(factory, filters)

            async def lines() -> AsyncIterator[str]:
                yield csv_header()
                async for row in iter_calls(factory, filters):
                    if request_ids is None or row["request_id"] in request_ids:
                        yield csv_line(row)

            disposition = 'attachment; filename="course_llm_calls.csv"'
            return StreamingResponse(
                lines(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": disposition}
            )

        return await serve(request, (*FILTER_NAMES, "view"), answer)

    return router


async def _matching_request_ids(factory: SessionFactory, filters: UsageFilters) -> set[str]:
    """The ids of every request `/usage/requests` lists for `filters`, read page by page."""
    ids: set[str] = set()
    page = 1
    while True:
        found = await list_requests(factory, filters, page, _ID_PAGE)
        ids.update(line["request_id"] for line in found.data)
        if page >= found.total_pages:
            return ids
        page += 1
