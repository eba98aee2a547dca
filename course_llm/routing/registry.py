"""The model registry: which models exist, which actions need what, and which chain serves each.

The registry is data, not settings. `load_registry(path)` reads the YAML once, validates it with
Pydantic models that forbid unknown keys, cross-checks the sections, and raises `RegistryError`
naming the file and the key path of every problem (`routing.video_analysis.quality[1]: unknown
model 'gpt-5'`). A new action or model is a YAML edit; a new provider is one line in PROVIDERS.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from course_llm.control.sections import BudgetConfig, CacheConfig, CircuitBreakerConfig, check_sections
from course_llm.errors import RegistryError, UnknownActionError

DEFAULT_STRATEGY = "default"


@dataclass(frozen=True, slots=True)
class Provider:
    """How LiteLLM reaches a provider: its model prefix and the env var holding its key."""

    prefix: str
    key_env: str


#: Known providers. Any other LiteLLM provider prefix works too, with `<PREFIX>_API_KEY` as key.
PROVIDERS: Mapping[str, Provider] = {
    "gemini": Provider("gemini", "GEMINI_API_KEY"),
    "anthropic": Provider("anthropic", "ANTHROPIC_API_KEY"),
    "openai": Provider("openai", "OPENAI_API_KEY"),
    "deepseek": Provider("deepseek", "DEEPSEEK_API_KEY"),
}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class _RuleError(ValueError):
    """A cross-check failure that knows the key path it belongs to."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pricing(_Strict):
    """USD per 1,000 tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class ModelConfig(_Strict):
    """One model the application may call. Its id is the key it has under `models:`."""

    provider: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    model: str | None = Field(None, min_length=1)
    api_base: str | None = Field(None, pattern=r"^https?://")
    api_key_env: str | None = Field(None, pattern=_ENV_VAR.pattern)
    capabilities: frozenset[str] = frozenset()
    max_context: int = Field(gt=0)
    cost_per_1k: Pricing
    _id: str = PrivateAttr(default="")

    @property
    def id(self) -> str:
        return self._id

    @property
    def provider_model(self) -> str:
        """The model name the provider knows (defaults to the registry id)."""
        return self.model or self._id

    @property
    def litellm_model(self) -> str:
        """`<litellm prefix>/<provider model>`, as LiteLLM expects it."""
        prefix = PROVIDERS[self.provider].prefix if self.provider in PROVIDERS else self.provider
        return f"{prefix}/{self.provider_model}"

    @property
    def key_env(self) -> str:
        if self.api_key_env:
            return self.api_key_env
        known = PROVIDERS.get(self.provider)
        return known.key_env if known else f"{self.provider.upper()}_API_KEY"

    def estimate_cost(self, tokens_in: int | None, tokens_out: int | None) -> float:
        """USD cost of a call with these token counts at the registry's prices."""
        return (
            (tokens_in or 0) * self.cost_per_1k.input + (tokens_out or 0) * self.cost_per_1k.output
        ) / 1000


class ActionConfig(_Strict):
    """A task the application asks for, and the capabilities every model serving it needs."""

    description: str = ""
    requires: frozenset[str] = frozenset()


class Registry(_Strict):
    """The validated registry. Build it with `load_registry`."""

    models: dict[str, ModelConfig] = Field(min_length=1)
    actions: dict[str, ActionConfig] = Field(min_length=1)
    routing: dict[str, dict[str, list[str]]]
    cache: CacheConfig | None = None
    budgets: dict[str, BudgetConfig] = Field(default_factory=dict)
    circuit_breaker: CircuitBreakerConfig | None = None

    @model_validator(mode="after")
    def _cross_check(self) -> Self:
        for model_id, model in self.models.items():
            model._id = model_id
        problems = list(_check_rules(self))
        if problems:
            raise _RuleError(problems)
        return self

    def get_chain(self, action: str, strategy: str = DEFAULT_STRATEGY) -> list[ModelConfig]:
        """The models serving `action` under `strategy`, in the order they are tried."""
        return [self.models[model_id] for model_id in self.chain_ids(action, strategy)]

    def chain_ids(self, action: str, strategy: str = DEFAULT_STRATEGY) -> list[str]:
        if action not in self.routing:
            raise UnknownActionError(action, None, sorted(self.routing))
        chains = self.routing[action]
        if strategy not in chains:
            raise UnknownActionError(action, strategy, list(chains))
        return list(chains[strategy])

    def chains(self) -> Iterator[tuple[str, str, list[str]]]:
        """Every `(action, strategy, model ids)` in registry order."""
        for action, chains in self.routing.items():
            for strategy, model_ids in chains.items():
                yield action, strategy, list(model_ids)


def _check_rules(registry: Registry) -> Iterator[tuple[str, str]]:
    for model_id in registry.models:
        if not _MODEL_ID.match(model_id):
            yield f"models.{model_id}", "model ids use letters, digits and . _ : - (no '/')"
    for action in registry.actions:
        if not _NAME.match(action):
            yield f"actions.{action}", "action names are lower_snake_case"
        if action not in registry.routing:
            yield f"routing.{action}", f"action {action!r} has no routing"
    yield from check_sections(registry.budgets, registry.actions)
    for action, chains in registry.routing.items():
        if action not in registry.actions:
            yield f"routing.{action}", f"unknown action {action!r}"
            continue
        if DEFAULT_STRATEGY not in chains:
            yield f"routing.{action}", f"missing the required {DEFAULT_STRATEGY!r} chain"
        required = registry.actions[action].requires
        for strategy, chain in chains.items():
            where = f"routing.{action}.{strategy}"
            if not _NAME.match(strategy):
                yield where, "strategy names are lower_snake_case"
            if not chain:
                yield where, "chain is empty"
            seen: set[str] = set()
            for index, model_id in enumerate(chain):
                if model_id not in registry.models:
                    yield f"{where}[{index}]", f"unknown model {model_id!r}"
                    continue
                if model_id in seen:
                    yield f"{where}[{index}]", f"model {model_id!r} appears twice in the chain"
                seen.add(model_id)
                missing = required - registry.models[model_id].capabilities
                if missing:
                    yield (
                        f"{where}[{index}]",
                        f"model {model_id!r} lacks {', '.join(sorted(missing))} required by {action!r}",
                    )


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors():
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, _RuleError):
            problems.extend(cause.problems)
            continue
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append((_key_path(tuple(item["loc"])), message))
    return problems


def parse_registry(data: Any, path: str = "<registry>") -> Registry:
    """Validate already-loaded registry data. Raises RegistryError naming `path` and the key."""
    if not isinstance(data, dict):
        raise RegistryError(path, [("", "the registry must be a mapping with models, actions, routing")])
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(path, _problems(exc)) from None


def load_registry(path: str | Path) -> Registry:
    """Read and validate the registry YAML at `path`."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(where, [("", "file not found")]) from None
    except OSError as exc:
        raise RegistryError(where, [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise RegistryError(where, [("", f"{line}{problem}")]) from None
    return parse_registry(data, where)
