"""course_llm: route LLM calls by task and strategy through LiteLLM, and record every attempt.

The public API is what `__all__` lists (tests/test_public_api.py pins it); see docs/architecture.md.
Importing the package does no work: LiteLLM, the database and the registry load on first use.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

from course_llm.errors import (
    AllModelsFailedError,
    BudgetExceededError,
    CourseLLMError,
    FailedAttempt,
    RegistryError,
    StructuredOutputError,
    UnknownActionError,
    UnknownProviderError,
    UsageQueryError,
)
from course_llm.routing.registry import Registry, load_registry
from course_llm.scope import call_scope
from course_llm.settings import Settings

if TYPE_CHECKING:
    from course_llm.db import create_session_factory
    from course_llm.recording.tracking import flush_tracked_calls, track_llm_call
    from course_llm.routing.facade import LLMResponse, ModelRouter
    from course_llm.routing.factory import complete, create_model_router

__version__ = _version("course-llm")

# Names whose modules import LiteLLM or SQLAlchemy (seconds and ~180 MB): loaded on first access.
_LAZY = {
    "LLMResponse": "course_llm.routing.facade",
    "ModelRouter": "course_llm.routing.facade",
    "complete": "course_llm.routing.factory",
    "create_model_router": "course_llm.routing.factory",
    "create_session_factory": "course_llm.db",
    "track_llm_call": "course_llm.recording.tracking",
    "flush_tracked_calls": "course_llm.recording.tracking",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'course_llm' has no attribute {name!r}")


__all__ = [
    "AllModelsFailedError",
    "BudgetExceededError",
    "CourseLLMError",
    "FailedAttempt",
    "LLMResponse",
    "ModelRouter",
    "Registry",
    "RegistryError",
    "Settings",
    "StructuredOutputError",
    "UnknownActionError",
    "UnknownProviderError",
    "UsageQueryError",
    "__version__",
    "call_scope",
    "complete",
    "create_model_router",
    "create_session_factory",
    "flush_tracked_calls",
    "load_registry",
    "track_llm_call",
]
