"""The registry's optional sections: response cache, budgets and the circuit breaker.

They are data like the rest of the registry, validated by Pydantic models that forbid unknown keys,
so a bad section fails at load with the file and the key path (`budgets.daily.limit_usd: ...`).
`registry.py` holds the models, actions and chains; this module holds what sits beside them, and
`course_llm.control` gives the budget and breaker sections their behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheConfig(_Strict):
    """LiteLLM's response cache. `local` is per process; `redis` uses `COURSE_LLM_REDIS_URL`."""

    type: Literal["local", "redis"] = "local"
    ttl_s: float = Field(600, gt=0)


class BudgetMatch(_Strict):
    """Which requests a budget counts: every given field must equal; none given = all traffic."""

    action: str | None = Field(None, min_length=1)
    tenant_id: str | None = Field(None, min_length=1)
    operation: str | None = Field(None, min_length=1)

    def matches(self, action: str, tenant_id: str | None, operation: str | None) -> bool:
        return (
            (self.action is None or self.action == action)
            and (self.tenant_id is None or self.tenant_id == tenant_id)
            and (self.operation is None or self.operation == operation)
        )


class BudgetConfig(_Strict):
    """A spending limit per UTC day or month over the requests `match` selects."""

    match: BudgetMatch = BudgetMatch()
    period: Literal["day", "month"]
    limit_usd: float = Field(gt=0)
    downgrade_at: float | None = Field(None, gt=0, le=1)
    on_limit: Literal["reject", "allow"] = "reject"


class CircuitBreakerConfig(_Strict):
    """After `failures` consecutive transient failures a model is skipped for `cooldown_s`."""

    failures: int = Field(5, ge=1)
    cooldown_s: float = Field(30, gt=0)


def check_sections(
    budgets: Mapping[str, BudgetConfig], actions: Mapping[str, object]
) -> Iterator[tuple[str, str]]:
    """Cross-checks the sections need from the rest of the registry, as `(key, message)` pairs."""
    for name, budget in budgets.items():
        if not _NAME.match(name):
            yield f"budgets.{name}", "budget names use letters, digits and . _ -"
        if budget.match.action is not None and budget.match.action not in actions:
            yield f"budgets.{name}.match.action", f"unknown action {budget.match.action!r}"
