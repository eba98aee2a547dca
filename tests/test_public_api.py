"""The public names and the version: what outside code imports must not silently change."""

from __future__ import annotations

from importlib.metadata import version

import course_llm

CONTRACT = {
    # docs/architecture.md, "Python API"
    "Settings",
    "load_registry",
    "create_session_factory",
    "create_model_router",
    "call_scope",
    "track_llm_call",
    "ModelRouter",
    "LLMResponse",
    "AllModelsFailedError",
    "BudgetExceededError",
    "StructuredOutputError",
    "UnknownActionError",
    "RegistryError",
    "complete",
}


def test_all_lists_the_contract_names_and_is_sorted() -> None:
    assert set(course_llm.__all__) >= CONTRACT
    assert course_llm.__all__ == sorted(course_llm.__all__)


def test_every_exported_name_resolves() -> None:
    for name in course_llm.__all__:
        assert getattr(course_llm, name) is not None, name


def test_every_error_derives_from_course_llm_error() -> None:
    errors = [getattr(course_llm, n) for n in course_llm.__all__ if n.endswith("Error")]
    assert len(errors) >= 6
    assert all(issubclass(e, course_llm.CourseLLMError) for e in errors)


def test_version_comes_from_package_metadata() -> None:
    assert course_llm.__version__ == version("course-llm")
