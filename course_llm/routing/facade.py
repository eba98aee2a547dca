"""The Python facade: ask for an action and a strategy, get an answer and what it cost.

A `ModelRouter` compiles its registry into a LiteLLM Router and registers with the process's one
SDK CallLogger (`dispatch.py`), which hands the rows of its calls to the router's background
RecordWriter (when it has one; `factory.py` builds both from the settings). Routing,
retries and fallbacks are LiteLLM's, configured by the compiler; this module turns a request into
a Router call and the outcome into an LLMResponse or an error.

With `mock=True` (COURSE_LLM_MOCK=1) every deployment answers in-process from the mock of
`serve --mock` (`offline.py`): same routing, same rows, no API keys and no network.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from pydantic import BaseModel

from course_llm._litellm import (
    cache_request_params,
    flush_logging_worker,
    install_response_cache,
    load_litellm,
)
from course_llm.control.breaker import CircuitBreaker
from course_llm.control.budgets import SpendSource
from course_llm.control.controls import Controls, label
from course_llm.errors import (
    AllModelsFailedError,
    CourseLLMError,
    UnknownActionError,
    UnknownProviderError,
)
from course_llm.recording.callback import (
    EXTRA_KEY,
    REQUEST_ID_KEY,
    ROUTER_TAG,
    TAGS_KEY,
    CallLogger,
    litellm_tags,
)
from course_llm.recording.payload import ASKED_GROUP_KEY
from course_llm.recording.records import CallRecord, new_id, utcnow
from course_llm.recording.secrets import register_secrets, secret_values_from
from course_llm.recording.writer import RecordWriter
from course_llm.routing.compiler import compile_router_config, group_name, parse_deployment_id
from course_llm.routing.dispatch import ROUTER_ID_KEY, SDK_ROUTER_TAG, router_dispatch
from course_llm.routing.offline import install_offline_provider, missing_keys_note, offline_router_config
from course_llm.routing.quiet_logs import facade_call
from course_llm.routing.registry import DEFAULT_STRATEGY, Registry
from course_llm.routing.structured import parse_structured, structured_call
from course_llm.scope import current_scope

log = structlog.get_logger()

T = TypeVar("T", bound=BaseModel)
Prompt = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """The answer to one request. `latency_ms` is the whole request, fallbacks included."""

    content: str
    provider: str
    model_id: str
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float
    cost_usd: float | None
    action: str
    strategy: str
    served_strategy: str
    request_id: str
    finished_at: datetime
    parsed: Any = None


def _messages(prompt: Prompt, system_prompt: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    else:
        messages.extend(dict(m) for m in prompt)
    return messages


class ModelRouter:
    """Routes requests by action and strategy. Use as `async with create_model_router(...) as r:`."""

    def __init__(
        self,
        registry: Registry,
        *,
        writer: RecordWriter | None = None,
        max_attempts: int = 2,
        fallback_strategy: str | None = None,
        timeout_s: float = 600.0,
        mock: bool = False,
        redis_url: str | None = None,
        spend_source: SpendSource | None = None,
    ) -> None:
        if fallback_strategy is not None:
            known = {strategy for _, strategy, _ in registry.chains()}
            if fallback_strategy not in known:
                raise UnknownActionError("*", fallback_strategy, sorted(known))
        self.registry = registry
        register_secrets(secret_values_from(registry=registry))
        self._litellm = load_litellm()
        # LiteLLM's response cache, used only by requests that ask (`cache_request_params`).
        self._cache_ttl_s = registry.cache.ttl_s if registry.cache else None
        if registry.cache:
            install_response_cache(registry.cache.type, redis_url)
        self._writer = writer
        self._max_attempts = max_attempts
        self._fallback_strategy = fallback_strategy
        self._timeout_s = timeout_s
        self.mock = mock
        if mock:
            install_offline_provider()
        self._disabled: frozenset[str] = frozenset()
        self._id = f"router-{uuid.uuid4().hex}"
        self._failures: dict[str, list[CallRecord]] = {}
        self._router, self._groups = self._build_router()
        self._closed = False
        # One logger serves every router of the process (LiteLLM takes at most 100 callbacks).
        self._dispatch = router_dispatch()
        # The registry's budgets (spend shared through `spend_source`, the database) and breaker
        # (its circuits shared with every process on `redis_url`, when there is one).
        circuits = None
        if redis_url and registry.circuit_breaker is not None:
            from course_llm.control.redis_circuits import SharedCircuits

            circuits = SharedCircuits(redis_url)
        self.controls = Controls(
            registry.budgets, registry.circuit_breaker, self._has_chain, spend_source, circuits
        )
        try:
            self._dispatch.register(self._id, self._on_record, self._gate)
        except CourseLLMError:
            self._router.discard()
            raise

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The registry's circuit breaker for this router's models (None without the section)."""
        return self.controls.breaker

    @breaker.setter
    def breaker(self, breaker: CircuitBreaker | None) -> None:
        self.controls.breaker = breaker

    async def __aenter__(self) -> Self:
        self.controls.start_soon()  # the budgets' spend as the database says (`complete` waits, briefly)
        if self._writer is not None:
            self._writer.start()  # writes what a killed process left in the journal, before any call
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Deliver every pending log row, then stop receiving rows. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await flush_logging_worker()  # LiteLLM's background events of finished calls reach us first
        self._dispatch.unregister(self._id)
        self._router.discard()
        await self.controls.aclose()
        if self._writer is not None:
            await self._writer.aclose()

    async def flush(self) -> None:
        """Wait until every row of the calls made so far is written (or spooled)."""
        await flush_logging_worker()
        if self._writer is not None:
            await self._writer.flush()

    @property
    def logger(self) -> CallLogger:
        """The process's SDK logger, shared by every router."""
        return self._dispatch.logger

    # -- providers -------------------------------------------------------------------------------

    def _build_router(self) -> tuple[Any, frozenset[str]]:
        config = compile_router_config(
            self.registry,
            max_attempts=self._max_attempts,
            fallback_strategy=self._fallback_strategy,
            timeout_s=self._timeout_s,
            disabled_providers=self._disabled,
        )
        if self.mock:
            config = offline_router_config(config)
        groups = frozenset(d["model_name"] for d in config["model_list"])
        return self._litellm.Router(model_list=config["model_list"], **config["router_settings"]), groups

    def _set_disabled(self, disabled: frozenset[str]) -> None:
        if disabled == self._disabled:
            return
        old = self._router
        self._disabled = disabled
        self._router, self._groups = self._build_router()
        old.discard()  # requests already running on it finish normally
        log.info("providers_changed", disabled=sorted(disabled))

    def _check_provider(self, name: str) -> None:
        known = sorted({m.provider for m in self.registry.models.values()})
        if name not in known:
            raise UnknownProviderError(name, known)

    def disable_provider(self, name: str) -> None:
        """Take every model of `name` out of every chain until `enable_provider(name)`."""
        self._check_provider(name)
        self._set_disabled(self._disabled | {name})

    def enable_provider(self, name: str) -> None:
        self._check_provider(name)
        self._set_disabled(self._disabled - {name})

    @property
    def disabled_providers(self) -> frozenset[str]:
        return self._disabled

    # -- requests --------------------------------------------------------------------------------

    def _has_chain(self, action: str, strategy: str) -> bool:
        return group_name(action, strategy) in self._groups

    def _gate(self, kwargs: Mapping[str, Any], model_id: str) -> tuple[str, str] | None:
        """Before each attempt: may it go upstream (CallLogger's `Gate`)?"""
        return self.controls.gate(model_id)

    def _on_record(self, record: CallRecord) -> None:
        self._deliver(record)
        try:
            self.controls.observe(record)
        except Exception as exc:  # a budget or breaker must never cost a row (it is written above)
            log.error("llm_call_control_failed", request_id=record.request_id, error=repr(exc))

    def _deliver(self, record: CallRecord) -> None:
        if not record.success and (bucket := self._failures.get(record.request_id)) is not None:
            bucket.append(record)
        if self._writer is not None:
            self._writer.submit(record)

    def _entry_group(self, action: str, strategy: str) -> str | None:
        """The first group that still has models: requested, then default, then the fallback."""
        candidates = [strategy, DEFAULT_STRATEGY, self._fallback_strategy]
        for candidate in candidates:
            if candidate and group_name(action, candidate) in self._groups:
                return group_name(action, candidate)
        return None

    async def complete(
        self,
        action: str,
        prompt: Prompt,
        *,
        strategy: str = DEFAULT_STRATEGY,
        system_prompt: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> LLMResponse:
        """Answer `prompt` (text, or a list of chat messages) with the chain for action×strategy.

        Extra keyword arguments (temperature, max_tokens, …) go to the model. `metadata` is stored
        with every row of the request. Raises UnknownActionError before any HTTP request, and
        AllModelsFailedError, carrying every failed attempt, when no model answered.
        """
        if self._closed:
            raise RuntimeError("this ModelRouter is closed")
        self.registry.chain_ids(action, strategy)  # UnknownActionError before anything is sent
        request_id = str(new_id())
        scope = current_scope()
        # A spent budget raises BudgetExceededError here: nothing is sent, no row is written.
        await self.controls.ready()  # a new router's first calls wait (at most 2 s) for the figures
        plan = self.controls.plan(action, strategy, scope.tenant_id, scope.operation)
        group = self._entry_group(action, plan.strategy)
        if group is None:
            reason = f"every model is disabled (providers: {', '.join(sorted(self._disabled))})"
            raise AllModelsFailedError(action, strategy, request_id, [], reason=reason)
        call_metadata: dict[str, Any] = {
            ROUTER_TAG: SDK_ROUTER_TAG,
            ASKED_GROUP_KEY: group_name(action, strategy),
            REQUEST_ID_KEY: request_id,
            "tenant_id": scope.tenant_id,
            "operation": scope.operation,
            "tags": litellm_tags(scope.tags),
            TAGS_KEY: dict(scope.tags),
            # The row's metadata, and the router its rows go to (taken out again by the dispatch).
            EXTRA_KEY: {**(metadata or {}), **plan.metadata(), ROUTER_ID_KEY: self._id},
        }
        if scope.end_user is not None:
            params.setdefault("user", scope.end_user)
        params.setdefault("drop_params", True)
        if self._cache_ttl_s is not None:
            for name, value in cache_request_params(self._cache_ttl_s, label(scope.tenant_id)).items():
                params.setdefault(name, value)
        failures = self._failures[request_id] = []
        started = time.perf_counter()
        try:
            with facade_call():  # LiteLLM's log of a failed request would repeat our error at length
                response = await self._router.acompletion(
                    model=group,
                    messages=_messages(prompt, system_prompt),
                    metadata=call_metadata,  # a fresh dict per call: the Router mutates it
                    litellm_trace_id=request_id,
                    **params,
                )
        except Exception as exc:
            attempts = [r.as_failed_attempt() for r in failures]
            error = AllModelsFailedError(action, strategy, request_id, attempts, reason=str(exc))
            if not self.mock and (note := missing_keys_note(self.registry, [a.model_id for a in attempts])):
                error.add_note(note)
            # Every attempt is in `error.attempts`; LiteLLM's nested chain of the last one (often
            # a hundred lines) adds nothing to print. It stays reachable as `__context__`.
            raise error from None
        finally:
            self._failures.pop(request_id, None)
        return self._response(response, action, strategy, request_id, started)

    def _response(
        self, response: Any, action: str, strategy: str, request_id: str, started: float
    ) -> LLMResponse:
        hidden = getattr(response, "_hidden_params", {}) or {}
        _, served_strategy, model_id = parse_deployment_id(str(hidden.get("model_id") or "")) or ("", "", "")
        model = self.registry.models.get(model_id)
        usage = getattr(response, "usage", None)
        tokens_in = getattr(usage, "prompt_tokens", None)
        tokens_out = getattr(usage, "completion_tokens", None)
        cost = model.estimate_cost(tokens_in, tokens_out) if model else None
        return LLMResponse(
            content=response.choices[0].message.content or "",
            provider=model.provider if model else str(hidden.get("custom_llm_provider") or ""),
            model_id=model_id,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=(time.perf_counter() - started) * 1000,
            # An answer from LiteLLM's response cache cost nothing (its row says so too).
            cost_usd=0.0 if hidden.get("cache_hit") else cost,
            action=action,
            strategy=strategy,
            served_strategy=served_strategy,
            request_id=request_id,
            finished_at=utcnow(),
        )

    async def complete_structured(
        self,
        action: str,
        prompt: Prompt,
        schema: type[T],
        *,
        strategy: str = DEFAULT_STRATEGY,
        system_prompt: str | None = None,
        **params: Any,
    ) -> LLMResponse:
        """Like `complete`, but the answer must be JSON fitting `schema`; `.parsed` holds it.

        Each model is asked the way it supports (`structured.py`): native JSON schema where LiteLLM
        says the model takes one, else JSON mode with the schema in the system prompt (and where the
        caller passes its own `response_format`). Raises StructuredOutputError carrying the raw
        text when the answer does not validate.
        """
        with structured_call(schema, self.registry, system_prompt, params) as system:
            response = await self.complete(action, prompt, strategy=strategy, system_prompt=system, **params)
        return replace(response, parsed=parse_structured(response.content, schema, response.request_id))
