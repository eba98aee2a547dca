"""`GET /usage/budgets` and `GET /usage/circuits`: the proxy's budgets and open circuits, now.

Both read the process's `Controls` (course_llm/control/controls.py), never the database: a
budget's figure is the one its requests are checked against (refreshed from the rows every
second), a circuit's state is this process's. Behind the master key, like the rest of `/usage`.

    GET /usage/budgets  → {"budgets": [{"name", "period", "limit_usd", "spent_usd", "remaining_usd",
                                        "state": "ok"|"downgraded"|"exceeded", "resets_at"}]}
    GET /usage/circuits → {"circuits": [{"model_id", "state": "open"|"half_open", "reopens_in_s",
                                         "consecutive_failures", "last_status_code", "skipped"}]}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from course_llm.control.controls import Controls, circuit_dict, status_dict
from course_llm.proxy.usage_api import key_refusal, plain_error, plain_json

__all__ = ["create_controls_router"]


def create_controls_router(
    get_controls: Callable[[], Controls], get_master_key: Callable[[], str | None]
) -> APIRouter:
    """The routes above, reading `get_controls()` behind `get_master_key()` on each request."""
    router = APIRouter(tags=["usage"])

    def answer(request: Request, body: Callable[[Controls], dict[str, Any]]) -> Response:
        refusal = key_refusal(request, get_master_key())
        if refusal is not None:
            return refusal
        for name in request.query_params:
            return plain_error(400, f"{name}: unknown parameter; this route takes none")
        return plain_json(body(get_controls()))

    @router.get("/usage/budgets")
    async def usage_budgets(request: Request) -> Response:
        """Each budget of the registry: its period's spend, what remains, its state, its reset."""
        return answer(request, lambda c: {"budgets": [status_dict(s) for s in c.budget_statuses()]})

    @router.get("/usage/circuits")
    async def usage_circuits(request: Request) -> Response:
        """Each model whose circuit is open or half-open, and when it lets a trial through."""
        return answer(request, lambda c: {"circuits": [circuit_dict(c) for c in c.open_circuits()]})

    return router
