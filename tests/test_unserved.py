"""The routes `course-llm serve` refuses because they would spend past the registry
(course_llm/proxy/unserved.py); the real process is attacked in tests/test_unserved_e2e.py."""

from __future__ import annotations

import pytest

from course_llm._litellm import passthrough_prefixes
from course_llm._litellm.core import PASSTHROUGH_FEATURE, PASSTHROUGH_PREFIXES
from course_llm.proxy.unserved import UNSERVED_APIS, unserved_refusal

PASSTHROUGH = [
    "/openai/v1/chat/completions",
    "/openai/v1/assistants",
    "/openai_passthrough/v1/responses",
    "/anthropic/v1/messages",
    "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
    "/vertex_ai/v1/projects/p/locations/l/publishers/google/models/m:generateContent",
    "/bedrock/model/anthropic.claude/invoke",
    "/azure/openai/deployments/x/chat/completions",
    "/mistral/v1/chat/completions",
    "/openai/../v1/chat/completions",  # Starlette does not normalise: LiteLLM's route would match
]
SERVED = [
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/openai/deployments/text_processing/chat/completions",  # LiteLLM's routed Azure-style path
    "/openai/deployments/text_processing/embeddings",
    "/engines/text_processing/chat/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/models",
    "/health/liveliness",
    "/usage/summary",
    "/metrics",
    "/dashboard",
    "/v1/filesystem",  # a segment that only starts like one refused
    "/filesx",
    "/openai/deployments/files/chat/completions",  # an action named like an API
    "/v1/models/threads",
    "/",
    "*",
]
#: LiteLLM routes only POSTs to these under /openai/deployments/; anything else there is its
#: pass-through.
DEPLOYMENT_PASSTHROUGH = [
    ("POST", "/openai/deployments/x/foo"),
    ("POST", "/openai/deployments/text_processing/audio/speech"),
    ("GET", "/openai/deployments/text_processing/chat/completions"),
    ("PUT", "/openai/deployments/text_processing/embeddings"),
    ("POST", "/openai/v1/realtime"),  # the REST side (sessions): a pass-through
    ("POST", "/openai/deployments/embeddings"),  # no model between: LiteLLM's pass-through matches
    ("POST", "/openai/deployments/completions"),
    ("POST", "/openai/deployments/images/generations"),
    (None, "/openai/v1/realtime/x"),
]


@pytest.mark.parametrize("path", PASSTHROUGH)
def test_a_provider_pass_through_route_is_a_404_that_says_why(path: str) -> None:
    refusal = unserved_refusal(path, "POST")

    assert refusal is not None
    assert refusal.status == 404
    assert "pass-through" in refusal.message and "/v1/chat/completions" in refusal.message
    assert refusal.body()["error"]["code"] == "404"


@pytest.mark.parametrize("api", sorted(UNSERVED_APIS))
@pytest.mark.parametrize(
    "template",
    [
        "/v1/{api}",
        "/{api}",
        "/v1/{api}/abc/runs",
        "/{api}/abc",
        "/deepseek/v1/{api}/x",
        "/v1/v1/{api}",
    ],
)
def test_an_api_the_registry_cannot_serve_is_a_404_naming_it(api: str, template: str) -> None:
    path = template.format(api=api)

    refusal = unserved_refusal(path, "POST")

    assert refusal is not None
    assert refusal.status == 404
    assert f"the {UNSERVED_APIS[api]} API ({path})" in refusal.message


@pytest.mark.parametrize("path", SERVED)
def test_the_routes_course_llm_serves_are_left_alone(path: str) -> None:
    assert unserved_refusal(path, "POST") is None


@pytest.mark.parametrize(("method", "path"), DEPLOYMENT_PASSTHROUGH)
def test_only_litellms_routed_posts_under_openai_deployments_pass(method: str | None, path: str) -> None:
    refusal = unserved_refusal(path, method)

    assert refusal is not None and "pass-through" in refusal.message


def test_the_realtime_websocket_under_openai_is_routed_not_passed_through() -> None:
    assert unserved_refusal("/openai/v1/realtime", None) is None


def test_a_hostile_path_is_shown_escaped_and_short() -> None:
    refusal = unserved_refusal("/openai/\n\x1b[31m" + "x" * 500, "GET")

    assert refusal is not None
    assert "\n" not in refusal.message and "\x1b" not in refusal.message
    assert "\\n\\x1b[31m" in refusal.message
    assert len(refusal.message) < 400


def test_litellm_still_lists_its_pass_through_prefixes_where_course_llm_reads_them() -> None:
    # litellm 1.106.2 mounts its provider pass-through routes lazily, by the prefixes of the
    # `llm_passthrough` feature. If LiteLLM moves them, the fallback list still covers the
    # providers a registry names most, but a new provider would slip through: this test says so.
    from litellm.proxy._lazy_features import LAZY_FEATURES

    (feature,) = [f for f in LAZY_FEATURES if f.name == PASSTHROUGH_FEATURE]
    assert set(PASSTHROUGH_PREFIXES) <= set(feature.path_prefixes)
    assert set(feature.path_prefixes) <= set(passthrough_prefixes())
    for prefix in feature.path_prefixes:
        assert unserved_refusal(prefix + ("" if prefix.endswith("/") else "/") + "x", "GET") is not None, (
            prefix
        )
