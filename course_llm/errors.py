"""Every exception course_llm raises, in one tree.

    CourseLLMError
    ├── RegistryError            (also ValueError) the registry file is missing or invalid
    ├── UnknownActionError       (also LookupError) the action or strategy is not in the registry
    ├── AllModelsFailedError     every model of every chain tried for a request failed
    ├── StructuredOutputError    the model answered, but not with JSON that fits the schema
    ├── BudgetExceededError      a budget of the registry is spent and refuses more requests
    ├── AttemptSkippedError      an attempt course_llm did not make (its model's circuit is open)
    ├── UnknownProviderError     (also LookupError) no model of the registry uses that provider
    └── UsageQueryError          (also ValueError) a usage filter or group key is invalid

Each exception carries its context as attributes, so callers never parse messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

#: Upstream statuses that say the request is wrong, not the model: they skip to the next model at
#: once (docs/architecture.md, "Routing semantics") and never count against a model's circuit.
PERMANENT_STATUS_CODES = frozenset({400, 401, 403, 404})


class CourseLLMError(Exception):
    """Base class of every course_llm error."""


class RegistryError(CourseLLMError, ValueError):
    """The registry file is missing, unreadable or breaks a rule.

    `path` is the file, `key` the key path of the first problem (`routing.video_analysis.quality[1]`),
    `problems` every problem found as `(key, message)` pairs.
    """

    def __init__(self, path: str, problems: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        self.key = self.problems[0][0] if self.problems else ""
        first_key, first_message = self.problems[0] if self.problems else ("", "invalid registry")
        where = f"{path}: {first_key}: " if first_key else f"{path}: "
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{where}{first_message}{more}")


class UnknownActionError(CourseLLMError, LookupError):
    """The requested action, or the strategy for that action, is not in the registry.

    `valid` lists what would have been accepted: action names when the action is unknown,
    that action's strategies when only the strategy is.
    """

    def __init__(self, action: str, strategy: str | None, valid: Sequence[str]) -> None:
        self.action = action
        self.strategy = strategy
        self.valid = list(valid)
        choices = ", ".join(self.valid)
        if strategy is None:
            message = f"unknown action {action!r}; valid actions: {choices}"
        else:
            message = f"unknown strategy {strategy!r} for action {action!r}; valid strategies: {choices}"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One failed attempt of a request, as recorded in its llm_calls row."""

    attempt: int
    model_id: str
    provider: str
    served_strategy: str
    status_code: int | None
    error_class: str
    message: str

    def describe(self) -> str:
        """`model_id (served_strategy): <status> <error_class>: <message>`, status `-` when none."""
        status = self.status_code or "-"
        return f"{self.model_id} ({self.served_strategy}): {status} {self.error_class}: {self.message}"


class AllModelsFailedError(CourseLLMError):
    """Every model of the requested chain (and of the fallback chains) failed.

    `attempts` holds one FailedAttempt per failed attempt, in the order they were made.
    `errors` is the same list as text, one string per failed attempt in the same order:
    `"model_id (served_strategy): <status> <error_class>: <message>"` (status `-` when the attempt
    got no HTTP answer). `strategies_tried` names the strategies whose chains were attempted, in
    the order they were first tried, each once: `["quality", "default", "budget"]` for a quality
    request that went through the default chain to the fallback strategy. Both come from the
    original router's error, which code written against it reads; both are empty when no model
    was attempted (every provider of the chains disabled).
    """

    def __init__(
        self, action: str, strategy: str, request_id: str, attempts: Sequence[FailedAttempt], reason: str = ""
    ) -> None:
        self.action = action
        self.strategy = strategy
        self.request_id = request_id
        self.attempts = list(attempts)
        self.errors = [a.describe() for a in self.attempts]
        self.strategies_tried = list(dict.fromkeys(a.served_strategy for a in self.attempts))
        tried = "; ".join(
            f"#{a.attempt} {a.model_id} ({a.served_strategy}): {a.status_code or '-'} {a.error_class}"
            for a in self.attempts
        )
        detail = tried or reason or "no model was attempted"
        super().__init__(f"all models failed for {action}/{strategy} (request {request_id}): {detail}")


class StructuredOutputError(CourseLLMError):
    """The model's answer is not JSON that validates against the requested schema.

    `raw` is the text the model returned, `schema` the Pydantic model's name, `detail` why it failed.
    """

    def __init__(self, raw: str, schema: str, detail: str, request_id: str = "") -> None:
        self.raw = raw
        self.schema = schema
        self.detail = detail
        self.request_id = request_id
        super().__init__(f"answer does not fit {schema}: {detail}")


class BudgetExceededError(CourseLLMError):
    """A budget with `on_limit: reject` is spent; nothing was sent upstream and no row written.

    `budget` is its name in the registry, `spent_usd` what the rows of its period say, `limit_usd`
    its limit and `resets_at` (timezone-aware UTC) when its period ends.
    """

    def __init__(self, budget: str, spent_usd: float, limit_usd: float, resets_at: datetime) -> None:
        self.budget = budget
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd
        self.resets_at = resets_at
        super().__init__(
            f"budget {budget!r} is spent: {_usd(spent_usd)} of {_usd(limit_usd)} USD; "
            f"it resets at {resets_at.isoformat()}"
        )


def _usd(amount: float) -> str:
    """Cents for a dollar or more, else six decimals (a test budget of 0.00004 USD stays readable)."""
    return f"{amount:,.2f}" if abs(amount) >= 1 else f"{amount:.6f}"


class AttemptSkippedError(CourseLLMError):
    """Raised inside LiteLLM's routing for an attempt not made: the chain moves on at once.

    `error_class` is what the attempt's row says (`CircuitOpen`), `model_id` the model skipped.
    It never reaches a facade caller (`AllModelsFailedError` lists the skip among its attempts);
    a proxy client whose whole chain was skipped gets a 503 (`status_code`).
    """

    status_code = 503

    def __init__(self, error_class: str, model_id: str, message: str) -> None:
        self.error_class = error_class
        self.model_id = model_id
        super().__init__(message)


class UsageQueryError(CourseLLMError, ValueError):
    """A usage filter, group key or page value is invalid. `field` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class UnknownProviderError(CourseLLMError, LookupError):
    """`disable_provider` / `enable_provider` named a provider no model in the registry uses."""

    def __init__(self, provider: str, valid: Sequence[str]) -> None:
        self.provider = provider
        self.valid = list(valid)
        super().__init__(f"unknown provider {provider!r}; providers in the registry: {', '.join(self.valid)}")
