"""QuietProxyLog: which of LiteLLM's proxy log records course_llm drops, replaces or keeps."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog
from fastapi import HTTPException

from course_llm.errors import AllModelsFailedError, FailedAttempt
from course_llm.proxy.proxy_log import (
    CURRENT_REQUEST,
    QuietProxyLog,
    log_all_failed,
    quiet_model_list,
    refusal_status,
)

REQUEST_EXCEPTION = (
    "litellm.proxy.proxy_server._handle_llm_api_exception(): Exception occured - litellm_call_id=%s - %s"
)
AUTH_EXCEPTION = (
    "litellm.proxy.proxy_server.user_api_key_auth(): Exception occured - %s\nRequester IP Address:%s%s"
)
FALLBACKS = (
    "litellm.router.py::async_function_with_fallbacks() - Error occurred while trying to do fallbacks - "
    "%s\nDebug Information:\nCooldown Deployments=%s"
)


class UpstreamError(Exception):
    """Stands in for a provider's error as LiteLLM maps it."""

    status_code = 503


def record(message: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("LiteLLM Proxy", level, "x.py", 1, message, args, None)


@pytest.fixture(autouse=True)
def _no_current_request() -> Iterator[None]:
    token = CURRENT_REQUEST.set(None)
    yield
    CURRENT_REQUEST.reset(token)


@pytest.fixture
def failing() -> set[str]:
    return set()


@pytest.fixture
def quiet(failing: set[str]) -> QuietProxyLog:
    return QuietProxyLog(lambda request_id: request_id in failing)


@pytest.fixture
def events() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def in_request(request_id: str | None) -> None:
    CURRENT_REQUEST.set(request_id)


def test_the_traceback_of_a_request_whose_attempts_all_failed_is_dropped(
    quiet: QuietProxyLog, failing: set[str]
) -> None:
    failing.add("r-1")
    in_request("r-1")
    assert not quiet.filter(record(REQUEST_EXCEPTION, "call-1", UpstreamError("boom")))
    assert not quiet.filter(record(FALLBACKS, "boom", []))


def test_an_exception_of_a_request_without_failed_attempts_is_kept(quiet: QuietProxyLog) -> None:
    in_request("r-2")
    assert quiet.filter(record(REQUEST_EXCEPTION, "call-2", UpstreamError("boom")))
    in_request(None)
    assert quiet.filter(record(REQUEST_EXCEPTION, "call-3", RuntimeError("proxy bug")))
    assert quiet.filter(record(FALLBACKS, "boom", []))


def test_a_wrong_key_is_one_info_line_instead_of_an_error(
    quiet: QuietProxyLog, events: list[dict[str, object]]
) -> None:
    in_request(None)
    refused = HTTPException(status_code=401, detail="wrong key")
    assert not quiet.filter(record(AUTH_EXCEPTION, refused, "127.0.0.1", ""))
    assert events == [
        {"event": "proxy_request_refused", "status": 401, "error": "'wrong key'", "log_level": "info"}
    ]


def test_a_body_refused_by_a_hook_is_one_info_line_instead_of_an_error(
    quiet: QuietProxyLog, events: list[dict[str, object]]
) -> None:
    in_request(None)
    refused = HTTPException(status_code=400, detail={"error": "unknown action 'x'"})
    assert not quiet.filter(record(REQUEST_EXCEPTION, "call-4", refused))
    assert [(e["event"], e["status"], e["log_level"]) for e in events] == [
        ("proxy_request_refused", 400, "info")
    ]


def test_a_server_error_raised_as_http_exception_stays_an_error(quiet: QuietProxyLog) -> None:
    in_request(None)
    assert quiet.filter(record(REQUEST_EXCEPTION, "call-5", HTTPException(status_code=500)))
    assert refusal_status(UpstreamError()) is None


def test_the_custom_auth_start_up_warning_is_dropped_and_other_warnings_kept(quiet: QuietProxyLog) -> None:
    custom_auth = "custom_auth is configured but 'custom_auth_run_common_checks' is not set. Problem: …"
    assert not quiet.filter(record(custom_auth, level=logging.WARNING))
    assert quiet.filter(record("something else is not set", level=logging.WARNING))


def test_a_filter_that_cannot_judge_a_record_keeps_it(failing: set[str]) -> None:
    def broken(request_id: str) -> bool:
        raise RuntimeError("no")

    in_request("r-3")
    assert QuietProxyLog(broken).filter(record(REQUEST_EXCEPTION, "call-6", UpstreamError()))


def test_an_all_failed_request_is_one_event_listing_every_attempt(events: list[dict[str, object]]) -> None:
    attempts = [
        FailedAttempt(1, "deepseek-chat", "deepseek", "budget", 503, "ServiceUnavailableError", "x\ny"),
        FailedAttempt(2, "gemini-2.5-flash", "gemini", "default", None, "Timeout", "slow"),
    ]
    log_all_failed(AllModelsFailedError("text_processing", "budget", "r-9", attempts), 503)
    assert events == [
        {
            "event": "llm_request_failed",
            "log_level": "error",
            "request_id": "r-9",
            "model": "text_processing/budget",
            "status": 503,
            "attempts": [
                "#1 deepseek-chat (budget) 503 ServiceUnavailableError",
                "#2 gemini-2.5-flash (default) - Timeout",
            ],
        }
    ]


def test_an_all_failed_request_ending_in_a_client_error_is_a_warning(events: list[dict[str, object]]) -> None:
    attempts = [FailedAttempt(1, "m", "p", "default", 400, "BadRequestError", "")]
    log_all_failed(AllModelsFailedError("a", "default", "r-10", attempts), 400)
    assert events[0]["log_level"] == "warning"


def test_litellms_model_list_is_dropped_from_stdout_while_the_proxy_starts_and_nothing_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    restore = quiet_model_list()
    try:
        print("course_llm proxy on http://127.0.0.1:4000")
        print("\033[32mLiteLLM: Proxy initialized with Config, Set models:\033[0m")
        print("\033[32m    text_processing/default\033[0m")
        print("\033[32m    text_processing/budget\033[0m")
        print("\033[32mLiteLLM: a line course_llm does not know\033[0m")
        print("    indented, not coloured")
    finally:
        restore()
    print("\033[32m    after start-up\033[0m")

    assert capsys.readouterr().out.splitlines() == [
        "course_llm proxy on http://127.0.0.1:4000",
        "\033[32mLiteLLM: a line course_llm does not know\033[0m",
        "    indented, not coloured",
        "\033[32m    after start-up\033[0m",
    ]
