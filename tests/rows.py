"""`row()`: a valid CallRecord for writer and journal tests; light to import (no LiteLLM), so the
child processes that those tests kill start fast."""

from __future__ import annotations

from typing import Any

from course_llm.recording.records import CallRecord


def row(i: int = 0, **overrides: Any) -> CallRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{i}",
        "attempt": 1,
        "action": "text_processing",
        "strategy": "default",
        "served_strategy": "default",
        "provider": "deepseek",
        "model_id": "deepseek-chat",
        "success": True,
        "source": "sdk",
        "tokens_in": 10,
        "tokens_out": 5,
    }
    values.update(overrides)
    return CallRecord(**values)
