"""The registry's optional sections (cache, budgets, circuit_breaker): parsed, defaulted, and
rejected with the file and the key path when wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from course_llm import RegistryError, load_registry

SHIPPED = Path(__file__).parent.parent / "config" / "models.yaml"


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def data() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    return loaded


def test_a_registry_without_the_sections_has_no_cache_budgets_or_breaker() -> None:
    registry = load_registry(SHIPPED)
    assert registry.cache is None
    assert registry.budgets == {}
    assert registry.circuit_breaker is None


def test_the_sections_load_with_their_defaults(tmp_path: Path, data: dict[str, Any]) -> None:
    data["cache"] = {"type": "local"}
    data["budgets"] = {"daily": {"period": "day", "limit_usd": 5}}
    data["circuit_breaker"] = {}
    registry = load_registry(write(tmp_path, data))
    assert registry.cache is not None
    assert (registry.cache.type, registry.cache.ttl_s) == ("local", 600)
    daily = registry.budgets["daily"]
    assert (daily.period, daily.limit_usd, daily.downgrade_at, daily.on_limit) == ("day", 5, None, "reject")
    assert daily.match.matches("anything", None, None)
    assert registry.circuit_breaker is not None
    assert (registry.circuit_breaker.failures, registry.circuit_breaker.cooldown_s) == (5, 30)


def test_a_budget_match_needs_every_given_field() -> None:
    from course_llm.control.sections import BudgetMatch

    match = BudgetMatch(action="text_processing", tenant_id="acme")
    assert match.matches("text_processing", "acme", "op")
    assert not match.matches("text_processing", "other", "op")
    assert not match.matches("video_analysis", "acme", None)


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ("cache", {"type": "memcached"}, "cache.type"),
        ("cache", {"ttl_s": 0}, "cache.ttl_s"),
        ("cache", {"ttl": 5}, "cache.ttl"),
        ("budgets", {"daily": {"period": "week", "limit_usd": 1}}, "budgets.daily.period"),
        ("budgets", {"daily": {"period": "day", "limit_usd": -1}}, "budgets.daily.limit_usd"),
        (
            "budgets",
            {"daily": {"period": "day", "limit_usd": 1, "downgrade_at": 1.5}},
            "budgets.daily.downgrade_at",
        ),
        (
            "budgets",
            {"daily": {"period": "day", "limit_usd": 1, "on_limit": "warn"}},
            "budgets.daily.on_limit",
        ),
        (
            "budgets",
            {"daily": {"period": "day", "limit_usd": 1, "match": {"team": "x"}}},
            "budgets.daily.match.team",
        ),
        ("budgets", {"daily": {"limit_usd": 1}}, "budgets.daily.period"),
        (
            "budgets",
            {"daily": {"period": "day", "limit_usd": 1, "match": {"action": "nope"}}},
            "budgets.daily.match.action",
        ),
        ("budgets", {"bad name": {"period": "day", "limit_usd": 1}}, "budgets.bad name"),
        ("circuit_breaker", {"failures": 0}, "circuit_breaker.failures"),
        ("circuit_breaker", {"cooldown_s": -1}, "circuit_breaker.cooldown_s"),
    ],
)
def test_a_bad_section_names_the_file_and_the_key(
    tmp_path: Path, data: dict[str, Any], section: str, value: Any, key: str
) -> None:
    data[section] = value
    path = write(tmp_path, data)
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{path}: {key}: ")
