"""Fixtures for tests that drive LiteLLM: clean global state, fake keys, respx provider mocks.

Loaded from conftest.py (`pytest_plugins`). LiteLLM keeps process-wide state (callbacks, an HTTP
client cache, a background logging worker); the autouse fixture resets it around every test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import respx

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# LiteLLM's aiohttp transport bypasses respx and would reach for the network.
os.environ.setdefault("DISABLE_AIOHTTP_TRANSPORT", "True")

from course_llm._litellm import flush_logging_worker, load_litellm
from course_llm.routing.registry import Registry, load_registry
from tests.providers import ProviderMock

litellm = load_litellm()
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler  # noqa: E402

ROOT = Path(__file__).parent.parent

FAKE_KEYS = {
    "GEMINI_API_KEY": "gemini-test-key",
    "ANTHROPIC_API_KEY": "anthropic-test-key",
    "OPENAI_API_KEY": "openai-test-key",
    "DEEPSEEK_API_KEY": "deepseek-test-key",
}


@pytest.fixture(autouse=True)
async def clean_litellm(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    for name, value in FAKE_KEYS.items():
        monkeypatch.setenv(name, value)
    litellm.disable_aiohttp_transport = True
    litellm.in_memory_llm_clients_cache.flush_cache()
    # LiteLLM streams Anthropic through one process-wide client that the cache flush does not
    # reach; its pooled connections would stay bound to the first test's (closed) event loop.
    client = AsyncHTTPHandler(timeout=30, client_alias="course_llm tests")
    monkeypatch.setattr(litellm, "module_level_aclient", client)
    callbacks_before = list(litellm.callbacks)
    yield
    # Late success events must not leak into the next test.
    await flush_logging_worker()
    litellm.callbacks[:] = callbacks_before
    litellm.in_memory_llm_clients_cache.flush_cache()
    await client.close()


@pytest.fixture
def registry() -> Registry:
    return load_registry(ROOT / "config" / "models.yaml")


@pytest.fixture
def providers() -> Iterator[ProviderMock]:
    """respx mocks for every provider; a request no route matches fails the test."""
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield ProviderMock(router)
