"""CallRecord: one llm_calls row as plain data, shared by the callback, the writer and `db/`.

Kept free of LiteLLM and SQLAlchemy so the mapping from LiteLLM payloads can be tested as a pure
function and the writer can spool rows to a file as JSON while the database is away.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from uuid_utils.compat import uuid7

from course_llm.errors import FailedAttempt
from course_llm.recording.secrets import mask_secrets

Source = Literal["sdk", "proxy", "direct"]

#: Longest error message kept in a row; the rest is cut with a marker.
MAX_ERROR_MESSAGE = 2000


def new_id() -> uuid.UUID:
    """A time-ordered UUID (uuid7) for row ids and request ids, as the standard library's type."""
    return uuid7()


#: Key of the row metadata naming the budget that downgraded the request (course_llm/control/),
#: and the request metadata key the proxy marks such a request with.
BUDGET_KEY = "budget"
BUDGET_MARK_KEY = "course_llm_budget"
#: error_class of an attempt not made: LiteLLM's pre-call check found the prompt over the model's
#: context window (course_llm/_litellm/context.py).
CONTEXT_WINDOW_SKIPPED = "ContextWindowSkipped"
#: error_class of a stream whose client hung up before it ended.
CLIENT_DISCONNECTED = "ClientDisconnected"


def status_code_of(exception: BaseException) -> int | None:
    """The HTTP status an exception carries, if it carries an integer one."""
    code = getattr(exception, "status_code", None)
    return code if isinstance(code, int) else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def redact(message: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """The message with credentials masked (configured secrets and key-shaped patterns, see
    course_llm/recording/secrets.py) and its length capped.

    Masked before the cut, so a cut cannot leave the head of a key that the whole would match;
    a huge message is first cut to a few times `limit`, which bounds the masking's cost.
    """
    message = mask_secrets(message[: 4 * limit + 256])
    marker = "… [truncated]"
    if len(message) > limit:
        message = message[: limit - len(marker)] + marker
    return message


@dataclass(slots=True)
class CallRecord:
    """One attempt of one LLM request: the llm_calls columns (docs/architecture.md, "The llm_calls table")."""

    request_id: str
    attempt: int
    action: str
    strategy: str
    served_strategy: str
    provider: str
    model_id: str
    success: bool
    source: Source
    created_at: datetime = field(default_factory=utcnow)
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    status_code: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    stream: bool = False
    cache_hit: bool = False
    tenant_id: str | None = None
    operation: str | None = None
    end_user: str | None = None
    # SHA-256 hex of the request's system / user text, and the opt-in start of the answer
    # (course_llm/recording/prompts.py says which text). Defaults keep journal lines written
    # before these columns existed decodable: `from_json` leaves the missing keys at None.
    system_prompt_hash: str | None = None
    user_prompt_hash: str | None = None
    response_preview: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=new_id)

    def as_dict(self) -> dict[str, Any]:
        """Column name → value, ready for an INSERT."""
        return {name: getattr(self, name) for name in _FIELDS}

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form (for the spool file); `from_json` reverses it."""
        data = self.as_dict()
        data["id"] = str(self.id)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        values = dict(data)
        values["id"] = uuid.UUID(values["id"])
        values["created_at"] = datetime.fromisoformat(values["created_at"])
        return cls(**values)

    def as_failed_attempt(self) -> FailedAttempt:
        """This failed attempt as AllModelsFailedError lists it."""
        return FailedAttempt(
            attempt=self.attempt,
            model_id=self.model_id,
            provider=self.provider,
            served_strategy=self.served_strategy,
            status_code=self.status_code,
            error_class=self.error_class or "",
            message=self.error_message or "",
        )


#: The column names in order; `dataclasses.fields()` per row costs more than the row's JSON.
_FIELDS = tuple(f.name for f in dataclasses.fields(CallRecord))
