"""The registry: the shipped file, and every load-time rule tested with a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from course_llm import CourseLLMError, RegistryError, UnknownActionError, load_registry
from course_llm.routing.registry import Registry

SHIPPED = Path(__file__).parent.parent / "config" / "models.yaml"


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def data() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    return loaded


def test_shipped_registry_has_the_designed_models_actions_and_chains() -> None:
    registry = load_registry(SHIPPED)
    assert sorted(registry.models) == [
        "claude-sonnet",
        "deepseek-chat",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gpt-4o-mini",
    ]
    assert {(a, s): c for a, s, c in registry.chains()} == {
        ("video_analysis", "default"): ["gemini-2.5-flash", "gemini-2.5-pro"],
        ("video_analysis", "quality"): ["gemini-2.5-pro", "gemini-2.5-flash"],
        ("video_analysis", "budget"): ["gemini-2.5-flash"],
        ("presentation_analysis", "default"): ["gemini-2.5-flash", "gpt-4o-mini"],
        ("presentation_analysis", "quality"): ["gemini-2.5-pro", "gemini-2.5-flash"],
        ("course_structuring", "default"): ["gemini-2.5-flash", "deepseek-chat"],
        ("course_structuring", "quality"): ["claude-sonnet", "gemini-2.5-pro"],
        ("course_structuring", "budget"): ["deepseek-chat"],
        ("text_processing", "default"): ["deepseek-chat", "gemini-2.5-flash"],
        ("text_processing", "quality"): ["claude-sonnet", "gemini-2.5-flash"],
        ("text_processing", "budget"): ["deepseek-chat"],
    }


def test_get_chain_returns_model_configs_in_order() -> None:
    chain = load_registry(SHIPPED).get_chain("course_structuring", "quality")
    assert [m.id for m in chain] == ["claude-sonnet", "gemini-2.5-pro"]
    assert chain[0].litellm_model == "anthropic/claude-sonnet-4-5"
    assert chain[0].key_env == "ANTHROPIC_API_KEY"


def test_estimate_cost_multiplies_tokens_by_the_per_1k_prices() -> None:
    model = load_registry(SHIPPED).models["claude-sonnet"]
    assert model.estimate_cost(2000, 1000) == pytest.approx(2 * 0.003 + 1 * 0.015)
    assert model.estimate_cost(None, None) == 0


def test_unknown_action_lists_the_valid_actions() -> None:
    with pytest.raises(UnknownActionError) as caught:
        load_registry(SHIPPED).get_chain("poetry")
    assert caught.value.valid == sorted(
        ["video_analysis", "presentation_analysis", "course_structuring", "text_processing"]
    )
    assert "video_analysis" in str(caught.value)


def test_unknown_strategy_lists_that_actions_strategies() -> None:
    with pytest.raises(UnknownActionError) as caught:
        load_registry(SHIPPED).get_chain("presentation_analysis", "budget")
    assert caught.value.valid == ["default", "quality"]
    assert caught.value.strategy == "budget"


def test_unknown_model_in_a_chain_names_file_and_key_path(tmp_path: Path, data: dict[str, Any]) -> None:
    data["routing"]["video_analysis"]["quality"][1] = "gpt-5"
    path = write(tmp_path, data)
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert str(caught.value) == f"{path}: routing.video_analysis.quality[1]: unknown model 'gpt-5'"
    assert caught.value.key == "routing.video_analysis.quality[1]"
    assert caught.value.path == str(path)


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda d: d["routing"]["text_processing"].pop("default"), "routing.text_processing", "default"),
        (
            lambda d: d["routing"]["text_processing"].update(budget=[]),
            "routing.text_processing.budget",
            "empty",
        ),
        (
            lambda d: d["routing"]["video_analysis"]["default"].append("deepseek-chat"),
            "routing.video_analysis.default[2]",
            "lacks long_context, vision",
        ),
        (
            lambda d: d["routing"].update(poetry={"default": ["deepseek-chat"]}),
            "routing.poetry",
            "unknown action",
        ),
        (lambda d: d["routing"].pop("text_processing"), "routing.text_processing", "no routing"),
        (
            lambda d: d["models"]["gpt-4o-mini"].update(colour="blue"),
            "models.gpt-4o-mini.colour",
            "unknown key",
        ),
        (lambda d: d.update(extras={}), "extras", "unknown key"),
        (
            lambda d: d["models"]["gpt-4o-mini"].update(max_context=-1),
            "models.gpt-4o-mini.max_context",
            "greater",
        ),
        (
            lambda d: d["models"]["gpt-4o-mini"].pop("cost_per_1k"),
            "models.gpt-4o-mini.cost_per_1k",
            "required",
        ),
        (
            lambda d: d["routing"]["text_processing"]["budget"].append("deepseek-chat"),
            "routing.text_processing.budget[1]",
            "twice",
        ),
        (lambda d: d["models"].update({"a/b": d["models"]["gpt-4o-mini"]}), "models.a/b", "no '/'"),
        (
            lambda d: d["routing"]["text_processing"].update({"Fast": ["deepseek-chat"]}),
            "routing.text_processing.Fast",
            "snake",
        ),
    ],
    ids=[
        "missing-default",
        "empty-chain",
        "missing-capability",
        "routing-unknown-action",
        "action-not-routed",
        "unknown-model-key",
        "unknown-section",
        "negative-context",
        "missing-prices",
        "duplicate-in-chain",
        "slash-in-model-id",
        "bad-strategy-name",
    ],
)
def test_each_rule_violation_names_the_file_and_key(
    tmp_path: Path, data: dict[str, Any], mutate: Any, key: str, words: str
) -> None:
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{path}: {key}: ")
    assert words in str(caught.value)


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  a: [unclosed\nactions: {}\n")
    with pytest.raises(RegistryError, match=r"line \d+"):
        load_registry(path)


def test_missing_file_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="file not found"):
        load_registry(tmp_path / "nope.yaml")


def test_empty_file_is_a_registry_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="models"):
        load_registry(write(tmp_path, ""))


def test_registry_error_is_a_value_error_and_a_course_llm_error() -> None:
    assert issubclass(RegistryError, ValueError)
    assert issubclass(RegistryError, CourseLLMError)


def test_unknown_provider_defaults_its_key_env_and_prefix(tmp_path: Path, data: dict[str, Any]) -> None:
    data["models"]["mistral-small"] = {
        "provider": "mistral",
        "capabilities": ["structured_output"],
        "max_context": 32000,
        "cost_per_1k": {"input": 0.0002, "output": 0.0006},
    }
    data["routing"]["text_processing"]["budget"] = ["mistral-small"]
    registry: Registry = load_registry(write(tmp_path, data))
    model = registry.models["mistral-small"]
    assert (model.litellm_model, model.key_env) == ("mistral/mistral-small", "MISTRAL_API_KEY")
