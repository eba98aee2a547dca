"""Rows for the models LiteLLM's pre-call context check leaves out, and a count it need not make.

LiteLLM behaviour (litellm 1.106.2, router.py `_pre_call_checks`): with `enable_pre_call_checks`
(the compiler sets it) the Router counts a request's prompt tokens and drops every deployment
whose `max_input_tokens` (the registry's `max_context`) is smaller, before it picks one. The
dropped model is never called, which is what course_llm wants, but LiteLLM says nothing about it:
no hook, no event, and when it drops every deployment of a group, a ContextWindowExceededError
that names none of them. `install_context_skip_report` keeps LiteLLM's decision and hands each
dropped deployment to every logger in `litellm.callbacks` that has a `record_context_skip`
method (course_llm's CallLogger), so each skip is a row like any other attempt.

LiteLLM also counts the tokens (tiktoken, on a worker thread) of every request as soon as one
deployment of the group declares a limit, and every compiled deployment does. A prompt that cannot
reach the group's smallest limit needs no count: no tokenizer LiteLLM uses makes more tokens than
the text has UTF-8 bytes, and LiteLLM adds a few tokens per message (`_upper_bound`). For plain
text messages without tools that bound stands in for the count, so the filtering decides the same
and the request skips the tokenizer; anything else is counted as before.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

log = structlog.get_logger()

_MARK = "_course_llm_context_skip_report"
#: What LiteLLM raises when the count leaves no deployment of a group.
CONTEXT_ERROR = "ContextWindowExceededError"
#: Tokens LiteLLM's counter may add per message (role, separators) and per request, generously.
_PER_MESSAGE, _PER_REQUEST = 8, 16
#: Request arguments LiteLLM also counts (or may): with any of them the prompt is counted.
_COUNTED_EXTRAS = ("tools", "functions", "tool_choice")


def _limit(deployment: Mapping[str, Any]) -> int | None:
    info = deployment.get("model_info")
    limit = info.get("max_input_tokens") if isinstance(info, Mapping) else None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def _upper_bound(messages: Any, request_kwargs: Mapping[str, Any] | None) -> int | None:
    """A bound no token count of these messages exceeds; None unless all are plain text."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        return None
    if request_kwargs and any(request_kwargs.get(key) for key in _COUNTED_EXTRAS):
        return None
    size = _PER_REQUEST
    for message in messages:
        if not isinstance(message, Mapping) or not set(message) <= {"role", "content", "name"}:
            return None
        parts = [message.get("role"), message.get("content"), message.get("name")]
        if not all(part is None or isinstance(part, str) for part in parts):
            return None
        size += _PER_MESSAGE + sum(len(part.encode()) for part in parts if part)
    return size


def _order(deployment: Mapping[str, Any]) -> int | None:
    params = deployment.get("litellm_params")
    order = params.get("order") if isinstance(params, Mapping) else None
    return order if isinstance(order, int) and not isinstance(order, bool) else None


def _in_turn(dropped: Mapping[str, Any], kept: Sequence[Any], target: Any) -> bool:
    """Whether the chain would have tried `dropped` now: LiteLLM filters the whole group, then
    picks the `_target_order` level of an order fallback, else the lowest level left. A model
    after the one that will answer was not skipped; it was never reached."""
    order = _order(dropped)
    if isinstance(target, int):
        return order == target
    levels = [level for deployment in kept if (level := _order(deployment)) is not None]
    return not levels or (order is not None and order < min(levels))


def _skipped_now(call: inspect.BoundArguments, kept: Sequence[Any]) -> list[Any]:
    """The deployments the count dropped that the chain would have tried now (`_in_turn`)."""
    try:
        return _dropped_in_turn(call, kept)
    except Exception as exc:  # reading LiteLLM's arguments must never change the routing
        log.error("context_skip_report_failed", error=repr(exc))
        return []


def _dropped_in_turn(call: inspect.BoundArguments, kept: Sequence[Any]) -> list[Any]:
    tokens = call.arguments.get("input_token_count")
    healthy = call.arguments.get("healthy_deployments") or []
    if not isinstance(tokens, int) or len(kept) == len(healthy):
        return []
    target = (call.arguments.get("request_kwargs") or {}).get("_target_order")  # popped later
    kept_ids = {id(deployment) for deployment in kept}
    return [
        deployment
        for deployment in healthy
        if id(deployment) not in kept_ids
        and (limit := _limit(deployment)) is not None
        and tokens > limit
        and _in_turn(deployment, kept, target)
    ]


def _report(litellm: Any, call: inspect.BoundArguments, skipped: Sequence[Any]) -> None:
    request_kwargs = call.arguments.get("request_kwargs") or {}
    tokens = call.arguments.get("input_token_count")
    for callback in list(litellm.callbacks):
        record = getattr(callback, "record_context_skip", None)
        if callable(record):
            try:
                record(request_kwargs, skipped, tokens)
            except Exception as exc:  # recording a skip must never change the routing
                log.error("context_skip_report_failed", error=repr(exc))


def install_context_skip_report(litellm: Any) -> None:
    """Wrap the Router's pre-call check (see the module docstring). Idempotent."""
    router_class = litellm.Router
    original: Callable[..., Any] = router_class._pre_call_checks
    if getattr(original, _MARK, False):
        return
    signature = inspect.signature(original)
    if not {"healthy_deployments", "request_kwargs", "input_token_count"} <= set(signature.parameters):
        return  # LiteLLM changed the function: leave it alone (tests/test_context_skips.py says so)

    @functools.wraps(original)
    def _pre_call_checks(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = signature.bind(self, *args, **kwargs)
        request_kwargs = call.arguments.get("request_kwargs")
        if isinstance(request_kwargs, Mapping) and request_kwargs.get("drop_params") is True:
            # LiteLLM behaviour: the same check drops a deployment whose provider does not take
            # `response_format` unless the *global* `litellm.drop_params` is set; a request's
            # own `drop_params=True` (the facade's, which then drops the parameter) is not
            # read, so a structured request would silently lose such a model.
            call.arguments["request_kwargs"] = {
                key: value for key, value in request_kwargs.items() if key != "response_format"
            }
        try:
            kept = original(*call.args, **call.kwargs)
        except Exception as exc:
            if type(exc).__name__ == CONTEXT_ERROR:
                _report(litellm, call, _skipped_now(call, []))
            raise
        skipped = _skipped_now(call, kept)
        if not skipped:
            return kept
        _report(litellm, call, skipped)
        if (call.arguments.get("request_kwargs") or {}).get("_target_order") is None and kept:
            # The chain's first level is too small. Picking the next level now would make it the
            # request's first attempt, and its order fallback would then run that level again
            # (LiteLLM skips only fallback targets it has tried): [small, 500, ok] called the
            # second model 4 times, not 2. A context-window error instead walks the rest of the
            # chain as the compiled `context_window_fallbacks`, each level once.
            raise litellm.ContextWindowExceededError(
                message="course_llm: the prompt is over the context window of the chain's first model",
                model=str(call.arguments.get("model")),
                llm_provider="",
            )
        return kept

    setattr(_pre_call_checks, _MARK, True)
    router_class._pre_call_checks = _pre_call_checks

    count: Callable[..., Any] = router_class._acount_pre_call_check_tokens
    count_signature = inspect.signature(count)
    if not {"healthy_deployments", "messages", "request_kwargs"} <= set(count_signature.parameters):
        return

    @functools.wraps(count)
    async def _acount_pre_call_check_tokens(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = count_signature.bind(self, *args, **kwargs)
        limits = [_limit(d) for d in call.arguments.get("healthy_deployments") or []]
        bound = _upper_bound(call.arguments.get("messages"), call.arguments.get("request_kwargs"))
        if bound is not None and limits and all(limit is None or bound <= limit for limit in limits):
            return bound  # no deployment's limit can be reached: the filter keeps every one
        return await count(self, *args, **kwargs)

    router_class._acount_pre_call_check_tokens = _acount_pre_call_check_tokens
