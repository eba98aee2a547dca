"""call_scope: who asked and why, attached to every llm_calls row written inside the block.

A ContextVar carries the scope, so concurrent tasks each keep their own attribution and nested
scopes refine the outer one (inner values win; tags merge).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Scope:
    tenant_id: str | None = None
    operation: str | None = None
    end_user: str | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)


_current: ContextVar[Scope] = ContextVar("course_llm_scope", default=Scope())  # noqa: B039 (frozen, never mutated)


def current_scope() -> Scope:
    return _current.get()


@contextmanager
def call_scope(
    *,
    tenant_id: str | None = None,
    operation: str | None = None,
    end_user: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Scope]:
    """Attribute every LLM call made inside the block (facade, proxy client code, track_llm_call)."""
    outer = _current.get()
    scope = replace(
        outer,
        tenant_id=tenant_id if tenant_id is not None else outer.tenant_id,
        operation=operation if operation is not None else outer.operation,
        end_user=end_user if end_user is not None else outer.end_user,
        tags={**outer.tags, **(tags or {})},
    )
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
