"""`course-llm serve` without a server: the key it picks, the banner it prints, the mock's delays."""

from __future__ import annotations

import gc
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from course_llm.proxy import serve
from course_llm.proxy.mock import MAX_MOCK_DELAY_S, mock_delay_s
from course_llm.proxy.serve import DEV_KEY, ServeError, ServePlan, banner
from course_llm.settings import Settings


def settings(key: str | None) -> Settings:
    return Settings.model_validate({"LITELLM_MASTER_KEY": key})


def plan(*, key: str, dev_key: bool, host: str = "127.0.0.1") -> ServePlan:
    return ServePlan(Path("proxy_config.yaml"), host, 4000, key, dev_key, True, "sqlite:///x.db", "x")


def try_line(text: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.strip().startswith("try")]
    return shlex.split(line.strip().removeprefix("try"))


def test_mock_on_loopback_without_a_key_uses_the_fixed_development_key() -> None:
    assert serve._master_key(settings(None), "127.0.0.1", mock=True) == (DEV_KEY, True)
    assert DEV_KEY == "sk-course-llm-dev"


def test_a_key_in_the_environment_wins_over_the_development_key() -> None:
    assert serve._master_key(settings("sk-mine"), "127.0.0.1", mock=True) == ("sk-mine", False)


def test_no_development_key_on_a_public_host_or_for_real_providers() -> None:
    with pytest.raises(ServeError, match="without LITELLM_MASTER_KEY"):
        serve._master_key(settings(None), "0.0.0.0", mock=True)
    with pytest.raises(ServeError, match="set LITELLM_MASTER_KEY"):
        serve._master_key(settings(None), "127.0.0.1", mock=False)


def test_the_banner_prints_the_development_key_inside_double_quotes() -> None:
    text = banner(plan(key=DEV_KEY, dev_key=True))
    assert f"key        {DEV_KEY}" in text
    assert f'"Authorization: Bearer {DEV_KEY}"' in text
    words = try_line(text)
    assert words[0] == "curl"
    assert words[words.index("-H") + 1] == f"Authorization: Bearer {DEV_KEY}"


def test_the_banner_never_prints_a_chosen_key_and_lets_the_shell_expand_it() -> None:
    text = banner(plan(key="sk-secret-choice", dev_key=False))
    assert "sk-secret-choice" not in text
    assert '"Authorization: Bearer $LITELLM_MASTER_KEY"' in text
    assert "'Authorization: Bearer $LITELLM_MASTER_KEY'" not in text  # never expands


def test_the_banner_body_is_json_a_shell_passes_through_unchanged() -> None:
    import json

    words = try_line(banner(plan(key=DEV_KEY, dev_key=True)))
    body = json.loads(words[words.index("-d") + 1])
    assert body["model"] == "text_processing"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:4000"),
        ("0.0.0.0", "http://127.0.0.1:4000"),
        ("::1", "http://[::1]:4000"),
        ("::", "http://[::1]:4000"),
        ("localhost", "http://localhost:4000"),
    ],
)
def test_the_banner_url_is_one_a_client_on_this_machine_can_reach(host: str, url: str) -> None:
    assert try_line(banner(plan(key="k", dev_key=False, host=host)))[1] == f"{url}/v1/chat/completions"


@pytest.mark.parametrize(
    ("body", "seconds"),
    [
        (b'{"content": "hi [mock-delay 2s]"}', 2.0),
        (b'{"content": "hi [mock-delay 1.5]"}', 1.5),
        (b'{"content": "hi [mock-delay 250ms]"}', 0.25),
        (b'{"content": "hi [mock-delay 3600s]"}', MAX_MOCK_DELAY_S),
        (b'{"content": "hi"}', 0.0),
        (b'{"content": "hi [mock-delay soon]"}', 0.0),
    ],
)
def test_a_mock_delay_directive_sets_how_long_the_mock_waits(body: bytes, seconds: float) -> None:
    assert mock_delay_s(body) == seconds


def test_the_plan_does_not_show_its_secrets() -> None:
    shown = repr(
        ServePlan(
            Path("c"),
            "127.0.0.1",
            4000,
            "sk-secret",
            False,
            False,
            "postgresql://u:***@h/db",
            database_url="postgresql://u:hunter2@h/db",
        )
    )
    assert "sk-secret" not in shown and "hunter2" not in shown


async def test_start_up_freezes_what_it_built_and_gives_stdout_back() -> None:
    from course_llm.proxy.routes import _ReadinessGuard

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        print("\033[32mLiteLLM: Proxy initialized with Config, Set models:\033[0m")
        assert gc.get_freeze_count() == 0  # not before start-up has finished
        await send({"type": "lifespan.startup.complete"})

    writers_started: list[bool] = []
    logger = SimpleNamespace(writer=SimpleNamespace(start=lambda: writers_started.append(True)))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    stdout = sys.stdout
    gc.unfreeze()
    try:
        await _ReadinessGuard(app, logger)({"type": "lifespan"}, None, send)
        assert gc.get_freeze_count() > 0
        assert sys.stdout is stdout
        assert sent == [{"type": "lifespan.startup.complete"}] and writers_started == [True]
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("error", [TimeoutError(), ValueError()], ids=["transient", "permanent"])
def test_a_database_error_without_a_message_is_named_by_its_class(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """A database that accepts the connection and never answers raises a TimeoutError whose text
    is empty; serve used to crash on it (IndexError) instead of serving or saying why."""
    import course_llm.db

    def upgrade(url: str) -> None:
        raise error

    monkeypatch.setattr(course_llm.db, "upgrade_database", upgrade)
    if isinstance(error, TimeoutError):
        assert serve._upgrade_database("postgresql+asyncpg://postgres@127.0.0.1:9/none") is False
    else:
        with pytest.raises(ServeError, match=r"cannot migrate .*: ValueError$"):
            serve._upgrade_database("postgresql+asyncpg://postgres@127.0.0.1:9/none")
