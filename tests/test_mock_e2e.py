"""`course-llm serve --mock` started from an empty directory, called with the official openai client.

No `config/models.yaml` and no database there: the proxy serves the registry shipped with the
package, creates its database in that directory, and answers a structured request
(`response_format` = a Pydantic model, sent by the client as a strict JSON Schema) with JSON that
the client parses into that model.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from tests.proxy_process import ProxyProcess, free_port, serve_argv

pytestmark = pytest.mark.e2e

KEY = "sk-course-llm-mock-e2e"


class Level(enum.StrEnum):
    INTRO = "intro"
    ADVANCED = "advanced"


class Lesson(BaseModel):
    title: str
    level: Level
    minutes: int
    notes: str | None


class Outline(BaseModel):
    course: str
    lessons: list[Lesson]
    tags: list[str]


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def proxy(elsewhere: Path) -> Iterator[ProxyProcess]:
    port = free_port()
    env = {"LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)  # the child starts in the empty directory
        for name in ("COURSE_LLM_REGISTRY_PATH", "COURSE_LLM_DATABASE_URL", "COURSE_LLM_SPOOL_PATH"):
            patch.delenv(name, raising=False)
        process = ProxyProcess(
            serve_argv("--mock", "--port", str(port)), env, port, elsewhere / "log"
        ).start()
    yield process
    process.stop()


def client(proxy: ProxyProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=KEY, max_retries=0)


async def test_serve_mock_from_an_empty_directory_uses_the_shipped_registry(
    proxy: ProxyProcess, elsewhere: Path
) -> None:
    response = await client(proxy).chat.completions.create(
        model="course_structuring/quality", messages=[{"role": "user", "content": "hi"}]
    )

    assert (response.choices[0].message.content or "").startswith("[mock claude-sonnet]")
    assert (elsewhere / "course_llm.db").is_file()


@pytest.mark.parametrize("attempt", range(3))  # made-up data differs every time
async def test_a_structured_request_through_serve_mock_parses_into_the_clients_model(
    proxy: ProxyProcess, attempt: int
) -> None:
    completion = await client(proxy).chat.completions.parse(
        model="text_processing",
        messages=[{"role": "user", "content": "Outline a biology course"}],
        response_format=Outline,
    )

    assert isinstance(completion.choices[0].message.parsed, Outline)
